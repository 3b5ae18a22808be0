//! `dead-letters migrate`, through the binary: a classic dead-letter queue (as older
//! versions declared it) becomes a quorum queue holding the same messages with the same
//! headers, also when an earlier run stopped midway, and running it again is harmless.

use std::collections::BTreeMap;

use invite_worker::broker::{DURABLE, QueueOptions};
use invite_worker::config::QueueType;
use lapin::{
    BasicProperties, Channel,
    options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};

use crate::support::{Db, TestEnv};

const QUORUM: QueueOptions = QueueOptions {
    queue_type: QueueType::Quorum,
    delivery_limit: 0,
};

/// A dead letter as the worker writes it: body, message_id and text headers.
fn letter(i: usize) -> (Vec<u8>, BTreeMap<String, String>) {
    let headers = BTreeMap::from([
        (
            "x-invite-error".to_owned(),
            format!("not_admin: refusal {i}"),
        ),
        (
            "x-original-routing-key".to_owned(),
            "command.revoke_invite".to_owned(),
        ),
        ("traceparent".to_owned(), format!("00-{i:032x}-{i:016x}-01")),
    ]);
    (format!(r#"{{"n":{i}}}"#).into_bytes(), headers)
}

async fn put(ch: &Channel, queue: &str, i: usize) {
    let (body, headers) = letter(i);
    let mut table = FieldTable::default();
    for (k, v) in headers {
        table.insert(
            ShortString::from(k),
            AMQPValue::LongString(LongString::from(v.into_bytes())),
        );
    }
    let props = BasicProperties::default()
        .with_message_id(ShortString::from(format!("m{i}")))
        .with_delivery_mode(2)
        .with_headers(table);
    let confirm = ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &body,
            props,
        )
        .await
        .expect("publish");
    assert!(confirm.await.expect("confirm").is_ack());
}

async fn migrate(env: &TestEnv) -> (i32, String, String) {
    let out = env
        .cli_command(&["dead-letters", "migrate"])
        .env("INVITE_WORKER__AMQP__QUEUE_TYPE", "quorum")
        .output()
        .await
        .expect("run dead-letters migrate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The dead-letter queue is a quorum queue (a declaration as one is accepted) holding
/// exactly `n` letters, in order, with their headers; the temporary queue is gone.
async fn assert_quorum_with_letters(env: &TestEnv, n: usize) {
    let (conn, ch) = env.channel().await;
    ch.queue_declare(
        env.topology.dead_queue().as_str().into(),
        DURABLE,
        QUORUM.dead_queue_args(),
    )
    .await
    .expect("the dead-letter queue is a quorum queue");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let temp = ch
        .queue_declare(
            env.topology.dead_queue_migration().as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await;
    assert!(temp.is_err(), "the temporary queue is removed");
    let _ = conn.close(200, "OK".into()).await;
    let mut got = env.dead_letters_with_headers().await;
    got.sort_by_key(|(body, _)| body.clone());
    let mut want: Vec<_> = (0..n).map(letter).collect();
    want.sort_by_key(|(body, _)| body.clone());
    assert_eq!(got, want);
}

async fn cleanup(env: &TestEnv) {
    let (conn, ch) = env.channel().await;
    let _ = ch
        .queue_delete(
            env.topology.dead_queue_migration().as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "OK".into()).await;
}

async fn confirming_channel(env: &TestEnv) -> (lapin::Connection, Channel) {
    let (conn, ch) = env.channel().await;
    ch.confirm_select(Default::default())
        .await
        .expect("confirms");
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_turns_a_classic_dead_letter_queue_into_a_quorum_one_with_every_letter() {
    const N: usize = 25;
    let env = TestEnv::new(Db::Sqlite).await;
    let dead = env.topology.dead_queue();
    let (conn, ch) = confirming_channel(&env).await;
    ch.queue_declare(dead.as_str().into(), DURABLE, FieldTable::default())
        .await
        .expect("an older version's classic dead-letter queue");
    for i in 0..N {
        put(&ch, &dead, i).await;
    }
    let _ = conn.close(200, "OK".into()).await;

    let (code, stdout, stderr) = migrate(&env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!("moved {N} dead letter(s) into the quorum queue {dead}\n")
    );
    assert_quorum_with_letters(&env, N).await;

    let (code, stdout, stderr) = migrate(&env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("nothing to migrate"), "{stdout}");
    cleanup(&env).await;
}

/// An earlier run stopped after moving some letters to the temporary queue: running it
/// again ends with every letter in the quorum queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_stopped_midway_completes_when_run_again() {
    let env = TestEnv::new(Db::Sqlite).await;
    let (dead, temp) = (
        env.topology.dead_queue(),
        env.topology.dead_queue_migration(),
    );
    let (conn, ch) = confirming_channel(&env).await;
    ch.queue_declare(dead.as_str().into(), DURABLE, FieldTable::default())
        .await
        .expect("classic dead-letter queue");
    ch.queue_declare(temp.as_str().into(), DURABLE, QUORUM.dead_queue_args())
        .await
        .expect("the temporary queue of an interrupted run");
    for i in 0..3 {
        put(&ch, &temp, i).await;
    }
    for i in 3..7 {
        put(&ch, &dead, i).await;
    }
    let _ = conn.close(200, "OK".into()).await;

    let (code, stdout, stderr) = migrate(&env).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.starts_with("moved 7 dead letter(s)"), "{stdout}");
    assert_quorum_with_letters(&env, 7).await;
    cleanup(&env).await;
}
