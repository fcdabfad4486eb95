//! # tollgate-workers: where the proxies run
//!
//! Each proxy (DNS, HTTP) serves on worker threads of its own, one per core
//! by default, each a single-threaded tokio runtime with its own sockets
//! (members of one `SO_REUSEPORT` group per address). The kernel spreads
//! queries and connections over the workers, and everything one needs
//! afterwards lives on the worker that received it: no query or request
//! wakes another thread. On this 2-core machine the cross-thread wake-ups
//! of a shared multi-threaded runtime were the largest single cost of both
//! proxies at saturation (BENCHMARKS.md).
//!
//! This crate is only that plumbing: how many workers, their threads and
//! runtimes, and stopping them together.

use std::future::Future;
use std::io;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The workers to start: `configured`, or with 0 one per available core,
/// at most 8 (past that the upstreams and the pods are the limit).
pub fn count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8),
        n => n,
    }
}

/// Runs one worker per element of `shares`, on threads named `{name}-{i}`,
/// each `serve(share, closing)` on a single-threaded runtime of its own (so
/// sockets are registered with that worker's reactor). Returns once
/// `shutdown` completes (`Ok`) or a worker ends by itself (its error, or
/// "stopped"), in both cases after cancelling `closing` and waiting for
/// every worker to return: a worker drains what it has in hand on
/// `closing`, within its own bound.
///
/// The threads inherit the calling thread's network namespace.
pub async fn run<S, F, Fut>(
    name: &str,
    shares: Vec<S>,
    serve: F,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Send + 'static,
    F: Fn(S, CancellationToken) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = io::Result<()>>,
{
    let closing = CancellationToken::new();
    let (done, mut finished) = mpsc::unbounded_channel();
    let workers = shares.len();
    for (i, share) in shares.into_iter().enumerate() {
        let (serve, stop) = (serve.clone(), closing.clone());
        let report = Report(Some(done.clone()));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-{i}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|runtime| runtime.block_on(serve(share, stop)));
                report.send(served)
            });
        if let Err(e) = spawned {
            // Those already running stop before the error is returned.
            closing.cancel();
            drop(done);
            while finished.recv().await.is_some() {}
            return Err(e);
        }
    }
    drop(done);
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        Some(result) = finished.recv() => match result {
            Err(e) => Err(e),
            Ok(()) => Err(io::Error::other(format!("a {name} worker stopped"))),
        },
    };
    closing.cancel();
    let mut left = if result.is_ok() { workers } else { workers - 1 };
    while left > 0 && finished.recv().await.is_some() {
        left -= 1;
    }
    result
}

/// A worker's end, sent to [`run`] even if the worker panics.
struct Report(Option<mpsc::UnboundedSender<io::Result<()>>>);

impl Report {
    fn send(mut self, result: io::Result<()>) {
        if let Some(done) = self.0.take() {
            let _ = done.send(result);
        }
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if let Some(done) = self.0.take() {
            let _ = done.send(Err(io::Error::other("a worker panicked")));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn every_worker_runs_on_its_own_thread_and_all_drain_on_shutdown() {
        let drained = Arc::new(AtomicUsize::new(0));
        let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (d, t) = (drained.clone(), threads.clone());
        let result = run(
            "w",
            vec![0, 1, 2],
            move |i: usize, closing: CancellationToken| {
                let (d, t) = (d.clone(), t.clone());
                async move {
                    t.lock()
                        .unwrap()
                        .push((i, std::thread::current().name().map(String::from)));
                    closing.cancelled().await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
            tokio::time::sleep(Duration::from_millis(50)),
        )
        .await;
        assert!(result.is_ok());
        assert_eq!(
            drained.load(Ordering::SeqCst),
            3,
            "shutdown waits for every drain"
        );
        let mut names: Vec<_> = threads
            .lock()
            .unwrap()
            .iter()
            .map(|(_, n)| n.clone())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [Some("w-0".into()), Some("w-1".into()), Some("w-2".into())]
        );
    }

    #[tokio::test]
    async fn a_failing_worker_stops_the_others_and_its_error_is_returned() {
        let drained = Arc::new(AtomicUsize::new(0));
        let d = drained.clone();
        let result = run(
            "w",
            vec![0, 1],
            move |i: usize, closing: CancellationToken| {
                let d = d.clone();
                async move {
                    if i == 0 {
                        return Err(io::Error::other("listener broke"));
                    }
                    closing.cancelled().await;
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
            std::future::pending(),
        )
        .await;
        assert_eq!(result.unwrap_err().to_string(), "listener broke");
        assert_eq!(
            drained.load(Ordering::SeqCst),
            1,
            "the other worker was stopped and drained"
        );
    }

    #[tokio::test]
    async fn a_panicking_worker_is_reported_not_waited_for() {
        let result = run(
            "w",
            vec![()],
            |(), _closing: CancellationToken| async move {
                panic!("bug");
                #[allow(unreachable_code)]
                Ok(())
            },
            std::future::pending(),
        )
        .await;
        assert_eq!(result.unwrap_err().to_string(), "a worker panicked");
    }

    #[test]
    fn zero_means_one_per_core_at_most_eight() {
        assert_eq!(count(3), 3);
        let n = count(0);
        assert!((1..=8).contains(&n), "{n}");
    }
}
