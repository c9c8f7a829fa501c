//! Inventory: a TCP line protocol over stock levels. Every reservation is appended to
//! a write-ahead log and fsynced before it is acknowledged, so a failing disk shows as
//! a refused reservation, never as a lost one.
//!
//! Protocol (one request line, one reply line):
//! `PING` → `PONG`; `STOCK sku` → `<n>`; `RESERVE sku qty` → `OK <remaining>`,
//! `ERR insufficient` or `ERR wal: <error>`.
//! Environment: `PORT` (5432), `WAL_PATH` (`$TMPDIR/inventory.wal`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

struct Store {
    stock: HashMap<String, i64>,
    wal_path: String,
}

impl Store {
    fn reserve(&mut self, sku: &str, qty: i64) -> String {
        let have = self.stock.get(sku).copied().unwrap_or(0);
        if qty <= 0 || have < qty {
            return "ERR insufficient".into();
        }
        if let Err(e) = self.append(&format!("reserve {sku} {qty}\n")) {
            return format!("ERR wal: {e}");
        }
        self.stock.insert(sku.to_string(), have - qty);
        format!("OK {}", have - qty)
    }

    fn append(&self, record: &str) -> std::io::Result<()> {
        let mut wal = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.wal_path)?;
        wal.write_all(record.as_bytes())?;
        wal.sync_all()
    }
}

fn handle(stream: TcpStream, store: Arc<Mutex<Store>>) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let parts: Vec<&str> = line.split_whitespace().collect();
        let reply = match parts.as_slice() {
            ["PING"] => "PONG".to_string(),
            ["STOCK", sku] => store
                .lock()
                .unwrap()
                .stock
                .get(*sku)
                .copied()
                .unwrap_or(0)
                .to_string(),
            ["RESERVE", sku, qty] => match qty.parse() {
                Ok(q) => store.lock().unwrap().reserve(sku, q),
                Err(_) => "ERR bad quantity".into(),
            },
            _ => format!("ERR unknown command {line:?}"),
        };
        writer.write_all(format!("{reply}\n").as_bytes())?;
    }
    Ok(())
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "5432".into());
    let wal_path = std::env::var("WAL_PATH").unwrap_or_else(|_| {
        std::env::temp_dir()
            .join("inventory.wal")
            .to_string_lossy()
            .into_owned()
    });
    let store = Arc::new(Mutex::new(Store {
        stock: HashMap::from([("widget".to_string(), 100), ("gadget".to_string(), 5)]),
        wal_path,
    }));
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("inventory: binding port {port}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("inventory: listening on {port}");
    for stream in listener.incoming().flatten() {
        let store = store.clone();
        std::thread::spawn(move || {
            let _ = handle(stream, store);
        });
    }
}
