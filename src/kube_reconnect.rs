//! How the watches come back after losing the API server.
//!
//! A failed watch waits before it tries again ([`ReconnectBackoff`]: from
//! 200 ms, doubling, at most 2 s plus jitter), so that a cluster's agents
//! do not hammer an API server that is down or starting. Waiting blindly
//! cost most of the time an agent took to catch up once the server was
//! back (8.7 s on the 50,000-pod cluster of `scripts/bench-scale.sh`): a
//! watch learnt of the return only at its next attempt, 2-4 s later, and
//! the server's first answer (410 Gone: "your version is older than my new
//! cache, list again") was itself a failure that bought another wait.
//!
//! So a failure is read before waiting ([`Failure`]):
//! - **relist**: the server answered and asked for a fresh list. It is
//!   done at once, at most once per [`RECONNECT_RESET_AFTER`] (a server
//!   answering 410 to every watch must not get a list in a tight loop).
//! - **away**: the server could not be reached or was not serving (a
//!   connection error, 5xx, 429). The watch waits out its backoff *or*
//!   until one probe of `/readyz` ([`ApiServerReturn`]), made every
//!   0.4-0.8 s while a watch waits on an absent server, sees it answer
//!   after it did not, whichever comes first. One cheap probe per agent
//!   replaces nine watches retrying quickly.
//! - **refused**: the server answered no (403, a CRD not installed): the
//!   backoff. A starting server refuses CRD resources until it is ready;
//!   a watch refused while the server is known to be away is woken with
//!   the others. A healthy server's refusals are never probed for.
//!
//! The client itself does not retry ([`crate::kube::watch_client`]): its
//! retries of a 503 went on for 10 s before a watch saw the failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use kube::runtime::utils::Backoff;
use kube::runtime::watcher;
use kube::Client;
use tokio::sync::watch;

/// A watch that has not failed for this long starts its backoff afresh.
pub const RECONNECT_RESET_AFTER: Duration = Duration::from_secs(10);

/// How often `/readyz` is asked while a watch is away (plus up to as much
/// again of jitter, so a cluster's agents do not ask in step).
const PROBE_EVERY: Duration = Duration::from_millis(400);

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a failed watch attempt says about the API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// It answered: the watch's version is gone, list again.
    Relist,
    /// It could not be reached or was not serving.
    Away,
    /// It answered no.
    Refused,
}

impl Failure {
    pub fn of(error: &watcher::Error) -> Failure {
        let status = |e: &kube::Error| match e {
            kube::Error::Api(status) => Some(status.code),
            _ => None, // no answer: connection, TLS, a broken stream
        };
        let code = match error {
            watcher::Error::WatchError(status) => Some(status.code),
            watcher::Error::InitialListFailed(e)
            | watcher::Error::WatchStartFailed(e)
            | watcher::Error::WatchFailed(e) => status(e),
            watcher::Error::NoResourceVersion => return Failure::Refused,
        };
        match code {
            Some(410) if matches!(error, watcher::Error::WatchError(_)) => Failure::Relist,
            None | Some(429) | Some(500..) => Failure::Away,
            Some(_) => Failure::Refused,
        }
    }
}

/// The watches' backoff: from 200 ms, doubling, at most every 2 s plus up
/// to as much again of jitter, for ever; back to 200 ms once the watch has
/// gone [`RECONNECT_RESET_AFTER`] without failing.
///
/// kube-runtime's stream resets a backoff on every item it passes on, and
/// a watcher whose list fails passes one (its `Init`) before each attempt:
/// reset that way, a failing list would be retried every 200-400 ms for as
/// long as it fails. This one starts afresh only after a quiet spell.
/// (client-go's bound, 30 s, left an agent enforcing a stale cluster for
/// up to 38 s after an API server came back from 30 s away.)
pub struct ReconnectBackoff {
    delays: watcher::ExponentialBackoff,
    last_failure: Option<Instant>,
    reset_after: Duration,
}

impl ReconnectBackoff {
    pub fn new(reset_after: Duration) -> Self {
        ReconnectBackoff {
            delays: backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(2))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .into(),
            last_failure: None,
            reset_after,
        }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if self
            .last_failure
            .is_some_and(|t| now.duration_since(t) > self.reset_after)
        {
            self.delays.reset();
        }
        self.last_failure = Some(now);
        self.delays.next()
    }
}

impl Backoff for ReconnectBackoff {
    fn reset(&mut self) {}
}

/// Tells watches waiting out a backoff that the API server is back.
pub struct ApiServerReturn {
    state: watch::Sender<Waiting>,
    /// Bumped each time `/readyz` answers after the server was seen away.
    back: watch::Sender<u64>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Waiting {
    /// Watches waiting out a backoff.
    watches: usize,
    /// The server was seen away (unreachable, not serving, `/readyz`
    /// failing) and has not answered `/readyz` since.
    away: bool,
}

impl Waiting {
    /// Only then is there something to probe for: a watch refused by a
    /// healthy server (a CRD not installed) must not keep `/readyz` busy.
    fn probing(&self) -> bool {
        self.watches > 0 && self.away
    }
}

impl ApiServerReturn {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(ApiServerReturn {
            state: watch::channel(Waiting::default()).0,
            back: watch::channel(0).0,
        })
    }

    /// Starts the probe on `tasks`; it sleeps until a watch waits on an
    /// absent server.
    pub fn start(client: Client, tasks: &mut tokio::task::JoinSet<()>) -> Arc<Self> {
        let shared = Self::new();
        let probe = shared.clone();
        tasks.spawn(async move { probe.probe(|| api_server_ready(&client)).await });
        shared
    }

    /// Asks `ready` every [`PROBE_EVERY`] (jittered) while a watch waits
    /// and the server was seen away. Its first yes after a no wakes them
    /// all (watches refused meanwhile too: a starting server refuses a
    /// CRD-backed kind until it is ready). A yes with no no before it ends
    /// the probing without waking anyone: the server did not go, so a
    /// watch it keeps failing (a kind whose webhook answers 500) waits
    /// out its backoff rather than retry at the probe's pace.
    async fn probe<F, Fut>(&self, ready: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let mut state = self.state.subscribe();
        let mut intervals = backon::ConstantBuilder::default()
            .with_delay(PROBE_EVERY)
            .with_jitter()
            .without_max_times()
            .build();
        // Kept across spells of probing: all the watches may be between
        // two attempts when the server comes back.
        let mut said_no = false;
        loop {
            if state.wait_for(Waiting::probing).await.is_err() {
                return;
            }
            loop {
                tokio::time::sleep(intervals.next().unwrap_or(PROBE_EVERY)).await;
                if !self.state.borrow().probing() {
                    break;
                }
                if !ready().await {
                    said_no = true;
                    continue;
                }
                self.state.send_modify(|s| s.away = false);
                if std::mem::take(&mut said_no) {
                    tracing::info!("the API server answers again: the watches reconnect now");
                    self.back.send_modify(|n| *n += 1);
                }
                break;
            }
        }
    }

    /// Waits `delay`, or less if the probe sees the server back first.
    async fn wait(&self, failure: Failure, delay: Duration) {
        let mut back = self.back.subscribe();
        self.state.send_modify(|s| {
            s.watches += 1;
            s.away |= failure == Failure::Away;
        });
        // Counted back down however the wait ends (the task may be aborted).
        let _counted = scopeguard::guard((), |()| self.state.send_modify(|s| s.watches -= 1));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = back.changed() => {}
        }
    }
}

/// Whether `/readyz` answers 200 within [`PROBE_TIMEOUT`].
pub async fn api_server_ready(client: &Client) -> bool {
    let Ok(request) = http::Request::get("/readyz").body(Vec::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, client.request_text(request)).await,
        Ok(Ok(_))
    )
}

/// One watch's retries.
pub struct Retry {
    backoff: ReconnectBackoff,
    last_relist: Option<Instant>,
    shared: Arc<ApiServerReturn>,
}

impl Retry {
    pub fn new(shared: Arc<ApiServerReturn>) -> Self {
        Retry {
            backoff: ReconnectBackoff::new(RECONNECT_RESET_AFTER),
            last_relist: None,
            shared,
        }
    }

    /// Waits as long as `failure` calls for before the next attempt.
    pub async fn after(&mut self, failure: Failure) {
        let now = Instant::now();
        // Counted as a failure either way, so that a server answering 410
        // to every watch meets a growing backoff.
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(2));
        if failure == Failure::Relist
            && self
                .last_relist
                .is_none_or(|t| now.duration_since(t) > RECONNECT_RESET_AFTER)
        {
            self.last_relist = Some(now);
            return;
        }
        self.shared.wait(failure, delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    /// A failing watch waits longer each time, up to 2 s plus jitter; the
    /// resets kube-runtime asks for on each (re)list start do not bring it
    /// back to 200 ms, a quiet spell does.
    #[test]
    fn a_failing_watch_backs_off_to_two_seconds_and_only_a_quiet_spell_resets_it() {
        let mut backoff = ReconnectBackoff::new(Duration::from_millis(300));
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(backoff.next().unwrap());
            backoff.reset(); // what the stream does on the list's `Init`
        }
        let first = delays[0];
        assert!(
            first >= Duration::from_millis(200) && first < Duration::from_millis(400),
            "{delays:?}"
        );
        assert!(
            delays[3] >= Duration::from_millis(1600),
            "it grew: {delays:?}"
        );
        for d in &delays[4..] {
            assert!(
                *d >= Duration::from_secs(2) && *d <= Duration::from_secs(4),
                "{delays:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(350));
        let again = backoff.next().unwrap();
        assert!(
            again < Duration::from_millis(400),
            "afresh after a quiet spell: {again:?}"
        );
    }

    fn status(code: u16) -> Box<kube::core::Status> {
        Box::new(kube::core::Status::failure("x", "y").with_code(code))
    }

    #[test]
    fn failures_are_read_as_relist_away_or_refused() {
        use watcher::Error::*;
        let api = |code| kube::Error::Api(status(code));
        assert_eq!(Failure::of(&WatchError(status(410))), Failure::Relist);
        // A 410 on starting a list is an expired continue token's, no
        // different from any other refusal.
        assert_eq!(Failure::of(&InitialListFailed(api(410))), Failure::Refused);
        assert_eq!(Failure::of(&WatchStartFailed(api(503))), Failure::Away);
        assert_eq!(Failure::of(&InitialListFailed(api(429))), Failure::Away);
        assert_eq!(Failure::of(&WatchError(status(500))), Failure::Away);
        assert_eq!(Failure::of(&WatchStartFailed(api(403))), Failure::Refused);
        assert_eq!(Failure::of(&InitialListFailed(api(404))), Failure::Refused);
        assert_eq!(Failure::of(&NoResourceVersion), Failure::Refused);
        let no_answer = kube::Error::ReadEvents(std::io::Error::other("connection reset"));
        assert_eq!(Failure::of(&WatchFailed(no_answer)), Failure::Away);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relist_is_asked_for_at_once_but_not_twice_in_a_row() {
        let mut retry = Retry::new(ApiServerReturn::new());
        let start = tokio::time::Instant::now();
        retry.after(Failure::Relist).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        retry.after(Failure::Relist).await;
        assert!(start.elapsed() >= Duration::from_millis(200), "backed off");
    }

    /// A probe whose answer the test sets, counting how often it is asked.
    fn fake_probe(shared: &Arc<ApiServerReturn>) -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
        let up = Arc::new(AtomicBool::new(false));
        let probes = Arc::new(AtomicUsize::new(0));
        let (task_shared, task_up, task_probes) = (shared.clone(), up.clone(), probes.clone());
        tokio::spawn(async move {
            task_shared
                .probe(|| {
                    task_probes.fetch_add(1, Ordering::SeqCst);
                    let up = task_up.load(Ordering::SeqCst);
                    async move { up }
                })
                .await
        });
        (up, probes)
    }

    /// A retry whose backoff is at its 2-4 s, as after a long absence.
    fn after_a_long_absence(shared: &Arc<ApiServerReturn>) -> Retry {
        let mut retry = Retry::new(shared.clone());
        for _ in 0..6 {
            retry.backoff.next();
        }
        retry
    }

    /// The probe runs only while a watch waits on an absent server; when
    /// it answers again the watches go at once, the one that lost the
    /// server and the one a starting server refused (its CRD not served
    /// yet), instead of sleeping their 2-4 s.
    #[tokio::test(start_paused = true)]
    async fn waiting_watches_retry_as_soon_as_the_probe_sees_the_server_back() {
        let shared = ApiServerReturn::new();
        let (up, probes) = fake_probe(&shared);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            0,
            "no probe while no watch waits"
        );

        let mut waits = Vec::new();
        for failure in [Failure::Away, Failure::Refused] {
            let mut retry = after_a_long_absence(&shared);
            waits.push(tokio::spawn(async move {
                let start = tokio::time::Instant::now();
                retry.after(failure).await;
                start.elapsed()
            }));
        }
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(probes.load(Ordering::SeqCst) >= 1, "probing while away");
        up.store(true, Ordering::SeqCst);
        for wait in waits {
            let waited = wait.await.unwrap();
            assert!(
                waited < Duration::from_millis(1800),
                "woken by the probe, not the 2-4 s backoff: {waited:?}"
            );
        }
        let after_return = probes.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            probes.load(Ordering::SeqCst),
            after_return,
            "the probe stops once no watch waits"
        );
    }

    /// The server came back while no watch was waiting (each between two
    /// attempts): the no the probe heard before still counts, and the
    /// next watch to wait is woken by the first yes.
    #[tokio::test(start_paused = true)]
    async fn a_no_heard_before_a_pause_in_waiting_still_counts() {
        let shared = ApiServerReturn::new();
        let (up, probes) = fake_probe(&shared);
        let mut first = after_a_long_absence(&shared);
        first.after(Failure::Away).await; // its 2-4 s, the probe saying no
        assert!(probes.load(Ordering::SeqCst) >= 2);
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(3)).await; // no one waits
        let mut next = after_a_long_absence(&shared);
        let start = tokio::time::Instant::now();
        next.after(Failure::Away).await;
        assert!(
            start.elapsed() < Duration::from_millis(1800),
            "woken by the first yes: {:?}",
            start.elapsed()
        );
    }

    /// A server answering 500 to one kind (a broken conversion webhook)
    /// while `/readyz` says yes did not go away: the probe asks once and
    /// wakes no one, and the watch waits out its backoff.
    #[tokio::test(start_paused = true)]
    async fn a_healthy_servers_5xx_waits_out_the_backoff() {
        let shared = ApiServerReturn::new();
        let (up, probes) = fake_probe(&shared);
        up.store(true, Ordering::SeqCst);
        let mut retry = after_a_long_absence(&shared);
        let start = tokio::time::Instant::now();
        retry.after(Failure::Away).await;
        assert!(
            start.elapsed() >= Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(probes.load(Ordering::SeqCst), 1, "asked once, then quiet");
    }

    /// A healthy server refusing a watch (its CRD not installed) is not
    /// probed: the watch waits out its backoff.
    #[tokio::test(start_paused = true)]
    async fn a_healthy_servers_refusal_waits_out_the_backoff_unprobed() {
        let shared = ApiServerReturn::new();
        let (up, probes) = fake_probe(&shared);
        up.store(true, Ordering::SeqCst);
        let mut retry = after_a_long_absence(&shared);
        let start = tokio::time::Instant::now();
        retry.after(Failure::Refused).await;
        assert!(start.elapsed() >= Duration::from_secs(2));
        assert_eq!(probes.load(Ordering::SeqCst), 0);
    }
}
