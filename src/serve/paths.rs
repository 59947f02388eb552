//! The only place a URL becomes a file path. A run's name is its folder's path relative to the
//! served folder (`tiny`, `tiny-sweep/t03-lr3e-3`); a name is accepted only when it is plain
//! (no `..`, no absolute path, no empty or hidden part, nothing percent-decoding hides), and
//! its folder, with every symlink resolved, lies inside the served folder and is a run folder.
//! Anything else is "not found": a refusal does not say which rule it broke.

use std::path::{Component, Path, PathBuf};

/// `%XX` decoded once; `None` for a malformed escape or bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The served folder, resolved once at start.
#[derive(Debug, Clone)]
pub struct Root {
    pub dir: PathBuf,
}

impl Root {
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        Ok(Self {
            dir: dir.canonicalize()?,
        })
    }

    /// The run folder a (decoded) name means, or `None`.
    pub fn run_dir(&self, name: &str) -> Option<PathBuf> {
        let rel = Path::new(name);
        let plain = !name.is_empty()
            && !name.contains('\\')
            && !name.contains('\0')
            && rel.components().all(|c| match c {
                Component::Normal(part) => !part.to_string_lossy().starts_with('.'),
                _ => false,
            });
        if !plain {
            return None;
        }
        let dir = self.dir.join(rel).canonicalize().ok()?;
        let inside = dir.starts_with(&self.dir) && dir != self.dir;
        (inside && is_run_dir(&dir)).then_some(dir)
    }

    /// A folder's name relative to the served folder (`/` separated).
    pub fn name_of(&self, dir: &Path) -> String {
        let rel = dir.strip_prefix(&self.dir).unwrap_or(dir);
        let parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts.join("/")
    }
}

/// A folder a trainer made: it holds its resolved `config.toml` (and is not one of its
/// checkpoints, which hold one too).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join("config.toml").is_file() && !crate::train::checkpoint::is_checkpoint_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_of_run_folders_inside_the_root_resolve() {
        let base = std::env::temp_dir().join(format!("lmtrain-paths-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root_dir = base.join("root");
        for run in ["root/a", "root/s/t0", "outside"] {
            std::fs::create_dir_all(base.join(run)).unwrap();
            std::fs::write(base.join(run).join("config.toml"), "").unwrap();
        }
        std::os::unix::fs::symlink(base.join("outside"), root_dir.join("link")).unwrap();
        let root = Root::new(&root_dir).unwrap();
        assert_eq!(root.run_dir("a"), Some(root.dir.join("a")));
        assert_eq!(root.run_dir("s/t0"), Some(root.dir.join("s/t0")));
        for bad in [
            "",
            "..",
            "../outside",
            "a/../../outside",
            "/etc",
            "link",
            ".cache",
            "s",
            "a\\..",
            "nope",
        ] {
            assert_eq!(root.run_dir(bad), None, "{bad:?} resolved");
        }
        assert_eq!(
            percent_decode("%2e%2e%2Foutside").as_deref(),
            Some("../outside")
        );
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
