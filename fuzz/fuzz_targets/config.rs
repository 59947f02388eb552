//! `Config::from_toml_str` on arbitrary text: never panics, and an accepted config survives its
//! own `to_toml()` (the resolved config is saved that way and read back on resume).
//!
//! Input: TOML text, then `--set` overrides, separated by `\x01` bytes, so the fuzzer explores
//! the override path (typing by the schema, unknown keys) as well as the file path.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmtrain::config::Config;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\u{1}');
    let file = parts.next().unwrap_or_default();
    let overrides: Vec<String> = parts.map(String::from).collect();
    if let Ok(cfg) = Config::from_toml_str(file, "fuzz.toml", &overrides) {
        let saved = cfg.to_toml();
        let back = Config::from_toml_str(&saved, "saved.toml", &[])
            .unwrap_or_else(|e| panic!("saved config rejected: {e}\n{saved}"));
        // Compared as text: NaN fields would make `PartialEq` fail on a faithful round trip.
        assert_eq!(back.to_toml(), saved);
    }
});
