//! gRPC message schemas for the `call` step: `.proto` files compiled at run time
//! (protox, no `protoc`), methods looked up by their `/pkg.Service/Method` path,
//! and JSON turned into request bytes and response bytes into JSON with the proto3
//! JSON mapping. Pure computation: the spec crate uses it to refuse a bad method or
//! body where the step is written, the step client to marshal what it sends.
//!
//! JSON choices (the mapping allows each): responses keep the `.proto`'s field
//! names (requests take those or lowerCamelCase), print every field including
//! defaults, and give 64-bit integers as numbers (Starlark ints have no precision
//! limit); enums are names, bytes base64, as the mapping says.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MethodDescriptor, SerializeOptions,
};

/// Why a schema, method or message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    /// The `.proto` could not be read or compiled.
    #[error("compiling {path}: {message}")]
    Proto { path: String, message: String },
    /// Not of the form `/pkg.Service/Method`.
    #[error("method {0:?} is not of the form \"/package.Service/Method\"")]
    MethodName(String),
    #[error("no service {service:?} in {source_name} (services: {known})")]
    NoService {
        service: String,
        source_name: String,
        known: String,
    },
    #[error("service {service:?} has no method {method:?} (methods: {known})")]
    NoMethod {
        service: String,
        method: String,
        known: String,
    },
    /// Only unary methods are called by steps.
    #[error("{0} is a streaming method: call() makes unary calls only")]
    Streaming(String),
    /// The body is not JSON, or does not fit the request message.
    #[error("body does not fit {message}: {error}")]
    Body { message: String, error: String },
    /// The server's bytes do not decode as the response message.
    #[error("the response does not decode as {message}: {error}")]
    Response { message: String, error: String },
    /// Descriptors a server sent (reflection) do not form a schema.
    #[error("the server's descriptors: {0}")]
    Descriptors(String),
}

/// The descriptors of `proto` and everything it imports, compiled once per path
/// for the life of the process. Imports are looked up beside `proto` (and the
/// well-known `google/protobuf/*.proto` are built in).
pub fn load(proto: &Path) -> Result<DescriptorPool, SchemaError> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, DescriptorPool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(pool) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(proto) {
        return Ok(pool.clone());
    }
    let failed = |message: String| SchemaError::Proto {
        path: proto.display().to_string(),
        message,
    };
    if !proto.is_file() {
        return Err(failed("no such file".into()));
    }
    let dir = proto
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = proto
        .file_name()
        .ok_or_else(|| failed("not a file name".into()))?;
    let mut compiler = protox::Compiler::new([dir]).map_err(|e| failed(protox_error(&e)))?;
    compiler.include_imports(true);
    compiler
        .open_file(name)
        .map_err(|e| failed(protox_error(&e)))?;
    let pool = compiler.descriptor_pool();
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(proto.to_path_buf(), pool.clone());
    Ok(pool)
}

/// A protox error with its place in the `.proto` (`file:line:column`) when it has one.
fn protox_error(e: &protox::Error) -> String {
    use miette::Diagnostic;
    let place = (|| {
        let src = e.source_code()?;
        let label = e.labels()?.next()?;
        let at = src.read_span(label.inner(), 0, 0).ok()?;
        Some(format!(
            "{}:{}:{}: ",
            e.file().unwrap_or("?"),
            at.line() + 1,
            at.column() + 1
        ))
    })();
    format!("{}{e}", place.unwrap_or_default())
}

/// `(service, method)` of `/pkg.Service/Method` (the leading `/` may be left out).
pub fn split_method(path: &str) -> Result<(&str, &str), SchemaError> {
    let bad = || SchemaError::MethodName(path.to_string());
    let rest = path.strip_prefix('/').unwrap_or(path);
    let (service, method) = rest.split_once('/').ok_or_else(bad)?;
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|p| {
                !p.is_empty()
                    && !p.starts_with(|c: char| c.is_ascii_digit())
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    };
    if !ident(service) || !ident(method) || method.contains('.') {
        return Err(bad());
    }
    Ok((service, method))
}

/// The unary method `path` (`/pkg.Service/Method`) in `pool`; `source_name` says
/// where the pool came from, for errors.
pub fn method(
    pool: &DescriptorPool,
    path: &str,
    source_name: &str,
) -> Result<MethodDescriptor, SchemaError> {
    let (service, name) = split_method(path)?;
    let svc = pool
        .get_service_by_name(service)
        .ok_or_else(|| SchemaError::NoService {
            service: service.to_string(),
            source_name: source_name.to_string(),
            known: list(pool.services().map(|s| s.full_name().to_string())),
        })?;
    let m = svc
        .methods()
        .find(|m| m.name() == name)
        .ok_or_else(|| SchemaError::NoMethod {
            service: service.to_string(),
            method: name.to_string(),
            known: list(svc.methods().map(|m| m.name().to_string())),
        })?;
    if m.is_client_streaming() || m.is_server_streaming() {
        return Err(SchemaError::Streaming(format!("/{service}/{name}")));
    }
    Ok(m)
}

fn list(names: impl Iterator<Item = String>) -> String {
    let v: Vec<String> = names.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The request message of `method` from JSON text (an empty text is the empty
/// message), as wire bytes. Unknown fields are refused.
pub fn encode(method: &MethodDescriptor, json: &str) -> Result<Vec<u8>, SchemaError> {
    let desc = method.input();
    let bad = |error: String| SchemaError::Body {
        message: desc.full_name().to_string(),
        error,
    };
    let json = if json.trim().is_empty() { "{}" } else { json };
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    // The path to the offending value (`address.zip`, `tags[2]`) goes in the error.
    let mut track = serde_path_to_error::Track::new();
    let msg = DynamicMessage::deserialize_with_options(
        desc.clone(),
        serde_path_to_error::Deserializer::new(Json::from(value), &mut track),
        &DeserializeOptions::new().deny_unknown_fields(true),
    )
    .map_err(|e| {
        let path = track.path().to_string();
        bad(if path.is_empty() || path == "." {
            e.to_string()
        } else {
            format!("at {path}: {e}")
        })
    })?;
    Ok(msg.encode_to_vec())
}

/// Parsed JSON that hands numbers to a deserializer as numbers. serde_json's own
/// deserializers do not once a crate in the build turns on its
/// `arbitrary_precision` feature (starlark does): a float then arrives as a map,
/// which the proto3 JSON parser refuses.
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
    Text(String),
    List(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl From<serde_json::Value> for Json {
    fn from(v: serde_json::Value) -> Self {
        use serde_json::Value as V;
        match v {
            V::Null => Json::Null,
            V::Bool(b) => Json::Bool(b),
            V::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Json::Int(i),
                (None, Some(u)) => Json::Uint(u),
                _ => Json::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            V::String(s) => Json::Text(s),
            V::Array(a) => Json::List(a.into_iter().map(Json::from).collect()),
            V::Object(o) => Json::Object(o.into_iter().map(|(k, v)| (k, Json::from(v))).collect()),
        }
    }
}

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for Json {
    type Deserializer = Json;

    fn into_deserializer(self) -> Json {
        self
    }
}

impl<'de> serde::Deserializer<'de> for Json {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        use serde::de::value::{MapDeserializer, SeqDeserializer};
        match self {
            Json::Null => v.visit_unit(),
            Json::Bool(b) => v.visit_bool(b),
            Json::Int(i) => v.visit_i64(i),
            Json::Uint(u) => v.visit_u64(u),
            Json::Float(f) => v.visit_f64(f),
            Json::Text(s) => v.visit_string(s),
            Json::List(items) => v.visit_seq(SeqDeserializer::new(items.into_iter())),
            Json::Object(fields) => v.visit_map(MapDeserializer::new(fields.into_iter())),
        }
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(self, v: V) -> Result<V::Value, Self::Error> {
        match self {
            Json::Null => v.visit_none(),
            other => v.visit_some(other),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// The response message of `method` in `bytes`, as JSON.
pub fn decode(method: &MethodDescriptor, bytes: &[u8]) -> Result<serde_json::Value, SchemaError> {
    let desc = method.output();
    let bad = |error: String| SchemaError::Response {
        message: desc.full_name().to_string(),
        error,
    };
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| bad(e.to_string()))?;
    msg.serialize_with_options(
        serde_json::value::Serializer,
        &SerializeOptions::new()
            .stringify_64_bit_integers(false)
            .use_proto_field_name(true)
            .skip_default_fields(false),
    )
    .map_err(|e| bad(e.to_string()))
}

/// A pool from serialized `FileDescriptorProto`s in any order (what server
/// reflection sends).
pub fn pool_from_files(files: &[Vec<u8>]) -> Result<DescriptorPool, SchemaError> {
    let protos = files
        .iter()
        .map(|f| prost_types::FileDescriptorProto::decode(f.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SchemaError::Descriptors(e.to_string()))?;
    let mut pool = DescriptorPool::new();
    pool.add_file_descriptor_protos(protos)
        .map_err(|e| SchemaError::Descriptors(e.to_string()))?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> (tempdir::Dir, DescriptorPool) {
        let dir = tempdir::Dir::new();
        std::fs::write(
            dir.0.join("t.proto"),
            r#"syntax = "proto3";
package t.v1;
import "google/protobuf/timestamp.proto";
enum Kind { KIND_UNSPECIFIED = 0; KIND_A = 1; }
message Inner { string s = 1; }
message Req { int64 big = 1; string name = 2; bool on = 3; repeated int32 xs = 4;
  Inner inner = 5; Kind kind = 6; bytes raw = 7; google.protobuf.Timestamp at = 8;
  map<string, int32> m = 9; double d = 10; }
service S { rpc Get(Req) returns (Req); rpc Watch(Req) returns (stream Req); }
"#,
        )
        .unwrap();
        let p = load(&dir.0.join("t.proto")).unwrap();
        (dir, p)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "faultbox-grpc-schema-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn round_trip_keeps_every_type() {
        let (_d, pool) = pool();
        let m = method(&pool, "/t.v1.S/Get", "t.proto").unwrap();
        let bytes = encode(
            &m,
            r#"{"big": 9007199254740993, "name": "é", "on": true, "xs": [1, -2],
                "inner": {"s": "x"}, "kind": "KIND_A", "raw": "AAE=",
                "at": "2024-01-02T03:04:05Z", "m": {"k": 3}, "d": 1.5}"#,
        )
        .unwrap();
        let v = decode(&m, &bytes).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"big": 9007199254740993i64, "name": "é", "on": true,
                "xs": [1, -2], "inner": {"s": "x"}, "kind": "KIND_A", "raw": "AAE=",
                "at": "2024-01-02T03:04:05Z", "m": {"k": 3}, "d": 1.5})
        );
        // Defaults are printed; lowerCamelCase names are accepted on the way in.
        let v = decode(&m, &encode(&m, "").unwrap()).unwrap();
        assert_eq!(v["big"], 0);
        assert_eq!(v["on"], false);
        assert_eq!(v["kind"], "KIND_UNSPECIFIED");
    }

    #[test]
    fn refusals_say_why() {
        let (d, pool) = pool();
        let e = |p: &str| method(&pool, p, "t.proto").unwrap_err().to_string();
        assert!(
            e("/t.v1.S/Nope").contains("no method \"Nope\""),
            "{}",
            e("/t.v1.S/Nope")
        );
        assert!(e("/t.v1.X/Get").contains("services: t.v1.S"));
        assert!(e("t.v1.S.Get").contains("is not of the form"));
        assert!(e("/t.v1.S/Watch").contains("streaming"));
        let m = method(&pool, "t.v1.S/Get", "t.proto").unwrap();
        let err = encode(&m, r#"{"nope": 1}"#).unwrap_err().to_string();
        assert!(
            err.contains("body does not fit t.v1.Req") && err.contains("nope"),
            "{err}"
        );
        let err = encode(&m, r#"{"inner": {"s": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at inner.s: "), "{err}");
        assert!(encode(&m, r#"{"big": "x"}"#).is_err());
        assert!(encode(&m, r#"{"kind": "KIND_Z"}"#).is_err());
        assert!(encode(&m, "{} trailing").is_err());
        assert!(decode(&m, &[0xff, 0xff]).is_err());
        let missing = load(&d.0.join("missing.proto")).unwrap_err().to_string();
        assert!(missing.contains("missing.proto: no such file"), "{missing}");
        std::fs::write(d.0.join("bad.proto"), "syntax = \"proto3\";\nmessage {\n").unwrap();
        let bad = load(&d.0.join("bad.proto")).unwrap_err().to_string();
        assert!(bad.contains("bad.proto:2:"), "{bad}");
    }
}
