"""A DRF app that trusts the gateway: it reads the caller from the
X-Auth-User header the gateway sets (DRF's RemoteUserAuthentication and
Django's RemoteUserBackend), as docs/django.md sets it up.

    python app.py DIR PORT

Serves GET /whoami on 127.0.0.1:PORT until killed. Used by
tests/django_import.rs.
"""
import os
import sys

import django
from django.conf import settings

directory, port = sys.argv[1], sys.argv[2]
settings.configure(
    DEBUG=False,
    SECRET_KEY="tokengate-test",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    USE_TZ=True,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "rest_framework",
    ],
    MIDDLEWARE=[],
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.path.join(directory, "app.sqlite3"),
        }
    },
    # The gateway is the only way in and names the caller; the app makes
    # the user on first sight, as RemoteUserBackend does.
    AUTHENTICATION_BACKENDS=["django.contrib.auth.backends.RemoteUserBackend"],
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.urls import path  # noqa: E402
from rest_framework.authentication import RemoteUserAuthentication  # noqa: E402
from rest_framework.decorators import (  # noqa: E402
    api_view,
    authentication_classes,
    permission_classes,
)
from rest_framework.permissions import IsAuthenticated  # noqa: E402
from rest_framework.response import Response  # noqa: E402


class GatewayUser(RemoteUserAuthentication):
    # WSGI's name for the X-Auth-User header.
    header = "HTTP_X_AUTH_USER"


@api_view(["GET"])
@authentication_classes([GatewayUser])
@permission_classes([IsAuthenticated])
def whoami(request):
    return Response({"user": request.user.username})


urlpatterns = [path("whoami", whoami)]

call_command("migrate", verbosity=0)
call_command("runserver", "127.0.0.1:" + port, use_reloader=False, use_threading=True, verbosity=0)
