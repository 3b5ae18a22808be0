//! One AMQP connection shared by the consumer and the publishers, re-established (with
//! the topology declared again) when it is lost.

use std::{sync::Arc, time::Duration};

use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus};
use tokio::sync::Mutex;

use super::topology::{Topology, declare};
use crate::config::QueueType;

/// How long closing a channel or connection may take before it is abandoned (a peer
/// that stopped answering never sends close-ok).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long establishing a connection (TCP, handshake, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One AMQP connection shared by the consumer and the publishers, re-established
/// (with topology re-declared) when it is lost.
pub struct Broker {
    url: String,
    topo: Topology,
    queue_type: QueueType,
    conn: Mutex<Option<Arc<Connection>>>,
    /// The current connection's live status, readable without awaiting.
    status: std::sync::Mutex<Option<ConnectionStatus>>,
}

impl Broker {
    pub fn new(url: &str, topo: Topology, queue_type: QueueType) -> Arc<Self> {
        Arc::new(Self {
            url: url.to_owned(),
            topo,
            queue_type,
            conn: Mutex::new(None),
            status: std::sync::Mutex::new(None),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    fn set_status(&self, status: Option<ConnectionStatus>) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
    }

    /// Whether a connection is established and lapin still reports it connected (a
    /// lost socket flips this at once, without waiting for anyone to use it).
    pub fn is_up(&self) -> bool {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|s| s.connected())
    }

    /// The current connection, connecting and declaring the topology if needed.
    pub async fn connection(&self) -> lapin::Result<Arc<Connection>> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref()
            && c.status().connected()
        {
            return Ok(c.clone());
        }
        self.set_status(None);
        if let Some(old) = guard.take() {
            close_quietly(&old, 320, "reconnecting").await;
        }
        let props = ConnectionProperties::default().with_connection_name("invite-worker".into());
        let setup = async {
            let conn = Connection::connect(&self.url, props).await?;
            let ch = conn.create_channel().await?;
            declare(&ch, &self.topo, self.queue_type).await?;
            let _ = ch.close(200, "OK".into()).await;
            Ok::<_, lapin::Error>(conn)
        };
        let conn = match tokio::time::timeout(CONNECT_TIMEOUT, setup).await {
            Ok(r) => Arc::new(r?),
            Err(_) => return Err(timed_out()),
        };
        self.set_status(Some(conn.status().clone()));
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// Drops `conn` if it is still the current connection, so that the next user
    /// reconnects. A connection that another user already replaced is left alone.
    pub async fn invalidate(&self, conn: &Arc<Connection>) {
        let mut guard = self.conn.lock().await;
        if guard.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            self.set_status(None);
            guard.take();
            drop(guard);
            close_quietly(conn, 320, "reconnecting").await;
        }
    }

    /// A new channel on the current connection, and that connection.
    pub async fn open_channel(&self) -> lapin::Result<(Arc<Connection>, Channel)> {
        let conn = self.connection().await?;
        match tokio::time::timeout(CONNECT_TIMEOUT, conn.create_channel()).await {
            Ok(ch) => Ok((conn, ch?)),
            Err(_) => Err(timed_out()),
        }
    }

    pub async fn channel(&self) -> lapin::Result<Channel> {
        Ok(self.open_channel().await?.1)
    }

    pub async fn close(&self) {
        self.set_status(None);
        if let Some(c) = self.conn.lock().await.take() {
            close_quietly(&c, 200, "OK").await;
        }
    }
}

fn timed_out() -> lapin::Error {
    lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
        lapin::ConnectionState::Closed,
    ))
}

async fn close_quietly(conn: &Connection, code: u16, text: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(code, text.into())).await;
}
