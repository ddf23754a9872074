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

/// The first rule whose pattern (and methods, when it lists some) matches
/// decides; no matching rule means any authenticated user may pass.
pub fn authorize(
    rules: &[Rule],
    method: &Method,
    path: &str,
    identity: &Identity,
) -> Result<(), Rejection> {
    let applies = |rule: &&Rule| {
        rule.methods.as_ref().is_none_or(|m| m.contains(method)) && rule.path.matches(path)
    };
    match rules.iter().find(applies) {
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
            methods: None,
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
        assert!(authorize(&rules, &Method::GET, "/admin/public", &who(&["staff"])).is_ok());
        assert!(authorize(&rules, &Method::GET, "/admin/x", &who(&["staff"])).is_err());
        assert!(authorize(&rules, &Method::GET, "/admin", &who(&["admin"])).is_ok());
        assert!(authorize(&rules, &Method::GET, "/admin/x", &who(&[])).is_err());
        assert!(authorize(&rules, &Method::GET, "/other", &who(&[])).is_ok());
    }

    #[test]
    fn any_listed_role_is_enough() {
        let rules = [rule("/reports/**", &["finance", "admin"])];
        assert!(authorize(&rules, &Method::GET, "/reports/q1", &who(&["admin"])).is_ok());
        assert!(authorize(&rules, &Method::GET, "/reports/q1", &who(&["finance", "x"])).is_ok());
        assert!(matches!(
            authorize(&rules, &Method::GET, "/reports/q1", &who(&["Admin"])),
            Err(Rejection::Forbidden)
        ));
    }

    #[test]
    fn a_rule_with_methods_decides_only_for_them() {
        let mut writes = rule("/orders/**", &["clerk"]);
        writes.methods = Some(vec![Method::POST, Method::DELETE]);
        let rules = [writes, rule("/orders/**", &["viewer", "clerk"])];
        let viewer = who(&["viewer"]);
        assert!(authorize(&rules, &Method::GET, "/orders/1", &viewer).is_ok());
        assert!(authorize(&rules, &Method::POST, "/orders/1", &viewer).is_err());
        assert!(authorize(&rules, &Method::DELETE, "/orders/1", &who(&["clerk"])).is_ok());
        assert!(authorize(&rules, &Method::PUT, "/orders/1", &viewer).is_ok());
    }
}
