//! `simulate`: the provider simulator served over HTTP on its own, announcing the address
//! it bound on stdout (so that a caller can bind port 0 and read where it went).

use std::{future::Future, net::SocketAddr};

use anyhow::Context as _;

use crate::simulator::{SimWorld, server::serve};

/// `invite-worker simulate`: binds `listen`, announces the bound address, and serves a
/// fresh auto-creating world until `shutdown` completes.
pub(super) async fn run(
    listen: SocketAddr,
    token: Option<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the simulator to {listen}"))?;
    let addr = listener
        .local_addr()
        .context("reading the simulator's bound address")?;
    tracing::info!(%addr, auth = token.is_some(), "provider simulator listening");
    println!("listening on {addr}");
    serve(listener, SimWorld::default(), token, shutdown)
        .await
        .context("serving the simulator")
}
