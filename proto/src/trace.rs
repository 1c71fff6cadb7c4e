//! Trace context across processes (W3C `traceparent`): injected into gRPC
//! metadata and NATS headers on the way out, extracted on the way in, so
//! one broadcast or one action is one trace from the edge that took it,
//! through the services, across NATS, to the edge that delivers it.
//!
//! Spans are `tracing` spans; the binary turns them into OpenTelemetry
//! spans (and exports them) only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Without that, these helpers carry an empty context and cost next to
//! nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Headers as a carrier of trace context, whatever their map type.
pub trait Carrier {
    fn get(&self, key: &str) -> Option<&str>;
    fn set(&mut self, key: &str, value: String);
    fn keys(&self) -> Vec<&str>;
}

impl Carrier for http::HeaderMap {
    fn get(&self, key: &str) -> Option<&str> {
        http::HeaderMap::get(self, key).and_then(|value| value.to_str().ok())
    }

    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.insert(name, value);
        }
    }

    fn keys(&self) -> Vec<&str> {
        http::HeaderMap::keys(self)
            .map(http::HeaderName::as_str)
            .collect()
    }
}

/// A protobuf `map<string, string>`: the trace context of one message on a
/// long-lived gRPC stream, whose call metadata belongs to the whole stream.
impl Carrier for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }

    fn set(&mut self, key: &str, value: String) {
        self.insert(key.to_owned(), value);
    }

    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
    }
}

struct AsInjector<'a, C: Carrier>(&'a mut C);

impl<C: Carrier> Injector for AsInjector<'_, C> {
    fn set(&mut self, key: &str, value: String) {
        self.0.set(key, value);
    }
}

struct AsExtractor<'a, C: Carrier>(&'a C);

impl<C: Carrier> Extractor for AsExtractor<'_, C> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

/// Writes `span`'s trace context into `carrier`.
pub fn inject(span: &tracing::Span, carrier: &mut impl Carrier) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut AsInjector(carrier));
    });
}

/// The trace context `carrier` holds (empty when none).
pub fn extract(carrier: &impl Carrier) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&AsExtractor(carrier))
    })
}

/// Makes `span` a child of `parent` (a no-op for an empty context) and
/// records its trace id as the span's `trace_id` field, which JSON logs
/// show on every line logged inside it.
pub fn continue_trace(span: &tracing::Span, parent: Context) {
    use opentelemetry::trace::TraceContextExt;
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says that spans are exported (the binary calls it once it installed an
/// exporter), so [`message_span`] starts making spans.
pub fn enable() {
    EXPORTING.store(true, Ordering::Relaxed);
}

/// True once [`enable`] was called.
pub fn enabled() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// A span for one client message (a sensor sample, a pressure frame): the
/// root of that message's trace. Made by `make` only while spans are
/// exported; otherwise none, so the hot paths pay nothing for tracing that
/// nobody collects.
pub fn message_span(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = make();
    continue_trace(&span, Context::new());
    span
}

/// The current span's trace context as a protobuf map, for a message on a
/// long-lived stream; empty (and not allocated) while spans are not
/// exported.
pub fn current_context() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    if enabled() {
        inject(&tracing::Span::current(), &mut carrier);
    }
    carrier
}

/// A span (made by `make`) that continues the trace `carrier` holds; none
/// when it holds no trace context.
pub fn continued(carrier: &impl Carrier, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if carrier.keys().is_empty() {
        return tracing::Span::none();
    }
    let span = make();
    continue_trace(&span, extract(carrier));
    span
}

/// A span (made by `make`) for something another process sent with trace
/// context `parent` (a NATS message, a mailbox letter); none when the sender
/// was not traced.
pub fn received(parent: &Context, make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt;
    if !parent.span().span_context().is_valid() {
        return tracing::Span::none();
    }
    let span = make();
    continue_trace(&span, parent.clone());
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_span_is_none_until_spans_are_exported() {
        let span = message_span(|| tracing::info_span!("message"));
        assert!(span.is_none());
    }

    #[test]
    fn an_untraced_message_gets_no_span() {
        let span = received(&Context::new(), || tracing::info_span!("message"));
        assert!(span.is_none());
    }

    #[test]
    fn an_empty_carrier_continues_nothing() {
        let span = continued(&HashMap::new(), || tracing::info_span!("message"));
        assert!(span.is_none());
    }
}
