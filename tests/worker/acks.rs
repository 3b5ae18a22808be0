//! The worker's AMQP batching. Acks are folded (deliveries settled together with nothing
//! unsettled below them go out as one multiple ack), and a delivery still in progress is
//! never acknowledged with them: what the broker holds unacknowledged when a worker stops
//! is exactly what it did not finish. The relay's publishes are queued as a batch, in
//! order.

use std::{collections::HashSet, time::Duration};

use invite_worker::{
    broker::{Broker, Publisher},
    config::QueueType,
    domain::{CommandSpec, events::OutboxMessage},
    simulator::FaultSpec,
};
use lapin::{
    options::{BasicGetOptions, QueueDeclareOptions},
    types::FieldTable,
};

use crate::{
    on_both_databases,
    support::{AMQP_URL, Db, EventTap, TestEnv, group, revoke, wait_until},
};

const WAIT: Duration = Duration::from_secs(30);

fn requests(env: &TestEnv) -> u64 {
    env.world.stats().routes.values().sum()
}

/// Sends `specs` and waits for one event for each of them, in any order.
async fn send_and_see_each(env: &TestEnv, tap: &mut EventTap, specs: &[CommandSpec]) {
    let sent: HashSet<String> = env
        .send(specs)
        .await
        .iter()
        .map(|id| id.to_string())
        .collect();
    let seen: HashSet<String> = tap
        .take(specs.len(), WAIT)
        .await
        .iter()
        .map(|(_, e)| e["command_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(seen, sent);
}

on_both_databases!(folded_acks_cover_what_was_settled_and_never_a_command_in_progress);

async fn folded_acks_cover_what_was_settled_and_never_a_command_in_progress(db: Db) {
    let env = TestEnv::new(db).await;
    let mut settings = env.settings.clone();
    settings.worker.shutdown_grace = Duration::from_secs(1);
    // The hung command's lease outlives its process only briefly.
    settings.worker.group_lease = Duration::from_secs(3);
    let sim = settings.backends.get_mut("sim").expect("sim backend");
    sim.timeout = Duration::from_secs(300);
    let mut tap = env.tap_events().await;
    let worker = env.start_worker_with(settings.clone()).await;

    // Many at once: they settle in runs, acked together.
    let specs: Vec<_> = (0..200).map(|i| revoke("sales", &group(500 + i))).collect();
    send_and_see_each(&env, &mut tap, &specs).await;

    // One command hangs at the provider (for longer than the test); three delivered
    // after it finish.
    env.world.add_fault(FaultSpec {
        route: "*".into(),
        count: 1,
        status: 500,
        retry_after: None,
        hang: true,
    });
    let before = requests(&env);
    let stuck = env.send(&[revoke("sales", &group(499))]).await[0];
    wait_until(WAIT, || async { requests(&env) > before }).await;
    let later: Vec<_> = (0..3).map(|i| revoke("sales", &group(700 + i))).collect();
    send_and_see_each(&env, &mut tap, &later).await;

    // The grace ends with the hung command unfinished: it is left unacknowledged, and
    // once the worker's channel is closed it is the one message back in the queue (a
    // multiple ack reaching past it would leave none; acks lost, more than one).
    worker.stop().await;
    let queue = env.topology.commands_queue();
    wait_until(WAIT, || async { env.queue_len(&queue).await == 1 }).await;

    // The next worker finishes it, once.
    let worker = env.start_worker_with(settings).await;
    let events = tap.until_command(stuck, WAIT).await;
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0].1["event_type"], "invite_link.rotated");
    wait_until(WAIT, || async { env.queue_len(&queue).await == 0 }).await;
    worker.stop().await;
    assert_eq!(env.queue_len(&queue).await, 0);
    let resets = env.world.stats().resets;
    assert_eq!(resets.get(&format!("sales|{}", group(499))), Some(&1));
    assert!(tap.drain_now().is_empty(), "no other command ran again");
}

/// The relay's publisher queues a whole batch before waiting for any of it: the messages
/// still reach the broker in the batch's order, each confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_batch_arrives_in_order_and_confirmed() {
    let env = TestEnv::new(Db::Sqlite).await;
    let (conn, ch) = env.channel().await;
    // Exclusive: removed with the test's connection.
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare a reply queue");
    let broker = Broker::new(AMQP_URL, env.topology.clone(), QueueType::Classic);
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(10));
    let batch: Vec<OutboxMessage> = (0..300)
        .map(|i| OutboxMessage {
            exchange: String::new(),
            routing_key: queue.name().to_string(),
            message_id: Some(format!("m{i}")),
            message_type: None,
            correlation_id: None,
            headers: Vec::new(),
            payload: format!("{i}").into_bytes(),
        })
        .collect();
    let confirmed = publisher.publish_batch(&batch).await.expect("published");
    assert!(confirmed.iter().all(|c| c.is_ack()), "{confirmed:?}");
    for i in 0..300 {
        let got = ch
            .basic_get(
                queue.name().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert_eq!(String::from_utf8_lossy(&got.delivery.data), i.to_string());
    }
    publisher.close().await;
    broker.close().await;
    let _ = conn.close(200, "OK".into()).await;
}
