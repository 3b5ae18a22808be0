//! The providers' official clients against the simulator, run as child processes: Wasend's
//! SDK (`wasend` on PyPI, over `@wasend/core`, on Node.js through jsii) and Evolution API's
//! Python client (`evolutionapi`). Their scripts and pinned versions are in
//! `tests/simulator/clients/`; `.ci/services-up` installs them.

use std::{path::PathBuf, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::process::Command;

use crate::support::*;

/// Runs `script` with `args` under `python3` and returns the JSON it printed (always
/// `Some`: a client that is not installed fails the test).
async fn run_client(module: &str, script: &str, args: &[&str]) -> Option<Value> {
    let python = std::env::var("INVITE_WORKER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    if !probe.is_ok_and(|s| s.success()) {
        panic!(
            "{module} is not installed for {python}: run .ci/services-up \
             (pip install -r tests/simulator/clients/requirements.txt)"
        );
    }
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "tests/simulator/clients",
        script,
    ]
    .iter()
    .collect();
    let run = Command::new(&python)
        .arg(path)
        .args(args)
        // jsii's notice that this Node.js is past its end of life, on every call.
        .env("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the client finished within 2 minutes")
        .expect("the client ran");
    assert!(
        out.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("the client printed JSON"))
}

/// What the world logged for `session`: each request's route and group.
async fn logged(sim: &Sim, session: &str) -> Vec<(String, String)> {
    sim.requests(Some(session))
        .await
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            (text("route"), text("group"))
        })
        .collect()
}

/// The client read `before`, reset to `revoked`, and read `revoked` back; the world agrees.
async fn assert_read_reset_read(sim: &Sim, session: &str, group: &str, out: &Value) {
    let code = |k: &str| out[k].as_str().expect("a code").to_owned();
    assert_is_code(&code("before"));
    assert_is_code(&code("revoked"));
    assert_ne!(code("before"), code("revoked"));
    assert_eq!(code("after"), code("revoked"));
    assert_eq!(sim.peek(session, group).await, code("revoked"));
}

#[tokio::test]
async fn wasends_official_sdk_reads_and_resets_through_the_invite_code_family() {
    let sim = Sim::start(Some(TOKEN)).await;
    let group = Provider::WasendCode.group(7);
    let base = format!("{}/wasend", sim.base);
    let args = [base.as_str(), TOKEN, "sales", group.as_str()];
    let Some(out) = run_client("wasend", "wasend_sdk.py", &args).await else {
        return;
    };
    assert_read_reset_read(&sim, "sales", &group, &out).await;
    let want = ["wasend.read", "wasend.reset", "wasend.read"].map(|r| (r.into(), group.clone()));
    assert_eq!(logged(&sim, "sales").await, want);
}

#[tokio::test]
async fn evolutions_official_client_reads_and_resets_a_group_code() {
    let sim = Sim::start(Some(TOKEN)).await;
    let group = Provider::Evolution.group(7);
    let base = format!("{}/evolution", sim.base);
    let args = [base.as_str(), TOKEN, "sales", group.as_str()];
    let Some(out) = run_client("evolutionapi", "evolution_client.py", &args).await else {
        return;
    };
    assert_read_reset_read(&sim, "sales", &group, &out).await;
    let want =
        ["evolution.read", "evolution.reset", "evolution.read"].map(|r| (r.into(), group.clone()));
    assert_eq!(logged(&sim, "sales").await, want);
}
