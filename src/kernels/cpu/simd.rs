//! Which x86 instruction set the CPU kernels run at, chosen once per process.
//!
//! Rust compiles for baseline x86-64 (SSE2), so code that should use wider vectors is built
//! again for each level by [`multiversion`](super::multiversion) (and the small-gemm kernel
//! has one register tile per level). [`level`] picks the best level the CPU has, or the lower
//! one `LMTRAIN_SIMD` asks for; the `gemm` crate's dispatch reads the same variable (the
//! vendored gemm-common, `vendor/gemm-common/LMTRAIN-PATCH.md`), so a forced level holds for
//! the matrix products too.

use std::fmt;

/// An instruction-set level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The compiler's target: SSE2 on x86-64, or whatever another architecture has.
    Portable,
    /// x86-64-v3's vector part: AVX2 and FMA, 256-bit vectors.
    Avx2,
    /// x86-64-v4's vector part: AVX-512 F/BW/DQ/VL on top of AVX2+FMA, 512-bit vectors.
    Avx512,
}

/// The variable that forces a lower level.
pub const VAR: &str = "LMTRAIN_SIMD";

impl Level {
    /// Every level, lowest first.
    pub const ALL: [Level; 3] = [Level::Portable, Level::Avx2, Level::Avx512];

    /// The name `LMTRAIN_SIMD` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.name() == s)
    }

    /// f32 lanes of one vector register at this level (4 for SSE2).
    pub fn f32_lanes(self) -> usize {
        match self {
            Level::Portable => 4,
            Level::Avx2 => 8,
            Level::Avx512 => 16,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The best level this CPU has (checked once).
pub fn detected() -> Level {
    static DETECTED: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(detect)
}

#[cfg(target_arch = "x86_64")]
fn detect() -> Level {
    use std::arch::is_x86_feature_detected as has;
    // Exactly the features the level's builds are compiled with (`multiversion!`).
    let v3 = has!("avx2") && has!("fma");
    let v4 = has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
    match (v3, v4) {
        (true, true) => Level::Avx512,
        (true, false) => Level::Avx2,
        _ => Level::Portable,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> Level {
    Level::Portable
}

/// The level `LMTRAIN_SIMD` asks for: `None` when unset or empty; an error naming the variable,
/// its value and the choices for an unknown value or a level this CPU lacks.
pub fn requested() -> Result<Option<Level>, String> {
    let Ok(value) = std::env::var(VAR) else {
        return Ok(None);
    };
    if value.is_empty() {
        return Ok(None);
    }
    let names = Level::ALL.map(Level::name).join(", ");
    let Some(level) = Level::parse(&value) else {
        return Err(format!(
            "{VAR}={value:?} is not a SIMD level: use one of {names}, or leave it unset for \
             the best this CPU has ({})",
            detected()
        ));
    };
    if level > detected() {
        return Err(format!(
            "{VAR}={value}: this CPU's best level is {}; ask for that or a lower one ({names})",
            detected()
        ));
    }
    Ok(Some(level))
}

/// The level the kernels run at: `LMTRAIN_SIMD`'s when it is valid, else the CPU's best
/// (the commands check the variable first, [`requested`], and refuse a bad value).
#[inline]
pub fn level() -> Level {
    static LEVEL: std::sync::OnceLock<Level> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| requested().ok().flatten().unwrap_or_else(detected))
}

/// "avx512 (AVX-512, 16 f32 lanes)": for banners and `lmtrain bench`.
pub fn describe() -> String {
    let l = level();
    let forced = match l == detected() {
        true => String::new(),
        false => format!(", forced by {VAR}; the CPU has {}", detected()),
    };
    format!("{l} ({} f32 lanes{forced})", l.f32_lanes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernels' tests (every test under `kernels::`, each against its composed f32/f64
    /// specification) run again in a child process per lower level this CPU has, forced by
    /// the variable: this process covers the best level. A child is this same test binary;
    /// it skips this test, so nothing recurses. Under `LMTRAIN_SIMD` (a child, or a person
    /// testing one level) this test checks only that the level was taken.
    #[test]
    fn kernel_tests_pass_on_every_level_the_cpu_has() {
        if let Ok(forced) = std::env::var(VAR) {
            assert_eq!(level().name(), forced, "{VAR} was not taken");
            return;
        }
        assert_eq!(level(), detected());
        let exe = std::env::current_exe().expect("the test binary's path");
        let me = "kernels::cpu::simd::tests::kernel_tests_pass_on_every_level_the_cpu_has";
        for l in Level::ALL.into_iter().filter(|&l| l < detected()) {
            let out = std::process::Command::new(&exe)
                .args(["kernels::", "--skip", me, "--test-threads", "2"])
                .env(VAR, l.name())
                .output()
                .expect("run the test binary again");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "kernel tests at {l}:\n{text}");
            // Guards against a filter that matches nothing: the kernels have dozens of tests.
            let passed = text
                .lines()
                .find_map(|line| line.strip_prefix("test result: ok. "))
                .and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok())
                .unwrap_or(0);
            assert!(
                passed >= 30,
                "only {passed} kernel tests ran at {l}:\n{text}"
            );
        }
    }

    #[test]
    fn levels_are_ordered_and_named_for_the_variable() {
        assert!(Level::Portable < Level::Avx2 && Level::Avx2 < Level::Avx512);
        for l in Level::ALL {
            assert_eq!(Level::parse(l.name()), Some(l));
        }
        assert_eq!(Level::parse("AVX2"), None);
        assert_eq!(Level::parse("baseline"), None);
        // The level in use is never above what the CPU has.
        assert!(level() <= detected());
    }
}
