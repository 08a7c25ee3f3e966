//! Property tests for every parser that reads outside input: command rows, executor
//! metrics messages, control-link frames and strategy configs. None may panic, and
//! every rejection must explain itself.

use engine_manager::recorder::parse_metrics;
use engine_protocol::control::{encode_frame, ExecutorMessage, MAX_FRAME_BYTES};
use engine_protocol::messages::Status;
use engine_protocol::Channels;
use engine_store::commands::parse_command;
use proptest::prelude::*;
use serde_json::{json, Map, Value};
use uuid::Uuid;

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        prop_oneof![Just("leave"), Just("flatten"), Just("10"), Just("")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("timeout_s".to_string()),
                        Just("mode".to_string()),
                        Just("config".to_string()),
                        "[a-z_]{1,10}"
                    ],
                    inner
                ),
                0..4
            )
            .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

fn arb_status() -> impl Strategy<Value = Status> {
    prop::sample::select(Status::ALL.to_vec())
}

fn arb_uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Any frame an executor may send, text fields included (quotes, newlines, unicode).
fn arb_executor_message() -> impl Strategy<Value = ExecutorMessage> {
    prop_oneof![
        (arb_uuid(), any::<u32>(), arb_status()).prop_map(|(strategy_id, pid, status)| {
            ExecutorMessage::Hello {
                strategy_id,
                pid,
                status,
            }
        }),
        (
            arb_status(),
            prop::option::of(any::<String>()),
            prop::option::of(arb_uuid())
        )
            .prop_map(|(status, reason, command_id)| ExecutorMessage::State {
                status,
                reason,
                command_id,
            }),
        (arb_uuid(), any::<bool>(), prop::option::of(any::<String>())).prop_map(
            |(command_id, ok, error)| ExecutorMessage::Ack {
                command_id,
                ok,
                error,
            }
        ),
        any::<String>().prop_map(|reason| ExecutorMessage::Halted { reason }),
    ]
}

/// A decoded frame is either a message that survives its own round trip, or an error
/// that says what is wrong.
fn check_frame_decode(
    decoded: Result<ExecutorMessage, serde_json::Error>,
) -> Result<(), TestCaseError> {
    match decoded {
        Ok(msg) => {
            let frame = encode_frame(&msg);
            let back: ExecutorMessage = serde_json::from_slice(&frame[..frame.len() - 1])
                .map_err(|e| TestCaseError::fail(format!("re-encoded frame rejected: {e}")))?;
            prop_assert_eq!(back, msg);
        }
        Err(e) => prop_assert!(e.to_string().len() > 10, "terse error: {}", e),
    }
    Ok(())
}

fn arb_word() -> impl Strategy<Value = String> {
    prop_oneof![
        prop_oneof![
            Just("start"),
            Just("stop"),
            Just("restart"),
            Just("update"),
            Just("pause"),
            Just("resume"),
            Just("Stop "),
            Just("")
        ]
        .prop_map(str::to_string),
        ".{0,12}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn command_rows_never_panic_and_errors_explain(word in arb_word(), params in arb_json(), global in any::<bool>()) {
        match parse_command(&word, &params, global) {
            Ok(kind) => {
                prop_assert_eq!(kind.word(), word.as_str());
                prop_assert!(params.is_object());
                if global {
                    prop_assert!(["stop", "pause", "resume", "drain", "undrain"].contains(&kind.word()));
                }
            }
            Err(e) => prop_assert!(e.to_string().len() > 20, "terse error: {}", e),
        }
    }

    #[test]
    fn metrics_messages_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512), value in arb_json()) {
        let channels = Channels::new("p:");
        let id = Uuid::new_v4();
        let channel = channels.metrics(id);
        let _ = parse_metrics(&channels, &channel, &bytes);
        // A JSON object with our strategy_id and arbitrary other fields.
        let mut object = value.as_object().cloned().unwrap_or_default();
        object.insert("strategy_id".into(), json!(id.to_string()));
        let payload = Value::Object(object).to_string();
        if let Ok(row) = parse_metrics(&channels, &channel, payload.as_bytes()) {
            prop_assert_eq!(row.strategy_id, id);
        }
        // Claiming another strategy is always refused.
        let mut lying = value.as_object().cloned().unwrap_or_default();
        lying.insert("strategy_id".into(), json!(Uuid::new_v4().to_string()));
        prop_assert!(parse_metrics(&channels, &channel, Value::Object(lying).to_string().as_bytes()).is_err());
    }

    #[test]
    fn control_frames_round_trip(msg in arb_executor_message()) {
        let frame = encode_frame(&msg);
        prop_assert_eq!(frame.last(), Some(&b'\n'));
        let line = &frame[..frame.len() - 1];
        prop_assert!(!line.contains(&b'\n'), "a frame is one line");
        prop_assert!(frame.len() <= MAX_FRAME_BYTES);
        let back: ExecutorMessage = serde_json::from_slice(line).expect("a valid frame decodes");
        prop_assert_eq!(back, msg);
    }

    #[test]
    fn control_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), value in arb_json()) {
        check_frame_decode(serde_json::from_slice::<ExecutorMessage>(&bytes))?;
        check_frame_decode(serde_json::from_value::<ExecutorMessage>(value.clone()))?;
        // A JSON object that names a frame type but may lack or mistype its fields.
        for kind in ["hello", "state", "ack", "halted", "bogus"] {
            let mut object = value.as_object().cloned().unwrap_or_default();
            object.insert("type".into(), json!(kind));
            check_frame_decode(serde_json::from_value::<ExecutorMessage>(Value::Object(object)))?;
        }
    }

    #[test]
    fn strategy_configs_never_panic(value in arb_json()) {
        let registry = strategy_executor::strategies::builtin_registry();
        for strategy_type in registry.types() {
            if let Err(e) = registry.create(&strategy_type, &value) {
                prop_assert!(e.to_string().len() > 10);
            }
        }
    }
}
