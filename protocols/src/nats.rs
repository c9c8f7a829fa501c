//! NATS: the text protocol of nats-server (client ops `CONNECT`, `PUB`, `HPUB`,
//! `SUB`, `UNSUB`, `PING`, `PONG`; server ops `INFO`, `MSG`, `HMSG`, `PING`, `PONG`,
//! `+OK`, `-ERR`).
//!
//! - Framing: an op is a control line ended by `\r\n` (a bare `\n` is accepted, as
//!   the server does); `PUB`/`HPUB`/`MSG`/`HMSG` are followed by their payload of
//!   the size the line gives and an exact `\r\n`, which is checked. Ops are
//!   case-insensitive. Payloads are skipped as they stream by, never held.
//! - Requests: every client op. `PUB`/`HPUB` are matchable; `PING` expects a `PONG`;
//!   with `"verbose": true` in `CONNECT`, every other op expects a `+OK`.
//! - Server messages: `MSG`/`HMSG` (deliveries) are matchable. `PONG` and, in verbose
//!   mode, `+OK` are responses; the second `+OK` of a duplicated publish is swallowed.
//! - Match keys: `topic` and `subject` (the same value: the message's subject),
//!   compared with NATS wildcards (`orders.*`, `orders.>`); fields also carry
//!   `command` (`PUB`, `HPUB`, `MSG`, `HMSG`).
//! - Actions: on a publish, `drop()` loses the message (the connection stays; a
//!   verbose client gets its `+OK`), `duplicate()` sends it twice, `delay()` holds
//!   it, `error()` answers `-ERR 'message'`; on a delivery, `drop()` removes it,
//!   `duplicate()` delivers it twice, `delay()` holds it (and what follows on that
//!   connection), `error()` replaces it with `-ERR`. Without `message=` the error is
//!   the server's own permissions error (`Permissions Violation for Publish to
//!   "orders.new"`, or `... for Subscription to ...`), which clients report to their
//!   error callback and survive; other `-ERR`s make most clients close the
//!   connection, as they would with the server.

use std::collections::VecDeque;

use crate::common::{fields, find_line, request, request_id, too_large, trim_eol, Framer};
use crate::common::{Inbox, Latched};
use crate::{ActionKind, Answer, Conversation, Message, Opaque, Protocol, Reply, Request};
use crate::{Fields, MAX_MESSAGE};

/// NATS.
pub struct Nats;

impl Protocol for Nats {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn keys(&self) -> &'static [&'static str] {
        &["topic", "subject"]
    }

    fn supports(&self, action: ActionKind) -> bool {
        matches!(
            action,
            ActionKind::Error | ActionKind::Delay | ActionKind::Drop | ActionKind::Duplicate
        )
    }

    fn conversation(&self) -> Box<dyn Conversation> {
        Latched::boxed(NatsConversation::default())
    }
}

/// The longest control line held while waiting for its end (nats-server's own
/// limit is 4 KiB by default; `INFO` and `CONNECT` can carry long JSON).
const MAX_CONTROL_LINE: usize = 1 << 20;

/// One op, as far as the conversation cares.
#[derive(Debug, PartialEq, Eq)]
enum Op {
    Connect {
        verbose: bool,
    },
    /// `PUB`/`HPUB` (client) or `MSG`/`HMSG` (server), with its subject.
    Message {
        command: &'static str,
        subject: String,
    },
    Sub,
    Unsub,
    Ping,
    Pong,
    Info,
    Ok,
    Err,
}

/// One direction: ops parsed from its bytes.
#[derive(Default)]
struct Side {
    inbox: Inbox,
    scanned: usize,
    /// An op whose control line was read, waiting for its payload and `\r\n`.
    pending: Option<Op>,
}

impl Side {
    /// The next complete op and the bytes it spans, if the data holds one.
    fn next(&mut self, server: bool, bare: bool) -> Result<Option<(usize, Op)>, Opaque> {
        if self.pending.is_some() {
            if self.inbox.skipping() {
                return Ok(None);
            }
            let d = self.inbox.data();
            if d.len() < 2 {
                return Ok(None);
            }
            if &d[..2] != b"\r\n" {
                return Err(Opaque("a NATS payload not followed by \\r\\n".into()));
            }
            self.inbox.consume(2);
            let op = self.pending.take().expect("checked above");
            return Ok(Some((self.inbox.take(), op)));
        }
        let d = self.inbox.data();
        let Some(end) = find_line(d, &mut self.scanned) else {
            if d.len() > MAX_CONTROL_LINE {
                return Err(too_large("a NATS control line"));
            }
            return Ok(None);
        };
        let (op, payload) = parse(trim_eol(&d[..end]), server, bare)?;
        self.inbox.consume(end);
        match payload {
            None => Ok(Some((self.inbox.take(), op))),
            Some(n) => {
                self.inbox.skip(n);
                self.pending = Some(op);
                self.next(server, bare)
            }
        }
    }
}

/// A control line's op, and the payload size that follows it. `bare`: the subject
/// is not copied out.
fn parse(line: &[u8], server: bool, bare: bool) -> Result<(Op, Option<usize>), Opaque> {
    let bad = |why: &str| {
        Opaque(format!(
            "not NATS ({why}): {:?}",
            String::from_utf8_lossy(&line[..line.len().min(64)])
        ))
    };
    let text = std::str::from_utf8(line).map_err(|_| bad("a control line that is not UTF-8"))?;
    let (name, rest) = match text.find([' ', '\t']) {
        Some(i) => (&text[..i], text[i..].trim_start_matches([' ', '\t'])),
        None => (text, ""),
    };
    // At most five arguments matter (HMSG's); more make the line malformed.
    // (INFO and CONNECT carry JSON instead, never read as arguments.)
    let mut argv = [""; 6];
    let mut argc = 0;
    for a in rest.split([' ', '\t']).filter(|a| !a.is_empty()) {
        if argc == argv.len() {
            argc = usize::MAX;
            break;
        }
        argv[argc] = a;
        argc += 1;
    }
    let args = if argc == usize::MAX {
        &[][..]
    } else {
        &argv[..argc]
    };
    let size = |s: &str| -> Result<usize, Opaque> {
        let n: usize = s.parse().map_err(|_| bad("a size that is not a number"))?;
        if n > MAX_MESSAGE {
            return Err(too_large("a NATS message"));
        }
        Ok(n)
    };
    let mut upper = [0u8; 8];
    let name = if name.len() <= upper.len() {
        upper[..name.len()].copy_from_slice(name.as_bytes());
        upper[..name.len()].make_ascii_uppercase();
        std::str::from_utf8(&upper[..name.len()]).unwrap_or("")
    } else {
        ""
    };
    let message = |command: &'static str, subject: &str| Op::Message {
        command,
        subject: if bare {
            String::new()
        } else {
            subject.to_string()
        },
    };
    let op = match (server, name) {
        (false, "CONNECT") => (
            Op::Connect {
                verbose: json_true(rest, "verbose"),
            },
            None,
        ),
        (false, "PUB") if (2..=3).contains(&args.len()) => {
            (message("PUB", args[0]), Some(size(args[args.len() - 1])?))
        }
        (false, "HPUB") if (3..=4).contains(&args.len()) => {
            let (headers, total) = (size(args[args.len() - 2])?, size(args[args.len() - 1])?);
            if headers > total {
                return Err(bad("headers larger than the message"));
            }
            (message("HPUB", args[0]), Some(total))
        }
        (false, "SUB") if (2..=3).contains(&args.len()) => (Op::Sub, None),
        (false, "UNSUB") if (1..=2).contains(&args.len()) => (Op::Unsub, None),
        (true, "MSG") if (3..=4).contains(&args.len()) => {
            (message("MSG", args[0]), Some(size(args[args.len() - 1])?))
        }
        (true, "HMSG") if (4..=5).contains(&args.len()) => {
            let (headers, total) = (size(args[args.len() - 2])?, size(args[args.len() - 1])?);
            if headers > total {
                return Err(bad("headers larger than the message"));
            }
            (message("HMSG", args[0]), Some(total))
        }
        (true, "INFO") => (Op::Info, None),
        (true, "+OK") => (Op::Ok, None),
        (true, "-ERR") => (Op::Err, None),
        (_, "PING") => (Op::Ping, None),
        (_, "PONG") => (Op::Pong, None),
        _ => return Err(bad("an op this side does not send, or its arguments")),
    };
    Ok(op)
}

/// Whether the JSON object `json` sets `key` to `true` (enough for `CONNECT`'s flat
/// object of options; the server rejects anything fancier).
fn json_true(json: &str, key: &str) -> bool {
    let quoted = format!("\"{key}\"");
    let Some(at) = json.find(&quoted) else {
        return false;
    };
    let after = json[at + quoted.len()..].trim_start();
    after
        .strip_prefix(':')
        .is_some_and(|v| v.trim_start().starts_with("true"))
}

#[derive(Default)]
struct NatsConversation {
    client: Side,
    server: Side,
    /// The client asked for `+OK` after every op.
    verbose: bool,
    /// In verbose mode, the `+OK`s owed in order: the request they answer, and
    /// whether the client gets it (the second `+OK` of a duplicate it does not).
    okays: VecDeque<(u64, bool)>,
    /// No rule may act on the next messages: their subjects are not copied out.
    bare: bool,
}

impl NatsConversation {
    /// Forgets the `+OK` owed for `request`: it is answered here.
    fn forget(&mut self, request: &Request) {
        let id = request_id(request);
        if let Some(i) = self.okays.iter().position(|(r, _)| *r == id) {
            self.okays.remove(i);
        }
    }

    fn subject(fields: &Fields) -> &str {
        fields.get("subject").map(String::as_str).unwrap_or("")
    }
}

/// `-ERR 'message'`, with the server's permissions error by default.
fn err_line(answer: &Answer, what: &str, subject: &str) -> Result<Vec<u8>, String> {
    match answer {
        Answer::Error { message, status } => {
            if status.is_some() {
                return Err("NATS errors have no status code: give message= only".into());
            }
            let text = match message {
                Some(m) => m.replace(['\r', '\n'], " "),
                None => format!("Permissions Violation for {what} to \"{subject}\""),
            };
            Ok(format!("-ERR '{text}'\r\n").into_bytes())
        }
        Answer::Response { .. } => Err("NATS has no response to give in the server's place".into()),
    }
}

impl Framer for NatsConversation {
    fn client(&mut self, bytes: &[u8]) -> Result<Vec<Request>, Opaque> {
        self.client.inbox.extend(bytes);
        let mut out = Vec::new();
        while let Some((len, op)) = self.client.next(false, self.bare)? {
            if let Op::Connect { verbose } = op {
                self.verbose = verbose;
            }
            let okay = self.verbose && !matches!(op, Op::Ping | Op::Pong);
            let replies = match op {
                Op::Ping => 1,
                _ if okay => 1,
                _ => 0,
            };
            let req = match op {
                Op::Message { .. } if self.bare && !okay => {
                    request(len, Fields::new(), true, replies)
                }
                Op::Message { command, subject } => request(
                    len,
                    fields([
                        ("command", command.to_string()),
                        ("subject", subject.clone()),
                        ("topic", subject),
                    ]),
                    true,
                    replies,
                ),
                _ => request(len, Fields::new(), false, replies),
            };
            if okay {
                if self.okays.len() >= crate::MAX_PENDING {
                    return Err(Opaque(format!(
                        "more than {} ops await +OK",
                        crate::MAX_PENDING
                    )));
                }
                self.okays.push_back((request_id(&req), true));
            }
            out.push(req);
        }
        Ok(out)
    }

    fn server(&mut self, bytes: &[u8]) -> Result<usize, Opaque> {
        Ok(self
            .server_messages(bytes)?
            .iter()
            .map(|m| m.responses)
            .sum())
    }

    fn answer(&mut self, request: &Request, answer: &Answer) -> Result<Reply, String> {
        let bytes = err_line(answer, "Publish", Self::subject(&request.fields))?;
        self.forget(request);
        Ok(Reply { bytes })
    }

    fn want_fields(&mut self, want: bool) {
        self.bare = !want;
    }

    fn frames_server(&self) -> bool {
        true
    }

    fn server_messages(&mut self, bytes: &[u8]) -> Result<Vec<Message>, Opaque> {
        self.server.inbox.extend(bytes);
        let mut out = Vec::new();
        while let Some((len, op)) = self.server.next(true, self.bare)? {
            let mut m = Message {
                len,
                fields: Fields::new(),
                matchable: false,
                responses: 0,
                forward: true,
            };
            match op {
                Op::Message { .. } if self.bare => m.matchable = true,
                Op::Message { command, subject } => {
                    m.fields = fields([
                        ("command", command.to_string()),
                        ("subject", subject.clone()),
                        ("topic", subject),
                    ]);
                    m.matchable = true;
                }
                Op::Pong => m.responses = 1,
                Op::Ok => {
                    m.responses = 1;
                    m.forward = self.okays.pop_front().is_none_or(|(_, f)| f);
                }
                _ => {}
            }
            out.push(m);
        }
        Ok(out)
    }

    fn drop_request(&mut self, request: &Request) -> Option<Reply> {
        if !request.fields.contains_key("subject") {
            return None;
        }
        self.forget(request);
        let bytes = if self.verbose {
            b"+OK\r\n".to_vec()
        } else {
            Vec::new()
        };
        Some(Reply { bytes })
    }

    fn duplicate_request(&mut self, request: &Request, bytes: &[u8]) -> Result<Vec<u8>, String> {
        if self.verbose {
            let id = request_id(request);
            if let Some(i) = self.okays.iter().position(|(r, f)| *r == id && *f) {
                self.okays.insert(i + 1, (id, false));
            }
        }
        Ok([bytes, bytes].concat())
    }

    fn answer_message(
        &mut self,
        message: &Message,
        _bytes: &[u8],
        answer: &Answer,
    ) -> Result<Vec<u8>, String> {
        err_line(answer, "Subscription", Self::subject(&message.fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{check_cuts, play_whole, Dir};

    fn c(s: &str) -> (Dir, Vec<u8>) {
        (Dir::C, s.as_bytes().to_vec())
    }

    fn s(s: &str) -> (Dir, Vec<u8>) {
        (Dir::S, s.as_bytes().to_vec())
    }

    #[test]
    fn publishes_are_framed_by_their_size_whatever_the_cuts() {
        let out = check_cuts(
            &Nats,
            &[
                s("INFO {\"server_id\":\"x\",\"headers\":true}\r\n"),
                c("CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n"),
                s("PONG\r\n"),
                c("PUB orders.new 5\r\nhello\r\npub orders.eu.new _INBOX.1 3\r\na\r\n\r\n"),
                c("HPUB orders.h 12 14\r\nNATS/1.0\r\n\r\nhi\r\nSUB orders.* 1\r\nUNSUB 1\r\n"),
                c("PING\r\n"),
                s("PONG\r\n"),
            ],
        );
        let subjects: Vec<_> = out
            .requests
            .iter()
            .filter(|r| r.matchable)
            .map(|r| (r.fields["command"].clone(), r.fields["topic"].clone()))
            .collect();
        assert_eq!(
            subjects,
            [
                ("PUB".to_string(), "orders.new".to_string()),
                ("PUB".to_string(), "orders.eu.new".to_string()),
                ("HPUB".to_string(), "orders.h".to_string()),
            ]
        );
        // A payload holding "\r\n" does not end the message early.
        assert_eq!(
            out.requests[3].len,
            "pub orders.eu.new _INBOX.1 3\r\na\r\n\r\n".len()
        );
        assert_eq!(out.total_replies(), 2, "the two PINGs");
        assert_eq!(out.total_responses(), 2);
    }

    #[test]
    fn deliveries_are_messages_rules_can_match() {
        let mut conv = Nats.conversation();
        let msgs = conv
            .server_messages(b"MSG orders.new 1 5\r\nhello\r\nHMSG a.b 2 r 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\n")
            .unwrap();
        assert_eq!(msgs.len(), 3);
        assert!(msgs[0].matchable && msgs[0].fields["subject"] == "orders.new");
        assert_eq!(msgs[0].len, "MSG orders.new 1 5\r\nhello\r\n".len());
        assert!(msgs[1].matchable && msgs[1].fields["command"] == "HMSG");
        assert!(!msgs[2].matchable && msgs[2].responses == 0);
        let err = conv
            .answer_message(
                &msgs[0],
                b"",
                &Answer::Error {
                    message: None,
                    status: None,
                },
            )
            .unwrap();
        assert_eq!(
            err,
            b"-ERR 'Permissions Violation for Subscription to \"orders.new\"'\r\n"
        );
    }

    #[test]
    fn a_payload_must_end_in_crlf() {
        let e = play_whole(&Nats, &[c("PUB a 2\r\nhiX\r\n")]).unwrap_err();
        assert!(e.0.contains("\\r\\n"), "{e}");
        let e = play_whole(&Nats, &[s("MSG a 1 2\r\nhi\n\r")]).unwrap_err();
        assert!(e.0.contains("payload"), "{e}");
    }

    #[test]
    fn ops_from_the_wrong_side_or_garbage_go_opaque() {
        assert!(play_whole(&Nats, &[c("MSG a 1 2\r\nhi\r\n")]).is_err());
        assert!(play_whole(&Nats, &[s("PUB a 2\r\nhi\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a x\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a\r\n")]).is_err());
        assert!(play_whole(&Nats, &[c("PUB a b c d e f g 1\r\nx\r\n")]).is_err());
        let connect = "CONNECT {\"verbose\": false, \"pedantic\": false, \"a\": 1, \"b\": 2}\r\n";
        assert!(play_whole(&Nats, &[c(connect)]).is_ok(), "JSON with spaces");
        assert!(
            play_whole(&Nats, &[c("\x16\x03\x01\x02\x00")]).is_ok(),
            "no line yet"
        );
        let huge = format!("PUB a {}\r\n", MAX_MESSAGE + 1);
        assert!(play_whole(&Nats, &[c(&huge)]).is_err());
    }

    #[test]
    fn verbose_clients_get_their_okays_and_never_an_extra_one() {
        let mut conv = Nats.conversation();
        let reqs = conv
            .client(b"CONNECT {\"verbose\": true}\r\nPUB a 1\r\nx\r\nPUB b 1\r\ny\r\nPING\r\n")
            .unwrap();
        assert_eq!(
            reqs.iter().map(|r| r.replies).collect::<Vec<_>>(),
            [1, 1, 1, 1]
        );
        // The first publish is sent twice: its second +OK is swallowed.
        conv.duplicate_request(&reqs[1], b"PUB a 1\r\nx\r\n")
            .unwrap();
        // The second is dropped: answered +OK here, nothing owed by the server.
        assert_eq!(conv.drop_request(&reqs[2]).unwrap().bytes, b"+OK\r\n");
        let msgs = conv
            .server_messages(b"+OK\r\n+OK\r\n+OK\r\nPONG\r\n")
            .unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.forward).collect::<Vec<_>>(),
            [true, true, false, true]
        );
        assert!(msgs.iter().all(|m| m.responses == 1));
    }

    #[test]
    fn errors_answer_a_publish() {
        let mut conv = Nats.conversation();
        let reqs = conv.client(b"PUB orders.new 1\r\nx\r\n").unwrap();
        assert_eq!(reqs[0].replies, 0);
        let r = conv
            .answer(
                &reqs[0],
                &Answer::Error {
                    message: Some("Maximum Payload Violation".into()),
                    status: None,
                },
            )
            .unwrap();
        assert_eq!(r.bytes, b"-ERR 'Maximum Payload Violation'\r\n");
        assert!(conv
            .answer(
                &reqs[0],
                &Answer::Response {
                    status: None,
                    body: None,
                    value: None
                }
            )
            .is_err());
        assert!(json_true("{\"a\":1,\"verbose\" : true}", "verbose"));
        assert!(!json_true("{\"verbose\":false}", "verbose"));
    }
}
