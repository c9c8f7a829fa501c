//! HTTP/2 with prior knowledge (h2c): how a relay recognises it, and what rules match
//! and answer. HTTP/2 is not a turn-taking byte stream (HPACK state, multiplexed
//! streams, flow control), so it has no [`crate::Conversation`]: the executor's relay
//! terminates it (serves the client's connection, dials the service with a client
//! connection of its own) and acts per request, that is per stream. gRPC is HTTP/2
//! too; [`crate::grpc`] has its match key and answers.
//!
//! - Recognised by the connection preface `PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`, the
//!   first bytes an h2c client sends on an `http` interface; anything else stays on
//!   the HTTP/1 framer ([`crate::http`]).
//! - Match keys are HTTP/1's: `method` (`GET`, ...) and `path` (the `:path` without
//!   its query string).
//! - Answers are HTTP/1's: `error()` gives the status (default 500) with the message
//!   (else the reason phrase) as a `text/plain` body; `response()` gives the status
//!   (default 200) with `body` (`application/json` when it starts with `{` or `[`).

use crate::{Answer, Code, Fields};

/// What an HTTP/2 client sends first.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say about HTTP/2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preface {
    /// The whole preface: HTTP/2 with prior knowledge.
    Http2,
    /// Bytes the preface does not start with (or none at all, the stream ended).
    Other,
    /// A start of the preface, not all of it yet.
    Undecided,
}

/// Classifies the first bytes a client sent (all of them so far).
pub fn preface(first: &[u8]) -> Preface {
    let n = first.len().min(PREFACE.len());
    if first.is_empty() || first[..n] != PREFACE[..n] {
        Preface::Other
    } else if n == PREFACE.len() {
        Preface::Http2
    } else {
        Preface::Undecided
    }
}

/// The match fields of an h2c request on an `http` interface.
pub fn fields(method: &str, path_and_query: &str) -> Fields {
    let mut f = Fields::new();
    f.insert("method", method.to_string());
    f.insert("path", bare_path(path_and_query).to_string());
    f
}

/// The path `path=` matches: without the query or a fragment.
pub fn bare_path(path_and_query: &str) -> &str {
    path_and_query
        .split(['?', '#'])
        .next()
        .unwrap_or(path_and_query)
}

/// An answer given in the server's place: a status, a content type and a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// Why a rule cannot answer an h2c request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Http2Error {
    #[error("http: status {0} is not a number")]
    NotANumber(String),
    #[error("http: status {0} cannot answer a request (200 to 599)")]
    Status(i64),
}

/// The response that gives `answer` to an h2c request.
pub fn answer(answer: &Answer) -> Result<Reply, Http2Error> {
    let (status, body, content_type) = match answer {
        Answer::Error { message, status } => {
            let status = match status {
                None => 500,
                Some(Code::Number(n)) => *n,
                Some(Code::Text(t)) => return Err(Http2Error::NotANumber(t.clone())),
            };
            let body = message
                .clone()
                .unwrap_or_else(|| crate::http::reason(status).to_string());
            (status, body, "text/plain; charset=utf-8")
        }
        Answer::Response { status, body, .. } => {
            let body = body.clone().unwrap_or_default();
            let ct = if body.trim_start().starts_with(['{', '[']) {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            };
            (status.unwrap_or(200), body, ct)
        }
    };
    if !(200..=599).contains(&status) {
        return Err(Http2Error::Status(status));
    }
    Ok(Reply {
        status: status as u16,
        content_type,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_recognised_only_whole() {
        assert_eq!(preface(PREFACE), Preface::Http2);
        let mut more = PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x00\x04");
        assert_eq!(preface(&more), Preface::Http2);
        assert_eq!(preface(&PREFACE[..3]), Preface::Undecided);
        assert_eq!(preface(b"POST / HTTP/1.1\r\n"), Preface::Other);
        assert_eq!(preface(b"PUT"), Preface::Other);
        assert_eq!(preface(b""), Preface::Other);
    }

    #[test]
    fn fields_drop_the_query() {
        let f = fields("GET", "/orders?id=1");
        assert_eq!(f["method"], "GET");
        assert_eq!(f["path"], "/orders");
    }

    #[test]
    fn answers_are_http1s() {
        let e = answer(&Answer::Error {
            message: None,
            status: Some(Code::Number(503)),
        })
        .unwrap();
        assert_eq!((e.status, e.body.as_str()), (503, "Service Unavailable"));
        let r = answer(&Answer::Response {
            status: None,
            body: Some("{\"a\":1}".into()),
            value: None,
        })
        .unwrap();
        assert_eq!((r.status, r.content_type), (200, "application/json"));
        assert!(answer(&Answer::Error {
            message: None,
            status: Some(Code::Number(101)),
        })
        .is_err());
    }
}
