//! W3C Trace Context across the broker: a command's `traceparent` / `tracestate` headers
//! parent its span, the events it causes carry the context they belong to, and `send`
//! starts a trace. Spans are recorded only when exported (`telemetry.otlp_endpoint`);
//! otherwise the command's context is passed on to its events as it came.

use opentelemetry::{
    Context,
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Text headers as the propagator reads them (names compared without case).
struct Headers<'a>(&'a [(String, String)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// The trace context `headers` carry; an empty context when they carry none that is
/// valid.
pub fn extract(headers: &[(String, String)]) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The `traceparent` (and `tracestate`, when not empty) headers of `cx`; none when it
/// holds no valid span context.
pub fn inject(cx: &Context) -> Vec<(String, String)> {
    if !cx.span().span_context().is_valid() {
        return Vec::new();
    }
    let mut fields = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(cx, &mut fields);
    let mut out: Vec<(String, String)> = fields.into_iter().collect();
    out.retain(|(name, value)| name == TRACEPARENT || !value.is_empty());
    out.sort();
    out
}

/// Makes `span` a child of the trace `headers` carry (nothing to do when they carry none,
/// or when spans are not recorded). Call it before the span is first entered.
pub fn adopt(span: &tracing::Span, headers: &[(String, String)]) {
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        // Fails only when spans are not recorded: then events pass the headers on.
        let _ = span.set_parent(parent);
    }
}

/// The trace headers of a message caused within `span` by a message that arrived with
/// `origin`: the span's own context when spans are recorded, else the one `origin`
/// carries, so that the message stays in the publisher's trace either way.
pub fn caused_by(span: &tracing::Span, origin: &[(String, String)]) -> Vec<(String, String)> {
    let own = span.context();
    if own.span().span_context().is_valid() {
        inject(&own)
    } else {
        inject(&extract(origin))
    }
}

/// The trace headers that start a new trace for a message published within `span`: the
/// span's context when spans are recorded, else fresh random ids, sampled.
pub fn start(span: &tracing::Span) -> Vec<(String, String)> {
    let own = span.context();
    if own.span().span_context().is_valid() {
        return inject(&own);
    }
    let context = SpanContext::new(
        TraceId::from_bytes(rand::random::<u128>().max(1).to_be_bytes()),
        SpanId::from_bytes(rand::random::<u64>().max(1).to_be_bytes()),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    inject(&Context::new().with_remote_span_context(context))
}

/// The trace id of a `traceparent` header value, when it is a valid one.
pub fn trace_id(headers: &[(String, String)]) -> Option<String> {
    let cx = extract(headers);
    let span = cx.span();
    let context = span.span_context();
    context.is_valid().then(|| context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn without_recorded_spans_the_origin_context_is_passed_on_as_it_came() {
        let origin = headers(&[
            ("x-original-routing-key", "command.revoke_invite"),
            ("TraceParent", PARENT),
            ("tracestate", "vendor=1"),
        ]);
        let out = caused_by(&tracing::Span::none(), &origin);
        assert_eq!(
            out,
            headers(&[(TRACEPARENT, PARENT), (TRACESTATE, "vendor=1")])
        );
        assert_eq!(
            trace_id(&out).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
    }

    #[test]
    fn an_invalid_or_missing_traceparent_gives_no_headers() {
        for origin in [
            headers(&[]),
            headers(&[(TRACEPARENT, "garbage")]),
            headers(&[(
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            )]),
        ] {
            assert!(caused_by(&tracing::Span::none(), &origin).is_empty());
            assert_eq!(trace_id(&origin), None);
        }
    }

    #[test]
    fn a_new_trace_has_a_valid_sampled_traceparent_of_its_own() {
        let first = start(&tracing::Span::none());
        let second = start(&tracing::Span::none());
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, TRACEPARENT);
        assert!(first[0].1.starts_with("00-") && first[0].1.ends_with("-01"));
        assert!(trace_id(&first).is_some());
        assert_ne!(trace_id(&first), trace_id(&second));
    }
}
