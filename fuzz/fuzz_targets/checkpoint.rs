//! Loading a corrupt `model.safetensors` of a checkpoint folder: candle must return an error
//! (or a valid load), never panic, abort or allocate hugely (libFuzzer's -rss_limit_mb and
//! -malloc_limit_mb catch the last).
#![no_main]

use candle_core::{safetensors, Device};
use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A step folder of this process, created once: the file is rewritten per input, since the
/// loader memory-maps a path rather than reading a buffer.
fn weights_path() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join(format!("lmtrain-fuzz-{}", std::process::id()))
            .join("step-00000001");
        std::fs::create_dir_all(&dir).expect("create fuzz step folder");
        dir.join("model.safetensors")
    })
}

fuzz_target!(|data: &[u8]| {
    let path = weights_path();
    std::fs::write(path, data).expect("write model.safetensors");
    let _ = safetensors::load(path, &Device::Cpu);
});
