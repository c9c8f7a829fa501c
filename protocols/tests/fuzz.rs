//! Every conversation takes arbitrary bytes in arbitrary chunks from both sides
//! without panicking or spinning, and once opaque stays opaque.

use std::sync::Arc;

use faultbox_protocols::{protocol, Answer, FieldView, Interest, MAX_MESSAGE};
use proptest::prelude::*;

const PROTOCOLS: [&str; 10] = [
    "http",
    "tcp",
    "postgres",
    "mysql",
    "redis",
    "memcached",
    "amqp",
    "nats",
    "mongodb",
    "kafka",
];

/// Fragments that steer random input into the protocols' interesting paths.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"*",
    b"$",
    b"%",
    b">",
    b"|",
    b"?",
    b";",
    b".",
    b"-1",
    b"0",
    b"3",
    b"12",
    b"GET ",
    b"POST /a HTTP/1.1\r\n",
    b"HTTP/1.1 200 OK\r\n",
    b"Content-Length: 3\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Expect: 100-continue\r\n",
    b"VALUE k 0 2\r\n",
    b"END\r\n",
    b"set k 0 0 2\r\n",
    b"mg k v q\r\n",
    b"mn\r\n",
    b"VA 2\r\n",
    b"\x00\x00\x00",
    b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
    b"\x00\x00\x00\x09\x00\x03\x00\x00",
    b"Q\x00\x00\x00\x05",
    b"Z\x00\x00\x00\x05I",
    b"S\x00\x00\x00\x04",
    b"\x01\x00\x00\x00\x03",
    b"\x07\x00\x00\x01",
    b"\xfe",
    b"\xfb",
    b"\xff",
    b"\x0a5.7\x00",
    b"18446744073709551615",
    b"ffffffffffffffff",
    b"-9223372036854775808",
    b"9223372036854775807",
    b"\xff\xff\xff\xff",
    // AMQP: the protocol header, frame heads (method, header, body, heartbeat on
    // channel 1 or 0), the frame end, Basic.Publish/Deliver/GetOk ids.
    b"AMQP\x00\x00\x09\x01",
    b"\x01\x00\x01\x00\x00\x00",
    b"\x02\x00\x01\x00\x00\x00\x0e\x00\x3c\x00\x00",
    b"\x03\x00\x01\x00\x00\x00\x01",
    b"\x08\x00\x00\x00\x00\x00\x00\xce",
    b"\xce",
    b"\x00\x3c\x00\x28\x00\x00\x00\x01k",
    b"\x00\x3c\x00\x3c\x01t",
    b"\x00\x3c\x00\x47",
    b"PUB a.b 3\r\n",
    b"HPUB a 12 14\r\nNATS/1.0\r\n\r\n",
    b"MSG a.b 1 3\r\n",
    b"HMSG a 1 r 2 2\r\n",
    b"CONNECT {\"verbose\":true}\r\n",
    b"PING\r\n",
    b"+OK\r\n",
    b"-ERR 'x'\r\n",
    // mongodb: a 38-byte OP_MSG header, OP_QUERY/OP_REPLY/OP_COMPRESSED opcodes,
    // moreToCome, a section kind, a small `{find: "t"}` document.
    b"\x26\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\xdd\x07\x00\x00",
    b"\xd4\x07\x00\x00",
    b"\xdc\x07\x00\x00",
    b"\x02\x00\x00\x00",
    b"\x00\x11\x00\x00\x00\x02find\x00\x02\x00\x00\x00t\x00\x00",
    b"\x01\x10\x00\x00\x00documents\x00",
    // Kafka: a Metadata v12 and a Fetch v12 request as kafka-python sends them, a
    // response header, sizes.
    b"\x00\x00\x00\x22\x00\x03\x00\x0c\x00\x00\x00\x02\x00\x13kafka-python-3.0.12\x00\x01\x01\x00\x00",
    b"\x00\x00\x00\x69\x00\x01\x00\x0c\x00\x00\x00\x06\x00\x13kafka-python-3.0.12\x00\xff\xff\xff\xff\x00\x00\x01\xf4\x00\x00\x00\x01\x03\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x0bt895497728\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x00\x10\x00\x00\x00\x00\x01\x01\x00",
    b"\x00\x00\x00\x08\x00\x00\x00\x02\x00\x00\x00\x00",
    b"\x00\x00\x00\x0c",
];

fn chunky_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            3 => prop::sample::select(TOKENS).prop_map(|t| t.to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..8),
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

/// Steps: which side sends, the bytes, and what the conversation is told first of
/// the rules that may act (0: nothing, 1: none, 2: one on every message, 3: one on
/// subject or topic `a.b`).
fn steps() -> impl Strategy<Value = Vec<(bool, Vec<u8>, u8)>> {
    prop::collection::vec((any::<bool>(), chunky_bytes(), 0u8..4), 0..12)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_traffic_never_panics(name in prop::sample::select(&PROTOCOLS[..]), steps in steps()) {
        let p = protocol(name).expect("known protocol");
        let mut conv = p.conversation();
        let mut opaque = false;
        let every: Interest = Arc::new(|_: &dyn FieldView| true);
        let on_ab: Interest = Arc::new(|f: &dyn FieldView| {
            f.field("subject").or(f.field("topic")) == Some("a.b")
        });
        for (client, bytes, interest) in &steps {
            match interest {
                1 => conv.interest(None),
                2 => conv.interest(Some(&every)),
                3 => conv.interest(Some(&on_ab)),
                _ => {}
            }
            for chunk in bytes.chunks(3) {
                let went_opaque = if *client {
                    match conv.client(chunk) {
                        Ok(reqs) => {
                            for r in reqs {
                                prop_assert!(r.len <= MAX_MESSAGE + bytes.len());
                                if r.matchable {
                                    let _ = conv.answer(&r, &Answer::Error { message: None, status: None });
                                    let _ = conv.drop_request(&r);
                                    let _ = conv.duplicate_request(&r, chunk);
                                }
                            }
                            false
                        }
                        Err(_) => true,
                    }
                } else if conv.frames_server() {
                    match conv.server_messages(chunk) {
                        Ok(msgs) => {
                            for m in msgs {
                                prop_assert!(m.len <= MAX_MESSAGE + bytes.len());
                                if m.matchable {
                                    let e = Answer::Error { message: None, status: None };
                                    let _ = conv.answer_message(&m, chunk, &e);
                                    let _ = conv.drop_message(&m, chunk);
                                    let _ = conv.duplicate_message(&m, chunk);
                                }
                            }
                            false
                        }
                        Err(_) => true,
                    }
                } else {
                    conv.server(chunk).is_err()
                };
                prop_assert!(!opaque || went_opaque, "{name}: opaque must stay opaque");
                opaque |= went_opaque;
                prop_assert!(name != "tcp" || !opaque, "tcp is never opaque");
            }
        }
    }

    #[test]
    fn fully_random_bytes(name in prop::sample::select(&PROTOCOLS[..]),
                          client in prop::collection::vec(any::<u8>(), 0..512),
                          server in prop::collection::vec(any::<u8>(), 0..512),
                          cut in 1usize..64) {
        let p = protocol(name).expect("known protocol");
        let mut conv = p.conversation();
        let mut opaque = false;
        for (c, s) in client.chunks(cut).zip(server.chunks(cut)) {
            let a = conv.client(c).is_err();
            prop_assert!(!opaque || a);
            opaque |= a;
            let b = conv.server(s).is_err();
            prop_assert!(!opaque || b);
            opaque |= b;
        }
    }
}

/// A stream that never completes a message is refused once it passes
/// MAX_MESSAGE, instead of being buffered without bound.
#[test]
fn endless_messages_are_refused() {
    let chunk = vec![b'a'; 1 << 16];
    for name in PROTOCOLS {
        let mut conv = protocol(name).expect("known").conversation();
        let mut refused = false;
        for _ in 0..(MAX_MESSAGE / chunk.len() + 4) {
            if conv.client(&chunk).is_err() {
                refused = true;
                break;
            }
        }
        assert_eq!(refused, name != "tcp", "{name}");
    }
}

/// Large server payloads stream through without being held: a 64 MiB Redis bulk
/// reply and HTTP body complete normally.
#[test]
fn large_responses_stream() {
    let chunk = vec![b'x'; 1 << 16];
    let n = 64 << 20;
    for (name, request, head, tail) in [
        (
            "redis",
            &b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"[..],
            format!("${n}\r\n"),
            &b"\r\n"[..],
        ),
        (
            "http",
            b"GET / HTTP/1.1\r\n\r\n",
            format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"),
            b"",
        ),
    ] {
        let mut conv = protocol(name).expect("known").conversation();
        assert_eq!(conv.client(request).expect("request").len(), 1);
        assert_eq!(conv.server(head.as_bytes()), Ok(0));
        for _ in 0..n / chunk.len() - 1 {
            assert_eq!(conv.server(&chunk), Ok(0), "{name}");
        }
        // The response counts only once its last byte arrived.
        assert_eq!(conv.server(&chunk[..chunk.len() - 1]), Ok(0), "{name}");
        let last = [&chunk[..1], tail].concat();
        assert_eq!(conv.server(&last), Ok(1), "{name}");
    }
}

/// A MongoDB OP_MSG request: `{NAME: COLL}` as its command, `flags`, and a
/// document sequence of `docs` empty documents.
fn op_msg(id: i32, flags: u32, name: &str, coll: &str, docs: usize) -> Vec<u8> {
    let mut body = vec![0u8; 4];
    body.push(2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(&(coll.len() as i32 + 1).to_le_bytes());
    body.extend_from_slice(coll.as_bytes());
    body.extend_from_slice(&[0, 0]);
    let n = body.len() as i32;
    body[..4].copy_from_slice(&n.to_le_bytes());
    let mut sections = vec![0u8];
    sections.extend(body);
    if docs > 0 {
        let seq: Vec<u8> = [&b"documents\0"[..], &[5, 0, 0, 0, 0].repeat(docs)].concat();
        sections.push(1);
        sections.extend_from_slice(&(seq.len() as i32 + 4).to_le_bytes());
        sections.extend(seq);
    }
    let total = 16 + 4 + sections.len();
    let mut m = Vec::new();
    for v in [total as i32, id, 0, 2013] {
        m.extend_from_slice(&v.to_le_bytes());
    }
    m.extend_from_slice(&flags.to_le_bytes());
    m.extend(sections);
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Well-formed MongoDB requests cut anywhere are all found, with their command
    /// and collection; a corrupted byte anywhere gives requests or opaque, never a
    /// panic.
    #[test]
    fn mongodb_requests_survive_any_cut(
        msgs in prop::collection::vec(
            ("[a-zA-Z]{1,12}", "[a-z.]{1,12}", any::<bool>(), 0usize..4), 1..8),
        cut in 1usize..50,
        flip in any::<(usize, u8)>(),
    ) {
        let mut stream = Vec::new();
        for (i, (name, coll, more, docs)) in msgs.iter().enumerate() {
            stream.extend(op_msg(i as i32, if *more { 2 } else { 0 }, name, coll, *docs));
        }
        let mut conv = protocol("mongodb").unwrap().conversation();
        let mut got = Vec::new();
        for c in stream.chunks(cut) {
            got.extend(conv.client(c).expect("well formed"));
        }
        prop_assert_eq!(got.len(), msgs.len());
        prop_assert_eq!(got.iter().map(|r| r.len).sum::<usize>(), stream.len());
        for (r, (name, _, more, _)) in got.iter().zip(&msgs) {
            let lower = name.to_ascii_lowercase();
            let handshake = ["hello", "ismaster", "saslstart", "saslcontinue", "authenticate", "getnonce", "logout"];
            prop_assert_eq!(r.matchable, !handshake.contains(&lower.as_str()));
            if r.matchable {
                prop_assert_eq!(&r.fields["method"], name);
            }
            prop_assert_eq!(r.replies, usize::from(!*more));
        }
        let mut bad = stream.clone();
        let at = flip.0 % bad.len();
        bad[at] ^= flip.1 | 1;
        let mut conv = protocol("mongodb").unwrap().conversation();
        for c in bad.chunks(cut) {
            if conv.client(c).is_err() {
                break;
            }
        }
    }
}

/// An AMQP method frame on `channel`.
fn amqp_method(channel: u16, class: u16, method: u16, args: &[u8]) -> Vec<u8> {
    let mut p = class.to_be_bytes().to_vec();
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(args);
    amqp_frame(1, channel, &p)
}

fn amqp_frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(0xCE);
    f
}

/// Basic.Publish with its content header and body frames of at most `max` bytes.
fn amqp_publish(channel: u16, key: &str, body: &[u8], max: usize) -> Vec<u8> {
    let mut a = vec![0, 0, 0, key.len() as u8];
    a.extend_from_slice(key.as_bytes());
    a.push(0);
    let mut out = amqp_method(channel, 60, 40, &a);
    let mut h = vec![0, 60, 0, 0];
    h.extend_from_slice(&(body.len() as u64).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    out.extend(amqp_frame(2, channel, &h));
    for part in body.chunks(max) {
        out.extend(amqp_frame(3, channel, part));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Publishes among other frames, cut anywhere: each publish is one matchable
    /// request with its routing key, and the requests cover the stream exactly.
    #[test]
    fn amqp_publishes_survive_any_cut(
        items in prop::collection::vec(
            (any::<bool>(), "[a-z.]{0,12}", prop::collection::vec(any::<u8>(), 0..300), 1usize..64, 0u16..4),
            0..12),
        cut in 1usize..97,
    ) {
        let mut stream = b"AMQP\x00\x00\x09\x01".to_vec();
        let mut keys = Vec::new();
        for (is_publish, key, body, max, channel) in &items {
            if *is_publish {
                stream.extend(amqp_publish(*channel, key, body, *max));
                keys.push(key.clone());
            } else {
                stream.extend(amqp_method(*channel, 50, 10, &[0; 5]));
                stream.extend(amqp_frame(8, 0, &[]));
            }
        }
        let mut conv = protocol("amqp").expect("known").conversation();
        let mut requests = Vec::new();
        for chunk in stream.chunks(cut) {
            requests.extend(conv.client(chunk).expect("valid AMQP"));
        }
        prop_assert_eq!(requests.iter().map(|r| r.len).sum::<usize>(), stream.len());
        let topics: Vec<String> = requests
            .iter()
            .filter(|r| r.matchable)
            .map(|r| r.fields["topic"].clone())
            .collect();
        prop_assert_eq!(topics, keys);
    }
}

mod kafka {
    //! Well-formed Kafka traffic, cut anywhere, frames as it does whole.
    use super::*;
    use kafka_protocol::messages::{produce_request, ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, HeaderVersion, Request, StrBytes};

    fn produce(topic: &str, version: i16, acks: i16, correlation: i32) -> Vec<u8> {
        let r = ProduceRequest::default()
            .with_acks(acks)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(vec![7u8; 30].into())),
                ])]);
        let mut buf = vec![0u8; 4];
        RequestHeader::default()
            .with_request_api_key(ProduceRequest::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .encode(&mut buf, ProduceRequest::header_version(version))
            .unwrap();
        r.encode(&mut buf, version).unwrap();
        let n = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&n.to_be_bytes());
        buf
    }

    /// A response frame of `len` body bytes for `correlation`.
    fn response(correlation: i32, len: usize) -> Vec<u8> {
        let mut b = ((4 + len) as i32).to_be_bytes().to_vec();
        b.extend_from_slice(&correlation.to_be_bytes());
        b.extend(std::iter::repeat_n(0u8, len));
        b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        #[test]
        fn cut_anywhere_frames_the_same(
            reqs in prop::collection::vec(("[a-z.]{1,12}", 3i16..=11, prop::sample::select(vec![-1i16, 0, 1])), 1..8),
            cuts in prop::collection::vec(1usize..40, 1..20),
        ) {
            let client: Vec<u8> = reqs
                .iter()
                .enumerate()
                .flat_map(|(i, (t, v, a))| produce(t, *v, *a, i as i32))
                .collect();
            let server: Vec<u8> = reqs
                .iter()
                .enumerate()
                .filter(|(_, (_, _, a))| *a != 0)
                .flat_map(|(i, _)| response(i as i32, i * 3))
                .collect();
            let p = protocol("kafka").unwrap();
            let mut whole = p.conversation();
            let want = whole.client(&client).unwrap();
            prop_assert_eq!(want.len(), reqs.len());
            for (r, (t, _, a)) in want.iter().zip(&reqs) {
                prop_assert_eq!(&r.fields["topic"], t);
                prop_assert_eq!(r.replies, usize::from(*a != 0));
            }
            let got_whole = whole.server_messages(&server).unwrap().len();
            let mut cut = p.conversation();
            let mut got = Vec::new();
            let mut at = 0;
            for (i, c) in cuts.iter().cycle().enumerate() {
                if at >= client.len() || i > client.len() {
                    break;
                }
                let end = (at + c).min(client.len());
                got.extend(cut.client(&client[at..end]).unwrap());
                at = end;
            }
            got.extend(cut.client(&client[at..]).unwrap());
            prop_assert_eq!(&got, &want);
            let mut n = 0;
            for chunk in server.chunks(cuts[0]) {
                n += cut.server_messages(chunk).unwrap().len();
            }
            prop_assert_eq!(n, got_whole);
            prop_assert_eq!(n, want.iter().map(|r| r.replies).sum::<usize>());
        }
    }
}
