//! Plain TCP: a byte stream with no framing Faultbox knows.
//!
//! - Requests and responses: none. Every byte is opaque to rules, so the
//!   conversation never reports a request and [`Conversation::server`] always
//!   completes 0 responses. This is the protocol working as intended, not a stream
//!   it failed to understand: it never returns [`crate::Opaque`].
//! - Match keys: none. Rules act on the connection as a whole: `delay()` holds the
//!   connection's bytes before relaying them, `drop()` resets it.
//! - Answers: none; `answer()` refuses, since there is no request to answer.
//! - Limits: a rule cannot tell one message from the next on a tcp interface.

use crate::{ActionKind, Answer, Conversation, Opaque, Protocol, Reply, Request};

/// Plain TCP: connection-level `delay()` and `drop()` only.
pub struct Tcp;

impl Protocol for Tcp {
    fn name(&self) -> &'static str {
        "tcp"
    }

    fn keys(&self) -> &'static [&'static str] {
        &[]
    }

    /// Only connection-level actions: there are no messages to answer.
    fn supports(&self, action: ActionKind) -> bool {
        matches!(action, ActionKind::Delay | ActionKind::Drop)
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Box::new(TcpConversation)
    }
}

struct TcpConversation;

impl Conversation for TcpConversation {
    fn client(&mut self, _bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        Ok(Vec::new())
    }

    fn server(&mut self, _bytes: &[u8]) -> Result<usize, Opaque> {
        Ok(0)
    }

    fn answer(&mut self, _request: &Request, _answer: &Answer) -> Result<Reply, String> {
        Err("tcp has no requests to answer: its rules act on the whole connection".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_reports_and_never_opaque() {
        let mut c = Tcp.conversation();
        assert_eq!(c.client(b"GET / HTTP/1.1\r\n\r\n"), Ok(vec![]));
        assert_eq!(c.server(b"\x00\xff garbage"), Ok(0));
        let r = crate::common::request(1, Default::default(), true, 1);
        let a = Answer::Error {
            message: None,
            status: None,
        };
        assert!(c.answer(&r, &a).is_err());
        assert!(Tcp.supports(ActionKind::Delay) && Tcp.supports(ActionKind::Drop));
        assert!(!Tcp.supports(ActionKind::Error) && !Tcp.supports(ActionKind::Response));
    }
}
