//! What the benchmark programs share (each `benches/*.rs` is its own crate and includes this).

/// The number after `--name` on the command line, or `default`. A bench is run by hand, so a
/// malformed number stops it with a message rather than an error path.
pub fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number, got {v}"))
        })
        .unwrap_or(default)
}
