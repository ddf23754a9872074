//! `sslmode` in the store URL.

/// The `sslmode` a URL or key=value string asks for (libpq's default,
/// `prefer`, when absent), refused when this build cannot honour it.
pub fn mode_of(url: &str) -> Result<&'static str, String> {
    let value = url
        .split(['?', '&', ' '])
        .filter_map(|part| part.split_once('='))
        .find(|(key, _)| key.trim() == "sslmode")
        .map(|(_, value)| value.trim());
    match value {
        None | Some("prefer") => Ok("prefer"),
        Some("disable") => Ok("disable"),
        Some(other) => Err(format!(
            "sslmode={other} is not supported by this build; use sslmode=disable on a trusted network"
        )),
    }
}
