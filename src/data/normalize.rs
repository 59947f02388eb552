//! `data.normalize`: the `tokenizers` crate's normalizers (NFKC, lowercase) as lmtrain applies
//! them. Raw text goes through the tokenizer's own pipeline; the line format's token strings
//! (and a word-level vocabulary's plain text) through [`apply`], with the normalizer the
//! vocabulary's `tokenizer.json` carries, so new text is read as the training text was.

use std::borrow::Cow;
use tokenizers::normalizers::{Lowercase, Sequence, NFKC};
use tokenizers::{NormalizedString, Normalizer, NormalizerWrapper};

/// The normalizers of `data.normalize = "nfkc"` and `"lowercase"` (the config's enum maps to
/// them in `build`; this room stays below the config).
pub fn nfkc() -> NormalizerWrapper {
    NFKC.into()
}

pub fn lowercase() -> NormalizerWrapper {
    Lowercase.into()
}

/// `ours` applied before a tokenizer's own normalizer `theirs` (a given tokenizer.json may
/// have one): the composition saved in the tokenizer.
pub fn compose(
    ours: Option<NormalizerWrapper>,
    theirs: Option<&NormalizerWrapper>,
) -> Option<NormalizerWrapper> {
    match (ours, theirs) {
        (None, t) => t.cloned(),
        (Some(o), None) => Some(o),
        (Some(o), Some(t)) => Some(Sequence::new(vec![o, t.clone()]).into()),
    }
}

/// `text` normalized by `n`. Borrowed when nothing can change: ASCII is its own NFKC form, and
/// ASCII without capitals its own lowercase — the common case of a big corpus costs no
/// allocation per token. A normalizer that fails (none of ours can) leaves the text as it is.
pub fn apply<'a>(n: Option<&NormalizerWrapper>, text: &'a str) -> Cow<'a, str> {
    let Some(n) = n else {
        return Cow::Borrowed(text);
    };
    let unchanged = match n {
        NormalizerWrapper::NFKC(_) => text.is_ascii(),
        NormalizerWrapper::Lowercase(_) => {
            text.is_ascii() && !text.bytes().any(|b| b.is_ascii_uppercase())
        }
        _ => false,
    };
    if unchanged {
        return Cow::Borrowed(text);
    }
    let mut s = NormalizedString::from(text);
    match n.normalize(&mut s) {
        Ok(()) if s.get() != text => Cow::Owned(s.get().to_string()),
        _ => Cow::Borrowed(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nfkc_folds_full_width_and_lowercase_lowers() {
        let nfkc = Some(nfkc());
        assert_eq!(apply(nfkc.as_ref(), "Ａ１，党"), "A1,党");
        assert!(matches!(apply(nfkc.as_ref(), "abc"), Cow::Borrowed(_)));
        let lower = Some(lowercase());
        assert_eq!(apply(lower.as_ref(), "AbÇ"), "abç");
        assert_eq!(apply(None, "Ａ"), "Ａ");
        let both = compose(nfkc, lower.as_ref());
        assert_eq!(apply(both.as_ref(), "Ａb"), "ab");
    }
}
