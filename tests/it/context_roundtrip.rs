//! Property: arbitrary JSON in a context entry nobody knows survives a trip through three
//! services (three runtimes, each changing an entry of its own) byte for byte.

use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{Value, json};
use structured_cooperation::{ContextKey, CooperationContext, Saga, StepContext, StepResult};

use crate::util::{TestDb, WAIT};

struct Hops;
impl ContextKey for Hops {
    const NAME: &'static str = "Hops";
    type Value = u32;
}

/// A service that counts itself in the context and passes it on (or, last, records what
/// arrived).
fn service(name: &str, next: Option<&'static str>, seen: Arc<Mutex<Vec<String>>>) -> Saga {
    Saga::builder(name)
        .step(move |ctx: &mut StepContext<'_>, _: &Value| -> StepResult {
            let hops = ctx.context().get::<Hops>()?.unwrap_or(0);
            ctx.context_mut().set::<Hops>(&(hops + 1))?;
            match next {
                Some(topic) => {
                    ctx.emit(topic, &json!({}))?;
                }
                None => {
                    let raw = ctx.context().get_raw("Foreign").unwrap_or("<missing>");
                    seen.lock().unwrap().push(format!("{hops}:{raw}"));
                }
            }
            Ok(())
        })
        .build()
        .unwrap()
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 40, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A pseudo-random choice in `0..n` (a linear congruential step over `seed`).
fn pick(seed: &mut u64, n: u64) -> u64 {
    *seed = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (*seed >> 33) % n
}

/// Renders `value` as JSON text in one of many equivalent spellings (chosen by `seed`):
/// whitespace between tokens, `\uXXXX` and short escapes, exponents — text that a service
/// re-serializing the entry would not reproduce.
fn render(value: &Value, seed: &mut u64, out: &mut String) {
    let space = |out: &mut String, p: u64| {
        out.push_str(match p {
            0 => " ",
            1 => "\n  ",
            2 => "\t",
            _ => "",
        })
    };
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let text = n.to_string();
            match (n.as_i64(), pick(seed, 3)) {
                (Some(i), 0) => out.push_str(&format!("{i}e0")),
                (Some(i), 1) if i >= 0 => out.push_str(&format!("{i}.000")),
                _ => out.push_str(&text),
            }
        }
        Value::String(s) => {
            out.push('"');
            for c in s.chars() {
                match (c, pick(seed, 4)) {
                    ('"', _) => out.push_str("\\\""),
                    ('\\', _) => out.push_str("\\\\"),
                    ('/', 0) => out.push_str("\\/"),
                    ('\n', 1) => out.push_str("\\n"),
                    (c, _) if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                    (c, 2) => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.push_str(&format!("\\u{unit:04X}"));
                        }
                    }
                    (c, _) => out.push(c),
                }
            }
            out.push('"');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, pick(seed, 5));
                render(item, seed, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                space(out, pick(seed, 5));
                render(&Value::String(k.clone()), seed, out);
                out.push(':');
                space(out, pick(seed, 5));
                render(v, seed, out);
            }
            out.push('}');
        }
    }
}

#[test]
fn unknown_entries_survive_three_services_byte_for_byte() {
    let db = TestDb::new("context_roundtrip");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let a = db
        .runtime()
        .workers(1)
        .subscribe("svc-a", service("service-a", Some("svc-b"), seen.clone()))
        .start()
        .unwrap();
    let b = db
        .runtime()
        .workers(1)
        .subscribe("svc-b", service("service-b", Some("svc-c"), seen.clone()))
        .start()
        .unwrap();
    let c = db
        .runtime()
        .workers(1)
        .subscribe("svc-c", service("service-c", None, seen.clone()))
        .start()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&(json_value(), any::<u64>()), |(value, mut seed)| {
            let mut raw = String::new();
            render(&value, &mut seed, &mut raw);
            // The rendering is valid JSON (for the same value, up to number types).
            serde_json::from_str::<Value>(&raw)
                .map_err(|e| TestCaseError::fail(format!("{e}: {raw}")))?;
            let mut context = CooperationContext::new();
            context.set_raw("Foreign", &raw).unwrap();
            seen.lock().unwrap().clear();
            let id = a.launch_with("svc-a", &json!({}), &context).unwrap();
            prop_assert!(a.wait_for(id, WAIT).unwrap().is_committed());
            let got = seen.lock().unwrap().clone();
            prop_assert_eq!(got, vec![format!("2:{raw}")]);
            Ok(())
        })
        .unwrap();
    for runtime in [a, b, c] {
        runtime.shutdown().unwrap();
    }
}
