//! gRPC: unary and streaming calls over HTTP/2.
//!
//! The relay terminates HTTP/2 ([`crate::http2`]) and acts per call (per stream);
//! there is no byte framer, so [`Grpc::conversation`] only serves a connection that
//! does not start with the HTTP/2 preface: it is relayed unchanged and reported.
//!
//! - Match key: `method`, the call's `:path` (`/pkg.Service/Method`), compared
//!   case-insensitively like every `method=`.
//! - `error(status=, message=)`: a trailers-only response (HTTP 200,
//!   `content-type: application/grpc`, `grpc-status`, `grpc-message`
//!   percent-encoded), which a client raises as that status. `status=` is a code
//!   number (0 to 16) or name (`"UNAVAILABLE"`, case-insensitive); the default is
//!   UNKNOWN (2), as a server's uncaught exception gives. Status 0 (OK) is refused:
//!   it is `response()`.
//! - `response(body=)`: a successful call (grpc-status 0) with one response
//!   message: without `body=` the empty message (every field at its default), or
//!   the message's protobuf encoding given as `hex:` and hex digits (JSON would need
//!   the service's descriptors, which the relay does not have).
//! - `delay(delay=)` holds the call, then forwards it; `drop()` resets the client's
//!   whole connection (and the relay's to the service): every call in flight on it
//!   fails as UNAVAILABLE, as when the network drops.

use crate::common::{Framer, Latched};
use crate::{ActionKind, Answer, Code, Conversation, Opaque, Protocol, Reply, Request};

/// gRPC over HTTP/2.
pub struct Grpc;

impl Protocol for Grpc {
    fn name(&self) -> &'static str {
        "grpc"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["method"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Response | ActionKind::Error | ActionKind::Delay | ActionKind::Drop
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(NotHttp2)
    }
}

/// A connection to a gRPC interface that did not start with the HTTP/2 preface.
struct NotHttp2;

impl Framer for NotHttp2 {
    fn client(&mut self, _: &[u8]) -> Result<Vec<Request>, Opaque> {
        Err(Opaque(
            "grpc: the connection does not start with the HTTP/2 preface".into(),
        ))
    }

    fn server(&mut self, _: &[u8]) -> Result<usize, Opaque> {
        Err(Opaque(
            "grpc: the server spoke before an HTTP/2 client did".into(),
        ))
    }

    fn answer(&mut self, _: &Request, _: &Answer) -> Result<Reply, String> {
        Err("grpc: not HTTP/2".into())
    }
}

/// gRPC status codes by number.
pub const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The status `error()` gives without `status=`: UNKNOWN.
pub const DEFAULT_ERROR: u32 = 2;

/// Why a rule's answer cannot be given as gRPC.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrpcError {
    #[error("grpc: status {0} is not a gRPC status code (0 to 16)")]
    OutOfRange(i64),
    #[error("grpc: status {0:?} is not a gRPC status name (OK, CANCELLED, ..., UNAVAILABLE, ..., UNAUTHENTICATED)")]
    UnknownName(String),
    #[error("grpc: error(status=0) would be a success: use response() for an OK call")]
    ErrorWithOk,
    #[error("grpc: response() is a successful call; give a failing status with error(status={0})")]
    ResponseStatus(i64),
    #[error("grpc: response(body=) takes the response message's protobuf encoding as \"hex:...\" (JSON needs the service's descriptors, which the relay does not have): {0}")]
    Body(String),
}

/// The number of a status given as a number or a name (`"UNAVAILABLE"`,
/// `"unavailable"`, or digits).
pub fn status_code(code: &Code) -> Result<u32, GrpcError> {
    match code {
        Code::Number(n) => u32::try_from(*n)
            .ok()
            .filter(|n| *n <= 16)
            .ok_or(GrpcError::OutOfRange(*n)),
        Code::Text(t) => {
            if let Ok(n) = t.trim().parse::<i64>() {
                return status_code(&Code::Number(n));
            }
            CODES
                .iter()
                .position(|c| c.eq_ignore_ascii_case(t.trim()))
                .map(|i| i as u32)
                .ok_or_else(|| GrpcError::UnknownName(t.clone()))
        }
    }
}

/// `grpc-message`'s encoding: bytes outside printable ASCII, and `%`, as `%XX`.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A response message's protobuf encoding from `response(body=)`: none is the
/// empty message; `hex:` then hex digits (spaces allowed) is the encoding itself.
pub fn response_message(body: Option<&str>) -> Result<Vec<u8>, GrpcError> {
    let Some(body) = body else {
        return Ok(Vec::new());
    };
    let Some(hex) = body.strip_prefix("hex:") else {
        return Err(GrpcError::Body(format!("got {body:?}")));
    };
    let digits: Vec<u8> = hex.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(GrpcError::Body("an odd number of hex digits".into()));
    }
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).unwrap_or("??");
            u8::from_str_radix(s, 16).map_err(|_| GrpcError::Body(format!("{s:?} is not hex")))
        })
        .collect()
}

/// A gRPC answer given in the server's place, ready for an HTTP/2 response: HTTP
/// status 200, `content-type: application/grpc`, then either everything in the
/// headers (`body` and `trailers` empty: trailers-only) or one message and trailers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrpcReply {
    /// Headers after `:status` and `content-type`.
    pub headers: Vec<(&'static str, String)>,
    /// The length-prefixed message, if the call succeeds.
    pub body: Vec<u8>,
    pub trailers: Vec<(&'static str, String)>,
    /// The status given, for the trace.
    pub status: u32,
}

/// The response that gives `answer` to a gRPC call.
pub fn answer(answer: &Answer) -> Result<GrpcReply, GrpcError> {
    match answer {
        Answer::Error { message, status } => {
            let code = match status {
                None => DEFAULT_ERROR,
                Some(c) => status_code(c)?,
            };
            if code == 0 {
                return Err(GrpcError::ErrorWithOk);
            }
            let mut headers = vec![("grpc-status", code.to_string())];
            if let Some(m) = message {
                headers.push(("grpc-message", percent_encode(m)));
            }
            Ok(GrpcReply {
                headers,
                body: Vec::new(),
                trailers: Vec::new(),
                status: code,
            })
        }
        Answer::Response { status, body, .. } => {
            if let Some(s) = status.filter(|s| *s != 0) {
                return Err(GrpcError::ResponseStatus(s));
            }
            let message = response_message(body.as_deref())?;
            let mut framed = Vec::with_capacity(5 + message.len());
            framed.push(0);
            framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
            framed.extend_from_slice(&message);
            Ok(GrpcReply {
                headers: Vec::new(),
                body: framed,
                trailers: vec![("grpc-status", "0".into())],
                status: 0,
            })
        }
    }
}

/// Refuses, at spec load, an answer [`answer`] could not give.
pub fn check(answer: &Answer) -> Result<(), GrpcError> {
    self::answer(answer).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_by_number_or_name() {
        assert_eq!(status_code(&Code::Number(14)), Ok(14));
        assert_eq!(status_code(&Code::Text("UNAVAILABLE".into())), Ok(14));
        assert_eq!(status_code(&Code::Text("resource_exhausted".into())), Ok(8));
        assert_eq!(status_code(&Code::Text("5".into())), Ok(5));
        assert_eq!(
            status_code(&Code::Number(17)),
            Err(GrpcError::OutOfRange(17))
        );
        assert!(status_code(&Code::Number(-1)).is_err());
        assert!(status_code(&Code::Text("BROKEN".into())).is_err());
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("disk full"), "disk full");
        assert_eq!(percent_encode("50% off\n"), "50%25 off%0A");
        assert_eq!(percent_encode("é"), "%C3%A9");
    }

    #[test]
    fn an_error_is_trailers_only() {
        let r = answer(&Answer::Error {
            message: Some("no backend".into()),
            status: Some(Code::Text("UNAVAILABLE".into())),
        })
        .unwrap();
        assert_eq!(
            r.headers,
            vec![
                ("grpc-status", "14".to_string()),
                ("grpc-message", "no backend".to_string())
            ]
        );
        assert!(r.body.is_empty() && r.trailers.is_empty());
        let r = answer(&Answer::Error {
            message: None,
            status: None,
        })
        .unwrap();
        assert_eq!(r.status, DEFAULT_ERROR);
        assert_eq!(
            answer(&Answer::Error {
                message: None,
                status: Some(Code::Number(0)),
            }),
            Err(GrpcError::ErrorWithOk)
        );
    }

    #[test]
    fn a_response_carries_one_message_and_status_ok() {
        let r = answer(&Answer::Response {
            status: None,
            body: None,
            value: None,
        })
        .unwrap();
        assert_eq!(r.body, vec![0, 0, 0, 0, 0]);
        assert_eq!(r.trailers, vec![("grpc-status", "0".to_string())]);
        let r = answer(&Answer::Response {
            status: Some(0),
            body: Some("hex:0a 03 61 62 63".into()),
            value: None,
        })
        .unwrap();
        assert_eq!(r.body, vec![0, 0, 0, 0, 5, 0x0a, 3, b'a', b'b', b'c']);
        for bad in ["{\"a\":1}", "hex:0", "hex:zz"] {
            assert!(
                matches!(
                    answer(&Answer::Response {
                        status: None,
                        body: Some(bad.into()),
                        value: None,
                    }),
                    Err(GrpcError::Body(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            check(&Answer::Response {
                status: Some(14),
                body: None,
                value: None,
            }),
            Err(GrpcError::ResponseStatus(14))
        );
    }

    proptest::proptest! {
        /// Whatever a spec gives, parsing answers or refuses, and what it answers
        /// round-trips: the hex of any bytes decodes to them.
        #[test]
        fn response_bodies_parse_or_refuse(body in ".{0,64}", bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            let _ = response_message(Some(&body));
            let hex: String = bytes.iter().map(|b| format!("{b:02x} ")).collect();
            proptest::prop_assert_eq!(response_message(Some(&format!("hex:{hex}"))), Ok(bytes));
        }

        /// Any text is a valid grpc-message once encoded: printable ASCII only, and
        /// decoding gives the text back.
        #[test]
        fn messages_encode_to_printable_ascii(text in "\\PC{0,40}") {
            let e = percent_encode(&text);
            proptest::prop_assert!(e.bytes().all(|b| (0x20..=0x7e).contains(&b)));
            let mut out = Vec::new();
            let mut it = e.bytes();
            while let Some(b) = it.next() {
                if b == b'%' {
                    let h: String = [it.next().unwrap(), it.next().unwrap()].iter().map(|&c| c as char).collect();
                    out.push(u8::from_str_radix(&h, 16).unwrap());
                } else {
                    out.push(b);
                }
            }
            proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), text);
        }

        /// The preface is recognised however a client splits it, and nothing else is.
        #[test]
        fn the_preface_is_found_at_any_split(cut in 0usize..24, tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8)) {
            use crate::http2::{preface, Preface, PREFACE};
            proptest::prop_assert_eq!(preface(&PREFACE[..cut]), if cut == 0 { Preface::Other } else { Preface::Undecided });
            let mut other = PREFACE[..cut].to_vec();
            other.extend_from_slice(&tail);
            let want = if other.len() >= PREFACE.len() && other[..24] == *PREFACE {
                Preface::Http2
            } else if !other.is_empty() && PREFACE.starts_with(&other) {
                Preface::Undecided
            } else {
                Preface::Other
            };
            proptest::prop_assert_eq!(preface(&other), want);
        }
    }

    #[test]
    fn a_connection_without_the_preface_is_opaque() {
        let mut c = Grpc.conversation();
        assert!(c.client(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
