//! The `lmtrain` binary: the allocator and its setting, then the command line
//! ([`lmtrain::cli`]).

use std::process::ExitCode;

/// mimalloc keeps freed pages for reuse: the training step allocates and frees the same large
/// activation buffers every step, and glibc's malloc returned them to the kernel and faulted
/// them back in (page faults were ~30% of CPU time; see docs/perf-log.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay`: its position in `mi_option_e` of mimalloc v3
/// (include/mimalloc.h), which libmimalloc-sys builds but names no constant for. A test checks
/// that the slot holds purge_delay's documented default.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc v3 hands freed memory back to the kernel 1 s after it was freed. A training step of
/// bench config M takes ~2 s, so each step's activation buffers were purged between steps and
/// faulted in again, zeroed, by the next: ~11k page faults and 5-8% of CPU time per step
/// (`clear_page_erms`, docs/perf-log.md entry 8). A trainer reuses the same sizes every step,
/// so the memory is kept instead, at the cost of a slightly higher peak RSS (+4-8% on M).
fn keep_freed_memory() {
    // SAFETY: sets one global integer option; mimalloc reads it at each purge decision.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

fn main() -> ExitCode {
    keep_freed_memory();
    lmtrain::cli::main()
}

#[cfg(test)]
mod tests {
    use super::MI_OPTION_PURGE_DELAY;

    /// The option slot set in `keep_freed_memory` is purge_delay: it holds that option's
    /// documented default (1000 ms in mimalloc v3) unless this process changed it or the
    /// environment overrides it. Guards against a mimalloc upgrade renumbering the enum.
    #[test]
    fn purge_delay_slot_holds_its_default() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            eprintln!("MIMALLOC_PURGE_DELAY is set; the default cannot be checked");
            return;
        }
        let v = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
        assert_eq!(
            v, 1000,
            "slot {MI_OPTION_PURGE_DELAY} is not mimalloc's purge_delay"
        );
    }
}
