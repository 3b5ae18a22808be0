//! The real binary as a child process: `invite-worker simulate` (with its control API),
//! `invite-worker run` with a failpoint armed, and one-shot CLI commands, all pointed at a
//! test's environment.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::Stdio,
    time::Duration,
};

use invite_worker::ops::failpoint;
use serde_json::Value;

use super::TestEnv;

impl TestEnv {
    /// Environment overrides that make `invite-worker run` use this environment: its
    /// AMQP prefix and database, classic queues, no HTTP listener, no scheduler, short
    /// retries and a short group lease (a crashed process's lease expires quickly).
    pub(crate) fn process_env(&self) -> Vec<(String, String)> {
        let url = self.settings.amqp.url.to_env();
        [
            ("AMQP__URL", url.as_str()),
            ("AMQP__NAME_PREFIX", &self.settings.amqp.name_prefix),
            ("AMQP__QUEUE_TYPE", "classic"),
            ("DATABASE__URL", self.settings.database.url.expose()),
            ("HTTP__LISTEN", ""),
            ("ROTATION__ENABLED", "false"),
            ("RETRY__INITIAL_DELAY", "50ms"),
            ("RETRY__MAX_DELAY", "400ms"),
            ("WORKER__SHUTDOWN_GRACE", "10s"),
            ("WORKER__GROUP_LEASE", "3s"),
            ("LOG__FORMAT", "json"),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__{k}"), v.to_owned()))
        .collect()
    }

    /// Environment overrides that point the `invite-worker` binary at this environment's
    /// broker names and database, with the HTTP endpoints and the scheduler off.
    pub(crate) fn cli_env(&self) -> Vec<(String, String)> {
        let s = &self.settings;
        [
            ("AMQP__URL", s.amqp.url.to_env()),
            ("AMQP__NAME_PREFIX", s.amqp.name_prefix.clone()),
            ("AMQP__QUEUE_TYPE", "classic".to_owned()),
            ("DATABASE__URL", s.database.url.expose().to_owned()),
            ("HTTP__LISTEN", String::new()),
            ("ROTATION__ENABLED", "false".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INVITE_WORKER__{k}"), v))
        .collect()
    }

    /// A `tokio::process::Command` for the binary with [`TestEnv::cli_env`] applied.
    pub(crate) fn cli_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"));
        cmd.args(args)
            .envs(self.cli_env())
            .env_remove("RUST_LOG")
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs the binary to completion: (exit code, stdout, stderr).
    pub(crate) async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(60), self.cli_command(args).output())
            .await
            .expect("the CLI finishes within 60s")
            .expect("run the CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A running `invite-worker simulate` child process, killed on drop.
pub(crate) struct SimulatorProcess {
    child: std::process::Child,
    pub base: String,
    http: reqwest::Client,
}

impl SimulatorProcess {
    pub(crate) fn spawn(token: &str) -> Self {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"))
            .args(["simulate", "--listen", "127.0.0.1:0", "--token", token])
            .env("INVITE_WORKER__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn simulate");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening on ADDR")
            .to_owned();
        Self {
            child,
            base: format!("http://{addr}"),
            http: reqwest::Client::new(),
        }
    }

    pub(crate) async fn link(&self, session: &str, group: &str) -> Value {
        self.http
            .get(format!(
                "{}/_control/groups/link?session={}&group={}",
                self.base,
                percent_encoding::utf8_percent_encode(session, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(group, percent_encoding::NON_ALPHANUMERIC)
            ))
            .send()
            .await
            .expect("control request")
            .json()
            .await
            .expect("control json")
    }

    /// `POST /_control/<path>` with a JSON body.
    pub(crate) async fn control(&self, path: &str, body: Value) {
        let status = self
            .http
            .post(format!("{}/_control/{path}", self.base))
            .json(&body)
            .send()
            .await
            .expect("control request")
            .status();
        assert!(status.is_success(), "POST /_control/{path}: {status}");
    }

    pub(crate) async fn stats(&self) -> Value {
        self.http
            .get(format!("{}/_control/stats", self.base))
            .send()
            .await
            .expect("stats request")
            .json()
            .await
            .expect("stats json")
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `invite-worker run` as a child process, configured through environment overrides,
/// its output kept in a log file. Killed (SIGKILL) on drop.
pub(crate) struct WorkerProcess {
    child: tokio::process::Child,
    log: PathBuf,
}

impl WorkerProcess {
    /// Starts the binary with `env` (`INVITE_WORKER__…` pairs) and, when given, the
    /// failpoint armed; the log goes to `log`.
    pub(crate) fn spawn(env: &[(String, String)], failpoint: Option<&str>, log: PathBuf) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("worker log file");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_invite-worker"));
        cmd.arg("run")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove(failpoint::ENV)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .kill_on_drop(true);
        if let Some(point) = failpoint {
            cmd.env(failpoint::ENV, point);
        }
        let child = cmd.spawn().expect("spawn invite-worker run");
        Self { child, log }
    }

    /// Sends SIGTERM (graceful shutdown).
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().expect("worker still running");
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM {pid}");
    }

    /// Sends SIGKILL.
    pub(crate) async fn kill(&mut self) {
        self.child.kill().await.expect("kill worker");
    }

    /// Waits for the process to exit, failing the test (with the log) after `within`.
    pub(crate) async fn exit_within(&mut self, within: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.expect("wait for worker"),
            Err(_) => panic!(
                "worker did not exit within {within:?}; log:\n{}",
                self.log_tail()
            ),
        }
    }

    /// The worker's log so far (of every process that wrote to the same file).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the worker's log.
    pub(crate) fn log_tail(&self) -> String {
        let text = self.log();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

/// A free TCP port on 127.0.0.1 (bound once, then released).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
