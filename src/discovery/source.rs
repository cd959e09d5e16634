//! One runner for every discovery method. A method only says how to gather candidates,
//! how to judge a round and how long to pause; the runner owns the loop they share: off →
//! report why; otherwise gather → send candidates → let verification settle → judge →
//! report → pause, inside the method's tracing span, until cancelled.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::candidate::{Candidate, CandidateQueue};
use super::report::{Report, Reports};
use crate::membership::{Membership, Snapshot};
use crate::metrics::Metrics;
use crate::wire::Method;

/// How long a round waits for its candidates' verification before it is judged (each
/// verification is one call bounded by the probe timeout).
pub const SETTLE: Duration = Duration::from_millis(1500);

/// What one round of a method found.
pub struct Round<F> {
    /// Addresses for the verifier.
    pub candidates: Vec<Candidate>,
    /// What the method judges once verification had its chance (names and answers, rows).
    pub found: F,
}

/// A way of finding replicas. Adding a method means adding a file with one of these.
pub trait Source: Send + 'static {
    type Found: Send;
    const METHOD: Method;

    /// What the report says before the first round ends.
    fn starting(&self) -> Option<String> {
        None
    }

    /// One round's evidence.
    fn gather(&mut self) -> impl Future<Output = Round<Self::Found>> + Send;

    /// How long verification gets before the round is judged.
    fn settle(&self, _found: &Self::Found) -> Duration {
        SETTLE
    }

    /// The round's report, judged against the table as it is after settling; the runner
    /// stamps it with the time and how long gathering took.
    fn judge(&mut self, found: Self::Found, snapshot: &Snapshot) -> Report;

    /// How long to wait before the next round, given how long this one took in all.
    fn pause(&mut self, took: Duration) -> Duration;

    /// Resolves when the method should start a round before its pause ends.
    fn wake(&self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// What the runner needs around every method.
#[derive(Clone)]
pub struct Context {
    pub candidates: CandidateQueue,
    pub membership: Membership,
    pub reports: Reports,
    pub metrics: Metrics,
    pub cancel: CancellationToken,
}

/// Runs one method until cancelled or the candidate queue closes. `Err(why)` is a method
/// switched off here: its report says why, and nothing runs.
pub async fn run<S: Source>(source: Result<S, String>, ctx: Context) {
    let span = tracing::info_span!("source", method = S::METHOD.as_str());
    rounds(source, ctx).instrument(span).await
}

async fn rounds<S: Source>(source: Result<S, String>, ctx: Context) {
    let method = S::METHOD;
    let mut source = match source {
        Ok(source) => source,
        Err(why) => {
            tracing::info!(%why, "method off");
            ctx.reports.set(method, Report::off(why));
            return;
        }
    };
    if let Some(detail) = source.starting() {
        ctx.reports.set(method, Report::detail(detail));
    }
    loop {
        let started = Instant::now();
        let Some(round) = ctx.cancel.run_until_cancelled(source.gather()).await else {
            return;
        };
        let took = started.elapsed();
        for candidate in round.candidates {
            if ctx.candidates.send(candidate).await.is_err() {
                return;
            }
        }
        let settle = source.settle(&round.found);
        if !settle.is_zero()
            && ctx
                .cancel
                .run_until_cancelled(tokio::time::sleep(settle))
                .await
                .is_none()
        {
            return;
        }
        let mut report = source.judge(round.found, &ctx.membership.snapshot());
        report.last_run = Some(Instant::now());
        report.duration = Some(took);
        ctx.metrics.round(method, took, report.failed);
        ctx.reports.set(method, report);
        let pause = source.pause(started.elapsed());
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = source.wake() => {}
            () = ctx.cancel.cancelled() => return,
        }
    }
}
