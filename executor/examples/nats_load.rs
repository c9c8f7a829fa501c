//! A NATS load generator for `scripts/bench-nats.sh`, the same for every path
//! measured (direct to nats-server, or through a relay), so only the path differs.
//!
//! ```text
//! nats_load latency ADDR SECONDS      # one publisher: PUB + PING, wait for PONG
//! nats_load throughput ADDR SECONDS   # a publisher in batches of 1000 PUBs + PING,
//!                                     # a subscriber on its own connection counting
//! ```
//!
//! Prints one line of `key=value` pairs: `p50_us`, `p99_us` and `ops` for latency;
//! `published_per_s` and `delivered_per_s` for throughput.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PAYLOAD: &[u8] = b"0123456789abcdef";
const BATCH: usize = 1000;

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| fail(&format!("connect {addr}: {e}")));
        s.set_nodelay(true).ok();
        let mut c = Conn {
            reader: BufReader::new(s.try_clone().expect("clone")),
            writer: s,
        };
        let info = c.line();
        if !info.starts_with("INFO") {
            fail(&format!("greeted with {info:?}"));
        }
        c.send(b"CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nPING\r\n");
        c.until_pong();
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer
            .write_all(bytes)
            .unwrap_or_else(|e| fail(&format!("write: {e}")));
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        match self.reader.read_line(&mut l) {
            Ok(0) | Err(_) => fail("the server closed the connection"),
            Ok(_) => l,
        }
    }

    fn until_pong(&mut self) {
        loop {
            let l = self.line();
            if l.starts_with("PONG") {
                return;
            }
            if l.starts_with("-ERR") {
                fail(&l);
            }
        }
    }
}

fn fail(why: &str) -> ! {
    eprintln!("nats_load: {why}");
    std::process::exit(1)
}

fn publish_op(n: usize) -> Vec<u8> {
    let mut one = format!("PUB bench.load {}\r\n", PAYLOAD.len()).into_bytes();
    one.extend_from_slice(PAYLOAD);
    one.extend_from_slice(b"\r\n");
    one.repeat(n)
}

fn latency(addr: &str, secs: u64) {
    let mut c = Conn::open(addr);
    let mut op = publish_op(1);
    op.extend_from_slice(b"PING\r\n");
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        let t = Instant::now();
        c.send(&op);
        c.until_pong();
        samples.push(t.elapsed().as_nanos() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize] / 1000;
    println!(
        "p50_us={} p99_us={} ops={}",
        at(0.5),
        at(0.99),
        samples.len()
    );
}

fn throughput(addr: &str, secs: u64) {
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sub = Conn::open(addr);
    sub.send(b"SUB bench.> 1\r\nPING\r\n");
    sub.until_pong();
    let counter = {
        let delivered = delivered.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            sub.writer
                .set_read_timeout(Some(Duration::from_millis(200)))
                .ok();
            let mut skip = vec![0u8; PAYLOAD.len() + 2];
            let mut l = String::new();
            while !stop.load(Ordering::Relaxed) {
                l.clear();
                match sub.reader.read_line(&mut l) {
                    Ok(0) => return,
                    Ok(_) if l.starts_with("MSG") => {
                        if sub.reader.read_exact(&mut skip).is_err() {
                            return;
                        }
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) if l.starts_with("PING") => sub.send(b"PONG\r\n"),
                    Ok(_) => {}
                    Err(_) => {}
                }
            }
        })
    };
    let mut publisher = Conn::open(addr);
    let mut batch = publish_op(BATCH);
    batch.extend_from_slice(b"PING\r\n");
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut published = 0u64;
    while Instant::now() < end {
        publisher.send(&batch);
        publisher.until_pong();
        published += BATCH as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    // Deliveries still in flight when publishing stopped count too, briefly.
    let settle = Instant::now() + Duration::from_secs(2);
    while delivered.load(Ordering::Relaxed) < published && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    println!(
        "published_per_s={:.0} delivered_per_s={:.0}",
        published as f64 / elapsed,
        delivered.load(Ordering::Relaxed) as f64 / elapsed
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, secs] = args.as_slice() else {
        fail("usage: nats_load latency|throughput ADDR SECONDS");
    };
    let secs: u64 = secs.parse().unwrap_or_else(|_| fail("SECONDS is a number"));
    match mode.as_str() {
        "latency" => latency(addr, secs),
        "throughput" => throughput(addr, secs),
        _ => fail("the mode is latency or throughput"),
    }
}
