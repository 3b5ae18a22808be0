//! W3C Trace Context across the broker (docs/contract.md, "Tracing"): the events a
//! command causes are in the trace its `traceparent` header names, after it waited in the
//! database too; `send` starts a trace; with `telemetry.otlp_endpoint` set the command's
//! span reaches an OTLP/HTTP receiver as a child of the publisher's span. (The crash tests
//! check that an event published from the outbox after a crash is in its trace too.)

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use invite_worker::{domain::CommandSpec, simulator::FaultSpec};
use lapin::types::{AMQPValue, FieldTable};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde_json::json;

use crate::support::{Db, TestEnv, WorkerProcess, group, revoke, wait_until};

/// Generous, for the whole suite on two cores; a failure at it is worth investigating.
const WAIT: Duration = Duration::from_secs(90);
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";

fn traced(extra: &[(&str, &str)]) -> FieldTable {
    let mut headers = FieldTable::default();
    let parent = format!("00-{TRACE}-{PUBLISHER_SPAN}-01");
    headers.insert("traceparent".into(), AMQPValue::LongString(parent.into()));
    for (name, value) in extra {
        headers.insert((*name).into(), AMQPValue::LongString((*value).into()));
    }
    headers
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stay_in_the_commands_trace_after_waiting_and_after_a_rejection() {
    let env = TestEnv::new(Db::Sqlite).await;
    let mut settings = env.settings.clone();
    // Every retry waits in the database, not in place.
    settings.retry.max_inline_wait = Duration::ZERO;
    env.world.add_fault(FaultSpec {
        route: "*.reset".into(),
        count: 1,
        status: 503,
        retry_after: None,
        hang: false,
    });
    let mut events = env.tap_events().await;
    let worker = env.start_worker_with(settings).await;

    let (id, trace) = env.send_traced(&[revoke("sales", &group(1))]).await[0].clone();
    let got = events.until_command(id, WAIT).await;
    let (props, event) = got.last().expect("an event");
    assert_eq!(event["event_type"], "invite_link.rotated");
    assert_eq!(
        event["attempts"], 2,
        "retried once, after waiting in the database"
    );
    assert_eq!(props.trace_id(), Some(trace));

    // An invalid command that can be reported: its failure event and its dead-letter copy
    // are in its trace, its tracestate passed on.
    let rejected = uuid::Uuid::new_v4();
    let body = json!({
        "command_id": rejected.to_string(), "type": "revoke_invite",
        "session_id": "sales", "group_id": "not-a-jid",
    });
    let headers = traced(&[("tracestate", "vendor=7")]);
    let body = serde_json::to_vec(&body).expect("JSON");
    env.publish_raw_with(&body, "command.revoke_invite", headers)
        .await;
    let got = events.until_command(rejected, WAIT).await;
    let (props, event) = got.last().expect("an event");
    assert_eq!(event["error"]["kind"], "invalid_command");
    assert_eq!(props.trace_id().as_deref(), Some(TRACE));
    assert_eq!(header(&props.headers, "tracestate"), Some("vendor=7"));
    let deadline = tokio::time::Instant::now() + WAIT;
    let dead = loop {
        let dead = env.dead_letters_with_headers().await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let parent = format!("00-{TRACE}-{PUBLISHER_SPAN}-01");
    assert_eq!(dead[0].1.get("traceparent"), Some(&parent));

    // `send` starts a trace of its own for each command.
    let specs: Vec<CommandSpec> = (2..4).map(|n| revoke("sales", &group(n))).collect();
    let ids = env.send(&specs).await;
    let mut traces = HashSet::new();
    for id in ids {
        let got = events.until_command(id, WAIT).await;
        let trace = got.last().and_then(|(props, _)| props.trace_id());
        assert!(trace.is_some(), "{got:?}");
        traces.insert(trace);
    }
    assert_eq!(traces.len(), 2);
    worker.stop().await;
}

/// A span as the receiver decoded it: name, trace id, span id, parent span id (hex).
type Span = (String, String, String, String);

/// An OTLP/HTTP (protobuf) trace receiver on 127.0.0.1:0, keeping every span it is sent.
async fn receiver() -> (String, Arc<Mutex<Vec<Span>>>) {
    let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), spans)
}

async fn receive(State(spans): State<Arc<Mutex<Vec<Span>>>>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace request");
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut kept = spans.lock().expect("spans");
    for resource in request.resource_spans {
        for scope in resource.scope_spans {
            for s in scope.spans {
                let ids = (hex(&s.trace_id), hex(&s.span_id), hex(&s.parent_span_id));
                kept.push((s.name, ids.0, ids.1, ids.2));
            }
        }
    }
    // An empty ExportTraceServiceResponse.
    Vec::new()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_span_is_exported_under_the_publishers_trace() {
    let (endpoint, spans) = receiver().await;
    let env = TestEnv::new(Db::Sqlite).await;
    let mut penv = env.process_env();
    penv.push(("INVITE_WORKER__TELEMETRY__OTLP_ENDPOINT".into(), endpoint));
    let mut events = env.tap_events().await;
    let mut worker = WorkerProcess::spawn(&penv, None, env.dir().join("worker.log"));

    let id = uuid::Uuid::new_v4();
    let spec = revoke("sales", &group(9));
    env.publish_raw_with(&spec.body(id), "command.revoke_invite", traced(&[]))
        .await;
    let got = events.until_command(id, Duration::from_secs(60)).await;
    let (props, _) = got.last().expect("an event");
    assert_eq!(props.trace_id().as_deref(), Some(TRACE));

    let command_span = || {
        let spans = spans.lock().expect("spans");
        spans
            .iter()
            .find(|(name, trace, ..)| name == "command" && trace == TRACE)
            .cloned()
    };
    wait_until(WAIT, || async { command_span().is_some() }).await;
    let (_, _, span_id, parent) = command_span().expect("the command's span");
    assert_eq!(parent, PUBLISHER_SPAN, "a child of the publisher's span");
    // The event names the command's span as its parent.
    let traceparent = header(&props.headers, "traceparent").expect("traceparent");
    assert_eq!(traceparent, format!("00-{TRACE}-{span_id}-01"));

    worker.terminate();
    let status = worker.exit_within(WAIT).await;
    assert!(status.success(), "{status:?}\n{}", worker.log_tail());
}
