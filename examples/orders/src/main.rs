//! Orders: a small HTTP/1.1 API in front of inventory.
//!
//! `GET /health` → 200; `POST /orders {"sku","qty"}` → 200 `{"status":"confirmed",...}`,
//! 409 when stock is short, 500 when inventory could not record the reservation, 503
//! when inventory cannot be reached; `GET /inventory/<sku>` → `{"sku","stock"}`.
//! Environment: `PORT` (8080), `INVENTORY_ADDR` (localhost:5432).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serde_json::{json, Value};

/// One request line to inventory, one reply line back.
fn inventory(addr: &str, request: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{request}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("inventory closed the connection".into());
    }
    Ok(line.trim().to_string())
}

fn route(method: &str, path: &str, body: &str, inv: &str) -> (u16, Value) {
    match (method, path) {
        ("GET", "/health") => (200, json!({"status": "ok"})),
        ("POST", "/orders") => {
            let req: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => return (400, json!({"error": format!("bad JSON: {e}")})),
            };
            let sku = req["sku"].as_str().unwrap_or("");
            let qty = req["qty"].as_i64().unwrap_or(1);
            match inventory(inv, &format!("RESERVE {sku} {qty}")) {
                Err(e) => (503, json!({"error": "inventory unavailable", "detail": e})),
                Ok(reply) => match reply.split_once(' ') {
                    Some(("OK", left)) => (
                        200,
                        json!({"status": "confirmed", "sku": sku, "qty": qty,
                               "remaining": left.parse::<i64>().unwrap_or(-1)}),
                    ),
                    Some(("ERR", "insufficient")) => (409, json!({"error": "insufficient stock"})),
                    _ => (500, json!({"error": "reservation failed", "detail": reply})),
                },
            }
        }
        ("GET", p) if p.starts_with("/inventory/") => {
            let sku = &p["/inventory/".len()..];
            match inventory(inv, &format!("STOCK {sku}")) {
                Ok(n) => (
                    200,
                    json!({"sku": sku, "stock": n.parse::<i64>().unwrap_or(0)}),
                ),
                Err(e) => (503, json!({"error": "inventory unavailable", "detail": e})),
            }
        }
        _ => (404, json!({"error": "not found"})),
    }
}

fn serve(stream: TcpStream, inv: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let (status, value) = route(method, path, &String::from_utf8_lossy(&body), inv);
    let text = value.to_string();
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    )?;
    out.flush()
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let inv = std::env::var("INVENTORY_ADDR").unwrap_or_else(|_| "localhost:5432".into());
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orders: binding port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("orders: listening on {port}, inventory at {inv}");
    for stream in listener.incoming().flatten() {
        let inv = inv.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &inv);
        });
    }
}
