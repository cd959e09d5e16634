//! Discovery: sources turn their evidence into candidate addresses; one verifier stage
//! decides what each candidate is and is the only writer of members into the table.
//!
//! ```text
//! scan ─────┐
//! dns ──────┤ (each a Source, run by source::run)
//! seed ─────┼──► candidate queue ──► admit (verify, then admit / alias / foreign) ──► membership
//! registry ─┤
//! platform ─┘ (the platform's API: who should run, matched by name; on Kubernetes and Fly, where)
//! announce (hellos, alias follow-ups: their own bounded queue) ──► admit
//! ```
//!
//! Adding a method means adding a file here that implements [`source::Source`].

pub mod admit;
pub mod announce;
pub mod announcements;
pub mod candidate;
pub mod dns;
pub mod expected;
pub mod platform;
pub mod registry;
pub mod report;
pub mod scan;
pub mod seed;
pub mod source;
pub mod sweep;
