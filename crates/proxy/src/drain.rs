//! Drain signalling: listeners and connections watch for the signal, and the
//! signaller can wait until every watcher has finished.

use tokio::sync::watch;

#[derive(Debug)]
pub struct DrainSignal {
    tx: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
pub struct DrainWatch {
    rx: watch::Receiver<bool>,
}

pub fn channel() -> (DrainSignal, DrainWatch) {
    let (tx, rx) = watch::channel(false);
    (DrainSignal { tx }, DrainWatch { rx })
}

impl DrainSignal {
    /// Tells every watcher to drain.
    pub fn start(&self) {
        self.tx.send_replace(true);
    }

    /// Resolves once every watcher (every connection still open) is gone.
    pub async fn finished(&self) {
        self.tx.closed().await;
    }

    pub fn watchers(&self) -> usize {
        self.tx.receiver_count()
    }

    pub fn watch(&self) -> DrainWatch {
        DrainWatch {
            rx: self.tx.subscribe(),
        }
    }
}

impl DrainWatch {
    /// Resolves when draining starts (or the signal is gone).
    pub async fn signaled(&mut self) {
        let _ = self.rx.wait_for(|draining| *draining).await;
    }

    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}
