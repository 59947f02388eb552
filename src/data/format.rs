//! The corpus line format: `<BOS>  tok  tok  …  <EOS>\n`.
//!
//! One sequence per line: `<BOS>`, the tokens, `<EOS>`, separated by exactly two ASCII spaces.
//! The format is strict so that a corpus means the same thing to every reader (this crate, the
//! HF `tokenizers` WhitespaceSplit pre-tokenizer, a Python script splitting on `"  "`):
//!
//! - A blank line (empty or only whitespace) is skipped; line numbers still count it.
//! - A trailing `\r` (CRLF line ending) is ACCEPTED and stripped: files edited on Windows are
//!   common and the `\r` carries no meaning. A `\r` anywhere else is a bad separator.
//! - A token never contains whitespace (HF would split it), `<BOS>`/`<EOS>` (they would no
//!   longer round-trip) or the other special strings `<pad>`/`<unk>` inside a longer token (HF
//!   matches special tokens anywhere in the text and would split it). A token that *is* exactly
//!   `<pad>` or `<unk>` is allowed and maps to that special id.
//! - NUL bytes and invalid UTF-8 are rejected (they are almost always a binary file or a broken
//!   export, not text).
//!
//! Every error names the file, the 1-based line number, what is wrong and what to do.

use std::path::{Path, PathBuf};

/// Start-of-sequence marker; also the vocabulary token of id 2.
pub const BOS: &str = "<BOS>";
/// End-of-sequence marker; also the vocabulary token of id 3.
pub const EOS: &str = "<EOS>";
/// The only token separator.
pub const SEP: &str = "  ";
/// Special strings that may not appear inside a longer token (see the module doc).
const SPECIALS_IN_TOKEN: [&str; 4] = [BOS, EOS, "<pad>", "<unk>"];

/// What is wrong with one line; the message says what is wrong, then (in parentheses) what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("line does not start with `<BOS>  ` (found {found:?}; start every line with `<BOS>` and two spaces, no leading whitespace)")]
    MissingBos { found: String },
    #[error("line does not end with `  <EOS>` (found {found:?}; end every line with two spaces and `<EOS>`, no trailing whitespace)")]
    MissingEos { found: String },
    #[error("`{marker}` inside the line as token {position} ({token:?}) (put exactly one `<BOS>` first and one `<EOS>` last; split merged lines)")]
    InnerMarker {
        marker: &'static str,
        position: usize,
        token: String,
    },
    #[error("token {position} ({token:?}) contains the special string `{special}` (remove it, or make it a token of its own separated by two spaces)")]
    SpecialInToken {
        special: &'static str,
        position: usize,
        token: String,
    },
    #[error("empty sequence `<BOS>  <EOS>` (delete the line or put at least one token between the markers)")]
    EmptySequence,
    #[error("bad separator {found:?} at byte offset {byte} ({what}; tokens must be separated by exactly two ASCII spaces)")]
    BadSeparator {
        found: String,
        byte: usize,
        what: &'static str,
    },
    #[error(
        "NUL byte at byte offset {byte} (the file looks binary or corrupt; re-export it as UTF-8 text)"
    )]
    NulByte { byte: usize },
    #[error("invalid UTF-8 at byte offset {byte} of the line (re-encode the file as UTF-8)")]
    InvalidUtf8 { byte: usize },
}

/// A bad line of a corpus file. Display: `{file}:{line}: {what is wrong} ({what to do})`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}:{line}: {kind}", file.display())]
pub struct FormatError {
    pub file: PathBuf,
    /// 1-based line number, counting blank lines.
    pub line: usize,
    pub kind: LineError,
}

/// Parses one line (without its `\n`; a trailing `\r` is stripped). `Ok(None)` for a blank line;
/// otherwise the tokens between `<BOS>` and `<EOS>`, borrowed from `line`.
pub fn parse_line(line: &str) -> Result<Option<Vec<&str>>, LineError> {
    if let Some(byte) = line.find('\0') {
        return Err(LineError::NulByte { byte });
    }
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(None);
    }
    let Some(inner) = line.strip_prefix(BOS) else {
        return Err(LineError::MissingBos {
            found: snippet(line, true),
        });
    };
    let Some(inner) = inner.strip_suffix(EOS) else {
        return Err(LineError::MissingEos {
            found: snippet(line, false),
        });
    };
    let runs = runs(inner);
    let tokens: Vec<&str> = runs.iter().filter(|r| !r.1).map(|r| r.0).collect();
    if tokens.is_empty() {
        return match runs.first() {
            Some(&(sep, _, at)) if sep != SEP => Err(bad_separator(sep, BOS.len() + at)),
            _ => Err(LineError::EmptySequence),
        };
    }
    // Runs alternate, so the markers are separated from the tokens iff the first and last runs
    // are whitespace; `<BOS>党` or `党<EOS>` means a missing separator.
    if runs.first().is_some_and(|r| !r.1) {
        return Err(LineError::MissingBos {
            found: snippet(line, true),
        });
    }
    if runs.last().is_some_and(|r| !r.1) {
        return Err(LineError::MissingEos {
            found: snippet(line, false),
        });
    }
    if let Some(&(sep, _, at)) = runs.iter().find(|r| r.1 && r.0 != SEP) {
        return Err(bad_separator(sep, BOS.len() + at));
    }
    for (i, tok) in tokens.iter().enumerate() {
        check_token(tok, i + 1)?;
    }
    Ok(Some(tokens))
}

/// [`parse_line`] with a fast path for the common, valid line: `<BOS>  `, tokens separated by
/// exactly two spaces, `  <EOS>`, each token free of whitespace, NUL and `<`. The tokens are
/// appended to `tokens`; returns whether the line was a sequence (`false`: blank). Anything the
/// fast path does not take goes through [`parse_line`], so the result (tokens or error) is
/// always the same as its.
pub fn parse_line_into<'a>(line: &'a str, tokens: &mut Vec<&'a str>) -> Result<bool, LineError> {
    const HEAD: &str = "<BOS>  ";
    const TAIL: &str = "  <EOS>";
    let l = line.strip_suffix('\r').unwrap_or(line);
    let b = l.as_bytes();
    // Fixed-size comparisons (no `memcmp` call per line).
    let framed = b.len() > HEAD.len() + TAIL.len()
        && b[..7] == *HEAD.as_bytes()
        && b[b.len() - 7..] == *TAIL.as_bytes();
    if framed {
        let inner = &l[HEAD.len()..l.len() - TAIL.len()];
        let mark = tokens.len();
        if split_plain(inner, tokens) {
            return Ok(true);
        }
        tokens.truncate(mark);
    }
    match parse_line(line)? {
        Some(t) => {
            tokens.extend(t);
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Splits `inner` at every two-space separator into `tokens`; false as soon as a token is not
/// [`plain_token`] or a space is not part of a two-space separator (the caller then falls
/// back). A byte scan: `str::split` with a two-byte pattern took the general substring
/// searcher, the slowest part of prepare.
fn split_plain<'a>(inner: &'a str, tokens: &mut Vec<&'a str>) -> bool {
    let bytes = inner.as_bytes();
    let mut start = 0;
    while let Some(p) = bytes[start..].iter().position(|&b| b == b' ') {
        let at = start + p;
        if bytes.get(at + 1) != Some(&b' ') {
            return false;
        }
        let token = &inner[start..at];
        if !plain_token(token) {
            return false;
        }
        tokens.push(token);
        start = at + 2;
    }
    let last = &inner[start..];
    if !plain_token(last) {
        return false;
    }
    tokens.push(last);
    true
}

/// A non-empty token that needs no check: no whitespace, no control byte (NUL among them), no
/// `<` (which every special string starts with).
#[inline]
fn plain_token(t: &str) -> bool {
    if t.is_ascii() {
        return !t.is_empty() && t.bytes().all(|b| b > b' ' && b != b'<' && b != 0x7f);
    }
    !t.is_empty()
        && t.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && c != '<')
}

/// Rejects a token holding a marker or a special string (see the module doc); `position` is
/// 1-based, counting from the first token after `<BOS>`.
fn check_token(tok: &str, position: usize) -> Result<(), LineError> {
    for special in SPECIALS_IN_TOKEN {
        if !tok.contains(special) {
            continue;
        }
        let token = tok.to_string();
        if special == BOS || special == EOS {
            return Err(LineError::InnerMarker {
                marker: special,
                position,
                token,
            });
        }
        if tok != special {
            return Err(LineError::SpecialInToken {
                special,
                position,
                token,
            });
        }
    }
    Ok(())
}

/// Splits `s` into maximal runs of whitespace / non-whitespace: (text, is_whitespace, byte offset).
fn runs(s: &str) -> Vec<(&str, bool, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut current: Option<bool> = None;
    for (i, c) in s.char_indices() {
        let ws = c.is_whitespace();
        match current {
            Some(prev) if prev != ws => {
                out.push((&s[start..i], prev, start));
                start = i;
            }
            _ => {}
        }
        current = Some(ws);
    }
    if let Some(ws) = current {
        out.push((&s[start..], ws, start));
    }
    out
}

fn bad_separator(sep: &str, byte: usize) -> LineError {
    let what = if sep == " " {
        "a single space"
    } else if sep.chars().all(|c| c == ' ') {
        "more than two spaces"
    } else if sep.contains('\t') {
        "a tab"
    } else if sep.contains('\r') {
        "a carriage return inside the line"
    } else {
        "non-space whitespace"
    };
    LineError::BadSeparator {
        found: sep.to_string(),
        byte,
        what,
    }
}

/// At most 20 characters from the start (or end) of `line`, for error messages.
fn snippet(line: &str, from_start: bool) -> String {
    let n = line.chars().count();
    if n <= 20 {
        line.to_string()
    } else if from_start {
        format!("{}…", line.chars().take(20).collect::<String>())
    } else {
        format!("…{}", line.chars().skip(n - 20).collect::<String>())
    }
}

/// The line for `tokens` (without a trailing newline); the inverse of [`parse_line`].
pub fn format_line(tokens: &[&str]) -> String {
    let mut out = String::from(BOS);
    for t in tokens {
        out.push_str(SEP);
        out.push_str(t);
    }
    out.push_str(SEP);
    out.push_str(EOS);
    out
}

/// Reads every sequence of a corpus file (tokens without `<BOS>`/`<EOS>`).
pub fn read_corpus(path: &Path) -> anyhow::Result<Vec<Vec<String>>> {
    let bytes = read_file_bytes(path, "corpus")?;
    parse_corpus(path, &bytes)
}

/// Reads a whole file with errors that name the path and tell a directory from a missing file.
pub(crate) fn read_file_bytes(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    if path.is_dir() {
        anyhow::bail!(
            "{what} file {} is a directory (point it at a text file with one `<BOS>  …  <EOS>` line per sequence)",
            path.display()
        );
    }
    std::fs::read(path).map_err(|e| {
        anyhow::anyhow!(
            "cannot read {what} file {}: {e} (check the path in the config)",
            path.display()
        )
    })
}

/// Parses corpus bytes already read from `path` (named in errors).
pub(crate) fn parse_corpus(path: &Path, bytes: &[u8]) -> anyhow::Result<Vec<Vec<String>>> {
    let mut seqs = Vec::new();
    let err = |line: usize, kind: LineError| FormatError {
        file: path.to_path_buf(),
        line,
        kind,
    };
    // `split` yields one empty piece after a final `\n`; it is blank and skipped like any other.
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let text = std::str::from_utf8(raw).map_err(|e| {
            // A NUL before the bad byte is the more telling error.
            match raw[..e.valid_up_to()].iter().position(|&b| b == 0) {
                Some(byte) => err(i + 1, LineError::NulByte { byte }),
                None => err(
                    i + 1,
                    LineError::InvalidUtf8 {
                        byte: e.valid_up_to(),
                    },
                ),
            }
        })?;
        if let Some(tokens) = parse_line(text).map_err(|k| err(i + 1, k))? {
            seqs.push(tokens.into_iter().map(str::to_string).collect());
        }
    }
    if seqs.is_empty() {
        anyhow::bail!(
            "{}: no sequences (the file is empty or has only blank lines; expected lines like `<BOS>  a  b  <EOS>`)",
            path.display()
        );
    }
    Ok(seqs)
}
