//! rollcall's integration tests, as one test binary (`cargo test --test it`): one build and
//! one link for all of them, and helpers shared through [`common`] instead of compiled once
//! per file. Run one module with `cargo test --test it attack::`, one test with its full
//! name, e.g. `cargo test --test it cluster::a_graceful_stop_says_goodbye`.
//!
//! The tests of one binary run in parallel threads (as many as the machine has CPUs, or
//! `--test-threads`). What may run beside what is said in one place, [`common::heavy`] and
//! [`common::shared`]; see `docs/testing.md`.

mod common;

mod attack;
mod broadcast;
mod cluster;
mod demo;
mod deploy;
mod dns;
mod fuzz;
mod hostile;
mod page;
mod peer;
mod platform;
mod registry;
mod router;
mod scan_speed;
mod screens;
mod sim;
mod swim;
mod verdict;
