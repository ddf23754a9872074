//! Any text as a config file: an error or a config, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let path = std::path::Path::new("/fuzz/tokengate.toml");
        let _ = tokengate::config::Config::from_toml(text, path, |_| None);
        let _ = tokengate::config::Config::effective_toml(text, path, |_| None);
    }
});
