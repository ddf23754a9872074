//! Login bodies of any bytes, as JSON and as a form: parsed or refused,
//! never a panic; parsed fields are never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::login::{Format, parse};

fuzz_target!(|data: &[u8]| {
    for format in [Format::Json, Format::Form] {
        if let Ok(form) = parse(format, data) {
            assert!(!form.username.is_empty());
            assert!(!form.password.expose().is_empty());
        }
    }
});
