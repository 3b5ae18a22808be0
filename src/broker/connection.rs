//! One AMQP connection shared by the consumer and the publishers, re-established when it
//! is lost: to the configured URL, or to the next of a cluster's node URLs in turn. Each
//! new connection declares what consuming and publishing need; the rest is declared
//! apart and, should it fail, retried in the background ([`super::declarations`]).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use lapin::{Channel, Connection, ConnectionProperties, ConnectionStatus};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    declarations::{self, DEAD_LETTER_QUEUE, Declarations, State},
    topology::{QueueOptions, Topology},
};
use crate::config::AmqpSettings;

/// How long closing a channel or connection may take before it is abandoned (a peer
/// that stopped answering never sends close-ok).
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long establishing a connection to one node (TCP, handshake, topology) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between two tries of a failing auxiliary declaration.
const REDECLARE_MAX: Duration = Duration::from_secs(30);

/// One AMQP connection shared by the consumer and the publishers, re-established
/// (with topology re-declared) when it is lost.
pub struct Broker {
    /// The nodes' URLs (secrets: never logged, see [`node`]).
    urls: Vec<String>,
    /// The index of the URL to try first on the next connect.
    next: AtomicUsize,
    topo: Topology,
    opts: QueueOptions,
    /// Whether connections declare the topology (not for `dead-letters migrate`).
    declares: bool,
    declarations: Declarations,
    conn: Mutex<Option<Arc<Connection>>>,
    /// The current connection's live status, readable without awaiting.
    status: std::sync::Mutex<Option<ConnectionStatus>>,
}

/// `host:port` of an AMQP URL, for logs (never the user or password).
pub(super) fn node(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let default = if u.scheme() == "amqps" { 5671 } else { 5672 };
            let host = u.host_str().unwrap_or("?");
            format!("{host}:{}", u.port().unwrap_or(default))
        }
        Err(_) => "an unreadable URL".to_owned(),
    }
}

impl Broker {
    /// A broker at one URL, declaring `topo` with `opts` on each connection.
    pub fn new(url: &str, topo: Topology, opts: impl Into<QueueOptions>) -> Arc<Self> {
        Self::build(vec![url.to_owned()], topo, opts.into(), true)
    }

    /// The broker (or cluster) of `[amqp]`, declaring its topology on each connection.
    pub fn from_settings(amqp: &AmqpSettings) -> Arc<Self> {
        Self::of(amqp, true)
    }

    /// The broker of `[amqp]`, declaring nothing on connecting.
    pub fn undeclared(amqp: &AmqpSettings) -> Arc<Self> {
        Self::of(amqp, false)
    }

    fn of(amqp: &AmqpSettings, declares: bool) -> Arc<Self> {
        let urls = amqp.url.expose().into_iter().map(str::to_owned).collect();
        let topo = Topology::new(&amqp.name_prefix);
        Self::build(urls, topo, QueueOptions::from_settings(amqp), declares)
    }

    fn build(urls: Vec<String>, topo: Topology, opts: QueueOptions, declares: bool) -> Arc<Self> {
        Arc::new(Self {
            urls,
            next: AtomicUsize::new(0),
            topo,
            opts,
            declares,
            declarations: Declarations::default(),
            conn: Mutex::new(None),
            status: std::sync::Mutex::new(None),
        })
    }

    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    pub fn queue_options(&self) -> QueueOptions {
        self.opts
    }

    /// The declarations that may fail without stopping the worker, and their states.
    pub fn declarations(&self) -> &Declarations {
        &self.declarations
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

    /// The current connection, connecting (each URL in turn) and declaring the
    /// topology if needed.
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
        let conn = Arc::new(self.connect_any().await?);
        self.set_status(Some(conn.status().clone()));
        *guard = Some(conn.clone());
        drop(guard);
        if self.declares {
            declarations::auxiliary(&conn, &self.topo, self.opts, &self.declarations).await;
        }
        Ok(conn)
    }

    /// Connects to the first URL that answers, starting after the one connected to
    /// last (after a loss, that node is the likeliest to be down), and declares what
    /// consuming and publishing need.
    async fn connect_any(&self) -> lapin::Result<Connection> {
        let n = self.urls.len().max(1);
        let first = self.next.load(Ordering::Relaxed);
        let mut last_error = None;
        for k in 0..n {
            let i = (first + k) % n;
            let Some(url) = self.urls.get(i) else {
                break;
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, self.connect_one(url)).await {
                Ok(Ok(conn)) => {
                    self.next.store((i + 1) % n, Ordering::Relaxed);
                    info!(node = %node(url), "connected to the broker");
                    return Ok(conn);
                }
                Ok(Err(e)) => {
                    if n > 1 {
                        warn!(node = %node(url), error = %e, "cannot connect to this broker node");
                    }
                    last_error = Some(e);
                }
                Err(_) => {
                    if n > 1 {
                        warn!(node = %node(url), "no connection to this broker node within {CONNECT_TIMEOUT:?}");
                    }
                    last_error = Some(timed_out());
                }
            }
        }
        Err(last_error.unwrap_or_else(timed_out))
    }

    async fn connect_one(&self, url: &str) -> lapin::Result<Connection> {
        let props = ConnectionProperties::default().with_connection_name("invite-worker".into());
        let conn = Connection::connect(url, props).await?;
        if self.declares
            && let Err(e) =
                declarations::essential(&conn, &self.topo, self.opts, &self.declarations).await
        {
            close_quietly(&conn, 320, "declaration failed").await;
            return Err(e);
        }
        Ok(conn)
    }

    /// The current connection if it is up, without connecting.
    async fn current(&self) -> Option<Arc<Connection>> {
        self.conn
            .lock()
            .await
            .clone()
            .filter(|c| c.status().connected())
    }

    /// Retries failing auxiliary declarations until `stop`, with backoff up to 30 s, each
    /// time on a fresh channel of the current connection (a failed declaration closes
    /// its channel). A new connection declares them anyway.
    pub async fn keep_declaring(self: Arc<Self>, stop: CancellationToken) {
        let mut pause = Duration::from_millis(500);
        loop {
            if !self.declarations.retry_due() {
                pause = Duration::from_millis(500);
                tokio::select! {
                    _ = self.declarations.failed() => continue,
                    _ = stop.cancelled() => return,
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.cancelled() => return,
            }
            pause = (pause * 2).min(REDECLARE_MAX);
            if let Some(conn) = self.current().await {
                declarations::auxiliary(&conn, &self.topo, self.opts, &self.declarations).await;
            }
        }
    }

    /// A message published to the dead-letter queue came back unroutable: the queue is
    /// gone (deleted, or its node lost); it is declared again in the background.
    pub(super) fn returned(&self, routing_key: &str, reply: &str) {
        if self.declares && routing_key == self.topo.dead_queue() {
            let why = format!("a dead letter came back: {reply}");
            self.declarations
                .set(DEAD_LETTER_QUEUE, State::Missing(why), &self.topo);
        }
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

#[cfg(test)]
mod tests {
    use super::node;

    #[test]
    fn a_node_is_named_by_host_and_port_only() {
        assert_eq!(node("amqp://u:secret@mq-1:5701/%2f"), "mq-1:5701");
        assert_eq!(node("amqps://u:secret@mq-2/%2f"), "mq-2:5671");
        assert_eq!(node("amqp://127.0.0.1/%2f"), "127.0.0.1:5672");
        assert!(!node("amqp://u:secret@[::1]:5672").contains("secret"));
    }
}
