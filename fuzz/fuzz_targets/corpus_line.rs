//! The corpus line parser on arbitrary input: never panics, and every line it accepts
//! round-trips through `format_line`. (`read_corpus` through a temp file would be too slow per
//! input; it is `parse_line` per line plus UTF-8/NUL checks, covered by tests/proptest_parsers.rs.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use lmtrain::data::format::{format_line, parse_line};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Ok(Some(tokens)) = parse_line(line) {
            let again = format_line(&tokens);
            assert_eq!(parse_line(&again), Ok(Some(tokens)), "line {line:?}");
        }
    }
});
