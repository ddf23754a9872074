//! Path canonicalization: never panics, and what it accepts is a fixed
//! point with none of the forms an upstream could read differently.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(canonical) = tokengate::canonical::canonicalize(raw) else { return };
    assert_eq!(
        tokengate::canonical::canonicalize(&canonical).as_deref(),
        Ok(canonical.as_str()),
        "not idempotent for {raw:?}"
    );
    assert!(canonical.starts_with('/'));
    for bad in ["//", "/./", "/../", "\\", ";", "%2F", "%5C", "%00", "%2E", "%2e"] {
        assert!(!canonical.contains(bad), "{raw:?} -> {canonical:?} contains {bad:?}");
    }
    assert!(!canonical.ends_with("/.") && !canonical.ends_with("/.."));
    assert!(canonical.bytes().all(|b| b.is_ascii_graphic()));
    // And the gateway's URI type accepts it as a path.
    assert!(http::uri::PathAndQuery::try_from(canonical.as_str()).is_ok());
});
