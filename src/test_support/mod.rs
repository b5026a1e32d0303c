//! Test-only support: the fuzzer, the micro-benchmarks and the allocation counter. None of it
//! is part of the product; it is compiled for `cargo test` alone.

pub mod alloc_count;
mod fuzz;
mod microbench;
pub mod rng;
