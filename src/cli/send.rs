//! `send`: publishes commands to the commands exchange with publisher confirms, one from
//! the command line (validated like the worker will) or many pipelined in batches (for
//! `--from-file`, see `bulk.rs`).

use std::time::Duration;

use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use uuid::Uuid;

use super::{Failure, SendArgs, usage};
use crate::{
    broker::Broker,
    config::Settings,
    domain::{CommandSpec, CommandType},
    ops::trace,
};

/// Commands published before waiting for their confirms.
pub const BATCH: usize = 256;

/// Why publishing stopped.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("broker (after {confirmed} commands were confirmed): {source}")]
    Broker {
        confirmed: usize,
        source: lapin::Error,
    },
    #[error("no publisher confirm within {timeout:?} (after {confirmed} commands were confirmed)")]
    Timeout { confirmed: usize, timeout: Duration },
    #[error("the broker refused {0} command(s) (nack)")]
    Nacked(usize),
}

/// Publishes commands and returns their ids, each confirmed by the broker.
pub async fn publish(settings: &Settings, specs: &[CommandSpec]) -> Result<Vec<Uuid>, SendError> {
    let results = publish_batched(settings, specs, |_| {}).await?;
    let refused = results.iter().filter(|(_, ok)| !ok).count();
    if refused > 0 {
        return Err(SendError::Nacked(refused));
    }
    Ok(results.into_iter().map(|(id, _)| id).collect())
}

/// Publishes commands in pipelined batches of [`BATCH`], calling `progress` with the
/// number settled after each batch. Returns, per spec and in order, its command_id and
/// whether the broker confirmed it (false: nacked).
pub async fn publish_batched(
    settings: &Settings,
    specs: &[CommandSpec],
    mut progress: impl FnMut(usize),
) -> Result<Vec<(Uuid, bool)>, SendError> {
    // Connecting declares the topology (see `Broker`).
    let broker = Broker::from_settings(&settings.amqp);
    let topo = broker.topology().clone();
    let timeout = settings.amqp.confirm_timeout;
    let mut results = Vec::with_capacity(specs.len());
    let broker_err = |confirmed: usize| move |source| SendError::Broker { confirmed, source };
    let ch = match broker.channel().await {
        Ok(ch) => ch,
        Err(e) => {
            broker.close().await;
            return Err(broker_err(0)(e));
        }
    };
    let outcome = async {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker_err(0))?;
        for batch in specs.chunks(BATCH) {
            let confirmed = results.len();
            let mut pending = Vec::with_capacity(batch.len());
            for spec in batch {
                let id = spec.command_id.unwrap_or_else(Uuid::new_v4);
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_message_id(ShortString::from(id.to_string()))
                    .with_headers(trace_headers(id));
                let confirm = ch
                    .basic_publish(
                        topo.commands_exchange().as_str().into(),
                        spec.kind.routing_key().as_str().into(),
                        BasicPublishOptions::default(),
                        &spec.body(id),
                        props,
                    )
                    .await
                    .map_err(broker_err(confirmed))?;
                pending.push((id, confirm));
            }
            let wait = async {
                let mut acks = Vec::with_capacity(pending.len());
                for (id, p) in pending {
                    acks.push((id, p.await?.is_ack()));
                }
                Ok::<_, lapin::Error>(acks)
            };
            let acks = tokio::time::timeout(timeout, wait)
                .await
                .map_err(|_| SendError::Timeout { confirmed, timeout })?
                .map_err(broker_err(confirmed))?;
            progress(acks.len());
            results.extend(acks);
        }
        Ok(())
    }
    .await;
    let _ = ch.close(200, "OK".into()).await;
    broker.close().await;
    outcome.map(|()| results)
}

/// The headers of a command `send` publishes: a new trace, with a `send` span of its own
/// when spans are exported (docs/contract.md, "Tracing").
fn trace_headers(id: Uuid) -> FieldTable {
    let span = tracing::info_span!("send", command_id = %id);
    let mut headers = FieldTable::default();
    for (name, value) in trace::start(&span) {
        let value = AMQPValue::LongString(LongString::from(value.into_bytes()));
        headers.insert(ShortString::from(name), value);
    }
    headers
}

/// The one command of `send revoke|rotate` without `--from-file`, validated as the worker
/// would parse it; a field it would reject is a usage error naming the option.
pub(super) fn spec_from_args(
    settings: &Settings,
    kind: CommandType,
    a: SendArgs,
) -> Result<CommandSpec, Failure> {
    let (Some(session), Some(group)) = (a.session, a.group) else {
        return Err(usage("--session and --group are required"));
    };
    let spec = CommandSpec {
        kind,
        session,
        group,
        backend: a.backend,
        reason: a.reason,
        requested_by: a.requested_by,
        command_id: a.command_id,
    };
    spec.validate(settings)
        .map_err(|e| usage(format!("--{}: {}", e.field.replace('_', "-"), e.message)))?;
    Ok(spec)
}
