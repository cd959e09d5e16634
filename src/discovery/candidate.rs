//! Candidates: addresses a source thinks may be replicas, queued for the verifier.

use std::net::SocketAddr;

use tokio::sync::mpsc;

use crate::wire::Method;

/// Candidates waiting for verification; sources block when it is full, hellos are refused.
pub const QUEUE: usize = 4096;
/// Where sources send candidates; a full queue makes a source wait (hellos are refused).
pub type CandidateQueue = mpsc::Sender<Candidate>;

/// An address some source thinks may be a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub method: Method,
    /// The instance the source claims lives there (a registry row): anyone else answering
    /// makes the claim stale, and nobody is admitted on its strength.
    pub expect: Option<String>,
}

impl Candidate {
    pub fn new(addr: SocketAddr, method: Method) -> Candidate {
        Candidate {
            addr,
            method,
            expect: None,
        }
    }
}
