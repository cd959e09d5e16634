//! rollcall: can my replicas find each other and talk directly?
//!
//! Data flows one way:
//!
//! ```text
//! identity ─┐
//!           ▼
//! discovery sources ─► candidates ─► verify ─► membership ─► web views
//! (scan, announce)     (addresses)   (who is   (table keyed   (page, /api/status,
//!                                     it?)      by instance)   /peer)
//!                                               ▲
//!                                     prober ───┘ (alive → suspect → dead → forgotten)
//! ```

pub mod app;
pub mod broadcast;
pub mod client;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod drain;
pub mod gossip;
pub mod identity;
pub mod membership;
pub mod metrics;
pub mod prober;
pub mod proof;
pub mod relay;
pub mod relay_auth;
pub mod rotation;
pub mod store;
pub mod telemetry;
pub mod timeline;
pub mod verify;
pub mod web;
pub mod wire;
