"""Builds a small Django site with a real Django, DRF and django-rest-knox,
and writes what `manage.py dumpdata` writes for it, with and without
natural keys, plus the secrets a client of that site holds.

    python make_dump.py OUTDIR

Used by tests/django_import.rs; .ci/run makes the virtualenv it runs in.
"""
import datetime
import json
import os
import sys

import django
from django.conf import settings

out = sys.argv[1]
settings.configure(
    SECRET_KEY="tokengate-test",
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "rest_framework",
        "rest_framework.authtoken",
        "knox",
    ],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(out, "site.sqlite3"),
        }
    },
    # Django's own order and defaults: pbkdf2_sha256 first.
    PASSWORD_HASHERS=[
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2SHA1PasswordHasher",
        "django.contrib.auth.hashers.Argon2PasswordHasher",
        "django.contrib.auth.hashers.BCryptSHA256PasswordHasher",
        "django.contrib.auth.hashers.ScryptPasswordHasher",
    ],
)
django.setup()

from django.contrib.auth.hashers import make_password  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core.management import call_command  # noqa: E402
from knox.models import AuthToken  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402

call_command("migrate", verbosity=0)
finance = Group.objects.create(name="finance")
secrets = {"passwords": {}, "django": {}, "knox": {}}

for algorithm in ["pbkdf2_sha256", "pbkdf2_sha1", "argon2", "bcrypt_sha256", "scrypt"]:
    name = "u_" + algorithm
    password = "pw " + algorithm + " é"
    User.objects.create(username=name, password=make_password(password, hasher=algorithm))
    secrets["passwords"][name] = password

ann = User.objects.create_user("ann", password="ann's password", is_staff=True)
ann.groups.add(finance)
secrets["passwords"]["ann"] = "ann's password"
root = User.objects.create_superuser("root", password="root password")
secrets["passwords"]["root"] = "root password"
gone = User.objects.create_user("gone", password="gone password", is_active=False)
secrets["passwords"]["gone"] = "gone password"
nopw = User.objects.create_user("nopw")
nopw.set_unusable_password()
nopw.save()
# An algorithm the gateway does not verify (Django's old salted SHA-1).
User.objects.create(username="oldsha", password="sha1$salt$0123456789abcdef0123456789abcdef01234567")

secrets["django"]["ann"] = Token.objects.create(user=ann).key
secrets["django"]["gone"] = Token.objects.create(user=gone).key
secrets["knox"]["plain"] = AuthToken.objects.create(user=ann, expiry=None)[1]
scrypt_user = User.objects.get(username="u_scrypt")
secrets["knox"]["prefixed"] = AuthToken.objects.create(user=scrypt_user, expiry=None, prefix="kx_")[1]
secrets["knox"]["roots"] = AuthToken.objects.create(user=root, expiry=None)[1]
secrets["knox"]["expiring"] = AuthToken.objects.create(
    user=ann, expiry=datetime.timedelta(days=1)
)[1]
secrets["knox"]["expired"] = AuthToken.objects.create(
    user=ann, expiry=datetime.timedelta(seconds=-60)
)[1]

models = ["auth.group", "auth.user", "authtoken.token", "knox.authtoken"]
call_command("dumpdata", *models, output=os.path.join(out, "dump.json"))
call_command(
    "dumpdata",
    *models,
    "contenttypes",
    indent=2,
    natural_foreign=True,
    natural_primary=True,
    output=os.path.join(out, "dump_natural.json"),
)
with open(os.path.join(out, "secrets.json"), "w") as f:
    json.dump(secrets, f)
