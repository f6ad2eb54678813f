//! The bounded pool that runs classifiers. Inference is CPU work: it never
//! runs on the network threads, and a saturated pool refuses new work at
//! once (the filter's `on_overload` decides what that means) instead of
//! queueing without bound.

use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

type Job = Box<dyn FnOnce() + Send>;

/// The pool is full: every thread is busy and the queue is at its bound.
#[derive(Debug, thiserror::Error)]
#[error("filter pool saturated")]
pub struct Saturated;

pub struct Pool {
    tx: SyncSender<Job>,
    threads: usize,
    queued: IntGauge,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// `threads` workers and room for `queue` waiting jobs. The threads end
    /// when the pool is dropped.
    pub fn new(threads: usize, queue: usize, queued: IntGauge) -> Arc<Pool> {
        let threads = threads.max(1);
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for i in 0..threads {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sift-filter-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            match spawned {
                Ok(_) => started += 1,
                // The OS refused a thread (limits): run with what started;
                // with none, every inspection meets a full pool and the
                // filters' on_overload decides.
                Err(e) => {
                    tracing::error!(error = %e, started, wanted = threads, "cannot start a filter thread");
                    break;
                }
            }
        }
        Arc::new(Pool {
            tx,
            threads: started,
            queued,
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run `f` on a pool thread; the receiver yields its result. Refused at
    /// once when the pool is saturated.
    pub fn spawn<T, F>(&self, f: F) -> Result<tokio::sync::oneshot::Receiver<T>, Saturated>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (done, rx) = tokio::sync::oneshot::channel();
        let queued = self.queued.clone();
        queued.inc();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            queued.dec();
            if let Ok(out) = out {
                let _ = done.send(out);
            }
        });
        match self.tx.try_send(job) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.queued.dec();
                Err(Saturated)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_refuses_when_full() {
        let pool = Pool::new(1, 1, IntGauge::new("q", "q").unwrap());
        assert_eq!(pool.spawn(|| 2 + 2).unwrap().await.unwrap(), 4);
        // Block the only thread, fill the one queue slot: the next is refused.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let busy = pool
            .spawn(move || {
                wait.recv().ok();
            })
            .unwrap();
        // Give the worker time to take the first job off the queue.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let queued = pool.spawn(|| 1).unwrap();
        assert!(pool.spawn(|| 1).is_err(), "a full pool must refuse");
        release.send(()).unwrap();
        busy.await.unwrap();
        assert_eq!(queued.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn a_panicking_job_does_not_kill_the_pool() {
        let pool = Pool::new(1, 4, IntGauge::new("q", "q").unwrap());
        let r = pool.spawn(|| -> u32 { panic!("boom") }).unwrap();
        assert!(r.await.is_err(), "the receiver sees the job is gone");
        assert_eq!(pool.spawn(|| 7).unwrap().await.unwrap(), 7);
    }
}
