//! What the worker declares on the broker and what it does when a declaration fails:
//! the dead-letter queue may be missing without stopping consuming or publishing (and a
//! dead letter is never confirmed into nowhere), an existing commands queue without the
//! configured arguments is consumed as it is, and the quorum commands queue's delivery
//! limit moves a command that keeps coming back to the dead-letter queue.

use std::time::Duration;

use entity::command;
use invite_worker::{
    broker::{Broker, PublishError, Publisher},
    cli::dead_letters,
    config::QueueType,
    domain::events::OutboxMessage,
};
use lapin::{
    Channel,
    options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use sea_orm::EntityTrait;

use crate::{
    operations::parse_prometheus,
    support::{AMQP_URL, Db, TestEnv, WorkerProcess, free_port, group, revoke, wait_until},
};

const WAIT: Duration = Duration::from_secs(30);

/// Whether `queue` exists, and how many messages are ready in it.
async fn ready_in(env: &TestEnv, queue: &str) -> Option<u32> {
    let (conn, ch) = env.channel().await;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await;
    let _ = conn.close(200, "OK".into()).await;
    q.ok().map(|q| q.message_count())
}

async fn http_text(url: &str) -> (u16, String) {
    match reqwest::get(url).await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

async fn delete_queue(ch: &Channel, queue: &str) {
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("delete the queue");
}

/// A dead letter to a queue that does not exist comes back (it is published
/// `mandatory`) instead of being confirmed and dropped; events are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_to_a_missing_queue_comes_back_instead_of_being_confirmed() {
    let env = TestEnv::new(Db::Sqlite).await;
    let broker = Broker::new(AMQP_URL, env.topology.clone(), QueueType::Classic);
    let publisher = Publisher::new(broker.clone(), Duration::from_secs(5));
    let message = |exchange: String, routing_key: String, id: &str| OutboxMessage {
        exchange,
        routing_key,
        message_id: Some(id.into()),
        message_type: None,
        correlation_id: None,
        headers: Vec::new(),
        payload: id.as_bytes().to_vec(),
    };
    let dead = |id: &str| message(String::new(), env.topology.dead_queue(), id);
    let event = message(
        env.topology.events_exchange(),
        "invite_link.rotated".into(),
        "e1",
    );
    publisher.publish(&dead("d1")).await.expect("routed");

    let (conn, ch) = env.channel().await;
    delete_queue(&ch, &env.topology.dead_queue()).await;
    let refused = publisher.publish(&dead("d2")).await;
    assert!(
        matches!(refused, Err(PublishError::Returned(_))),
        "{refused:?}"
    );
    let confirms = publisher
        .publish_batch(&[event, dead("d3"), dead("d4")])
        .await
        .expect("published");
    assert!(confirms[0].is_ack(), "{confirms:?}");
    assert!(
        !confirms[1].is_ack() && !confirms[2].is_ack(),
        "{confirms:?}"
    );
    let state = broker.declarations().report();
    assert!(
        state
            .iter()
            .any(|(n, s)| *n == "dead_letter_queue" && s.is_failing()),
        "{state:?}"
    );
    publisher.close().await;
    broker.close().await;
    let _ = conn.close(200, "OK".into()).await;
}

/// The dead-letter queue deleted under a running worker: the dead letter of an invalid
/// command comes back, waits in the outbox, and arrives once the worker has declared the
/// queue again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_published_while_its_queue_is_missing_arrives_once_it_is_back() {
    let env = TestEnv::new(Db::Sqlite).await;
    let worker = env.start_worker().await;
    let dead = env.topology.dead_queue();
    let (conn, ch) = env.channel().await;
    delete_queue(&ch, &dead).await;
    let _ = conn.close(200, "OK".into()).await;

    env.publish_raw(b"not json at all").await;
    wait_until(WAIT, || async { ready_in(&env, &dead).await == Some(1) }).await;
    let letters = env.dead_letters().await;
    assert_eq!(letters.len(), 1);
    assert!(letters[0].1.starts_with("invalid_command"), "{letters:?}");
    worker.stop().await;
}

/// A dead-letter queue that cannot be declared (here: held exclusively by another
/// connection) is reported by `/readyz` (still 200) and `/metrics`, commands complete
/// meanwhile, and the worker declares it once it can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_queue_that_cannot_be_declared_is_reported_while_commands_complete() {
    let env = TestEnv::new(Db::Sqlite).await;
    let (holder, ch) = env.channel().await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare(
        env.topology.dead_queue().as_str().into(),
        exclusive,
        FieldTable::default(),
    )
    .await
    .expect("hold the dead-letter queue's name");
    let port = free_port();
    let mut penv = env.process_env();
    penv.push((
        "INVITE_WORKER__HTTP__LISTEN".into(),
        format!("127.0.0.1:{port}"),
    ));
    let mut worker = WorkerProcess::spawn(&penv, None, env.dir().join("worker.log"));
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    let failing = |text: &str| {
        let samples = parse_prometheus(text);
        samples
            .iter()
            .find(|s| {
                s.name == "invite_worker_broker_declarations_failing"
                    && s.labels.get("name").map(String::as_str) == Some("dead_letter_queue")
            })
            .map(|s| s.value)
    };

    wait_until(WAIT, || async {
        let (status, body) = http_text(&readyz).await;
        status == 200 && body.contains("dead_letter_queue: missing")
    })
    .await;
    assert_eq!(failing(&http_text(&metrics).await.1), Some(1.0));
    let id = env.send(&[revoke("sales", &group(7))]).await[0];
    let store = env.store().await;
    wait_until(WAIT, || async {
        command::Entity::find_by_id(id.to_string())
            .one(store.connection())
            .await
            .ok()
            .flatten()
            .is_some_and(|c| c.status == "done")
    })
    .await;
    store.close().await;

    let _ = holder.close(200, "OK".into()).await;
    wait_until(WAIT, || async {
        http_text(&readyz).await.1.contains("dead_letter_queue: ok")
    })
    .await;
    assert_eq!(failing(&http_text(&metrics).await.1), Some(0.0));
    assert_eq!(ready_in(&env, &env.topology.dead_queue()).await, Some(0));
    worker.terminate();
    let status = worker.exit_within(WAIT).await;
    assert!(status.success(), "{}", worker.log_tail());
    let log = worker.log();
    assert_eq!(
        log.matches("cannot declare the dead-letter queue").count(),
        1,
        "logged once, not at every retry:\n{}",
        worker.log_tail()
    );
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// A commands queue declared by an older version (quorum, no delivery limit): the
/// worker consumes it as it is and reports the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_commands_queue_without_the_delivery_limit_is_consumed_as_it_is() {
    let mut env = TestEnv::new(Db::Sqlite).await;
    env.settings.amqp.queue_type = QueueType::Quorum;
    env.settings.amqp.delivery_limit = 20;
    let (conn, ch) = env.channel().await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(
        env.topology.commands_queue().as_str().into(),
        durable,
        quorum_args(),
    )
    .await
    .expect("an older version's commands queue");
    let _ = conn.close(200, "OK".into()).await;
    let port = free_port();
    let mut settings = env.settings.clone();
    settings.http.listen = format!("127.0.0.1:{port}");
    let worker = env.start_worker_with(settings).await;

    let (status, body) = http_text(&format!("http://127.0.0.1:{port}/readyz")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("commands_queue_arguments: inequivalent (PRECONDITION_FAILED"),
        "{body}"
    );
    let id = env.send(&[revoke("sales", &group(8))]).await[0];
    wait_until(WAIT, || async {
        command::Entity::find_by_id(id.to_string())
            .one(worker.store.connection())
            .await
            .ok()
            .flatten()
            .is_some_and(|c| c.status == "done")
    })
    .await;
    worker.stop().await;
}

/// A command the quorum commands queue delivers more often than its delivery limit (a
/// consumer that keeps returning it, as a crashing worker would) is moved to the
/// dead-letter queue by the broker; `dead-letters list` says why, from `x-death`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redelivered_past_the_delivery_limit_ends_in_the_dead_letter_queue() {
    const LIMIT: u32 = 2;
    let mut env = TestEnv::new(Db::Sqlite).await;
    env.settings.amqp.queue_type = QueueType::Quorum;
    env.settings.amqp.delivery_limit = LIMIT;
    let id = env.send(&[revoke("sales", &group(9))]).await[0];

    let (conn, ch) = env.channel().await;
    let queue = env.topology.commands_queue();
    let mut deliveries = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ready_in(&env, &env.topology.dead_queue()).await != Some(1) {
        assert!(tokio::time::Instant::now() < deadline, "not dead-lettered");
        let got = ch
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .expect("basic.get");
        match got {
            Some(m) => {
                deliveries += 1;
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                m.delivery.nack(requeue).await.expect("nack");
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let _ = conn.close(200, "OK".into()).await;
    assert!(
        (LIMIT..=LIMIT + 1).contains(&deliveries),
        "{deliveries} deliveries"
    );
    assert_eq!(ready_in(&env, &queue).await, Some(0));

    let letters = dead_letters::list(&env.settings).await.expect("list");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].command_id.as_deref(),
        Some(id.to_string().as_str())
    );
    assert!(
        letters[0]
            .error
            .starts_with("delivery limit exceeded (x-death: delivery_limit"),
        "{letters:?}"
    );
}
