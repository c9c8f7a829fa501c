//! The messages of PostgreSQL's built-in `pgoutput` plugin, protocol version 1, as
//! `pg_logical_slot_get_binary_changes` returns them: one message a row.
//!
//! The bytes come from a server Faultbox does not control (and may be faulting), so
//! parsing never panics and never trusts a length or count: a message that does not
//! fit is a [`ParseError`], and message types this version does not know (streaming,
//! logical messages) are [`Message::Unknown`] for the caller to skip.

/// One decoded message. Tuple values borrow from the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// A transaction starts; its changes follow, then [`Message::Commit`].
    Begin {
        final_lsn: u64,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
    },
    /// The changes that follow were replicated from another node.
    Origin {
        lsn: u64,
        name: String,
    },
    /// A table's shape, sent before its first change (and again after it changes).
    Relation(Relation),
    /// A user-defined type's name, sent before a relation that uses it.
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        relation: u32,
        new: Vec<Datum<'a>>,
    },
    Update {
        relation: u32,
        old: Option<OldTuple<'a>>,
        new: Vec<Datum<'a>>,
    },
    Delete {
        relation: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        relations: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
    },
    /// A message type protocol version 1 does not define; its tag.
    Unknown(u8),
}

/// A table as a `Relation` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    /// Empty for `pg_catalog`, as the server sends it.
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `n` nothing, `f` full, `i` an index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity: what a `K` old tuple carries.
    pub key: bool,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// The old row an `Update` or `Delete` carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple<'a> {
    /// `K`: only the replica identity's columns are meaningful (the others are
    /// sent as NULL); `O`: the whole old row (`REPLICA IDENTITY FULL`).
    pub key_only: bool,
    pub values: Vec<Datum<'a>>,
}

/// One column's value in a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datum<'a> {
    Null,
    /// A TOASTed value the change did not touch: the server does not resend it.
    UnchangedToast,
    /// The type's text output (what protocol version 1 always sends).
    Text(&'a [u8]),
    /// The type's binary output (only when the `binary` option is on).
    Binary(&'a [u8]),
}

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("an empty message")]
    Empty,
    #[error("the {what} is cut short at byte {at}")]
    Short { what: &'static str, at: usize },
    #[error("the {what} at byte {at} has no terminating NUL")]
    Unterminated { what: &'static str, at: usize },
    #[error("a negative {what} ({n}) at byte {at}")]
    Negative {
        what: &'static str,
        n: i64,
        at: usize,
    },
    #[error("column value kind {kind:?} at byte {at} (expected n, u, t or b)")]
    DatumKind { kind: char, at: usize },
    #[error("tuple tag {tag:?} at byte {at} where {expected} was expected")]
    TupleTag {
        tag: char,
        at: usize,
        expected: &'static str,
    },
    #[error("{n} bytes left over after a {message:?} message")]
    Trailing { message: char, n: usize },
}

/// Decodes one message.
pub fn parse(data: &[u8]) -> Result<Message<'_>, ParseError> {
    let (&tag, _) = data.split_first().ok_or(ParseError::Empty)?;
    let mut c = Cursor { buf: data, pos: 1 };
    let message = match tag {
        b'B' => Message::Begin {
            final_lsn: c.u64("final LSN")?,
            xid: {
                c.u64("commit timestamp")?;
                c.u32("transaction id")?
            },
        },
        b'C' => {
            c.u8("commit flags")?;
            let commit_lsn = c.u64("commit LSN")?;
            let end_lsn = c.u64("end LSN")?;
            c.u64("commit timestamp")?;
            Message::Commit {
                commit_lsn,
                end_lsn,
            }
        }
        b'O' => Message::Origin {
            lsn: c.u64("origin LSN")?,
            name: c.string("origin name")?,
        },
        b'R' => {
            let oid = c.u32("relation OID")?;
            let namespace = c.string("namespace")?;
            let name = c.string("relation name")?;
            let replica_identity = c.u8("replica identity")?;
            let n = c.count16("column count")?;
            // Each column takes at least 10 bytes: a count cannot make us allocate
            // more than the message could hold.
            let mut columns = Vec::with_capacity(n.min(c.left() / 10));
            for _ in 0..n {
                columns.push(Column {
                    key: c.u8("column flags")? & 1 != 0,
                    name: c.string("column name")?,
                    type_oid: c.u32("column type")?,
                    type_modifier: c.u32("type modifier")? as i32,
                });
            }
            Message::Relation(Relation {
                oid,
                namespace,
                name,
                replica_identity,
                columns,
            })
        }
        b'Y' => Message::Type {
            oid: c.u32("type OID")?,
            namespace: c.string("type namespace")?,
            name: c.string("type name")?,
        },
        b'I' => {
            let relation = c.u32("relation OID")?;
            c.tag(b"N", "'N'")?;
            Message::Insert {
                relation,
                new: c.tuple()?,
            }
        }
        b'U' => {
            let relation = c.u32("relation OID")?;
            let old = match c.tag(b"KON", "'K', 'O' or 'N'")? {
                b'N' => None,
                t => {
                    let old = OldTuple {
                        key_only: t == b'K',
                        values: c.tuple()?,
                    };
                    c.tag(b"N", "'N'")?;
                    Some(old)
                }
            };
            Message::Update {
                relation,
                old,
                new: c.tuple()?,
            }
        }
        b'D' => {
            let relation = c.u32("relation OID")?;
            let t = c.tag(b"KO", "'K' or 'O'")?;
            Message::Delete {
                relation,
                old: OldTuple {
                    key_only: t == b'K',
                    values: c.tuple()?,
                },
            }
        }
        b'T' => {
            let n = c.count32("relation count")?;
            let options = c.u8("truncate options")?;
            let mut relations = Vec::with_capacity(n.min(c.left() / 4));
            for _ in 0..n {
                relations.push(c.u32("relation OID")?);
            }
            Message::Truncate {
                relations,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        other => return Ok(Message::Unknown(other)),
    };
    match c.left() {
        0 => Ok(message),
        n => Err(ParseError::Trailing {
            message: tag as char,
            n,
        }),
    }
}

/// Reads big-endian fields from a message, checking every length.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if n > self.left() {
            return Err(ParseError::Short { what, at: self.pos });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], ParseError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn count16(&mut self, what: &'static str) -> Result<usize, ParseError> {
        let at = self.pos;
        let n = i16::from_be_bytes(self.array(what)?);
        usize::try_from(n).map_err(|_| ParseError::Negative {
            what,
            n: n.into(),
            at,
        })
    }

    fn count32(&mut self, what: &'static str) -> Result<usize, ParseError> {
        let at = self.pos;
        let n = i32::from_be_bytes(self.array(what)?);
        usize::try_from(n).map_err(|_| ParseError::Negative {
            what,
            n: n.into(),
            at,
        })
    }

    /// A NUL-terminated string (names are the server's, so lossily UTF-8).
    fn string(&mut self, what: &'static str) -> Result<String, ParseError> {
        let rest = &self.buf[self.pos..];
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(ParseError::Unterminated { what, at: self.pos })?;
        self.pos += end + 1;
        Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
    }

    /// One byte that must be one of `allowed`.
    fn tag(&mut self, allowed: &[u8], expected: &'static str) -> Result<u8, ParseError> {
        let at = self.pos;
        let t = self.u8("tuple tag")?;
        if allowed.contains(&t) {
            Ok(t)
        } else {
            Err(ParseError::TupleTag {
                tag: t as char,
                at,
                expected,
            })
        }
    }

    /// TupleData: a column count, then each column's kind and value.
    fn tuple(&mut self) -> Result<Vec<Datum<'a>>, ParseError> {
        let n = self.count16("tuple column count")?;
        let mut values = Vec::with_capacity(n.min(self.left()));
        for _ in 0..n {
            let at = self.pos;
            values.push(match self.u8("column value kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                k @ (b't' | b'b') => {
                    let len = self.count32("column value length")?;
                    let bytes = self.take(len, "column value")?;
                    if k == b't' {
                        Datum::Text(bytes)
                    } else {
                        Datum::Binary(bytes)
                    }
                }
                other => {
                    return Err(ParseError::DatumKind {
                        kind: other as char,
                        at,
                    })
                }
            });
        }
        Ok(values)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    // Messages as PostgreSQL 15 sent them for
    // `CREATE TABLE t(id int primary key, v text, n numeric, j jsonb)` and
    // `INSERT (1,'a',1.5,'{"x":1}')`, `UPDATE SET id=2`, `DELETE`, `TRUNCATE`.
    const RELATION: &str = "52000040007075626c69630074006400040169640000000017ffffffff0076000000\
                            0019ffffffff006e00000006a4ffffffff006a0000000edaffffffff";

    #[test]
    fn decodes_what_the_server_sent() {
        assert_eq!(
            parse(&hex("42000000000152c9980003045d83d6bb25000002dd")).unwrap(),
            Message::Begin {
                final_lsn: 0x152c998,
                xid: 733
            }
        );
        let Message::Relation(r) = parse(&hex(RELATION)).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!((r.oid, &*r.namespace, &*r.name), (16384, "public", "t"));
        assert_eq!(r.replica_identity, b'd');
        let cols: Vec<_> = r
            .columns
            .iter()
            .map(|c| (c.key, &*c.name, c.type_oid))
            .collect();
        assert_eq!(
            cols,
            [
                (true, "id", 23),
                (false, "v", 25),
                (false, "n", 1700),
                (false, "j", 3802)
            ]
        );
        assert_eq!(
            parse(&hex(
                "49000040004e00047400000001317400000001617400000003312e3574000000087b2278223a20317d"
            ))
            .unwrap(),
            Message::Insert {
                relation: 16384,
                new: vec![
                    Datum::Text(b"1"),
                    Datum::Text(b"a"),
                    Datum::Text(b"1.5"),
                    Datum::Text(br#"{"x": 1}"#)
                ]
            }
        );
        let update = hex(
            "55000040004b00047400000001316e6e6e4e00047400000001327400000001627400000003312e35\
             74000000087b2278223a20317d",
        );
        let Message::Update { old, new, .. } = parse(&update).unwrap() else {
            panic!("not an update")
        };
        let old = old.unwrap();
        assert!(old.key_only);
        assert_eq!(
            old.values,
            [Datum::Text(b"1"), Datum::Null, Datum::Null, Datum::Null]
        );
        assert_eq!(new[0], Datum::Text(b"2"));
        assert_eq!(
            parse(&hex("44000040004b00047400000001326e6e6e")).unwrap(),
            Message::Delete {
                relation: 16384,
                old: OldTuple {
                    key_only: true,
                    values: vec![Datum::Text(b"2"), Datum::Null, Datum::Null, Datum::Null]
                }
            }
        );
        assert_eq!(
            parse(&hex("54000000010000004000")).unwrap(),
            Message::Truncate {
                relations: vec![16384],
                cascade: false,
                restart_identity: false
            }
        );
        assert_eq!(
            parse(&hex("4300000000000152c998000000000152c9c80003045d83d6bb25")).unwrap(),
            Message::Commit {
                commit_lsn: 0x152c998,
                end_lsn: 0x152c9c8
            }
        );
        assert_eq!(parse(b"Mxyz").unwrap(), Message::Unknown(b'M'));
    }

    #[test]
    fn refuses_what_does_not_fit() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert!(matches!(
            parse(&hex("4200000000")),
            Err(ParseError::Short { .. })
        ));
        // A huge relation count in a short Truncate: an error, not an allocation.
        assert!(matches!(
            parse(&hex("547fffffff00")),
            Err(ParseError::Short { .. })
        ));
        assert!(matches!(
            parse(&hex("54ffffffff00")),
            Err(ParseError::Negative { .. })
        ));
        // A value longer than the message.
        assert!(matches!(
            parse(&hex("49000040004e0001747fffffff31")),
            Err(ParseError::Short { .. })
        ));
        assert!(matches!(
            parse(&hex("49000040004e000178")),
            Err(ParseError::DatumKind { kind: 'x', .. })
        ));
        assert!(matches!(
            parse(&hex("4900004000580000")),
            Err(ParseError::TupleTag { tag: 'X', .. })
        ));
        assert!(matches!(
            parse(&hex("52000040007075626c6963")),
            Err(ParseError::Unterminated { .. })
        ));
        assert!(matches!(
            parse(&hex("49000040004e0000ff")),
            Err(ParseError::Trailing { message: 'I', n: 1 })
        ));
    }

    /// Valid messages of every kind, built from generated parts.
    pub(in crate::sources::wal) fn message() -> impl Strategy<Value = Vec<u8>> {
        let name = "[a-z_]{0,12}";
        let datum = prop_oneof![
            Just(vec![b'n']),
            Just(vec![b'u']),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|v| {
                let mut d = vec![b't'];
                d.extend((v.len() as u32).to_be_bytes());
                d.extend(v);
                d
            }),
        ];
        let tuple = proptest::collection::vec(datum, 0..6).prop_map(|ds| {
            let mut t = (ds.len() as u16).to_be_bytes().to_vec();
            ds.into_iter().for_each(|d| t.extend(d));
            t
        });
        let column = (any::<u8>(), name, any::<u32>(), any::<i32>()).prop_map(|(f, n, t, m)| {
            let mut c = vec![f];
            c.extend(n.as_bytes());
            c.push(0);
            c.extend(t.to_be_bytes());
            c.extend(m.to_be_bytes());
            c
        });
        prop_oneof![
            (any::<u64>(), any::<u64>(), any::<u32>()).prop_map(|(l, t, x)| {
                let mut m = vec![b'B'];
                m.extend(l.to_be_bytes());
                m.extend(t.to_be_bytes());
                m.extend(x.to_be_bytes());
                m
            }),
            (
                any::<u32>(),
                name,
                name,
                proptest::collection::vec(column, 0..5)
            )
                .prop_map(|(oid, ns, n, cols)| {
                    let mut m = vec![b'R'];
                    m.extend(oid.to_be_bytes());
                    m.extend(ns.as_bytes());
                    m.push(0);
                    m.extend(n.as_bytes());
                    m.extend([0, b'd']);
                    m.extend((cols.len() as u16).to_be_bytes());
                    cols.into_iter().for_each(|c| m.extend(c));
                    m
                }),
            (any::<u32>(), tuple.clone()).prop_map(|(oid, t)| {
                let mut m = vec![b'I'];
                m.extend(oid.to_be_bytes());
                m.push(b'N');
                m.extend(t);
                m
            }),
            (any::<u32>(), tuple.clone(), tuple.clone(), any::<bool>()).prop_map(
                |(oid, old, new, key)| {
                    let mut m = vec![b'U'];
                    m.extend(oid.to_be_bytes());
                    m.push(if key { b'K' } else { b'O' });
                    m.extend(old);
                    m.push(b'N');
                    m.extend(new);
                    m
                }
            ),
            (any::<u32>(), tuple).prop_map(|(oid, t)| {
                let mut m = vec![b'D'];
                m.extend(oid.to_be_bytes());
                m.push(b'O');
                m.extend(t);
                m
            }),
            proptest::collection::vec(any::<u32>(), 0..4).prop_map(|oids| {
                let mut m = vec![b'T'];
                m.extend((oids.len() as u32).to_be_bytes());
                m.push(0);
                oids.into_iter().for_each(|o| m.extend(o.to_be_bytes()));
                m
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn generated_messages_parse(m in message()) {
            let parsed = parse(&m);
            prop_assert!(parsed.is_ok(), "{:?}: {:?}", m, parsed);
        }

        /// Cut, flipped or extended, a valid message is an error or some message: never
        /// a panic.
        #[test]
        fn mutated_messages_never_panic(
            m in message(),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            extra in proptest::collection::vec(any::<u8>(), 0..4),
        ) {
            let _ = parse(&m[..cut.index(m.len() + 1)]);
            let mut flipped = m.clone();
            let at = flip.index(flipped.len());
            flipped[at] = byte;
            let _ = parse(&flipped);
            let mut longer = m.clone();
            longer.extend(&extra);
            let r = parse(&longer);
            prop_assert!(extra.is_empty() == r.is_ok(), "{:?}", r);
        }
    }
}
