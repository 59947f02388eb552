//! The corpus line format: parsing data/sample.txt, every kind of bad line, file-level errors.

mod common;

use lmtrain::data::format::{format_line, parse_line, read_corpus, LineError};
use lmtrain::rng::Rng;
use std::path::{Path, PathBuf};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn sample_token_counts_match_character_counts() {
    let seqs = read_corpus(&common::sample_corpus()).unwrap();
    let text = std::fs::read_to_string(common::sample_corpus()).unwrap();
    // Independent count: each token of the sample is one character, so the tokens of a line are
    // its characters once the markers and spaces are removed.
    let expected: Vec<usize> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.replace("<BOS>", "")
                .replace("<EOS>", "")
                .chars()
                .filter(|c| *c != ' ')
                .count()
        })
        .collect();
    assert_eq!(expected.len(), 6);
    let got: Vec<usize> = seqs.iter().map(Vec::len).collect();
    assert_eq!(got, expected);
    assert_eq!(got[0], 20);
    let want: Vec<String> = "党中央国务院要求切实保证困难职工过好春节"
        .chars()
        .map(String::from)
        .collect();
    assert_eq!(seqs[0], want);
    assert!(seqs.iter().flatten().all(|t| t.chars().count() == 1));
}

#[test]
fn format_line_inverts_parse_line_on_the_sample() {
    let text = std::fs::read_to_string(common::sample_corpus()).unwrap();
    for line in text.lines() {
        let toks = parse_line(line).unwrap().unwrap();
        assert_eq!(format_line(&toks), line);
    }
}

/// Each bad line, placed on line 3 after a blank line 2, must give `file:3:` and a message
/// saying what is wrong.
#[test]
fn every_bad_line_kind_is_reported_with_file_and_line() {
    let cases: &[(&[u8], &str)] = &[
        (b"  <BOS>  a  <EOS>", "does not start with `<BOS>"),
        (b"BOS  a  <EOS>", "does not start with `<BOS>"),
        (b"<BOS>a  b  <EOS>", "does not start with `<BOS>"),
        (b"<BOS>  a  b", "does not end with `  <EOS>`"),
        (b"<BOS>  a  <EOS>  ", "does not end with `  <EOS>`"),
        (b"<BOS>  a  b<EOS>", "does not end with `  <EOS>`"),
        (b"<BOS>  a  <BOS>  b  <EOS>", "`<BOS>` inside the line"),
        (
            b"<BOS>  a  <EOS>  <BOS>  b  <EOS>",
            "`<EOS>` inside the line",
        ),
        (b"<BOS>  a<EOS>b  <EOS>", "`<EOS>` inside the line"),
        (b"<BOS>  a<unk>  <EOS>", "special string `<unk>`"),
        (b"<BOS>  <EOS>", "empty sequence"),
        (b"<BOS><EOS>", "empty sequence"),
        (b"<BOS>    <EOS>", "more than two spaces"),
        (b"<BOS>  a b  <EOS>", "a single space"),
        (b"<BOS>  a   b  <EOS>", "more than two spaces"),
        (b"<BOS>  a    b  <EOS>", "more than two spaces"),
        (b"<BOS>  a\tb  <EOS>", "a tab"),
        (b"<BOS>  a  \t  b  <EOS>", "a tab"),
        (b"<BOS>  a\r  b  <EOS>", "carriage return"),
        (
            "<BOS>  a\u{3000}b  <EOS>".as_bytes(),
            "non-space whitespace",
        ),
        (b"<BOS>  a\0  <EOS>", "NUL byte"),
        (b"<BOS>  a  \xff\xfe  <EOS>", "invalid UTF-8"),
    ];
    let dir = common::temp_dir("badlines");
    for (i, (bad, what)) in cases.iter().enumerate() {
        let mut bytes = b"<BOS>  x  y  <EOS>\n\n".to_vec();
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(b"\n<BOS>  z  <EOS>\n");
        let name = format!("bad{i}.txt");
        let path = write(&dir, &name, &bytes);
        let msg = match read_corpus(&path) {
            Ok(seqs) => panic!("case {i} {bad:?} was accepted: {seqs:?}"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(&format!("{name}:3: ")), "case {i}: {msg}");
        assert!(msg.contains(what), "case {i}: expected {what:?} in {msg}");
        // The message also says what to do, in parentheses.
        assert!(msg.ends_with(')'), "case {i}: {msg}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn crlf_is_accepted_and_blank_lines_are_skipped() {
    let dir = common::temp_dir("crlf");
    let lf = write(&dir, "lf.txt", b"<BOS>  a  b  <EOS>\n\n<BOS>  c  <EOS>\n");
    let crlf = write(
        &dir,
        "crlf.txt",
        b"<BOS>  a  b  <EOS>\r\n \t \r\n<BOS>  c  <EOS>\r\n",
    );
    let no_final_newline = write(&dir, "nofinal.txt", b"<BOS>  a  b  <EOS>\n<BOS>  c  <EOS>");
    let want = vec![vec!["a".to_string(), "b".into()], vec!["c".into()]];
    assert_eq!(read_corpus(&lf).unwrap(), want);
    assert_eq!(read_corpus(&crlf).unwrap(), want);
    assert_eq!(read_corpus(&no_final_newline).unwrap(), want);
    assert_eq!(parse_line("   "), Ok(None));
    assert_eq!(parse_line("\r"), Ok(None));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn exact_special_tokens_are_allowed_as_tokens() {
    assert_eq!(
        parse_line("<BOS>  <unk>  a  <pad>  <EOS>"),
        Ok(Some(vec!["<unk>", "a", "<pad>"]))
    );
    assert!(matches!(
        parse_line("<BOS>  a  <BOS>  <EOS>"),
        Err(LineError::InnerMarker { position: 2, .. })
    ));
}

#[test]
fn file_level_errors_name_the_path() {
    let dir = common::temp_dir("files");
    let missing = dir.join("missing.txt");
    let empty = write(&dir, "empty.txt", b"");
    let blank = write(&dir, "blank.txt", b"\n  \n\t\n");
    let bad_utf8 = write(&dir, "latin1.txt", b"<BOS>  caf\xe9  <EOS>\n");
    let cases = [
        (missing.clone(), "cannot read"),
        (dir.clone(), "is a directory"),
        (empty, "no sequences"),
        (blank, "no sequences"),
        (bad_utf8.clone(), "invalid UTF-8"),
    ];
    for (path, what) in cases {
        let msg = read_corpus(&path).unwrap_err().to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains(what), "expected {what:?} in {msg}");
    }
    let msg = read_corpus(&bad_utf8).unwrap_err().to_string();
    assert!(msg.contains("latin1.txt:1: "), "{msg}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// Random strings over the characters that matter (markers, spaces, tabs, CR, NUL, CJK) never
/// panic, and whatever parses formats back to the same line.
#[test]
fn parser_never_panics_and_round_trips() {
    let alphabet = [
        "<BOS>", "<EOS>", "  ", " ", "\t", "\r", "\0", "党", "a", "<", ">", "\u{3000}", "<unk>",
    ];
    let mut rng = Rng::new(42);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let n = rng.below(10);
        let mut line: String = if rng.below(2) == 0 { "<BOS>  " } else { "" }.into();
        for _ in 0..n {
            line.push_str(alphabet[rng.below(alphabet.len())]);
        }
        if rng.below(2) == 0 {
            line.push_str("  <EOS>");
        }
        if let Ok(Some(toks)) = parse_line(&line) {
            accepted += 1;
            assert_eq!(format_line(&toks), line.strip_suffix('\r').unwrap_or(&line));
            assert!(!toks.is_empty());
        }
    }
    assert!(accepted > 100, "only {accepted} random lines parsed");
}
