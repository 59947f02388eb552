//! Property tests of the two text parsers that take user input: the corpus line format and the
//! TOML config (with `--set` overrides). They must never panic, must round-trip what they
//! accept, and must name the file or key in what they reject.
//!
//! Case counts keep the whole file to a few seconds; the cargo-fuzz targets in `fuzz/` explore
//! the same functions for longer.

mod common;

use lmtrain::config::Config;
use lmtrain::data::format::{format_line, parse_line, read_corpus};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::sync::atomic::{AtomicUsize, Ordering};

/// `n` cases, and no `*.proptest-regressions` file written next to this one on failure: the
/// failing input is printed, and a fixed bug gets a named regression test instead.
fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- corpus lines ---------------------------------------------------------------------------

/// Fragments that steer random lines towards the parser's edge cases: markers, special strings,
/// every kind of separator, NUL, CR, non-ASCII (incl. Unicode whitespace U+3000 and U+00A0).
fn line_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "<BOS>", "<EOS>", "<pad>", "<unk>", "<BOS", "EOS>", "  ", " ", "   ", "\t", "\r", "\0",
            "\u{3000}", "\u{a0}", "\n", "a", "党", "é", "<", ">",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn messy_line() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(line_piece(), 0..16).prop_map(|v| v.concat()),
    ]
}

/// A token the format allows: no whitespace, no NUL, no special string inside, or exactly
/// `<pad>`/`<unk>`.
fn good_token() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[^\\s\\x00]{1,6}".prop_filter("holds a special string", |t| {
            !["<BOS>", "<EOS>", "<pad>", "<unk>"]
                .iter()
                .any(|s| t.contains(s))
        }),
        1 => prop::sample::select(vec!["<pad>", "<unk>"]).prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(cases(5000))]

    #[test]
    fn parse_line_never_panics_and_round_trips(line in messy_line()) {
        if let Ok(Some(tokens)) = parse_line(&line) {
            prop_assert!(!tokens.is_empty());
            let again = format_line(&tokens);
            prop_assert_eq!(parse_line(&again), Ok(Some(tokens)));
        }
    }

    #[test]
    fn well_formed_lines_parse_to_their_tokens(
        tokens in prop::collection::vec(good_token(), 1..20),
        crlf in any::<bool>(),
    ) {
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let mut line = format_line(&refs);
        if crlf {
            line.push('\r');
        }
        prop_assert_eq!(parse_line(&line), Ok(Some(refs)));
    }

    #[test]
    fn any_other_separator_is_rejected(
        tokens in prop::collection::vec(good_token(), 1..10),
        at in any::<prop::sample::Index>(),
        sep in prop::sample::select(vec![" ", "   ", "\t", "  \t", "\r", " \r ", "\u{3000}"]),
    ) {
        // Rebuild the line with one of its separators (there are tokens + 1) replaced.
        let mut parts = vec!["<BOS>"];
        parts.extend(tokens.iter().map(String::as_str));
        parts.push("<EOS>");
        let bad = at.index(parts.len() - 1);
        let mut line = String::from(parts[0]);
        for (i, p) in parts[1..].iter().enumerate() {
            line.push_str(if i == bad { sep } else { "  " });
            line.push_str(p);
        }
        prop_assert!(parse_line(&line).is_err(), "accepted {:?}", line);
    }
}

// ---- corpus files ---------------------------------------------------------------------------

/// Corpus bytes: raw random bytes, or lines of messy and well-formed text with stray invalid
/// UTF-8 bytes.
fn corpus_bytes() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        messy_line().prop_map(String::into_bytes),
        prop::collection::vec(good_token(), 1..5).prop_map(|t| {
            let refs: Vec<&str> = t.iter().map(String::as_str).collect();
            format_line(&refs).into_bytes()
        }),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        prop::collection::vec(line, 0..8).prop_map(|lines| lines.join(&b'\n')),
    ]
}

fn read_random_corpus(bytes: &[u8]) -> Result<(), TestCaseError> {
    // One folder per test process, one file name per case: cases never share a file.
    static N: AtomicUsize = AtomicUsize::new(0);
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| common::temp_dir("proptest-corpus"));
    let path = dir.join(format!("c{}.txt", N.fetch_add(1, Ordering::SeqCst)));
    std::fs::write(&path, bytes).unwrap();
    let result = read_corpus(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Ok(seqs) => {
            // Accepted: valid UTF-8, and one sequence per non-blank line.
            let text =
                std::str::from_utf8(bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let lines = text.split('\n').filter(|l| !l.trim().is_empty()).count();
            prop_assert_eq!(seqs.len(), lines);
            prop_assert!(seqs.iter().all(|s| !s.is_empty()));
        }
        Err(e) => {
            let msg = format!("{e:#}");
            prop_assert!(msg.contains(&path.display().to_string()), "{}", msg);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn read_corpus_never_panics_and_names_the_file(bytes in corpus_bytes()) {
        read_random_corpus(&bytes)?;
    }
}

// ---- config ---------------------------------------------------------------------------------

/// Fragments of config text: real section and key names, values of every type, TOML syntax.
fn config_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "[run]\n", "[data]\n", "[model]\n", "[train]\n", "[train\n", "[[train]]\n",
            "lr = ", "n_heads = ", "d_model = ", "batch_size = ", "name = ", "positions = ",
            "val_fraction = ", "max_steps = ", "dropout = ", "1", "0", "-1", "3e-4", "nan", "inf",
            "\"x\"", "\"rope\"", "true", "[1, 2]", "{ a = 1 }", "\n", "=", ".", "#", "\"", "'''",
            "\0", "\r\n", "\t",
        ])
        .prop_map(String::from),
        1 => any::<String>(),
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        prop::collection::vec(config_piece(), 0..24).prop_map(|v| v.concat()),
    ]
}

fn override_text() -> impl Strategy<Value = String> {
    let key = prop::sample::select(vec![
        "train.lr",
        "model.n_heads",
        "model.positions",
        "run.name",
        "run.seed",
        "data.val_file",
        "model",
        "train",
        "nosuch.key",
        "train.nosuch",
        ".",
        "",
    ]);
    let value = prop_oneof![
        prop::sample::select(vec![
            "1", "0", "-1", "1e400", "nan", "rope", "", "\"", "true", "=", " "
        ])
        .prop_map(String::from),
        any::<String>(),
    ];
    prop_oneof![
        (key, value).prop_map(|(k, v)| format!("{k}={v}")),
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(cases(3000))]

    #[test]
    fn config_parser_never_panics(
        text in config_text(),
        overrides in prop::collection::vec(override_text(), 0..4),
    ) {
        let _ = Config::from_toml_str(&text, "fuzz.toml", &overrides);
    }
}

/// Every numeric key of the config as `(section, field, is_integer)`, read from the defaults so
/// keys added later are covered without editing this file.
fn numeric_keys() -> Vec<(String, String, bool)> {
    let table = toml::Table::try_from(Config::default()).unwrap();
    let mut keys = Vec::new();
    for (section, fields) in &table {
        for (field, value) in fields.as_table().unwrap() {
            match value {
                toml::Value::Integer(_) => keys.push((section.clone(), field.clone(), true)),
                toml::Value::Float(_) => keys.push((section.clone(), field.clone(), false)),
                _ => {}
            }
        }
    }
    keys
}

/// Keys a cross-field check may name when `key` is what changed: lowering `lr` below `min_lr`
/// is reported as `train.min_lr`, a `d_model` not divisible by `n_heads` as `model.n_heads`, and
/// two zero stops as `train.max_steps`.
fn keys_that_may_be_named(key: &str) -> Vec<String> {
    let also: &[&str] = match key {
        "train.lr" => &["train.min_lr"],
        "model.d_model" => &["model.n_heads", "model.positions"],
        "model.n_heads" => &["model.positions"],
        "train.max_epochs" => &["train.max_steps"],
        _ => &[],
    };
    std::iter::once(key)
        .chain(also.iter().copied())
        .map(String::from)
        .collect()
}

/// Values whose errors currently name the wrong key (see the ignored tests in bad_input.rs and
/// `every_invalid_number_is_rejected_naming_its_key` below): the CI property draws only valid
/// values for these, so it passes today and still covers their round trip.
fn misnamed_if_invalid(key: &str) -> Option<std::ops::Range<f64>> {
    match key {
        "model.d_model" | "model.n_layers" | "model.n_heads" | "model.context" => Some(1.0..1e4),
        "model.rope_theta" => Some(1e-3..1e6),
        "train.beta2" => Some(0.0..1.0),
        "train.grad_clip" => Some(0.0..10.0),
        _ => None,
    }
}

/// A draw that becomes an integer or a float value once the key's type is known.
#[derive(Debug, Clone, Copy)]
enum Draw {
    Int(u64),
    Float(f64),
    /// Position in the key's valid range (for `misnamed_if_invalid` keys).
    Unit(f64),
}

fn draw(non_finite: bool) -> impl Strategy<Value = Draw> {
    let ints = prop_oneof![
        0u64..4,
        0u64..100_000,
        Just(i64::MAX as u64), // the largest TOML integer
    ];
    let finite = prop_oneof![
        Just(0.0),
        Just(-0.0),
        -2.0..2.0f64,
        0.0..1.0f64,
        1e-12..1e6f64,
        -1e6..-1e-12f64,
    ];
    let floats = if non_finite {
        prop_oneof![
            4 => finite,
            1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY]),
        ]
        .boxed()
    } else {
        finite.boxed()
    };
    prop_oneof![
        ints.prop_map(Draw::Int),
        floats.prop_map(Draw::Float),
        (0.0..1.0f64).prop_map(Draw::Unit),
    ]
}

/// Sets `key` in the defaults' TOML table from `d`, as an integer or a float like its default;
/// with `lenient`, keys with misnamed errors get a value inside their valid range.
fn mutate(
    table: &mut toml::Table,
    (section, field, is_int): &(String, String, bool),
    d: Draw,
    lenient: bool,
) {
    let key = format!("{section}.{field}");
    let valid = if lenient {
        misnamed_if_invalid(&key)
    } else {
        None
    };
    let value = match (valid, d, *is_int) {
        (Some(r), d, is_int) => {
            let u = match d {
                Draw::Int(n) => (n % 1000) as f64 / 1000.0,
                Draw::Float(x) => x.abs().fract(),
                Draw::Unit(u) => u,
            };
            let x = r.start + u * (r.end - r.start);
            if is_int {
                toml::Value::Integer(x as i64)
            } else {
                toml::Value::Float(x)
            }
        }
        (None, Draw::Int(n), true) => toml::Value::Integer(n as i64),
        (None, Draw::Float(x), true) => toml::Value::Integer(x.abs().min(1e6) as i64),
        (None, Draw::Unit(u), true) => toml::Value::Integer((u * 8.0) as i64),
        (None, Draw::Int(n), false) => toml::Value::Float(n as f64),
        (None, Draw::Float(x) | Draw::Unit(x), false) => toml::Value::Float(x),
    };
    table[section.as_str()]
        .as_table_mut()
        .unwrap()
        .insert(field.clone(), value);
}

/// Mutates numeric fields of the defaults, renders the config with `to_toml()` (as a run saves
/// it) and parses it back: it must come back equal, or be rejected naming a mutated key.
fn check_mutated_round_trip(
    muts: &[(prop::sample::Index, Draw)],
    lenient: bool,
) -> Result<(), TestCaseError> {
    let keys = numeric_keys();
    let mut table = toml::Table::try_from(Config::default()).unwrap();
    let mut named = Vec::new();
    for (i, d) in muts {
        let k = &keys[i.index(keys.len())];
        mutate(&mut table, k, *d, lenient);
        named.extend(keys_that_may_be_named(&format!("{}.{}", k.0, k.1)));
    }
    let cfg: Config = toml::Value::Table(table).try_into().unwrap();
    let text = cfg.to_toml();
    match Config::from_toml_str(&text, "saved.toml", &[]) {
        Ok(back) => prop_assert_eq!(back, cfg, "{}", text),
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(
                named.iter().any(|k| msg.contains(&format!("`{k}`"))),
                "error names none of {:?}: {}",
                named,
                msg
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1000))]

    #[test]
    fn mutated_config_round_trips_or_names_the_key(
        muts in prop::collection::vec((any::<prop::sample::Index>(), draw(false)), 1..4),
    ) {
        check_mutated_round_trip(&muts, true)?;
    }

    #[test]
    fn every_invalid_number_is_rejected_naming_its_key(
        muts in prop::collection::vec((any::<prop::sample::Index>(), draw(true)), 1..4),
    ) {
        check_mutated_round_trip(&muts, false)?;
    }
}
