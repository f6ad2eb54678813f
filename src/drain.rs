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

/// Signals a [`Drain::child`] alone.
#[derive(Debug)]
pub struct Stop(Arc<Notify>);

impl Stop {
    pub fn stop(&self) {
        // A permit: taken even if the forwarding task has not waited yet.
        self.0.notify_one();
    }
}

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

    /// A drain for one listener: signaled with this one, or alone by the
    /// returned [`Stop`] (a reload that removes the listener). Its
    /// connections count in this one, which waits for them.
    pub fn child(&self, rt: &tokio::runtime::Handle) -> (Stop, Drain) {
        let tx = Arc::new(watch::channel(false).0);
        let child = Drain {
            tx: tx.clone(),
            conns: self.conns.clone(),
        };
        let mut parent = self.watch();
        let stop = Arc::new(Notify::new());
        let told = stop.clone();
        rt.spawn(async move {
            tokio::select! {
                () = parent.signaled() => {}
                () = told.notified() => {}
            }
            let _ = tx.send(true);
        });
        (Stop(stop), child)
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
