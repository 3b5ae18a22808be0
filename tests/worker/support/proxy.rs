//! A TCP proxy between the worker and one service (RabbitMQ or PostgreSQL) that a test
//! can cut, stall and restore. Only the worker's own connections go through it, so one
//! test's outage leaves parallel tests alone.

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    /// Every connection is closed; new ones are accepted and closed at once.
    Cut,
    /// Connections stay open but no byte moves (a peer that stopped answering).
    Stall,
}

pub(crate) struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (a free port) and forwards to `target` (`host:port`).
    pub(crate) async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (mode, _) = watch::channel(Mode::Open);
        let modes = mode.clone();
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let rx = modes.subscribe();
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(upstream) = TcpStream::connect(&target).await {
                        pipe(client, upstream, rx).await;
                    }
                });
            }
        });
        Self { addr, mode, task }
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub(crate) fn url(&self, url: &str, target_port: u16) -> String {
        let original = format!("127.0.0.1:{target_port}");
        assert!(
            url.contains(&original),
            "{url} does not point at {original}"
        );
        url.replace(&original, &self.addr.to_string())
    }

    /// Closes every proxied connection and refuses new ones until [`Proxy::restore`].
    pub(crate) fn cut(&self) {
        self.mode.send_replace(Mode::Cut);
    }

    /// Holds every byte in both directions until [`Proxy::restore`].
    pub(crate) fn stall(&self) {
        self.mode.send_replace(Mode::Stall);
    }

    pub(crate) fn restore(&self) {
        self.mode.send_replace(Mode::Open);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Cut);
        self.task.abort();
    }
}

/// Waits while the proxy is stalled; false once it is cut.
async fn flowing(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Open => return true,
            Mode::Cut => return false,
            Mode::Stall => {}
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn pipe(mut client: TcpStream, mut upstream: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    loop {
        if !flowing(&mut mode).await {
            return;
        }
        tokio::select! {
            r = cr.read(&mut up) => match r {
                Ok(n) if n > 0 => {
                    if !flowing(&mut mode).await || uw.write_all(&up[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            r = ur.read(&mut down) => match r {
                Ok(n) if n > 0 => {
                    if !flowing(&mut mode).await || cw.write_all(&down[..n]).await.is_err() {
                        return;
                    }
                }
                _ => return,
            },
            changed = mode.changed() => if changed.is_err() { return },
        }
    }
}
