//! A gRPC-shaped HTTP/2 server and load generator for `scripts/bench-grpc.sh`.
//!
//! ```text
//! grpc_bench server PORT
//! grpc_bench load ADDR SECONDS CALLERS CONNECTIONS
//! ```
//!
//! The server answers every unary call with its request message and `grpc-status: 0`
//! in trailers, as a gRPC echo service does (length-prefixed messages,
//! `content-type: application/grpc`, trailers). The load generator opens CONNECTIONS
//! HTTP/2 connections and runs CALLERS callers spread over them, each making one
//! unary call after another (a 16-byte message) for SECONDS; it checks each answer
//! (status 200, the message echoed, grpc-status 0) and prints
//! `calls p50_us p99_us calls_per_s`. Both are in Rust (hyper) so that neither end
//! hides the relay's cost behind its own.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A message body followed by `grpc-status: 0`.
struct Echo(Option<Bytes>, bool);

impl Body for Echo {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let me = self.get_mut();
        if let Some(d) = me.0.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if std::mem::take(&mut me.1) {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from_static("0"));
            return std::task::Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        std::task::Poll::Ready(None)
    }
}

async fn server(port: u16) {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    println!("ready");
    loop {
        let (s, _) = l.accept().await.expect("accept");
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                let body = req.into_body().collect().await?.to_bytes();
                let mut resp = Response::new(Echo(Some(body), true));
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                Ok::<_, hyper::Error>(resp)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

const MESSAGE: &[u8] = b"\0\0\0\0\x10\x0a\x0ehello, relay!!";

async fn load(addr: String, seconds: u64, callers: usize, connections: usize) {
    let mut senders = Vec::new();
    for _ in 0..connections {
        let s = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let _ = s.set_nodelay(true);
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
                .await
                .expect("handshake");
        tokio::spawn(conn);
        senders.push(send);
    }
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for i in 0..callers {
        let mut send: hyper::client::conn::http2::SendRequest<Full<Bytes>> =
            senders[i % connections].clone();
        let uri = format!("http://{addr}/bench.Echo/Say");
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let req = Request::post(&uri)
                    .header(CONTENT_TYPE, "application/grpc")
                    .header("te", "trailers")
                    .body(Full::new(Bytes::from_static(MESSAGE)))
                    .expect("request");
                let t = Instant::now();
                send.ready().await.expect("connection ready");
                let resp = send.send_request(req).await.expect("call");
                assert_eq!(resp.status(), 200);
                let got = resp.into_body().collect().await.expect("body");
                assert_eq!(
                    got.trailers()
                        .and_then(|t| t.get("grpc-status"))
                        .map(|v| v.as_bytes()),
                    Some(&b"0"[..])
                );
                assert_eq!(&got.to_bytes()[..], MESSAGE);
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("caller"));
    }
    let took = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_micros();
    println!(
        "{} {} {} {:.0}",
        all.len(),
        pct(0.5),
        pct(0.99),
        all.len() as f64 / took
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["server", port] => rt.block_on(server(port.parse().expect("port"))),
        ["load", addr, secs, callers, conns] => rt.block_on(load(
            addr.to_string(),
            secs.parse().expect("seconds"),
            callers.parse().expect("callers"),
            conns.parse().expect("connections"),
        )),
        _ => {
            eprintln!(
                "usage: grpc_bench server PORT | grpc_bench load ADDR SECONDS CALLERS CONNECTIONS"
            );
            std::process::exit(2)
        }
    }
}
