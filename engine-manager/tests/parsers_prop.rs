//! Property tests for every parser that reads outside input: command rows, executor
//! metrics messages, control-link frames and strategy configs. None may panic, and
//! every rejection must explain itself.

use engine_manager::recorder::parse_metrics;
use engine_protocol::control::ExecutorMessage;
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
                    prop_assert!(["stop", "pause", "resume"].contains(&kind.word()));
                }
            }
            Err(e) => prop_assert!(e.len() > 20, "terse error: {}", e),
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
    fn control_frames_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256), value in arb_json()) {
        let _ = serde_json::from_slice::<ExecutorMessage>(&bytes);
        let _ = serde_json::from_value::<ExecutorMessage>(value);
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
