//! bench-gate: decides whether HEAD's benchmarks regressed against a base ref, reading only the
//! files criterion 0.5 leaves on disk. It runs no benchmarks and spawns nothing; the shell driver
//! `scripts/bench-gate` runs criterion twice (base ref with `--save-baseline base`, working tree
//! with `--baseline-lenient base`) and then calls this crate's binary.
//!
//! Data flow:
//! `target/criterion/<bench id>/{base,new,change}/estimates.json`
//! → [`estimates::discover`] (the only module that touches the file system)
//! → [`decision::decide`] (pure: one [`decision::Verdict`] per bench, one exit status)
//! → [`table::render`] (pure: a `String`)
//! → `main.rs` prints it and exits 0 (pass), 1 (regression) or 2 (usage error, nothing to judge).
//!
//! Layout:
//! - [`estimates`]: criterion's JSON shapes (only the fields we read) and the directory walk.
//! - [`decision`]: the threshold, the verdict rules and the gate's exit status; unit tests live
//!   at its bottom.
//! - [`rounds`]: the repeated, alternating runs `scripts/bench-gate` makes (`base-<i>`/`head-<i>`
//!   baselines): each bench's median per-round change, judged by [`decision`]'s rules.
//! - [`table`]: human-readable formatting of times, percentages and the result table.

#![warn(missing_docs, unreachable_pub)]

pub mod decision;
pub mod estimates;
pub mod rounds;
pub mod table;
