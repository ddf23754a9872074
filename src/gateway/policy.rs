//! Authorization: which paths need no token, and which roles a path needs.
//! Decisions are made on the canonical path only.

use crate::config::Rule;
use crate::gateway::response::Rejection;
use http::Method;

use crate::request::pattern::PathPattern;
use crate::request::scope::Scope;
use crate::store::Identity;

pub fn is_public(public: &[PathPattern], path: &str) -> bool {
    public.iter().any(|p| p.matches(path))
}

/// The first rule whose pattern matches decides; no matching rule means any
/// authenticated user may pass.
pub fn authorize(rules: &[Rule], path: &str, identity: &Identity) -> Result<(), Rejection> {
    match rules.iter().find(|rule| rule.path.matches(path)) {
        None => Ok(()),
        Some(rule) if rule.roles.iter().any(|r| identity.roles.contains(r)) => Ok(()),
        Some(_) => Err(Rejection::Forbidden),
    }
}

/// A scoped token passes only requests one of its scopes covers; `None`
/// (unscoped) passes everything its user may reach. Scopes narrow: they
/// are checked after the rules, never instead of them.
pub fn in_scope(scopes: Option<&[Scope]>, method: &Method, path: &str) -> bool {
    scopes.is_none_or(|scopes| scopes.iter().any(|s| s.allows(method, path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(path: &str, roles: &[&str]) -> Rule {
        Rule {
            path: PathPattern::parse(path).unwrap(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    fn who(roles: &[&str]) -> Identity {
        Identity {
            username: "u".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn first_match_wins() {
        let rules = [
            rule("/admin/public", &["staff"]),
            rule("/admin/**", &["admin"]),
        ];
        assert!(authorize(&rules, "/admin/public", &who(&["staff"])).is_ok());
        assert!(authorize(&rules, "/admin/x", &who(&["staff"])).is_err());
        assert!(authorize(&rules, "/admin", &who(&["admin"])).is_ok());
        assert!(authorize(&rules, "/admin/x", &who(&[])).is_err());
        assert!(authorize(&rules, "/other", &who(&[])).is_ok());
    }

    #[test]
    fn any_listed_role_is_enough() {
        let rules = [rule("/reports/**", &["finance", "admin"])];
        assert!(authorize(&rules, "/reports/q1", &who(&["admin"])).is_ok());
        assert!(authorize(&rules, "/reports/q1", &who(&["finance", "x"])).is_ok());
        assert!(matches!(
            authorize(&rules, "/reports/q1", &who(&["Admin"])),
            Err(Rejection::Forbidden)
        ));
    }
}
