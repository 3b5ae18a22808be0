//! Commands and outcomes the store tests write, and a migrated store per environment.

use chrono::Utc;
use invite_worker::{
    domain::{
        Command, CommandId, CommandType, GroupId, GroupIdStyle, InviteCode, Link, SessionId,
        events::{ExpirySource, OutboxMessage},
    },
    store::{Attempt, Completion, Outcome, Store},
};
use uuid::Uuid;

use crate::support::{TestEnv, group};

pub(crate) fn command(n: usize) -> Command {
    Command {
        id: CommandId(Uuid::new_v4()),
        kind: CommandType::RevokeInvite,
        session: SessionId::parse("sales").unwrap(),
        group: GroupId::parse(&group(n), GroupIdStyle::Jid).unwrap(),
        backend: "sim".into(),
        reason: Some("batch test".into()),
        requested_by: None,
    }
}

/// Completes a command on group 3 with code `Done3`: the group is tracked. Returns it.
pub(crate) async fn track_group_3(store: &Store) -> Command {
    let done = command(3);
    store.begin_command(&done).await.unwrap();
    store
        .complete(&rotated(&done, "Done3", None))
        .await
        .unwrap();
    done
}

pub(crate) async fn store(env: &TestEnv) -> Store {
    let store = env.store().await;
    store.migrate().await.expect("migrate");
    store
}

pub(crate) fn attempt(cmd: &Command, before: Option<&str>, attempts: i32) -> Attempt {
    Attempt {
        command_id: cmd.id.to_string(),
        before_code: before.map(str::to_owned),
        attempts,
    }
}

/// A rotated outcome for `cmd` that also records an external change, with an event
/// payload that is not UTF-8.
pub(crate) fn rotated(cmd: &Command, code: &str, lease: Option<(&str, &str)>) -> Completion {
    Completion {
        cmd: cmd.clone(),
        attempts: 1,
        outcome: Outcome::Rotated {
            link: Link {
                code: InviteCode::parse(code).unwrap(),
                expires_at: None,
            },
            previous_code: Some("Prev".into()),
            expires_at: Utc::now(),
            source: ExpirySource::Policy,
        },
        external_change: Some((Some("Stored".into()), "Outside".into())),
        messages: vec![OutboxMessage {
            exchange: "x".into(),
            routing_key: "invite_link.rotated".into(),
            message_id: Some(Uuid::new_v4().to_string()),
            message_type: Some("invite_link.rotated".into()),
            correlation_id: Some(cmd.id.to_string()),
            headers: vec![("h".into(), "v".into())],
            payload: vec![0xff, 0x00, b'{', 0x80, b'}'],
        }],
        started_at: Utc::now(),
        link: None,
        release_lease: lease.map(|(l, o)| (l.to_owned(), o.to_owned())),
    }
}
