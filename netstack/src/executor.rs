//! netstack's own executor: a current-thread tokio runtime on a thread of its own.
//! The async network work of synchronous callers runs on one ([`crate::BlockingNode`]),
//! and the DNS server on another, so that a firewall change (an `nft` process the
//! executor waits for) never holds up a DNS answer.
//!
//! Callers block on it from anywhere, including a tokio worker or a `Drop` running
//! while a panic unwinds: nothing here needs the caller to have a runtime, and no
//! runtime is ever started inside another.

use std::future::Future;

/// The thread and the handle to spawn work on it; stopped and joined when dropped.
pub struct Executor {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The thread is gone (it panicked): nothing network-related can be done any more.
#[derive(Debug, thiserror::Error)]
#[error("minipod's network thread is gone")]
pub struct ExecutorGone;

impl Executor {
    /// Starts the thread, named `name` (`minipod-net`, `minipod-dns`).
    pub fn start(name: &str) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name(name.into()).spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn tasks that live on the thread (listeners, timers).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Runs `fut` on the thread and waits for it, from any context.
    pub fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, ExecutorGone> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| ExecutorGone)
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // Never join ourselves: the last reference may be dropped on this thread.
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
