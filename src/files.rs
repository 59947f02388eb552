//! Durable file operations: whole files fsynced, folders renamed into place. Below every room
//! that writes what must survive a crash (checkpoints, the baseline report, exports).

use anyhow::{Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Renames `from` to `to`; an existing `to` (a checkpoint of the same step written before a
/// resume) is moved aside first and deleted only after the new one is in place.
pub fn replace_dir(from: &Path, to: &Path) -> Result<()> {
    if !to.exists() {
        return Ok(fs::rename(from, to)?);
    }
    let aside = to.with_file_name(format!(
        ".old-{}",
        to.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let _ = fs::remove_dir_all(&aside);
    fs::rename(to, &aside)?;
    fs::rename(from, to)?;
    fs::remove_dir_all(&aside)?;
    Ok(())
}

/// Writes a whole file and fsyncs it.
pub fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and fsynced on Unix; elsewhere this is best effort.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
