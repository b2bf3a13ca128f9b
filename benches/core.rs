//! Placeholder while the real one is written.
fn main() {}
