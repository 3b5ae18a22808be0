//! A local three-node RabbitMQ cluster behind haproxy, started with
//! `scripts/rabbitmq-cluster` under a temporary directory, with its own node names and
//! ports, and stopped (its directory removed) when dropped, also after a failure.

use std::{collections::HashMap, path::PathBuf, process::Command, time::Instant};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/rabbitmq-cluster");

pub(crate) struct Cluster {
    dir: PathBuf,
    env: HashMap<String, String>,
    /// The temporary directory's parent, removed after the cluster's own.
    _parent: tempfile::TempDir,
}

/// Runs the script with `args`; (success, stdout, stderr).
fn script(args: &[&str], env: &[(&str, String)]) -> (bool, String, String) {
    let out = Command::new(SCRIPT)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("run {SCRIPT}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Cluster {
    /// Starts the cluster with haproxy sending every connection to the first node that
    /// is up. Ports are drawn at random below the ephemeral range, again on a clash.
    pub(crate) fn start() -> Self {
        let started = Instant::now();
        let mut failures = String::new();
        for _ in 0..3 {
            let parent = tempfile::tempdir().expect("tempdir");
            let dir = parent.path().join("cluster");
            let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
            // Node N on base+N-1, haproxy on base-1, distribution on base+N-1+20000:
            // all below 32768, where the kernel does not pick outgoing ports.
            let base = 11001 + 3 * (rand::random::<u16>() % 200);
            let env = [
                ("CLUSTER_NAME", format!("iw-cluster-{id}")),
                ("CLUSTER_BASE_PORT", base.to_string()),
                ("CLUSTER_HAPROXY_BALANCE", "first".to_owned()),
            ];
            let dir_arg = dir.to_string_lossy().into_owned();
            let (ok, stdout, stderr) = script(&["start", &dir_arg, "--haproxy"], &env);
            if ok {
                let env = stdout
                    .lines()
                    .filter_map(|l| l.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                eprintln!("cluster started in {:?}", started.elapsed());
                return Self {
                    dir,
                    env,
                    _parent: parent,
                };
            }
            // What start left behind (logs) goes with the temporary directory.
            let _ = script(&["stop", &dir_arg], &[]);
            failures.push_str(&stderr);
            if !stderr.contains("already in use") && !stderr.contains("already running") {
                break;
            }
        }
        panic!("the cluster did not start:\n{failures}");
    }

    pub(crate) fn var(&self, key: &str) -> &str {
        self.env
            .get(key)
            .unwrap_or_else(|| panic!("the cluster script printed no {key}"))
    }

    /// The URL of node `n` (1 to 3).
    pub(crate) fn node_url(&self, n: u8) -> String {
        self.var(&format!("AMQP_URL_{n}")).to_owned()
    }

    pub(crate) fn haproxy_url(&self) -> String {
        self.var("AMQP_URL_HAPROXY").to_owned()
    }

    /// The three nodes' URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        (1..=3).map(|n| self.node_url(n)).collect()
    }

    fn run(&self, args: &[&str]) -> String {
        let dir = self.dir.to_string_lossy();
        let mut all = vec![args[0], dir.as_ref()];
        all.extend(&args[1..]);
        let (ok, stdout, stderr) = script(&all, &[]);
        assert!(ok, "rabbitmq-cluster {args:?} failed:\n{stderr}");
        stdout
    }

    /// A graceful stop of node `n` (returns once it has stopped).
    pub(crate) fn stop_node(&self, n: u8) {
        self.run(&["stop-node", &n.to_string()]);
    }

    /// SIGKILL of node `n`.
    pub(crate) fn kill_node(&self, n: u8) {
        self.run(&["kill-node", &n.to_string()]);
    }

    /// Starts node `n` again; returns once it has rejoined the cluster.
    pub(crate) fn start_node(&self, n: u8) {
        self.run(&["start-node", &n.to_string()]);
    }

    /// Waits until haproxy has marked node `n` up again (its last health-check change
    /// for that server, in its log, says UP; servers start up).
    pub(crate) fn haproxy_sees_up(&self, n: u8) -> bool {
        let server = format!("{}-{n} ", self.var("CLUSTER_NAME"));
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        log.lines()
            .rev()
            .find(|l| l.contains(&server) && (l.contains(" is UP") || l.contains(" is DOWN")))
            .is_none_or(|l| l.contains(" is UP"))
    }

    /// The number of the node leading quorum queue `queue`.
    pub(crate) fn leader(&self, queue: &str) -> u8 {
        let out = self.run(&["leader", queue, "--index"]);
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("leader of {queue}: {out:?}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let (ok, _, stderr) = script(&["stop", &dir], &[]);
        if !ok {
            eprintln!("stopping the test cluster failed:\n{stderr}");
        }
    }
}
