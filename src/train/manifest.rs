//! `manifest.json`: the size and SHA-256 of every file of a checkpoint, written last.
//!
//! A checkpoint folder counts as complete only once its manifest exists, and loading verifies
//! every file against it first, so a torn write, a truncated copy or a flipped bit is reported
//! (naming the file) instead of being loaded silently.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::Path;

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// File name (inside the checkpoint folder) → size and digest.
    pub files: BTreeMap<String, FileDigest>,
}

/// Size and SHA-256 (hex) of a file, streamed in 1 MiB blocks.
pub fn digest_file(path: &Path) -> Result<FileDigest> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha256 = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(FileDigest { bytes, sha256 })
}

/// Digests `files` of `dir` and writes (and fsyncs) the manifest: call it after every other file
/// is complete and synced.
pub fn write(dir: &Path, files: &[&str]) -> Result<()> {
    let files = files
        .iter()
        .map(|f| Ok((f.to_string(), digest_file(&dir.join(f))?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    let text = serde_json::to_string_pretty(&Manifest { files })?;
    crate::files::write_synced(&dir.join(MANIFEST), text.as_bytes())
}

/// Checks every file the manifest lists; the error names the first file that differs.
pub fn verify(dir: &Path) -> Result<()> {
    let path = dir.join(MANIFEST);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing or unreadable: the checkpoint is incomplete",
            path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid manifest", path.display()))?;
    for (name, want) in &manifest.files {
        if name.contains(['/', '\\']) || name == ".." {
            bail!(
                "{}: file name {name:?} is not a plain file name",
                path.display()
            );
        }
        let file = dir.join(name);
        let got = digest_file(&file)?;
        if got.bytes != want.bytes {
            bail!(
                "{} has {} bytes, the manifest says {} (truncated or overwritten)",
                file.display(),
                got.bytes,
                want.bytes
            );
        }
        if got.sha256 != want.sha256 {
            bail!("{}: SHA-256 mismatch (the file is corrupt)", file.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_abc_is_the_standard_vector() {
        let dir = std::env::temp_dir().join(format!("lmtrain-manifest-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("a"), b"abc").unwrap();
        let d = digest_file(&dir.join("a")).unwrap();
        assert_eq!(d.bytes, 3);
        // FIPS 180-2 test vector.
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        write(&dir, &["a"]).unwrap();
        verify(&dir).unwrap();
        fs::write(dir.join("a"), b"abd").unwrap();
        let e = verify(&dir).unwrap_err().to_string();
        assert!(e.contains("SHA-256") && e.contains('a'), "{e}");
        fs::write(dir.join("a"), b"ab").unwrap();
        assert!(verify(&dir).unwrap_err().to_string().contains("2 bytes"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
