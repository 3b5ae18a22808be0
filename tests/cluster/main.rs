//! The worker on a local three-node RabbitMQ cluster (`scripts/rabbitmq-cluster`, with
//! haproxy): while 1,000 commands flow, the worker's node is stopped, or killed, or the
//! node leading the commands queue is killed; once more with two workers on PostgreSQL
//! connected by a list of node URLs. Every command completes once, within 30 s of the
//! loss. Needs haproxy (`.ci/run` installs it) and takes about two minutes.

mod cluster;
mod scenario;

use std::time::{Duration, Instant};

use cluster::Cluster;
use scenario::{Loss, Scenario, wait_for};

const SCENARIOS: [Scenario; 4] = [
    Scenario {
        name: "stop-workers-node",
        loss: Loss::StopWorkersNode,
        workers: 1,
        postgres: false,
        url_list: false,
    },
    Scenario {
        name: "kill-workers-node",
        loss: Loss::KillWorkersNode,
        workers: 1,
        postgres: false,
        url_list: false,
    },
    Scenario {
        name: "kill-leader",
        loss: Loss::KillLeader,
        workers: 1,
        postgres: false,
        url_list: false,
    },
    Scenario {
        name: "two-workers-pg-url-list",
        loss: Loss::KillWorkersNode,
        workers: 2,
        postgres: true,
        url_list: true,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_any_one_node_loses_no_command_and_resets_each_once() {
    // The workers' log, shown when the test fails.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("invite_worker=info")
        .try_init();
    let started = Instant::now();
    let cluster = Cluster::start();
    let mut figures = Vec::new();
    for s in SCENARIOS {
        // Connections through haproxy must land on node 1 again.
        wait_for("haproxy sees node 1", Duration::from_secs(30), || async {
            cluster.haproxy_sees_up(1)
        })
        .await;
        let f = scenario::run(&cluster, s).await;
        eprintln!("{f:?}");
        figures.push(f);
    }
    drop(cluster);
    eprintln!(
        "all scenarios, cluster start and stop included: {:?}",
        started.elapsed()
    );
    for f in &figures {
        eprintln!(
            "{:<26} node {} lost: all {} done {:>6.2} s after, longest stall {:>5.2} s, \
             {} events repeated (same event_id), scenario {:>5.1} s",
            f.scenario,
            f.lost_node,
            scenario::COMMANDS,
            f.completed_after.as_secs_f64(),
            f.longest_stall.as_secs_f64(),
            f.repeated_events,
            f.total.as_secs_f64()
        );
    }
}
