//! Trace context across processes (W3C `traceparent`): injected into gRPC
//! metadata and NATS headers on the way out, extracted on the way in, so
//! one broadcast or one action is one trace from the edge that took it,
//! through the services, across NATS, to the edge that delivers it.
//!
//! Spans are `tracing` spans; the binary turns them into OpenTelemetry
//! spans (and exports them) only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! Without that, these helpers carry an empty context and cost next to
//! nothing.

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
