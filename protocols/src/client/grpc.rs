//! gRPC `call` steps with tonic: one HTTP/2 connection per step, made by the
//! polling thread (so in its network namespace) and handed to tonic, which never
//! dials again. The request is the step's JSON marshalled with the method's
//! descriptors, from the interface's `spec=` `.proto` or, without one, from the
//! server's reflection service (v1, then v1alpha) on the same connection.
//!
//! The outcome's `status` is the numeric `grpc-status` (0 on success); a failure's
//! `error` is the code's canonical name and the message, `UNAVAILABLE: ...`, also
//! for failures that never reached the server (tonic reports those as
//! `UNAVAILABLE`, a step that runs out of time as `DEADLINE_EXCEEDED`).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost_reflect::DescriptorPool;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};

use super::grpc_schema::{self, SchemaError};
use super::{Operation, Outcome};

/// The canonical name of a gRPC status code, as other gRPC tools print it.
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// A failed call: its code and message.
struct Failure {
    code: Code,
    message: String,
}

/// The message of a call tonic cut off at the deadline it sent (`grpc-timeout`);
/// [`run`] words it as its own timeout.
const TIMED_OUT: &str = "the call's deadline passed";

impl From<Status> for Failure {
    fn from(s: Status) -> Self {
        // tonic enforces the deadline it sends and reports its expiry as CANCELLED
        // ("Timeout expired"); gRPC says DEADLINE_EXCEEDED.
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&s);
        while let Some(c) = cause {
            if c.is::<tonic::TimeoutExpired>() {
                break;
            }
            cause = c.source();
        }
        if cause.is_some() || (s.code() == Code::Cancelled && s.message() == "Timeout expired") {
            return Failure {
                code: Code::DeadlineExceeded,
                message: TIMED_OUT.into(),
            };
        }
        let mut message = s.message().to_string();
        // A transport failure's message is generic ("transport error"): its cause
        // says what happened (connection refused, reset, a broken frame).
        let mut cause = std::error::Error::source(&s);
        while let Some(c) = cause {
            let text = c.to_string();
            if !message.contains(&text) {
                message = if message.is_empty() {
                    text
                } else {
                    format!("{message}: {text}")
                };
            }
            cause = c.source();
        }
        // tonic calls a broken connection UNKNOWN or CANCELLED (by when it broke);
        // gRPC's other clients, and what a test means, call a server that cannot be
        // reached UNAVAILABLE. A status the server sent has no source.
        let transport = std::error::Error::source(&s).is_some();
        let code = match s.code() {
            Code::Unknown | Code::Cancelled if transport => Code::Unavailable,
            c => c,
        };
        Failure { code, message }
    }
}

impl From<SchemaError> for Failure {
    fn from(e: SchemaError) -> Self {
        let code = match e {
            SchemaError::Response { .. } | SchemaError::Descriptors(_) => Code::Internal,
            _ => Code::InvalidArgument,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

/// Runs a `call` step against the server at `addr` within `timeout`.
pub(super) async fn run(addr: SocketAddr, op: &Operation, timeout: Duration) -> Outcome {
    let Operation::GrpcCall {
        method,
        body,
        metadata,
        proto,
        timeout: own,
    } = op
    else {
        return Outcome {
            error: format!("grpc has no {} step", op.name()),
            ..Outcome::default()
        };
    };
    let limit = own.map_or(timeout, |t| t.min(timeout));
    let work = call(addr, method, body, metadata, proto.as_deref(), limit);
    let result = match tokio::time::timeout(limit, work).await {
        Ok(Err(f)) if f.message == TIMED_OUT => Err(Failure {
            code: Code::DeadlineExceeded,
            message: format!("no response within {limit:?}"),
        }),
        Ok(r) => r,
        Err(_) => Err(Failure {
            code: Code::DeadlineExceeded,
            message: format!("no response within {limit:?}"),
        }),
    };
    match result {
        Ok(json) => Outcome {
            ok: true,
            status: 0,
            body: super::json(&json),
            error: String::new(),
        },
        Err(f) => Outcome {
            ok: false,
            status: f.code as i64,
            body: String::new(),
            error: format!("{}: {}", code_name(f.code as i32), f.message),
        },
    }
}

async fn call(
    addr: SocketAddr,
    path: &str,
    body: &str,
    metadata: &[(String, String)],
    proto: Option<&std::path::Path>,
    limit: Duration,
) -> Result<serde_json::Value, Failure> {
    // Refuse a bad schema before touching the network.
    let known = match proto {
        Some(p) => {
            let pool = grpc_schema::load(p)?;
            let m = grpc_schema::method(&pool, path, &p.display().to_string())?;
            let request = grpc_schema::encode(&m, body)?;
            Some((m, request))
        }
        None => {
            grpc_schema::split_method(path)?;
            None
        }
    };
    let channel = connect(addr).await?;
    let (method, request) = match known {
        Some(k) => k,
        None => {
            let pool = reflect(channel.clone(), path).await?;
            let m = grpc_schema::method(&pool, path, "the server's reflection")?;
            let request = grpc_schema::encode(&m, body)?;
            (m, request)
        }
    };
    let mut req = tonic::Request::new(Bytes::from(request));
    req.set_timeout(limit);
    for (k, v) in metadata {
        let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).map_err(|_| Failure {
            code: Code::InvalidArgument,
            message: format!("metadata key {k:?} is not a valid header name"),
        })?;
        let value = v.parse().map_err(|_| Failure {
            code: Code::InvalidArgument,
            message: format!("metadata value {v:?} is not printable ASCII"),
        })?;
        req.metadata_mut().insert(key, value);
    }
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| Failure {
        code: Code::Unavailable,
        message: e.to_string(),
    })?;
    let route = PathAndQuery::try_from(format!(
        "/{}/{}",
        method.parent_service().full_name(),
        method.name()
    ))
    .map_err(|e| Failure {
        code: Code::InvalidArgument,
        message: e.to_string(),
    })?;
    let response = grpc.unary(req, route, RawCodec).await?;
    Ok(grpc_schema::decode(&method, &response.into_inner())?)
}

/// An HTTP/2 channel over one connection made here: the connector hands tonic that
/// stream once and refuses to dial again (a new connection would come from a
/// runtime thread, outside the step's network namespace).
async fn connect(addr: SocketAddr) -> Result<Channel, Failure> {
    let stream = super::connect(addr).await.map_err(|e| Failure {
        code: Code::Unavailable,
        message: e.to_string(),
    })?;
    let once = Arc::new(Mutex::new(Some(stream)));
    let connector = tower_fn(move |_: Uri| {
        let stream = once.lock().unwrap_or_else(|p| p.into_inner()).take();
        async move {
            stream
                .map(hyper_util::rt::TokioIo::new)
                .ok_or_else(|| std::io::Error::other("the step's connection was closed"))
        }
    });
    let uri = format!("http://localhost:{}", addr.port());
    Endpoint::from_shared(uri)
        .map_err(|e| Failure {
            code: Code::InvalidArgument,
            message: e.to_string(),
        })?
        .connect_with_connector(connector)
        .await
        .map_err(|e| Failure {
            code: Code::Unavailable,
            message: error_chain(&e),
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let t = c.to_string();
        if !out.contains(&t) {
            out = format!("{out}: {t}");
        }
        cause = c.source();
    }
    out
}

/// Descriptors for `path`'s service from the server's reflection service.
async fn reflect(channel: Channel, path: &str) -> Result<DescriptorPool, Failure> {
    let (service, _) = grpc_schema::split_method(path)?;
    let files = match reflect_v1(channel.clone(), service).await {
        Err(f) if f.code == Code::Unimplemented => reflect_v1alpha(channel, service).await,
        other => other,
    }
    .map_err(|f| Failure {
        code: f.code,
        message: format!(
            "no spec= on the interface, and server reflection failed: {}",
            f.message
        ),
    })?;
    Ok(grpc_schema::pool_from_files(&files)?)
}

/// One reflection exchange per version: ask for the file defining `symbol`, then
/// for every import the answers name and did not include, until none is missing.
macro_rules! reflect_with {
    ($name:ident, $pb:path) => {
        async fn $name(channel: Channel, symbol: &str) -> Result<Vec<Vec<u8>>, Failure> {
            use pb::server_reflection_client::ServerReflectionClient;
            use pb::server_reflection_request::MessageRequest;
            use pb::server_reflection_response::MessageResponse;
            use $pb as pb;

            let mut client = ServerReflectionClient::new(channel);
            let mut files: Vec<Vec<u8>> = Vec::new();
            let mut have: std::collections::BTreeSet<String> = Default::default();
            let mut asks = vec![MessageRequest::FileContainingSymbol(symbol.to_string())];
            let mut rounds = 0;
            while !asks.is_empty() {
                rounds += 1;
                if rounds > 64 {
                    return Err(Failure {
                        code: Code::Internal,
                        message: "the server's files import too deep a chain".into(),
                    });
                }
                let requests: Vec<pb::ServerReflectionRequest> = asks
                    .drain(..)
                    .map(|m| pb::ServerReflectionRequest {
                        host: String::new(),
                        message_request: Some(m),
                    })
                    .collect();
                let mut answers = client
                    .server_reflection_info(tokio_stream::iter(requests))
                    .await?
                    .into_inner();
                let mut wanted = std::collections::BTreeSet::new();
                while let Some(answer) = answers.message().await? {
                    match answer.message_response {
                        Some(MessageResponse::FileDescriptorResponse(f)) => {
                            for bytes in f.file_descriptor_proto {
                                let file =
                                    <prost_types::FileDescriptorProto as prost::Message>::decode(
                                        bytes.as_slice(),
                                    )
                                    .map_err(|e| Failure {
                                        code: Code::Internal,
                                        message: format!("a descriptor the server sent: {e}"),
                                    })?;
                                if have.insert(file.name().to_string()) {
                                    wanted.extend(file.dependency.clone());
                                    files.push(bytes);
                                }
                            }
                        }
                        Some(MessageResponse::ErrorResponse(e)) => {
                            return Err(Failure {
                                code: Code::from_i32(e.error_code),
                                message: format!(
                                    "{} ({symbol}): {}",
                                    code_name(e.error_code),
                                    e.error_message
                                ),
                            })
                        }
                        _ => {}
                    }
                }
                asks = wanted
                    .into_iter()
                    .filter(|d| !have.contains(d))
                    .map(MessageRequest::FileByFilename)
                    .collect();
            }
            Ok(files)
        }
    };
}

reflect_with!(reflect_v1, tonic_reflection::pb::v1);
reflect_with!(reflect_v1alpha, tonic_reflection::pb::v1alpha);

/// A codec for messages already in wire form: the schema marshals them.
#[derive(Clone, Copy)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A `tower::Service<Uri>` from a closure (tonic's connector type).
fn tower_fn<F, Fut, T>(f: F) -> TowerFn<F>
where
    F: FnMut(Uri) -> Fut,
    Fut: std::future::Future<Output = Result<T, std::io::Error>>,
{
    TowerFn(f)
}

struct TowerFn<F>(F);

impl<F, Fut, T> tonic::codegen::Service<Uri> for TowerFn<F>
where
    F: FnMut(Uri) -> Fut,
    Fut: std::future::Future<Output = Result<T, std::io::Error>>,
{
    type Response = T;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Fut {
        (self.0)(uri)
    }
}
