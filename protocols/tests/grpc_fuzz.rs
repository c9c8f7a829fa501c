//! The gRPC step's marshalling takes whatever a server or a spec gives it without
//! panicking: arbitrary bytes as a response, arbitrary JSON as a request body,
//! arbitrary descriptors as a server's reflection answer. Messages built from
//! random values survive JSON -> wire -> JSON unchanged.

use std::path::PathBuf;
use std::sync::OnceLock;

use faultbox_protocols::client::grpc_schema::{self, SchemaError};
use proptest::prelude::*;
use prost_reflect::MethodDescriptor;
use serde_json::{json, Value};

const PROTO: &str = r#"syntax = "proto3";
package fuzz.v1;
enum Color { COLOR_UNSPECIFIED = 0; RED = 1; GREEN = 2; }
message Leaf { string s = 1; sint32 z = 2; }
message Msg {
  int64 i64 = 1; uint64 u64 = 2; int32 i32 = 3; string s = 4; bool b = 5;
  repeated string tags = 6; Leaf leaf = 7; Color color = 8; bytes raw = 9;
  repeated Leaf leaves = 10; map<string, int64> m = 11; fixed32 f32 = 12;
  optional string maybe = 13;
  oneof pick { string text = 14; int32 num = 15; }
}
service Fuzz { rpc Echo(Msg) returns (Msg); }
"#;

/// The Echo method, from a .proto written once per test process.
fn echo() -> &'static MethodDescriptor {
    static M: OnceLock<MethodDescriptor> = OnceLock::new();
    M.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("faultbox-grpc-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path: PathBuf = dir.join("fuzz.proto");
        std::fs::write(&path, PROTO).unwrap();
        let pool = grpc_schema::load(&path).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        grpc_schema::method(&pool, "/fuzz.v1.Fuzz/Echo", "fuzz.proto").unwrap()
    })
}

/// Random JSON, biased toward the message's own field names.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("i64".to_string()),
        Just("s".to_string()),
        Just("leaf".to_string()),
        Just("tags".to_string()),
        Just("color".to_string()),
        Just("m".to_string()),
        Just("raw".to_string()),
        Just("text".to_string()),
        Just("num".to_string()),
        "[a-z]{1,4}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,8}".prop_map(Value::String),
        Just(json!("RED")),
        Just(json!("NaN")),
        Just(json!("AAE=")),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A message as `.data` prints it, from random values.
fn any_msg() -> impl Strategy<Value = Value> {
    (
        any::<i64>(),
        any::<u64>(),
        any::<i32>(),
        "\\PC{0,12}",
        any::<bool>(),
        prop::collection::vec("[a-z]{0,5}", 0..4),
        prop::option::of(("\\PC{0,6}", any::<i32>())),
        prop_oneof![Just("COLOR_UNSPECIFIED"), Just("RED"), Just("GREEN")],
        prop::collection::vec(any::<u8>(), 0..8),
        prop::collection::btree_map("[a-z]{1,3}", any::<i64>(), 0..3),
        any::<u32>(),
    )
        .prop_map(
            |(i64v, u64v, i32v, s, b, tags, leaf, color, raw, m, f32v)| {
                let mut v = json!({
                    "i64": i64v, "u64": u64v, "i32": i32v, "s": s, "b": b, "tags": tags,
                    "color": color, "raw": base64(&raw), "leaves": [], "m": m, "f32": f32v,
                });
                if let Some((ls, z)) = leaf {
                    v["leaf"] = json!({"s": ls, "z": z});
                }
                v
            },
        )
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn any_response_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        match grpc_schema::decode(echo(), &bytes) {
            Ok(v) => prop_assert!(v.is_object()),
            Err(e) => prop_assert!(matches!(e, SchemaError::Response { .. }), "{e}"),
        }
    }

    #[test]
    fn any_json_body_encodes_or_fails_cleanly(v in any_json()) {
        let text = v.to_string();
        match grpc_schema::encode(echo(), &text) {
            // What was accepted decodes again.
            Ok(bytes) => { grpc_schema::decode(echo(), &bytes).unwrap(); }
            Err(e) => prop_assert!(matches!(e, SchemaError::Body { .. }), "{e}"),
        }
    }

    #[test]
    fn any_text_body_encodes_or_fails_cleanly(text in "\\PC{0,40}") {
        let _ = grpc_schema::encode(echo(), &text);
    }

    #[test]
    fn messages_round_trip(v in any_msg()) {
        let bytes = grpc_schema::encode(echo(), &v.to_string()).unwrap();
        prop_assert_eq!(grpc_schema::decode(echo(), &bytes).unwrap(), v);
    }

    #[test]
    fn any_reflection_answer_builds_a_pool_or_fails_cleanly(
        files in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4)
    ) {
        let _ = grpc_schema::pool_from_files(&files);
    }
}
