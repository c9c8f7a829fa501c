//! Kafka steps with a small client on `kafka-protocol`: one connection to the
//! interface's address, which serves every request (Faultbox's brokers are single
//! nodes reached through one relay; a partition led by another broker is not
//! followed).
//!
//! - `publish`: Metadata for the topic (created with one partition when the broker
//!   does not know it: brokers such as tansu do not create topics on their own),
//!   then one Produce (acks=all, no idempotence, no compression) of one record.
//!   The partition is the Kafka default partitioner's for a key (murmur2), else 0.
//!   Answers `{"published": true, "topic", "partition", "offset"}`.
//! - `consume`: the group's committed offsets (OffsetFetch), the log start where
//!   there is none (ListOffsets), then Fetch until a record arrives; the record's
//!   offset + 1 is committed for the group with generation −1 (a simple consumer,
//!   never a group member), so the next `consume` with the group reads the next
//!   record. Answers `{"topic", "partition", "offset", "key", "value"}` (text, or
//!   `0x` hex when not UTF-8; `None` when absent).
//!
//! The `topic()` event source reads with the same [`Connection`]: `partitions`,
//! `log_start`, `high_watermark` and `fetch_records`, which returns every record of
//! a Fetch response (several partitions at once) and steps over whole batches that
//! do not decode instead of failing on them forever.
//!
//! A broker error (a code in a response) is the step's error, by name:
//! `NOT_ENOUGH_REPLICAS (19) producing to orders/0`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::{
    create_topics_request, fetch_request, list_offsets_request, metadata_request,
    offset_commit_request, offset_fetch_request, produce_request, CreateTopicsRequest,
    FetchRequest, ListOffsetsRequest, MetadataRequest, OffsetCommitRequest, OffsetFetchRequest,
    ProduceRequest, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ClientError, Operation};
use crate::kafka::error_name;

/// API versions every broker since Kafka 2.8 and tansu speak (flexible encodings).
const METADATA: i16 = 9;
const PRODUCE: i16 = 9;
const FETCH: i16 = 12;
const LIST_OFFSETS: i16 = 7;
const OFFSET_FETCH: i16 = 7;
const OFFSET_COMMIT: i16 = 8;
const CREATE_TOPICS: i16 = 5;

/// Largest response read.
const MAX_RESPONSE: usize = 64 << 20;

pub(super) async fn run(addr: SocketAddr, op: &Operation) -> Result<String, ClientError> {
    let mut c = Connection::open(addr).await?;
    let value = match op {
        Operation::KafkaPublish { topic, value, key } => {
            c.publish(topic, key.as_deref(), value).await?
        }
        Operation::KafkaConsume { topic, group, wait } => {
            let group = group.as_deref().ok_or_else(|| {
                ClientError::Invalid("consume(): no consumer group was chosen".into())
            })?;
            c.consume(topic, group, *wait).await?
        }
        other => {
            return Err(ClientError::Unsupported {
                protocol: "kafka".into(),
                operation: other.name(),
            })
        }
    };
    Ok(super::json(&value))
}

/// A round trip that proves a broker answers: Metadata for no topic.
pub(super) async fn ping(addr: SocketAddr) -> Result<(), ClientError> {
    let mut c = Connection::open(addr).await?;
    let r = c
        .call(
            &MetadataRequest::default().with_topics(Some(Vec::new())),
            METADATA,
        )
        .await?;
    if r.brokers.is_empty() {
        return Err(ClientError::Protocol(
            "the broker's Metadata lists no broker".into(),
        ));
    }
    Ok(())
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// A broker's error code as the step's error.
fn broker_error(code: i16, what: &str) -> ClientError {
    let n = error_name(code).unwrap_or_else(|| "UNKNOWN".into());
    ClientError::Server(format!("{n} ({code}) {what}"))
}

/// One connection to a broker, which serves every request (see the module docs).
pub struct Connection {
    stream: TcpStream,
    correlation: i32,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Result<Connection, ClientError> {
        Ok(Connection {
            stream: super::connect(addr).await?,
            correlation: 0,
        })
    }

    /// Sends `req` at `version` and reads its response.
    async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
    ) -> Result<R::Response, ClientError> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(str_bytes("faultbox")));
        let mut buf: Vec<u8> = vec![0; 4];
        header
            .encode(&mut buf, R::header_version(version))
            .map_err(encode_error)?;
        req.encode(&mut buf, version).map_err(encode_error)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).await?;
        let mut size = [0u8; 4];
        self.stream
            .read_exact(&mut size)
            .await
            .map_err(|e| closed(e, R::KEY))?;
        let size = i32::from_be_bytes(size);
        if size < 4 || size as usize > MAX_RESPONSE {
            return Err(ClientError::Protocol(format!(
                "a response announces {size} bytes"
            )));
        }
        let mut body = vec![0u8; size as usize];
        self.stream
            .read_exact(&mut body)
            .await
            .map_err(|e| closed(e, R::KEY))?;
        let mut rest = &body[..];
        let h = ResponseHeader::decode(&mut rest, R::Response::header_version(version))
            .map_err(|e| ClientError::Protocol(format!("a response header: {e}")))?;
        if h.correlation_id != self.correlation {
            return Err(ClientError::Protocol(format!(
                "a response for request {} came for request {}",
                h.correlation_id, self.correlation
            )));
        }
        R::Response::decode(&mut rest, version)
            .map_err(|e| ClientError::Protocol(format!("a response does not decode: {e}")))
    }

    /// The topic's partitions, in index order; `None` when the broker does not know it.
    pub async fn partitions(&mut self, topic: &str) -> Result<Option<Vec<i32>>, ClientError> {
        let req = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(name(topic)))]))
            .with_allow_auto_topic_creation(false);
        let r = self.call(&req, METADATA).await?;
        let Some(t) = r.topics.first() else {
            return Ok(None);
        };
        match t.error_code {
            0 => {}
            3 => return Ok(None),
            code => return Err(broker_error(code, &format!("looking up topic {topic}"))),
        }
        let mut parts: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        parts.sort_unstable();
        Ok(Some(parts))
    }

    /// Creates `topic` with `partitions` partitions; one that exists already is left
    /// as it is.
    pub async fn create(&mut self, topic: &str, partitions: i32) -> Result<(), ClientError> {
        let req = CreateTopicsRequest::default()
            .with_topics(vec![create_topics_request::CreatableTopic::default()
                .with_name(name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(1)])
            .with_timeout_ms(10_000);
        let r = self.call(&req, CREATE_TOPICS).await?;
        match r.topics.first().map(|t| t.error_code) {
            // Created, or created meanwhile by someone else.
            Some(0 | 36) | None => Ok(()),
            Some(code) => Err(broker_error(code, &format!("creating topic {topic}"))),
        }
    }

    /// One record, acknowledged by all replicas (the `publish` step): creates the
    /// topic with one partition when the broker does not know it.
    pub async fn publish(
        &mut self,
        topic: &str,
        key: Option<&str>,
        value: &str,
    ) -> Result<Value, ClientError> {
        let parts = match self.partitions(topic).await? {
            Some(p) => p,
            None => {
                self.create(topic, 1).await?;
                vec![0]
            }
        };
        let partition = match (key, parts.len()) {
            (_, 0) => {
                return Err(ClientError::Server(format!(
                    "topic {topic} has no partitions"
                )))
            }
            (Some(k), n) => parts[(murmur2(k.as_bytes()) & 0x7fff_ffff) as usize % n],
            (None, _) => parts[0],
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let record = Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: now,
            key: key.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
            value: Some(bytes::Bytes::copy_from_slice(value.as_bytes())),
            headers: IndexMap::new(),
        };
        let mut batch = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut batch,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| ClientError::Invalid(format!("encoding the record: {e}")))?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(name(topic))
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(batch.freeze())),
                ])]);
        let r = self.call(&req, PRODUCE).await?;
        let p = r
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| ClientError::Protocol("the Produce response is empty".into()))?;
        if p.error_code != 0 {
            return Err(broker_error(
                p.error_code,
                &format!("producing to {topic}/{partition}"),
            ));
        }
        Ok(json!({
            "published": true,
            "topic": topic,
            "partition": partition,
            "offset": p.base_offset,
        }))
    }

    /// Committed offsets of `group` for `parts` (−1: none).
    async fn committed(
        &mut self,
        topic: &str,
        group: &str,
        parts: &[i32],
    ) -> Result<Vec<i64>, ClientError> {
        let req = OffsetFetchRequest::default()
            .with_group_id(str_bytes(group).into())
            .with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name(topic))
                    .with_partition_indexes(parts.to_vec()),
            ]));
        let r = self.call(&req, OFFSET_FETCH).await?;
        if r.error_code != 0 {
            return Err(broker_error(
                r.error_code,
                &format!("reading group {group}'s offsets"),
            ));
        }
        let mut out = vec![-1; parts.len()];
        for t in &r.topics {
            for p in &t.partitions {
                if p.error_code != 0 && p.error_code != 3 {
                    return Err(broker_error(
                        p.error_code,
                        &format!(
                            "reading group {group}'s offset of {topic}/{}",
                            p.partition_index
                        ),
                    ));
                }
                if let Some(i) = parts.iter().position(|&x| x == p.partition_index) {
                    out[i] = p.committed_offset;
                }
            }
        }
        Ok(out)
    }

    /// The first offset still in partition `part`.
    pub async fn log_start(&mut self, topic: &str, part: i32) -> Result<i64, ClientError> {
        self.list_offset(topic, part, -2, "the start of").await
    }

    /// The partition's high watermark: the offset the next record will get, so every
    /// record acknowledged so far is below it.
    pub async fn high_watermark(&mut self, topic: &str, part: i32) -> Result<i64, ClientError> {
        self.list_offset(topic, part, -1, "the end of").await
    }

    /// ListOffsets at `timestamp` −2 (earliest) or −1 (latest).
    async fn list_offset(
        &mut self,
        topic: &str,
        part: i32,
        timestamp: i64,
        what: &str,
    ) -> Result<i64, ClientError> {
        let req = ListOffsetsRequest::default()
            .with_replica_id((-1).into())
            .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(part)
                        .with_current_leader_epoch(-1)
                        .with_timestamp(timestamp),
                ])]);
        let r = self.call(&req, LIST_OFFSETS).await?;
        let p = r
            .topics
            .first()
            .and_then(|t| t.partitions.first())
            .ok_or_else(|| ClientError::Protocol("the ListOffsets response is empty".into()))?;
        if p.error_code != 0 {
            return Err(broker_error(
                p.error_code,
                &format!("finding {what} {topic}/{part}"),
            ));
        }
        Ok(p.offset)
    }

    /// The first record at or after `offset` in `part`, if one is there now.
    async fn fetch(
        &mut self,
        topic: &str,
        part: i32,
        offset: i64,
    ) -> Result<Option<Record>, ClientError> {
        let fetched = self
            .fetch_records(topic, &[(part, offset)], Duration::from_millis(200))
            .await?;
        let Some(p) = fetched.into_iter().next() else {
            return Ok(None);
        };
        if p.error_code != 0 {
            return Err(broker_error(
                p.error_code,
                &format!("fetching {topic}/{part} at offset {offset}"),
            ));
        }
        match (p.records.into_iter().next(), p.skipped.first()) {
            (Some(r), _) => Ok(Some(r)),
            (None, Some(s)) => Err(ClientError::Protocol(format!(
                "records of {topic}/{part} do not decode: {}",
                s.reason
            ))),
            (None, None) => Ok(None),
        }
    }

    /// One Fetch of the partitions in `from` (partition, first offset wanted), in
    /// their order, waiting up to `max_wait` for a first byte. A partition's error is
    /// its [`Fetched::error_code`]; a request-level one is the call's error.
    pub async fn fetch_records(
        &mut self,
        topic: &str,
        from: &[(i32, i64)],
        max_wait: Duration,
    ) -> Result<Vec<Fetched>, ClientError> {
        let req = FetchRequest::default()
            .with_replica_id((-1).into())
            .with_max_wait_ms(max_wait.as_millis().min(i32::MAX as u128) as i32)
            .with_min_bytes(1)
            .with_max_bytes(8 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![fetch_request::FetchTopic::default()
                .with_topic(name(topic))
                .with_partitions(
                    from.iter()
                        .map(|&(part, offset)| {
                            fetch_request::FetchPartition::default()
                                .with_partition(part)
                                .with_current_leader_epoch(-1)
                                .with_fetch_offset(offset)
                                .with_last_fetched_epoch(-1)
                                .with_log_start_offset(-1)
                                .with_partition_max_bytes(4 << 20)
                        })
                        .collect(),
                )]);
        let r = self.call(&req, FETCH).await?;
        if r.error_code != 0 {
            return Err(broker_error(r.error_code, &format!("fetching {topic}")));
        }
        let mut out = Vec::with_capacity(from.len());
        for p in r.responses.iter().flat_map(|t| &t.partitions) {
            let Some(&(_, offset)) = from.iter().find(|(part, _)| *part == p.partition_index)
            else {
                continue;
            };
            let (records, next_offset, skipped) = match &p.records {
                Some(b) if p.error_code == 0 => decode_batches(b.clone(), offset).map_err(|e| {
                    ClientError::Protocol(format!(
                        "records of {topic}/{} do not decode: {e}",
                        p.partition_index
                    ))
                })?,
                _ => (Vec::new(), offset, Vec::new()),
            };
            out.push(Fetched {
                partition: p.partition_index,
                error_code: p.error_code,
                records,
                next_offset,
                high_watermark: p.high_watermark,
                skipped,
            });
        }
        Ok(out)
    }

    async fn commit(
        &mut self,
        topic: &str,
        group: &str,
        part: i32,
        next: i64,
    ) -> Result<(), ClientError> {
        let req = OffsetCommitRequest::default()
            .with_group_id(str_bytes(group).into())
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(str_bytes(""))
            .with_topics(vec![
                offset_commit_request::OffsetCommitRequestTopic::default()
                    .with_name(name(topic))
                    .with_partitions(vec![
                        offset_commit_request::OffsetCommitRequestPartition::default()
                            .with_partition_index(part)
                            .with_committed_offset(next)
                            .with_committed_leader_epoch(-1),
                    ]),
            ]);
        let r = self.call(&req, OFFSET_COMMIT).await?;
        for t in &r.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(broker_error(
                        p.error_code,
                        &format!("committing group {group}'s offset of {topic}/{part}"),
                    ));
                }
            }
        }
        Ok(())
    }

    async fn consume(
        &mut self,
        topic: &str,
        group: &str,
        wait: Duration,
    ) -> Result<Value, ClientError> {
        let Some(parts) = self.partitions(topic).await? else {
            return Err(ClientError::Server(format!(
                "UNKNOWN_TOPIC_OR_PARTITION (3) topic {topic} does not exist"
            )));
        };
        let committed = self.committed(topic, group, &parts).await?;
        let mut offsets = Vec::with_capacity(parts.len());
        for (&p, &c) in parts.iter().zip(&committed) {
            offsets.push(if c >= 0 {
                c
            } else {
                self.log_start(topic, p).await?
            });
        }
        let until = Instant::now() + wait;
        loop {
            for (&p, &offset) in parts.iter().zip(&offsets) {
                if let Some(r) = self.fetch(topic, p, offset).await? {
                    self.commit(topic, group, p, r.offset + 1).await?;
                    let text = |b: &Option<bytes::Bytes>| match b {
                        Some(b) => super::text_or_hex(b, "0x"),
                        None => Value::Null,
                    };
                    return Ok(json!({
                        "topic": topic,
                        "partition": p,
                        "offset": r.offset,
                        "key": text(&r.key),
                        "value": text(&r.value),
                    }));
                }
            }
            if Instant::now() >= until {
                return Err(ClientError::Server(format!(
                    "no message on topic {topic} for group {group} within {}",
                    faultbox_duration(wait)
                )));
            }
        }
    }
}

/// What one partition of a Fetch response held.
#[derive(Debug)]
pub struct Fetched {
    pub partition: i32,
    /// The broker's error code for the partition (0: none), e.g.
    /// `OFFSET_OUT_OF_RANGE` (1) when the offset asked for is not in the log.
    pub error_code: i16,
    /// Data records at or after the offset asked for, in offset order (control
    /// records of transactions left out).
    pub records: Vec<Record>,
    /// Where the next fetch of the partition starts: past every whole batch
    /// returned, control and skipped batches included.
    pub next_offset: i64,
    pub high_watermark: i64,
    /// Whole batches that do not decode (a compression this client is built
    /// without): they are stepped over, not retried forever.
    pub skipped: Vec<Skipped>,
}

/// A record batch stepped over: its offsets and why it did not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub first: i64,
    pub last: i64,
    pub reason: String,
}

/// The data records at or after `offset` in a Fetch response's record bytes, where
/// to fetch next, and the batches stepped over. A batch cut off at the response's
/// size limit ends the bytes: it is fetched again from its start next time.
fn decode_batches(
    mut buf: bytes::Bytes,
    offset: i64,
) -> Result<(Vec<Record>, i64, Vec<Skipped>), String> {
    use bytes::Buf;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    let mut next = offset;
    // Base offset (8), length (4), leader epoch (4), magic (1), CRC (4), attributes
    // (2), last offset delta (4): enough to step over a batch without decoding it.
    while buf.len() >= 27 {
        let base = i64::from_be_bytes(buf[0..8].try_into().expect("8 bytes"));
        let len = i32::from_be_bytes(buf[8..12].try_into().expect("4 bytes"));
        // The smallest message before magic 2 is 14 bytes; a magic 2 header is 49.
        let least = if buf[16] >= 2 { 49 } else { 14 };
        if len < least {
            return Err(format!("a batch at offset {base} announces {len} bytes"));
        }
        let whole = 12 + len as usize;
        if buf.len() < whole {
            break;
        }
        // Batches before magic 2 hold one (wrapper) message whose offset is the last.
        let last = if buf[16] >= 2 {
            base + i64::from(i32::from_be_bytes(buf[23..27].try_into().expect("4 bytes")))
        } else {
            base
        };
        let mut one = buf.slice(..whole);
        match RecordBatchDecoder::decode(&mut one) {
            Ok(set) => records.extend(
                set.records
                    .into_iter()
                    .filter(|r| !r.control && r.offset >= offset),
            ),
            Err(e) if last >= offset => skipped.push(Skipped {
                first: base,
                last,
                reason: e.to_string(),
            }),
            Err(_) => {}
        }
        next = next.max(last + 1);
        buf.advance(whole);
    }
    Ok((records, next, skipped))
}

fn faultbox_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn encode_error(e: impl std::fmt::Display) -> ClientError {
    ClientError::Invalid(format!("encoding a request: {e}"))
}

/// The broker closed the connection before answering.
fn closed(e: std::io::Error, key: i16) -> ClientError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ClientError::Protocol(format!(
            "the broker closed the connection before answering (API key {key})"
        ))
    } else {
        ClientError::Io(e)
    }
}

/// Kafka's murmur2 (the Java client's default partitioner for keyed records).
fn murmur2(data: &[u8]) -> i32 {
    let seed: u32 = 0x9747_b28c;
    let m: u32 = 0x5bd1_e995;
    let r = 24;
    let len = data.len();
    let mut h: u32 = seed ^ len as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use crate::kafka::tests::{one_batch, records};
    use kafka_protocol::records::Record;

    fn values(r: &[Record]) -> Vec<(i64, String)> {
        r.iter()
            .map(|r| {
                let v = r.value.as_deref().unwrap_or_default();
                (r.offset, String::from_utf8_lossy(v).into_owned())
            })
            .collect()
    }

    #[test]
    fn batches_decode_from_the_offset_asked_for() {
        let mut buf = one_batch(&["a", "b"], 0);
        buf.extend(records(&["c"], 2));
        let buf = bytes::Bytes::from(buf);
        let (records, next, skipped) = super::decode_batches(buf.clone(), 1).unwrap();
        assert_eq!(values(&records), [(1, "b".into()), (2, "c".into())]);
        assert_eq!((next, skipped.len()), (3, 0));
        // A batch cut off at the size limit is left for the next fetch.
        let cut = buf.len() - 3;
        let (records, next, _) = super::decode_batches(buf.slice(..cut), 0).unwrap();
        assert_eq!(values(&records), [(0, "a".into()), (1, "b".into())]);
        assert_eq!(next, 2);
    }

    #[test]
    fn a_batch_that_does_not_decode_is_stepped_over() {
        // A batch marked lz4 (which this build lacks), its CRC made right.
        let mut lz4 = one_batch(&["a", "b"], 0);
        lz4[22] |= 3;
        let crc = crc32c::crc32c(&lz4[21..]);
        lz4[17..21].copy_from_slice(&crc.to_be_bytes());
        lz4.extend(records(&["c"], 2));
        let (records, next, skipped) = super::decode_batches(lz4.into(), 0).unwrap();
        assert_eq!(values(&records), [(2, "c".into())]);
        assert_eq!(next, 3);
        assert_eq!((skipped[0].first, skipped[0].last), (0, 1));
        assert!(skipped[0].reason.contains("Lz4"), "{skipped:?}");
    }

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from the Java client's UtilsTest.
        assert_eq!(super::murmur2(b"21"), -973932308);
        assert_eq!(super::murmur2(b"foobar"), -790332482);
        assert_eq!(super::murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(super::murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            super::murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
    }
}
