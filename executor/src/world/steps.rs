//! Step clients: what `api.post(...)` and `db.main.send(...)` do on the wire (the
//! other protocols' clients live in `faultbox_protocols::client`). They connect
//! from the test's thread, which lives in the test's network namespace, to the
//! relays there, so faults on the driver's edge apply to them.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use faultbox_protocols::client;
use faultbox_spec::world::StepResult;

/// One HTTP/1.1 request to `addr`. Transport failures come back as a result with
/// `ok == false` and the error, as the spec language describes.
pub fn http(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> StepResult {
    let start = Instant::now();
    http_result(
        http_inner(rt, addr, method, path, body, headers, timeout),
        start,
    )
}

/// The result of an HTTP exchange started at `start`: transport failures become
/// `ok == false` with the error.
pub fn http_result(outcome: Result<(u16, String), String>, start: Instant) -> StepResult {
    step_result(
        outcome.map(|(status, body)| (i64::from(status), body.trim().to_string())),
        start,
    )
}

/// A `tcp` step: the reply line as the body, or `ok == false` with the error.
pub fn tcp(addr: SocketAddr, data: &str, timeout: Duration) -> StepResult {
    let start = Instant::now();
    tcp_result(tcp_send(addr, data, timeout).and_then(tcp_reply), start)
}

/// The result of a `tcp` exchange started at `start`: the reply line as the body.
pub fn tcp_result(outcome: Result<String, String>, start: Instant) -> StepResult {
    step_result(outcome.map(|line| (0, line)), start)
}

/// A step of a protocol with a client in [`faultbox_protocols::client`] (postgres,
/// mysql, redis, memcached) or in `faultbox_mongo` (mongodb). Its socket is made by the calling thread, so call it on
/// a thread in the test's network namespace: the step then goes through the relays.
pub fn protocol(
    rt: &tokio::runtime::Handle,
    protocol: &str,
    addr: SocketAddr,
    credentials: &client::Credentials,
    op: &client::Operation,
    timeout: Duration,
) -> StepResult {
    let start = Instant::now();
    let o = match op {
        // The driver dials from tasks it spawns: it runs on a runtime of its own on
        // this thread, so its sockets are made in this thread's namespace.
        client::Operation::Mongo(m) if protocol == "mongodb" => {
            faultbox_mongo::run(addr, credentials.database.as_deref(), m, timeout)
        }
        _ => rt.block_on(client::run(protocol, addr, credentials, op, timeout)),
    };
    StepResult {
        status: 0,
        body: o.body,
        ok: o.ok,
        error: o.error,
        duration_ms: start.elapsed().as_millis() as i64,
    }
}

/// A step's (status, body), or its transport error, timed from `start`.
fn step_result(outcome: Result<(i64, String), String>, start: Instant) -> StepResult {
    let duration_ms = start.elapsed().as_millis() as i64;
    match outcome {
        Ok((status, body)) => StepResult {
            status,
            body,
            ok: true,
            error: String::new(),
            duration_ms,
        },
        Err(error) => StepResult {
            error,
            duration_ms,
            ..StepResult::default()
        },
    }
}

fn http_inner(
    rt: &tokio::runtime::Handle,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let stream = http_connect(addr, timeout)?;
    rt.block_on(http_exchange(
        stream,
        addr,
        method.to_string(),
        path.to_string(),
        body.to_string(),
        headers.to_vec(),
        timeout,
        None,
    ))
}

/// Connects for an HTTP step. Call it on the test's thread, so that the socket is in
/// the test's network namespace; the exchange may then run anywhere.
pub fn http_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends one request on a connected stream and reads the answer. `sent` gets the
/// request's size once it has been handed to the kernel.
#[allow(clippy::too_many_arguments)]
pub async fn http_exchange(
    stream: TcpStream,
    addr: SocketAddr,
    method: String,
    path: String,
    body: String,
    headers: Vec<(String, String)>,
    timeout: Duration,
    sent: Option<tokio::sync::oneshot::Sender<u64>>,
) -> Result<(u16, String), String> {
    let stream = tokio::net::TcpStream::from_std(stream).map_err(|e| e.to_string())?;
    http_over(stream, addr, &method, &path, &body, &headers, timeout, sent).await
}

/// Sends one request on a connected async stream and reads the answer.
#[allow(clippy::too_many_arguments)]
pub async fn http_over(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(String, String)],
    timeout: Duration,
    sent: Option<tokio::sync::oneshot::Sender<u64>>,
) -> Result<(u16, String), String> {
    let method = hyper::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
        .map_err(|e| e.to_string())?;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        })
        .header("host", format!("localhost:{}", addr.port()))
        .header("connection", "close");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| e.to_string())?;
    {
        let exchange = async {
            let (mut sender, conn) = hyper::client::conn::http1::handshake(Flushed {
                io: TokioIo::new(stream),
                sent,
                written: 0,
            })
            .await
            .map_err(|e| e.to_string())?;
            let driver = tokio::spawn(conn);
            let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            driver.abort();
            Ok::<_, String>((status, String::from_utf8_lossy(&bytes).into_owned()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| format!("no response within {timeout:?}"))?
    }
}

/// Connects to `127.0.0.1:port` and sends `data` and a newline. Call it on the test's
/// thread; the reply may then be read anywhere.
pub fn tcp_send(addr: SocketAddr, data: &str, timeout: Duration) -> Result<TcpStream, String> {
    let stream = tcp_connect(addr, timeout)?;
    tcp_write(stream, data)
}

/// Connects for a `tcp` step, on the test's thread.
pub fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Sends a `tcp` step's `data` and a newline.
pub fn tcp_write(mut stream: TcpStream, data: &str) -> Result<TcpStream, String> {
    stream
        .write_all(format!("{data}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(stream)
}

/// Reads the first reply line of a `tcp` step.
pub fn tcp_reply(stream: TcpStream) -> Result<String, String> {
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Splits a healthcheck target, `localhost:8080/health` or `127.0.0.1:5432`, into its
/// port and path.
pub fn parse_target(target: &str) -> Option<(u16, String)> {
    let rest = target.strip_prefix("http://").unwrap_or(target);
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (_, port) = hostport.rsplit_once(':')?;
    Some((port.parse().ok()?, path))
}

/// A connection that reports how many bytes were written by its first completed
/// flush: hyper flushes once the request's head and known-length body are written.
struct Flushed<T> {
    io: T,
    sent: Option<tokio::sync::oneshot::Sender<u64>>,
    written: u64,
}

impl<T: hyper::rt::Read + Unpin> hyper::rt::Read for Flushed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: hyper::rt::Write + Unpin> hyper::rt::Write for Flushed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if matches!(r, Poll::Ready(Ok(()))) {
            if let Some(tx) = self.sent.take() {
                let _ = tx.send(self.written);
            }
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("localhost:8080/health"),
            Some((8080, "/health".into()))
        );
        assert_eq!(parse_target("localhost:5432"), Some((5432, "/".into())));
        assert_eq!(
            parse_target("http://127.0.0.1:80/a/b"),
            Some((80, "/a/b".into()))
        );
        assert_eq!(parse_target("localhost"), None);
    }
}
