//! The scheduling of `rrpc run`: jobs pulled from one queue by every slot of
//! every host, so each host stays busy until the queue is empty. Kept apart
//! from the command line (and generic over what a host and a job are) so it
//! can be swapped for the cluster pool.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

/// A job, maybe pinned to one host (by index).
#[derive(Debug, Clone)]
pub struct Job<J> {
    /// The job's position in the input (results come back with it).
    pub index: usize,
    /// What to run.
    pub work: J,
    /// The host it must run on, if any.
    pub pinned: Option<usize>,
}

/// How one attempt of a job went.
#[derive(Debug)]
pub enum Attempt<R> {
    /// The job ran (successfully or not): this is its result.
    Done(R),
    /// The host is gone: try the job elsewhere; `R` is the result to report
    /// if no other host can take it.
    HostLost(R),
}

struct Shared<J> {
    queue: Mutex<VecDeque<Job<J>>>,
    running: AtomicUsize,
    changed: Notify,
}

/// Runs `jobs` on `hosts` with at most `per_host` jobs at once per host.
/// Returns one result per job, in input order; jobs no host could take get
/// `orphan(job)`.
pub async fn run_all<H, J, R, F, Fut>(
    hosts: &[H],
    jobs: Vec<Job<J>>,
    per_host: usize,
    run: F,
    orphan: impl Fn(&Job<J>) -> R,
) -> Vec<R>
where
    J: Clone,
    F: Fn(usize, &H, Job<J>) -> Fut,
    Fut: Future<Output = Attempt<R>>,
{
    let total = jobs.len();
    let all = jobs.clone();
    let shared = Shared {
        queue: Mutex::new(jobs.into()),
        running: AtomicUsize::new(0),
        changed: Notify::new(),
    };
    let alive: Vec<AtomicBool> = hosts.iter().map(|_| AtomicBool::new(true)).collect();
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..total).map(|_| None).collect());
    let record = |index: usize, r: R| {
        let mut results = results.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = results.get_mut(index) {
            *slot = Some(r);
        }
    };
    let slots = hosts
        .iter()
        .enumerate()
        .flat_map(|(h, host)| (0..per_host.max(1)).map(move |_| (h, host)));
    let workers = slots.map(|(h, host)| {
        let (shared, alive, run, record) = (&shared, &alive, &run, &record);
        async move {
            loop {
                let changed = shared.changed.notified();
                if !alive[h].load(Ordering::SeqCst) {
                    break;
                }
                let job = {
                    let mut queue = shared.queue.lock().unwrap_or_else(|p| p.into_inner());
                    let at = queue.iter().position(|j| j.pinned.is_none_or(|p| p == h));
                    let job = at.and_then(|i| queue.remove(i));
                    if job.is_some() {
                        shared.running.fetch_add(1, Ordering::SeqCst);
                    }
                    job
                };
                let Some(job) = job else {
                    if shared.running.load(Ordering::SeqCst) == 0 {
                        break;
                    }
                    // Another slot may yet hand a job back: wait for news.
                    changed.await;
                    continue;
                };
                let index = job.index;
                let retry = job.clone();
                match run(h, host, job).await {
                    Attempt::Done(r) => record(index, r),
                    Attempt::HostLost(r) => {
                        alive[h].store(false, Ordering::SeqCst);
                        let elsewhere = retry.pinned.is_none()
                            && alive.iter().any(|a| a.load(Ordering::SeqCst));
                        if elsewhere {
                            shared
                                .queue
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push_front(retry);
                        } else {
                            record(index, r);
                        }
                    }
                }
                shared.running.fetch_sub(1, Ordering::SeqCst);
                shared.changed.notify_waiters();
            }
            // Leaving may strand jobs only this host could take: wake the rest.
            shared.changed.notify_waiters();
        }
    });
    futures::future::join_all(workers).await;
    let left: Vec<Job<J>> = shared
        .queue
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .drain(..)
        .collect();
    for job in &left {
        record(job.index, orphan(job));
    }
    let results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results
        .into_iter()
        .zip(&all)
        .map(|(r, job)| r.unwrap_or_else(|| orphan(job)))
        .collect()
}
