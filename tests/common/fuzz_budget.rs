//! How many random inputs a fuzz target tries under plain `cargo test`: its own bounded
//! default, or `FUZZ_ITERATIONS` for a long session on the stable toolchain (README, "How to
//! fuzz"). Included by path from each `tests/fuzz_*.rs`, which the `fuzz/` package builds too.

/// `FUZZ_ITERATIONS` when set to a number, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}
