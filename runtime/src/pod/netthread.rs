//! A private tokio runtime on its own thread, where netstack's async work (netlink,
//! the DNS server) runs for a pod runtime.
//!
//! Callers block on it from anywhere, including a tokio worker or a `Drop` running
//! while a panic unwinds: nothing here needs the caller to have a runtime, and no
//! runtime is ever started inside another.

use std::future::Future;

/// The thread and the handle to spawn work on it.
pub struct NetThread {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The thread is gone (it panicked): nothing network-related can be done any more.
#[derive(Debug, thiserror::Error)]
#[error("minipod's network thread is gone")]
pub struct NetThreadGone;

impl NetThread {
    pub fn start() -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("minipod-net".into()).spawn(move || {
            rt.block_on(async {
                let _ = stopped.await;
            });
        })?;
        Ok(Self { handle, stop: Some(stop), thread: Some(thread) })
    }

    /// Where to spawn listeners (the DNS server).
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    /// Runs `fut` on the thread and waits for it, from any context.
    pub fn block<T: Send + 'static>(&self, fut: impl Future<Output = T> + Send + 'static) -> Result<T, NetThreadGone> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        rx.recv().map_err(|_| NetThreadGone)
    }
}

impl Drop for NetThread {
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
