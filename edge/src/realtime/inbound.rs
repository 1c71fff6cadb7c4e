//! What a `/ws/realtime` client may send, and its validation.
//!
//! The seed leaves the sensor format open; Switchboard's is (see the message
//! reference in `edge/WEBSOCKET.md`):
//!
//! - one sample: `{"x": 0.1, "y": 9.7, "z": 0.3, "timestamp": 1700000000.02}`
//! - a batch: `{"samples": [sample, ...]}` or a bare JSON array of samples
//! - an action: `{"action": "stop" | "reset" | "stats"}`
//!
//! Accepted variants of a sample: `ax`/`ay`/`az` for `x`/`y`/`z`; the three
//! axes nested under `accelerometer`, `acceleration`, `accel` or `acc`;
//! `t` for `timestamp`; `[t, x, y, z]` arrays inside a batch. Timestamps are
//! Unix seconds, or milliseconds when larger than 10^11 (a millisecond clock
//! reads above that since 1973); without one the edge stamps the sample on
//! arrival, which costs accuracy when the network jitters.
//!
//! Every number must be a finite JSON number; an axis beyond
//! ±[`MAX_ACCELERATION`] or a batch beyond [`MAX_BATCH_SAMPLES`] is refused.
//!
//! A sensor object (one sample or `{"samples": [...]}`) may carry the
//! client's id for the message, to send it again safely: `"seq"` (a
//! non-negative integer) or `"message_id"` (1 to [`MAX_MESSAGE_ID_BYTES`]
//! bytes), per connection ([`ResendId`]).

use serde_json::{Map, Value};
use switchboard_proto::v1::AccelSample;

use crate::error::ClientError;

/// Largest accepted acceleration on one axis, m/s^2 (about 100 g: beyond
/// any phone's sensor range, so only garbage is refused).
pub const MAX_ACCELERATION: f64 = 1000.0;

/// Most samples in one batch (20 s at 50 Hz).
pub const MAX_BATCH_SAMPLES: usize = 1000;

/// Longest `message_id`.
pub const MAX_MESSAGE_ID_BYTES: usize = 128;

/// Timestamps above this are milliseconds.
const MILLISECONDS_ABOVE: f64 = 1e11;

/// A control action of seed 000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Stop,
    Reset,
    Stats,
}

/// The client's id for a sensor message, unique on its connection: a
/// message sent again with the same id is answered with the first reply.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResendId {
    Seq(u64),
    MessageId(String),
}

/// One parsed client message.
#[derive(Debug, PartialEq)]
pub enum Inbound {
    Action(Action),
    /// Sensor samples, with the client's id for the message when it sent
    /// one.
    Samples(Vec<AccelSample>, Option<ResendId>),
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::InvalidMessage(message.into())
}

/// Parses one text message; `now` stamps samples that carry no timestamp.
pub fn parse(text: &str, now: f64) -> Result<Inbound, ClientError> {
    if let Some(parsed) = parse_common(text, now) {
        return Ok(parsed);
    }
    parse_any(text, now)
}

/// The two forms nearly every sensor sends, read straight into typed
/// values: one flat sample `{"x","y","z","timestamp"?}`, or a batch of
/// `[t, x, y, z]` arrays `{"samples": [...]}`, either with an optional
/// `seq` or `message_id`. Nothing else is accepted here (no other field,
/// no alias): whatever this refuses, [`parse_any`] reads or names
/// precisely, so the two always agree on what they both accept.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonForm {
    x: Option<f64>,
    y: Option<f64>,
    z: Option<f64>,
    timestamp: Option<f64>,
    samples: Option<SampleArrays>,
    seq: Option<u64>,
    message_id: Option<String>,
}

fn parse_common(text: &str, now: f64) -> Option<Inbound> {
    let form: CommonForm = serde_json::from_str(text).ok()?;
    let id = match (form.seq, form.message_id) {
        (None, None) => None,
        (Some(seq), None) => Some(ResendId::Seq(seq)),
        (None, Some(id)) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES => {
            Some(ResendId::MessageId(id))
        }
        _ => return None,
    };
    let samples = match (form.samples, form.x, form.y, form.z) {
        (None, Some(x), Some(y), Some(z)) => vec![sample(form.timestamp, x, y, z, now).ok()?],
        (Some(SampleArrays(samples)), None, None, None)
            if form.timestamp.is_none() && !samples.is_empty() =>
        {
            samples
        }
        _ => return None,
    };
    Some(Inbound::Samples(samples, id))
}

/// A batch's `[t, x, y, z]` arrays, read and checked straight into samples
/// (no vector of arrays first, grown by doubling, then copied). A sample
/// out of bounds, or more than [`MAX_BATCH_SAMPLES`], fails the common
/// form, and [`parse_any`] then says what is wrong.
struct SampleArrays(Vec<AccelSample>);

impl<'de> serde::Deserialize<'de> for SampleArrays {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Arrays;
        impl<'de> serde::de::Visitor<'de> for Arrays {
            type Value = SampleArrays;

            fn expecting(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                formatter.write_str("an array of [t, x, y, z] arrays")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut items: A,
            ) -> Result<SampleArrays, A::Error> {
                use serde::de::Error as _;
                // The usual batch fits without growing.
                let mut samples = Vec::with_capacity(64);
                while let Some([t, x, y, z]) = items.next_element::<[f64; 4]>()? {
                    if samples.len() == MAX_BATCH_SAMPLES {
                        return Err(A::Error::custom("too many samples"));
                    }
                    // Every array has its timestamp: `now` is never read.
                    let sample = sample(Some(t), x, y, z, f64::NAN)
                        .map_err(|_| A::Error::custom("a sample out of bounds"))?;
                    samples.push(sample);
                }
                Ok(SampleArrays(samples))
            }
        }
        deserializer.deserialize_seq(Arrays)
    }
}

/// Any accepted form, through a JSON tree: slower, and the one that says
/// what is wrong.
fn parse_any(text: &str, now: f64) -> Result<Inbound, ClientError> {
    let value: Value =
        serde_json::from_str(text).map_err(|error| ClientError::InvalidJson(error.to_string()))?;
    match value {
        Value::Array(items) => {
            parse_batch(&items, now).map(|samples| Inbound::Samples(samples, None))
        }
        Value::Object(object) => parse_object(&object, now),
        other => Err(invalid(format!(
            "expected a JSON object or array, got {}",
            kind_of(&other)
        ))),
    }
}

fn parse_object(object: &Map<String, Value>, now: f64) -> Result<Inbound, ClientError> {
    if let Some(action) = object.get("action") {
        let action = action.as_str().ok_or_else(|| {
            invalid(format!(
                "\"action\" must be a string, got {}",
                kind_of(action)
            ))
        })?;
        return match action {
            "stop" => Ok(Inbound::Action(Action::Stop)),
            "reset" => Ok(Inbound::Action(Action::Reset)),
            "stats" => Ok(Inbound::Action(Action::Stats)),
            other => Err(ClientError::UnknownAction {
                field: "action",
                action: other.to_owned(),
                expected: "stop, reset, stats",
            }),
        };
    }
    if let Some(samples) = object.get("samples") {
        let items = samples.as_array().ok_or_else(|| {
            invalid(format!(
                "\"samples\" must be an array, got {}",
                kind_of(samples)
            ))
        })?;
        let id = resend_id(object)?;
        return parse_batch(items, now).map(|samples| Inbound::Samples(samples, id));
    }
    if has_axes(object) {
        let id = resend_id(object)?;
        return parse_sample_object(object, now).map(|sample| Inbound::Samples(vec![sample], id));
    }
    Err(invalid(
        "expected {\"action\": ...}, an accelerometer sample {\"x\",\"y\",\"z\"} or {\"samples\": [...]}",
    ))
}

/// The sensor message's `seq` or `message_id`, if it has one.
fn resend_id(object: &Map<String, Value>) -> Result<Option<ResendId>, ClientError> {
    let seq = match object.get("seq") {
        None | Some(Value::Null) => None,
        Some(value) => Some(value.as_u64().ok_or_else(|| {
            invalid(format!(
                "\"seq\" must be a non-negative integer, got {}",
                describe(value)
            ))
        })?),
    };
    let message_id = match object.get("message_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if !id.is_empty() && id.len() <= MAX_MESSAGE_ID_BYTES => {
            Some(id.clone())
        }
        Some(value) => {
            return Err(invalid(format!(
                "\"message_id\" must be a string of 1 to {MAX_MESSAGE_ID_BYTES} bytes, got {}",
                describe(value)
            )));
        }
    };
    match (seq, message_id) {
        (Some(_), Some(_)) => Err(invalid("send \"seq\" or \"message_id\", not both")),
        (Some(seq), None) => Ok(Some(ResendId::Seq(seq))),
        (None, Some(id)) => Ok(Some(ResendId::MessageId(id))),
        (None, None) => Ok(None),
    }
}

/// A value as an error message names it: numbers as written, otherwise
/// its kind.
fn describe(value: &Value) -> String {
    match value {
        Value::Number(number) => number.to_string(),
        Value::String(text) if text.is_empty() => "an empty string".to_owned(),
        Value::String(text) if text.len() > MAX_MESSAGE_ID_BYTES => {
            format!("a string of {} bytes", text.len())
        }
        other => kind_of(other).to_owned(),
    }
}

const NESTED_AXES: [&str; 4] = ["accelerometer", "acceleration", "accel", "acc"];

fn has_axes(object: &Map<String, Value>) -> bool {
    ["x", "ax"].iter().any(|key| object.contains_key(*key))
        || NESTED_AXES.iter().any(|key| object.contains_key(*key))
}

fn parse_batch(items: &[Value], now: f64) -> Result<Vec<AccelSample>, ClientError> {
    if items.is_empty() {
        return Err(invalid("a batch must hold at least one sample"));
    }
    if items.len() > MAX_BATCH_SAMPLES {
        return Err(invalid(format!(
            "a batch holds at most {MAX_BATCH_SAMPLES} samples, got {}",
            items.len()
        )));
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            parse_batch_item(item, now).map_err(|error| invalid(format!("sample {index}: {error}")))
        })
        .collect()
}

fn parse_batch_item(item: &Value, now: f64) -> Result<AccelSample, ClientError> {
    match item {
        Value::Object(object) => parse_sample_object(object, now),
        Value::Array(values) if values.len() == 4 => {
            let field = |index: usize, name: &str| number(&values[index], name);
            sample(
                Some(field(0, "t")?),
                field(1, "x")?,
                field(2, "y")?,
                field(3, "z")?,
                now,
            )
        }
        other => Err(invalid(format!(
            "expected a sample object or [t, x, y, z], got {}",
            kind_of(other)
        ))),
    }
}

fn parse_sample_object(object: &Map<String, Value>, now: f64) -> Result<AccelSample, ClientError> {
    let axes = NESTED_AXES
        .iter()
        .find_map(|key| object.get(*key))
        .map(|nested| {
            nested.as_object().ok_or_else(|| {
                invalid(format!(
                    "accelerometer axes must be an object, got {}",
                    kind_of(nested)
                ))
            })
        })
        .transpose()?
        .unwrap_or(object);
    let axis = |name: &str, alias: &str| -> Result<f64, ClientError> {
        match axes.get(name).or_else(|| axes.get(alias)) {
            Some(value) => number(value, name),
            None => Err(invalid(format!("missing \"{name}\""))),
        }
    };
    let timestamp = match object.get("timestamp").or_else(|| object.get("t")) {
        Some(value) => Some(number(value, "timestamp")?),
        None => None,
    };
    sample(
        timestamp,
        axis("x", "ax")?,
        axis("y", "ay")?,
        axis("z", "az")?,
        now,
    )
}

fn number(value: &Value, name: &str) -> Result<f64, ClientError> {
    let number = value.as_f64().ok_or_else(|| {
        invalid(format!(
            "\"{name}\" must be a number, got {}",
            kind_of(value)
        ))
    })?;
    if number.is_finite() {
        Ok(number)
    } else {
        Err(invalid(format!("\"{name}\" must be finite")))
    }
}

fn sample(
    timestamp: Option<f64>,
    x: f64,
    y: f64,
    z: f64,
    now: f64,
) -> Result<AccelSample, ClientError> {
    for (name, value) in [("x", x), ("y", y), ("z", z)] {
        if value.abs() > MAX_ACCELERATION {
            return Err(invalid(format!(
                "\"{name}\" is beyond ±{MAX_ACCELERATION} m/s^2"
            )));
        }
    }
    let t = match timestamp {
        Some(t) if t < 0.0 => return Err(invalid("\"timestamp\" must not be negative")),
        Some(t) if t > MILLISECONDS_ABOVE => t / 1000.0,
        Some(t) => t,
        None => now,
    };
    Ok(AccelSample { t, x, y, z })
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_700_000_000.0;

    fn one(t: f64, x: f64, y: f64, z: f64) -> Inbound {
        Inbound::Samples(vec![AccelSample { t, x, y, z }], None)
    }

    fn error_of(text: &str) -> String {
        parse(text, NOW).unwrap_err().to_string()
    }

    #[test]
    fn actions() {
        assert_eq!(
            parse(r#"{"action":"stop"}"#, NOW).unwrap(),
            Inbound::Action(Action::Stop)
        );
        assert_eq!(
            parse(r#"{"action":"reset"}"#, NOW).unwrap(),
            Inbound::Action(Action::Reset)
        );
        assert_eq!(
            parse(r#"{"action":"stats"}"#, NOW).unwrap(),
            Inbound::Action(Action::Stats)
        );
        assert!(matches!(
            parse(r#"{"action":"dance"}"#, NOW),
            Err(ClientError::UnknownAction { action, .. }) if action == "dance"
        ));
        assert_eq!(
            error_of(r#"{"action":7}"#),
            "\"action\" must be a string, got a number"
        );
    }

    #[test]
    fn single_sample_and_its_variants() {
        let expected = one(12.5, 0.1, 9.8, -0.3);
        for text in [
            r#"{"x":0.1,"y":9.8,"z":-0.3,"timestamp":12.5}"#,
            r#"{"ax":0.1,"ay":9.8,"az":-0.3,"t":12.5}"#,
            r#"{"accelerometer":{"x":0.1,"y":9.8,"z":-0.3},"timestamp":12.5}"#,
            r#"{"acc":{"ax":0.1,"ay":9.8,"az":-0.3},"timestamp":12500000000000}"#,
        ] {
            let parsed = parse(text, NOW).unwrap();
            if text.contains("12500000000000") {
                assert_eq!(parsed, one(12_500_000_000.0, 0.1, 9.8, -0.3), "{text}");
            } else {
                assert_eq!(parsed, expected, "{text}");
            }
        }
        assert_eq!(
            parse(r#"{"x":1,"y":2,"z":3}"#, NOW).unwrap(),
            one(NOW, 1.0, 2.0, 3.0)
        );
    }

    #[test]
    fn batches() {
        let expected = Inbound::Samples(
            vec![
                AccelSample {
                    t: 1.0,
                    x: 1.0,
                    y: 2.0,
                    z: 3.0,
                },
                AccelSample {
                    t: 1.02,
                    x: 4.0,
                    y: 5.0,
                    z: 6.0,
                },
            ],
            None,
        );
        for text in [
            r#"{"samples":[{"t":1,"x":1,"y":2,"z":3},{"t":1.02,"x":4,"y":5,"z":6}]}"#,
            r#"[{"t":1,"x":1,"y":2,"z":3},[1.02,4,5,6]]"#,
        ] {
            assert_eq!(parse(text, NOW).unwrap(), expected, "{text}");
        }
        assert_eq!(
            error_of(r#"{"samples":[]}"#),
            "a batch must hold at least one sample"
        );
        let too_many = format!("[{}]", vec!["[1,1,1,1]"; MAX_BATCH_SAMPLES + 1].join(","));
        assert_eq!(
            error_of(&too_many),
            "a batch holds at most 1000 samples, got 1001"
        );
    }

    #[test]
    fn bad_input_is_named_precisely() {
        assert!(matches!(
            parse("{not json", NOW),
            Err(ClientError::InvalidJson(_))
        ));
        assert!(matches!(
            parse("1e999", NOW),
            Err(ClientError::InvalidJson(_))
        ));
        assert_eq!(
            error_of(r#"{"x":"1","y":2,"z":3}"#),
            "\"x\" must be a number, got a string"
        );
        assert_eq!(error_of(r#"{"x":1,"y":2}"#), "missing \"z\"");
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":1e300}"#),
            "\"z\" is beyond ±1000 m/s^2"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"timestamp":-1}"#),
            "\"timestamp\" must not be negative"
        );
        assert_eq!(
            error_of(r#"[[1,2,3]]"#),
            "sample 0: expected a sample object or [t, x, y, z], got an array"
        );
        assert_eq!(
            error_of(r#""hello""#),
            "expected a JSON object or array, got a string"
        );
        assert!(error_of(r#"{"hello":1}"#).starts_with("expected {\"action\": ...}"));
    }

    /// What the typed path accepts, the general path reads the same; what
    /// it refuses falls through to the general path.
    #[test]
    fn the_typed_path_agrees_with_the_general_one() {
        let common = [
            r#"{"x":0.1,"y":9.8,"z":-0.3,"timestamp":12.5}"#,
            r#"{"x":1,"y":2,"z":3}"#,
            r#"{"x":1,"y":2,"z":3,"timestamp":1700000000123}"#,
            r#"{"x":1,"y":2,"z":3,"seq":7}"#,
            r#"{"x":1,"y":2,"z":3,"seq":null,"message_id":"m-1"}"#,
            r#"{"samples":[[1,1,2,3],[1.02,4,5,6]],"seq":41}"#,
            r#"{"samples":[[1,1,2,3]],"message_id":"b-7"}"#,
        ];
        for text in common {
            let typed = parse_common(text, NOW).unwrap_or_else(|| panic!("typed: {text}"));
            assert_eq!(typed, parse_any(text, NOW).unwrap(), "{text}");
        }
        let elsewhere = [
            r#"{"ax":0.1,"ay":9.8,"az":-0.3,"t":12.5}"#,
            r#"{"acc":{"x":1,"y":2,"z":3}}"#,
            r#"{"samples":[{"t":1,"x":1,"y":2,"z":3}]}"#,
            r#"[[1,1,2,3]]"#,
            r#"{"action":"stop"}"#,
            r#"{"x":1,"y":2,"z":3,"extra":true}"#,
            r#"{"x":1,"y":2,"z":3,"seq":1,"message_id":"a"}"#,
            r#"{"x":1,"y":2,"z":3,"message_id":""}"#,
            r#"{"x":1,"y":2,"z":3000}"#,
            r#"{"x":1,"y":2,"z":3,"timestamp":-1}"#,
            r#"{"x":1,"y":2}"#,
            r#"{"samples":[]}"#,
            r#"{"samples":[[1,1,2]]}"#,
            r#"{"samples":[[1,1,2,3]],"x":1,"y":2,"z":3}"#,
            r#"{"x":1,"y":2,"z":3,"seq":-1}"#,
            "1e999",
        ];
        for text in elsewhere {
            assert!(parse_common(text, NOW).is_none(), "{text}");
        }
        let too_many = format!(
            r#"{{"samples":[{}]}}"#,
            vec!["[1,1,1,1]"; MAX_BATCH_SAMPLES + 1].join(",")
        );
        assert!(parse_common(&too_many, NOW).is_none());
    }

    #[test]
    fn sensor_messages_may_carry_a_seq_or_a_message_id() {
        let id_of = |text: &str| match parse(text, NOW).unwrap() {
            Inbound::Samples(_, id) => id,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            id_of(r#"{"x":1,"y":2,"z":3,"seq":0}"#),
            Some(ResendId::Seq(0))
        );
        assert_eq!(
            id_of(r#"{"samples":[[1,1,2,3]],"seq":41}"#),
            Some(ResendId::Seq(41))
        );
        assert_eq!(
            id_of(r#"{"samples":[[1,1,2,3]],"message_id":"b-7"}"#),
            Some(ResendId::MessageId("b-7".into()))
        );
        assert_eq!(id_of(r#"{"x":1,"y":2,"z":3,"seq":null}"#), None);
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"seq":-1}"#),
            "\"seq\" must be a non-negative integer, got -1"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"seq":1.5}"#),
            "\"seq\" must be a non-negative integer, got 1.5"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"seq":"1"}"#),
            "\"seq\" must be a non-negative integer, got a string"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"message_id":""}"#),
            "\"message_id\" must be a string of 1 to 128 bytes, got an empty string"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"message_id":5}"#),
            "\"message_id\" must be a string of 1 to 128 bytes, got 5"
        );
        let long = format!(
            r#"{{"x":1,"y":2,"z":3,"message_id":"{}"}}"#,
            "m".repeat(129)
        );
        assert_eq!(
            error_of(&long),
            "\"message_id\" must be a string of 1 to 128 bytes, got a string of 129 bytes"
        );
        assert_eq!(
            error_of(r#"{"x":1,"y":2,"z":3,"seq":1,"message_id":"a"}"#),
            "send \"seq\" or \"message_id\", not both"
        );
    }
}
