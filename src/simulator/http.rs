//! The simulator's HTTP server (to be implemented).

/// Placeholder until the HTTP simulator lands.
pub async fn run_simulate(
    _listen: std::net::SocketAddr,
    _token: Option<String>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    anyhow::bail!("the HTTP simulator is not built yet")
}
