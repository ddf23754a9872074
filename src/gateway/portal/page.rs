//! The token page's HTML: plain, semantic, no inline script or style (the
//! Content-Security-Policy forbids both), every value from a user escaped.

use std::fmt::Write;

use crate::store::{TokenInfo, User};

/// `text` safe inside an element or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(unix: Option<u64>, none: &str) -> String {
    unix.map_or_else(
        || none.to_owned(),
        |at| crate::time::rfc3339(at).replace('T', " "),
    )
}

/// The frame of every page. `session` is the signed-in user's name and
/// the CSRF value for the sign-out form.
fn layout(base: &str, title: &str, session: Option<(&str, &str)>, body: &str) -> String {
    let base = escape(base);
    let header = match session {
        Some((user, csrf)) => format!(
            "<span>Signed in as <strong>{}</strong></span>\
             <form method=\"post\" action=\"{base}/sign-out\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button class=\"quiet\" type=\"submit\">Sign out</button></form>",
            escape(user)
        ),
        None => String::new(),
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · tokengate</title>\
         <link rel=\"stylesheet\" href=\"{base}/style.css\"></head>\
         <body><header><h1>tokengate · API tokens</h1>{header}</header>\
         <main>{body}</main>\
         <script src=\"{base}/copy.js\"></script></body></html>\n"
    )
}

/// The sign-in form, with `error` or `notice` above it.
pub fn sign_in(base: &str, error: Option<&str>, notice: Option<&str>) -> String {
    let error = match (error, notice) {
        (Some(e), _) => format!("<p class=\"notice error\" role=\"alert\">{}</p>", escape(e)),
        (None, Some(n)) => format!("<p class=\"notice\" role=\"status\">{}</p>", escape(n)),
        (None, None) => String::new(),
    };
    let body = format!(
        "<section class=\"signin\"><h2>Sign in</h2>{error}\
         <form method=\"post\" action=\"{}/sign-in\">\
         <label for=\"username\">Username</label>\
         <input id=\"username\" name=\"username\" type=\"text\" autocomplete=\"username\" required autofocus>\
         <label for=\"password\">Password</label>\
         <input id=\"password\" name=\"password\" type=\"password\" autocomplete=\"current-password\" required>\
         <p><button type=\"submit\">Sign in</button></p></form>\
         <p class=\"hint\">Sign in to see, create and revoke your API tokens.</p></section>",
        escape(base)
    );
    layout(base, "Sign in", None, &body)
}

/// A page that only says something (an error, a refusal).
pub fn message(base: &str, title: &str, text: &str) -> String {
    let body = format!(
        "<section><h2>{}</h2><p>{}</p><p><a href=\"{}/\">Back to the token page</a></p></section>",
        escape(title),
        escape(text),
        escape(base)
    );
    layout(base, title, None, &body)
}

/// What the signed-in page shows.
pub struct Dashboard<'a> {
    pub base: &'a str,
    pub user: &'a str,
    pub csrf: &'a str,
    /// The user's API tokens (not their sessions).
    pub tokens: &'a [TokenInfo],
    /// Every user, for an administrator.
    pub users: Option<&'a [User]>,
    pub notice: Option<&'a str>,
    pub error: Option<&'a str>,
    /// A token just created: its label and secret, shown this once.
    pub created: Option<(&'a str, &'a str)>,
    /// The longest lifetime a new token may have, as text ("30d"), or
    /// `None` when tokens may live for ever.
    pub max_ttl: Option<&'a str>,
}

pub fn dashboard(d: &Dashboard<'_>) -> String {
    let base = escape(d.base);
    let csrf = format!("<input type=\"hidden\" name=\"csrf\" value=\"{}\">", d.csrf);
    let mut body = String::new();
    if let Some(notice) = d.notice {
        let _ = write!(
            body,
            "<p class=\"notice\" role=\"status\">{}</p>",
            escape(notice)
        );
    }
    if let Some(error) = d.error {
        let _ = write!(
            body,
            "<p class=\"notice error\" role=\"alert\">{}</p>",
            escape(error)
        );
    }
    if let Some((label, secret)) = d.created {
        let _ = write!(
            body,
            "<section><h2>New token: {}</h2>\
             <p>Copy it now: it is shown this once and cannot be recovered.</p>\
             <div class=\"secret\"><code id=\"new-token\">{}</code>\
             <button type=\"button\" data-copy=\"new-token\" hidden>Copy</button></div>\
             <p class=\"hint\">Send it as <code>Authorization: Token …</code>.</p></section>",
            escape(label),
            escape(secret)
        );
    }
    body.push_str("<section><h2>Your tokens</h2>");
    if d.tokens.is_empty() {
        body.push_str("<p class=\"empty\">No tokens yet.</p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>Label</th><th>Created</th><th>Expires</th>\
             <th>Last used</th><th>Scopes</th><th></th></tr></thead><tbody>",
        );
        for t in d.tokens {
            let r = &t.record;
            let scopes = if r.scopes.is_empty() {
                "all of your rights".to_owned()
            } else {
                r.scopes
                    .iter()
                    .map(|s| escape(s))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let _ = write!(
                body,
                "<tr><td data-label=\"Label\">{}</td><td data-label=\"Created\">{}</td>\
                 <td data-label=\"Expires\">{}</td><td data-label=\"Last used\">{}</td>\
                 <td data-label=\"Scopes\">{scopes}</td><td>\
                 <form method=\"post\" action=\"{base}/tokens/revoke\">{csrf}\
                 <input type=\"hidden\" name=\"id\" value=\"{}\">\
                 <button class=\"danger\" type=\"submit\">Revoke</button></form></td></tr>",
                escape(r.label.as_deref().unwrap_or("(no label)")),
                when(Some(r.created_at), ""),
                when(r.expires_at, "never"),
                when(r.last_used_at, "never"),
                escape(&t.id),
            );
        }
        let _ = write!(
            body,
            "</tbody></table><form method=\"post\" action=\"{base}/tokens/revoke-all\">{csrf}\
             <p><button class=\"danger\" type=\"submit\">Revoke all my tokens</button></p></form>"
        );
    }
    body.push_str("</section>");
    let ttl_hint = match d.max_ttl {
        Some(max) => format!(
            "For example 7d or 12h; at most {}. Empty: {}.",
            escape(max),
            escape(max)
        ),
        None => "For example 7d or 12h. Empty: never expires.".to_owned(),
    };
    let _ = write!(
        body,
        "<section><h2>Create a token</h2><form method=\"post\" action=\"{base}/tokens\">{csrf}\
         <div class=\"row\"><div><label for=\"label\">Label</label>\
         <input id=\"label\" name=\"label\" type=\"text\" maxlength=\"200\" placeholder=\"laptop, CI job…\" required></div>\
         <div><label for=\"ttl\">Lifetime</label><input id=\"ttl\" name=\"ttl\" type=\"text\" placeholder=\"30d\"></div></div>\
         <p class=\"hint\">{ttl_hint}</p>\
         <label for=\"scopes\">Scopes (optional)</label>\
         <textarea id=\"scopes\" name=\"scopes\" placeholder=\"GET /reports/**\"></textarea>\
         <p class=\"hint\">One per line, METHODS PATTERN, as in <code>GET,POST /orders/*</code>. Empty: all of your rights.</p>\
         <p><button type=\"submit\">Create token</button></p></form></section>"
    );
    let _ = write!(
        body,
        "<section><h2>Change your password</h2><form method=\"post\" action=\"{base}/password\">{csrf}\
         <div class=\"row\"><div><label for=\"old\">Current password</label>\
         <input id=\"old\" name=\"old\" type=\"password\" autocomplete=\"current-password\" required></div>\
         <div><label for=\"new\">New password</label>\
         <input id=\"new\" name=\"new\" type=\"password\" autocomplete=\"new-password\" required></div>\
         <div><label for=\"confirm\">New password again</label>\
         <input id=\"confirm\" name=\"confirm\" type=\"password\" autocomplete=\"new-password\" required></div></div>\
         <p class=\"hint\">This ends all your tokens and every other session.</p>\
         <p><button type=\"submit\">Change password</button></p></form></section>"
    );
    if let Some(users) = d.users {
        body.push_str(
            "<section><h2>All users</h2><table><thead><tr><th>User</th><th>Roles</th>\
             <th>Status</th><th></th></tr></thead><tbody>",
        );
        for u in users {
            let name = escape(&u.username);
            let (status, toggle, verb) = if u.disabled {
                ("disabled", "enable", "Enable")
            } else {
                ("active", "disable", "Disable")
            };
            let _ = write!(
                body,
                "<tr><td data-label=\"User\">{name}</td><td data-label=\"Roles\">{}</td>\
                 <td data-label=\"Status\">{status}</td><td>\
                 <form method=\"post\" action=\"{base}/users/{toggle}\">{csrf}\
                 <input type=\"hidden\" name=\"user\" value=\"{name}\">\
                 <button class=\"quiet\" type=\"submit\">{verb}</button></form> \
                 <form method=\"post\" action=\"{base}/users/revoke\">{csrf}\
                 <input type=\"hidden\" name=\"user\" value=\"{name}\">\
                 <button class=\"danger\" type=\"submit\">Revoke all tokens</button></form></td></tr>",
                escape(&u.roles.join(", ")),
            );
        }
        body.push_str("</tbody></table></section>");
    }
    layout(d.base, "Your tokens", Some((d.user, d.csrf)), &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        let page = sign_in("/_tg", Some("<script>"), None);
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>alert"));
        assert!(
            !page.contains("style=") && !page.contains("onclick"),
            "no inline style or script"
        );
    }
}
