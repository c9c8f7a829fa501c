//! The demo target: writes a file, reads it back, and tries a network connection,
//! reporting each step, so that faults injected by `faultbox run` are visible.
//!
//! Exit code 0 when the file round trip works (a network failure is expected inside
//! Faultbox's empty network namespace), 1 when it fails.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn main() {
    let path = std::env::var("TARGET_FILE").unwrap_or_else(|_| "/tmp/faultbox-target-test".into());
    let addr: SocketAddr = std::env::var("TARGET_ADDR")
        .ok()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "93.184.216.34:80".parse().expect("valid address"));

    say("=== Faultbox demo target ===");
    say(&format!("PID: {}", std::process::id()));

    let start = Instant::now();
    let fs_ok = match round_trip(&path) {
        Ok(n) => {
            say(&format!(
                "FS: wrote and read {n} bytes (took {:?})",
                start.elapsed()
            ));
            true
        }
        Err(e) => {
            say(&format!("FS failed: {e} (took {:?})", start.elapsed()));
            false
        }
    };

    let start = Instant::now();
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(_) => say(&format!(
            "net: connected to {addr} (took {:?})",
            start.elapsed()
        )),
        Err(e) => say(&format!(
            "net failed: connect {addr}: {e} (took {:?})",
            start.elapsed()
        )),
    }
    say("=== Target done ===");
    std::process::exit(if fs_ok { 0 } else { 1 });
}

fn round_trip(path: &str) -> std::io::Result<usize> {
    let payload = b"hello faultbox";
    let mut f = std::fs::File::create(path)?;
    f.write_all(payload)?;
    f.sync_all()?;
    drop(f);
    let back = std::fs::read(path)?;
    if back != payload {
        return Err(std::io::Error::other("read back different bytes"));
    }
    let _ = std::fs::remove_file(path);
    Ok(back.len())
}

/// Prints a line, ignoring failures: stdout itself may be faulted.
fn say(line: &str) {
    let _ = writeln!(std::io::stdout(), "{line}");
}
