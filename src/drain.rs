//! Shutdown and draining: one signal that every listener and connection
//! watches, and a count of open connections to wait on.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

#[derive(Clone, Debug)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
    conns: Arc<Conns>,
}

#[derive(Debug, Default)]
struct Conns {
    open: AtomicUsize,
    zero: Notify,
}

/// Held by each connection task; dropping it marks the connection closed.
#[derive(Debug)]
pub struct ConnToken(Arc<Conns>);

impl Drop for ConnToken {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

#[derive(Clone, Debug)]
pub struct Watch(watch::Receiver<bool>);

impl Watch {
    /// Resolves once draining has begun.
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }
    pub fn is_signaled(&self) -> bool {
        *self.0.borrow()
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    pub fn new() -> Self {
        Drain {
            tx: Arc::new(watch::channel(false).0),
            conns: Arc::default(),
        }
    }

    pub fn watch(&self) -> Watch {
        Watch(self.tx.subscribe())
    }

    pub fn conn_token(&self) -> ConnToken {
        self.conns.open.fetch_add(1, Ordering::AcqRel);
        ConnToken(self.conns.clone())
    }

    pub fn open_connections(&self) -> usize {
        self.conns.open.load(Ordering::Acquire)
    }

    /// Tell listeners to stop accepting and connections to finish, then wait
    /// until every connection closed or `timeout` passed. Returns the number
    /// of connections still open.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let _ = self.tx.send(true);
        let wait = async {
            loop {
                let notified = self.conns.zero.notified();
                if self.conns.open.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.open_connections()
    }
}
