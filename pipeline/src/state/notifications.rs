//! Wake-ups from `NOTIFY proofjobs, <proof id>` (fired by triggers on every write that matters).
//! One LISTEN connection per process; waiters filter by proof id and also re-check on a timer, so
//! a notification lost in a reconnect costs latency, never correctness. The listener stops when
//! told to, before its process closes the database, so no shutdown ends in reconnect warnings.

use std::{sync::Arc, time::Duration};

use anyhow::Result;
use tokio::{
    sync::{broadcast, watch, Mutex},
    task::JoinHandle,
};

use super::Db;

#[derive(Clone)]
pub struct Notifications {
    tx: broadcast::Sender<String>,
    stop: watch::Sender<bool>,
    listener: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Notifications {
    pub async fn listen(db: &Db) -> Result<Notifications> {
        let mut listener = sqlx::postgres::PgListener::connect_with(db.pool()).await?;
        listener.listen("proofjobs").await?;
        let (tx, _) = broadcast::channel(4096);
        let (stop, mut stopped) = watch::channel(false);
        let sender = tx.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => return,
                    received = listener.recv() => match received {
                        Ok(n) => {
                            let _ = sender.send(n.payload().to_string());
                        }
                        Err(e) => {
                            if *stopped.borrow() {
                                return;
                            }
                            tracing::warn!("notification listener: {e}; reconnecting");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    },
                }
            }
        });
        Ok(Notifications { tx, stop, listener: Arc::new(Mutex::new(Some(task))) })
    }

    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.tx.subscribe()
    }

    /// Stop listening and wait until the listener has let go of its connection. Waiters keep
    /// working on their timers.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.listener.lock().await.take() {
            let _ = task.await;
        }
    }
}

/// Wait until a notification about `proof_id` arrives (or any, when `proof_id` is None), or
/// `timeout` passes.
pub async fn wait_for(rx: &mut broadcast::Receiver<String>, proof_id: Option<&str>, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, async {
        loop {
            match rx.recv().await {
                Ok(id) if proof_id.is_none_or(|p| p == id) => return,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(timeout).await;
                    return;
                }
            }
        }
    })
    .await;
}
