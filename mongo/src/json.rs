//! JSON text ↔ BSON with key order kept (`serde_json`'s maps here sort their
//! keys, and a command's name must stay its first key), reading and writing
//! MongoDB Extended JSON for the types JSON lacks.

use bson::{Bson, Document};
use faultbox_protocols::client::ClientError;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// JSON as parsed, objects in their order.
enum Node {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

/// The key serde_json gives a number when `arbitrary_precision` is on.
const ARBITRARY_NUMBER: &str = "$serde_json::private::Number";

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
        Ok(Node::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
        Ok(Node::Number(n.into()))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Node, E> {
        serde_json::Number::from_f64(n)
            .map(Node::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }

    fn visit_str<E>(self, s: &str) -> Result<Node, E> {
        Ok(Node::String(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> Result<Node, E> {
        Ok(Node::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut pairs = Vec::new();
        while let Some(k) = map.next_key::<String>()? {
            // With serde_json's `arbitrary_precision` (which starlark turns on for
            // the whole build), a number arrives as a map of this one key and its
            // digits.
            if pairs.is_empty() && k == ARBITRARY_NUMBER {
                let digits: String = map.next_value()?;
                return digits
                    .parse::<serde_json::Number>()
                    .map(Node::Number)
                    .map_err(|e| de::Error::custom(format!("{digits}: {e}")));
            }
            pairs.push((k, map.next_value::<Node>()?));
        }
        Ok(Node::Object(pairs))
    }
}

/// Keys that make a one- or two-key object an Extended JSON value, not a document.
const EXTJSON: &[&str] = &[
    "$oid",
    "$date",
    "$numberLong",
    "$numberInt",
    "$numberDouble",
    "$numberDecimal",
    "$binary",
    "$uuid",
    "$regularExpression",
    "$timestamp",
    "$minKey",
    "$maxKey",
    "$undefined",
    "$symbol",
    "$code",
    "$dbPointer",
];

fn plain(node: Node) -> serde_json::Value {
    match node {
        Node::Null => serde_json::Value::Null,
        Node::Bool(b) => b.into(),
        Node::Number(n) => serde_json::Value::Number(n),
        Node::String(s) => s.into(),
        Node::Array(a) => a.into_iter().map(plain).collect(),
        Node::Object(o) => {
            serde_json::Value::Object(o.into_iter().map(|(k, v)| (k, plain(v))).collect())
        }
    }
}

fn bson(node: Node) -> Result<Bson, String> {
    Ok(match node {
        Node::Null => Bson::Null,
        Node::Bool(b) => Bson::Boolean(b),
        Node::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => match i32::try_from(i) {
                Ok(i) => Bson::Int32(i),
                Err(_) => Bson::Int64(i),
            },
            (None, Some(f)) if n.is_f64() => Bson::Double(f),
            _ => return Err(format!("{n} does not fit a 64-bit integer")),
        },
        Node::String(s) => Bson::String(s),
        Node::Array(a) => Bson::Array(a.into_iter().map(bson).collect::<Result<_, _>>()?),
        Node::Object(o) => {
            if o.len() <= 2
                && o.first()
                    .is_some_and(|(k, _)| EXTJSON.contains(&k.as_str()))
            {
                let text = plain(Node::Object(o));
                return Bson::try_from(text.clone())
                    .map_err(|e| format!("{text} is not valid Extended JSON: {e}"));
            }
            let mut d = Document::new();
            for (k, v) in o {
                d.insert(k, bson(v)?);
            }
            Bson::Document(d)
        }
    })
}

fn parse(text: &str, what: &str) -> Result<Node, ClientError> {
    serde_json::from_str(text).map_err(|e| ClientError::Invalid(format!("{what}=: not JSON: {e}")))
}

/// The document in `text`, a JSON object (`what` names the keyword in errors).
pub fn document(text: &str, what: &str) -> Result<Document, ClientError> {
    match bson(parse(text, what)?) {
        Ok(Bson::Document(d)) => Ok(d),
        Ok(other) => Err(ClientError::Invalid(format!(
            "{what}=: a document (a JSON object), not {other}"
        ))),
        Err(e) => Err(ClientError::Invalid(format!("{what}=: {e}"))),
    }
}

/// What an update step's `update=` holds.
pub enum Update {
    /// Operators (`{"$set": ...}`) or a pipeline.
    Modifications(mongodb::options::UpdateModifications),
    /// A whole new document.
    Replacement(Document),
}

pub fn update(text: &str) -> Result<Update, ClientError> {
    let invalid = |e: String| ClientError::Invalid(format!("update=: {e}"));
    match bson(parse(text, "update")?).map_err(invalid)? {
        Bson::Document(d) if d.keys().next().is_some_and(|k| k.starts_with('$')) => Ok(
            Update::Modifications(mongodb::options::UpdateModifications::Document(d)),
        ),
        Bson::Document(d) => Ok(Update::Replacement(d)),
        Bson::Array(stages) => {
            let stages = stages
                .into_iter()
                .map(|s| match s {
                    Bson::Document(d) => Ok(d),
                    other => Err(invalid(format!("a pipeline holds documents, not {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Update::Modifications(
                mongodb::options::UpdateModifications::Pipeline(stages),
            ))
        }
        other => Err(invalid(format!("a document or a pipeline, not {other}"))),
    }
}

/// A document of `pairs`.
pub(crate) fn object<const N: usize>(pairs: [(&str, Bson); N]) -> Bson {
    let mut d = Document::new();
    for (k, v) in pairs {
        d.insert(k, v);
    }
    Bson::Document(d)
}

/// Appends `value` to `out` as relaxed Extended JSON, document keys in order.
pub fn write(value: &Bson, out: &mut String) {
    match value {
        Bson::Document(d) => {
            out.push('{');
            for (i, (k, v)) in d.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push(':');
                write(v, out);
            }
            out.push('}');
        }
        Bson::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(v, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.clone().into_relaxed_extjson().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(text: &str) -> String {
        let mut out = String::new();
        write(
            &Bson::Document(document(text, "document").unwrap()),
            &mut out,
        );
        out
    }

    #[test]
    fn order_and_types_round_trip() {
        let text = r#"{"z":1,"a":{"y":[1.5,"x",null,true],"b":4294967296},"$db":"x"}"#;
        assert_eq!(round(text), text);
        let d = document(text, "d").unwrap();
        assert_eq!(d.keys().next().unwrap(), "z");
        assert!(matches!(d.get("z"), Some(Bson::Int32(1))));
        assert!(matches!(
            d.get_document("a").unwrap().get("b"),
            Some(Bson::Int64(_))
        ));
        // Extended JSON comes back as it went in.
        let oid = r#"{"_id":{"$oid":"6b0b3cb0135934933b2123fa"},"n":{"$numberLong":"5"}}"#;
        assert!(matches!(
            document(oid, "d").unwrap().get("_id"),
            Some(Bson::ObjectId(_))
        ));
        assert_eq!(
            round(oid),
            r#"{"_id":{"$oid":"6b0b3cb0135934933b2123fa"},"n":5}"#
        );
        // Operators are documents, not Extended JSON.
        assert_eq!(round(r#"{"n":{"$gt":1}}"#), r#"{"n":{"$gt":1}}"#);
    }

    #[test]
    fn bad_documents_are_named() {
        for (text, want) in [
            ("[1]", "a document"),
            ("{", "not JSON"),
            (r#"{"a":{"$oid":"nope"}}"#, "Extended JSON"),
            ("{\"a\": 18446744073709551615}", "64-bit"),
        ] {
            let e = document(text, "filter").unwrap_err().to_string();
            assert!(e.contains("filter=") && e.contains(want), "{text}: {e}");
        }
        assert!(matches!(
            update(r#"{"$set":{"a":1}}"#),
            Ok(Update::Modifications(_))
        ));
        assert!(matches!(update(r#"{"a":1}"#), Ok(Update::Replacement(_))));
        assert!(matches!(
            update(r#"[{"$set":{"a":1}}]"#),
            Ok(Update::Modifications(_))
        ));
        assert!(update("3").is_err());
    }
}
