//! `stdout(decoder=)` and `stderr(decoder=)`: a service's output, a line per event.
//!
//! The service writes into a pipe. A reader thread empties it as fast as the service
//! fills it, copies every byte to the service's log file (`SERVICE.stdout`, kept for
//! failure messages), cuts lines, and queues them; a decoder thread decodes and emits
//! them. The queue is bounded ([`QUEUE_BYTES`]): when the decoder falls that far
//! behind, new lines are dropped (counted, and reported by one `KIND.dropped` event
//! once there is room again) rather than letting the pipe fill and the service block
//! on its own `write`.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faultbox_spec::decode::Decoder;

use super::{decoded_fields, Context, Observation, Running};

/// Lines waiting for the decoder, in bytes, before new ones are dropped.
pub const QUEUE_BYTES: usize = 16 << 20;
/// The longest line kept; the rest of a longer line is cut (field `truncated`).
pub const MAX_LINE: usize = 1 << 20;
/// How long `stop` waits for the last writer of the pipe to go (a child process the
/// service left behind may hold it open).
const EOF_WAIT: Duration = Duration::from_secs(2);
const SYNC_WAIT: Duration = Duration::from_secs(2);

struct Line {
    bytes: Vec<u8>,
    truncated: bool,
}

#[derive(Default)]
struct Queue {
    lines: VecDeque<Line>,
    bytes: usize,
    dropped: u64,
    /// The reader is done (end of file, or stopped).
    closed: bool,
    /// The decoder holds lines it took and has not emitted yet.
    decoding: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The reader is between a `read` returning and its lines being queued.
    reading: AtomicBool,
    /// `stop` asked the reader to give up waiting for end of file.
    abandon: AtomicBool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running `stdout()` or `stderr()` source.
pub struct Output {
    probe: Probe,
    reader: Option<std::thread::JoinHandle<()>>,
    decoder: Option<std::thread::JoinHandle<()>>,
}

/// Starts a `kind` (`stdout`/`stderr`) source whose bytes are also copied to `log`;
/// returns the pipe's write end, for the service's descriptor 1 or 2.
pub fn start(
    ctx: Context,
    kind: &'static str,
    decoder: Option<Decoder>,
    log: File,
) -> std::io::Result<(OwnedFd, Box<dyn Running>, Probe)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // A larger pipe lets the service write bursts without waiting for the reader.
    // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; failure is harmless.
    unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
    let pipe = Arc::new(read);
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        reading: AtomicBool::new(false),
        abandon: AtomicBool::new(false),
    });
    let reader = {
        let (shared, pipe) = (shared.clone(), pipe.clone());
        std::thread::Builder::new()
            .name(format!("faultbox-{kind}"))
            .spawn(move || read_loop(&shared, &pipe, log))?
    };
    let decoder = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name(format!("faultbox-{kind}-decode"))
            .spawn(move || decode_loop(&shared, &ctx, kind, decoder.as_ref()))?
    };
    let probe = Probe { shared, pipe };
    Ok((
        write,
        Box::new(Output {
            probe: probe.clone(),
            reader: Some(reader),
            decoder: Some(decoder),
        }),
        probe,
    ))
}

/// Reads the pipe until end of file (every writer gone) or `abandon`.
fn read_loop(shared: &Shared, pipe: &OwnedFd, mut log: File) {
    // SAFETY: the descriptor stays open while `pipe` (held by the caller) lives; the
    // File is forgotten below rather than closing it.
    let mut file = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(pipe.as_raw_fd()) });
    let mut buf = vec![0u8; 256 << 10];
    let mut partial: Vec<u8> = Vec::new();
    let mut truncated = false;
    loop {
        if shared.abandon.load(Ordering::Acquire) && unread(pipe) == 0 {
            break;
        }
        if !poll_in(pipe, 50) {
            continue;
        }
        // Set before the read empties the pipe, so that `sync` never sees an empty
        // pipe while the bytes are neither in it nor queued.
        shared.reading.store(true, Ordering::Release);
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
                shared.reading.store(false, Ordering::Release);
                continue;
            }
            Err(_) => break,
        };
        let _ = log.write_all(&buf[..n]);
        let mut lines = Vec::new();
        let mut rest = &buf[..n];
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let (line, tail) = rest.split_at(i);
            rest = &tail[1..];
            if !truncated {
                take(&mut partial, line, &mut truncated);
            }
            let mut bytes = std::mem::take(&mut partial);
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            lines.push(Line { bytes, truncated });
            truncated = false;
        }
        if !truncated {
            take(&mut partial, rest, &mut truncated);
        }
        push(shared, lines);
        shared.reading.store(false, Ordering::Release);
    }
    // A last line the service never ended.
    if !partial.is_empty() || truncated {
        push(
            shared,
            vec![Line {
                bytes: partial,
                truncated,
            }],
        );
    }
    let _ = log.flush();
    shared.reading.store(false, Ordering::Release);
    shared.lock().closed = true;
    shared.ready.notify_all();
}

/// Appends `more` to a line, up to [`MAX_LINE`].
fn take(line: &mut Vec<u8>, more: &[u8], truncated: &mut bool) {
    let room = MAX_LINE - line.len();
    if more.len() > room {
        line.extend_from_slice(&more[..room]);
        *truncated = true;
    } else {
        line.extend_from_slice(more);
    }
}

fn push(shared: &Shared, lines: Vec<Line>) {
    if lines.is_empty() {
        return;
    }
    let mut q = shared.lock();
    for line in lines {
        if q.bytes + line.bytes.len() > QUEUE_BYTES {
            q.dropped += 1;
            continue;
        }
        q.bytes += line.bytes.len();
        q.lines.push_back(line);
    }
    drop(q);
    shared.ready.notify_all();
}

fn decode_loop(shared: &Shared, ctx: &Context, kind: &'static str, decoder: Option<&Decoder>) {
    loop {
        let (batch, dropped, closed) = {
            let mut q = shared.lock();
            while q.lines.is_empty() && q.dropped == 0 && !q.closed {
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            let batch: Vec<Line> = q.lines.drain(..).collect();
            q.bytes = 0;
            q.decoding = true;
            (batch, std::mem::take(&mut q.dropped), q.closed)
        };
        for line in batch {
            let mut fields = decoded_fields(&line.bytes, decoder);
            if line.truncated {
                fields.insert("truncated".into(), "true".into());
            }
            ctx.sink.emit(Observation {
                kind,
                detail: None,
                fields,
            });
        }
        if dropped > 0 {
            ctx.sink.emit(Observation {
                kind,
                detail: Some("dropped".into()),
                fields: BTreeMap::from([
                    ("dropped".to_string(), dropped.to_string()),
                    (
                        "error".to_string(),
                        format!(
                            "{dropped} lines dropped: the service wrote faster than they could be decoded (more than {} MiB waiting)",
                            QUEUE_BYTES >> 20
                        ),
                    ),
                ]),
            });
        }
        let mut q = shared.lock();
        q.decoding = false;
        let done = closed && q.lines.is_empty() && q.dropped == 0;
        drop(q);
        shared.ready.notify_all();
        if done {
            return;
        }
    }
}

/// Bytes in the pipe not read yet.
fn unread(pipe: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid.
    if unsafe { libc::ioctl(pipe.as_raw_fd(), libc::FIONREAD, &mut n) } != 0 {
        return 0;
    }
    n.max(0) as usize
}

/// Whether the pipe is readable (data or end of file) within `ms`.
fn poll_in(pipe: &OwnedFd, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: pipe.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) > 0 }
}

/// Syncs an output source from elsewhere: cheap when there is nothing to read, so
/// the world syncs a service's output before each event that follows from its answer.
#[derive(Clone)]
pub struct Probe {
    shared: Arc<Shared>,
    /// The read end, to ask the kernel how much is still unread.
    pipe: Arc<OwnedFd>,
}

impl Probe {
    /// Returns once what was in the pipe when called has been emitted (or after 2 s).
    pub fn sync(&self) {
        self.settle(Instant::now() + SYNC_WAIT);
    }

    fn settle(&self, deadline: Instant) {
        loop {
            let idle = {
                let q = self.shared.lock();
                (q.lines.is_empty() && !q.decoding && q.dropped == 0)
                    || q.closed && !q.decoding && q.lines.is_empty()
            };
            if idle && unread(&self.pipe) == 0 && !self.shared.reading.load(Ordering::Acquire) {
                // Check again after the flags: the reader may have taken a chunk
                // between the two reads.
                let q = self.shared.lock();
                if q.lines.is_empty() && !q.decoding {
                    return;
                }
            }
            if Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Running for Output {
    fn sync(&self) {
        self.probe.sync();
    }

    fn stop(mut self: Box<Self>) {
        // Every writer should be gone (the service has stopped): wait for the end of
        // file, then give up on a writer left behind.
        if let Some(r) = self.reader.take() {
            let deadline = Instant::now() + EOF_WAIT;
            while !r.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.probe.shared.abandon.store(true, Ordering::Release);
            let _ = r.join();
        }
        if let Some(d) = self.decoder.take() {
            let _ = d.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::namespace::NetNs;
    use crate::sources::Sink;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Observation>>);
    impl Sink for Collect {
        fn emit(&self, o: Observation) {
            self.0.lock().unwrap().push(o);
        }
    }

    fn context(sink: Arc<Collect>) -> Context {
        Context {
            service: "svc".into(),
            netns: Arc::new(NetNs::current().unwrap()),
            sink,
        }
    }

    fn run(script: &str, decoder: Option<Decoder>) -> (Vec<Observation>, String) {
        let dir = std::env::temp_dir().join(format!(
            "fbtest-output-{}-{}",
            std::process::id(),
            script.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log_path = dir.join("svc.stdout");
        let sink = Arc::new(Collect::default());
        let (write, source, _) = start(
            context(sink.clone()),
            "stdout",
            decoder,
            File::create(&log_path).unwrap(),
        )
        .unwrap();
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .stdout(std::process::Stdio::from(write))
            .status()
            .unwrap();
        assert!(status.success());
        source.stop();
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        std::fs::remove_dir_all(&dir).unwrap();
        let got = std::mem::take(&mut *sink.0.lock().unwrap());
        (got, log)
    }

    #[test]
    fn lines_are_decoded_and_the_last_unended_line_kept() {
        let (got, log) = run(
            r#"printf '{"level":"INFO","n":1}\r\n'; printf 'not json\n'; printf '{"level":"ERROR"}'"#,
            Some(Decoder::Json),
        );
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].fields["data"], r#"{"level":"INFO","n":1}"#);
        assert!(got[1].fields["error"].starts_with("not JSON"));
        assert_eq!(got[2].fields["data"], r#"{"level":"ERROR"}"#);
        assert!(log.ends_with(r#"{"level":"ERROR"}"#), "{log:?}");
    }

    #[test]
    fn long_lines_are_cut_and_binary_is_kept_lossily() {
        let (got, _) = run(
            "head -c 1500000 /dev/zero | tr '\\0' a; printf '\\nend \\377\\n'",
            None,
        );
        assert_eq!(
            got.len(),
            2,
            "{:?}",
            got.iter().map(|o| o.fields.len()).collect::<Vec<_>>()
        );
        assert_eq!(got[0].fields["line"].len(), MAX_LINE);
        assert_eq!(got[0].fields["truncated"], "true");
        assert_eq!(got[1].fields["line"], "end \u{fffd}");
    }

    #[test]
    fn many_small_writes_lose_nothing() {
        let (got, _) = run(
            "i=0; while [ $i -lt 3000 ]; do echo \"n=$i\"; i=$((i+1)); done",
            Some(Decoder::Logfmt),
        );
        assert_eq!(got.len(), 3000);
        assert_eq!(got[2999].fields["data"], r#"{"n":"2999"}"#);
    }

    #[test]
    fn sync_sees_what_was_written_before_it() {
        let sink = Arc::new(Collect::default());
        let (write, source, _) =
            start(context(sink.clone()), "stderr", None, tempfile_log()).unwrap();
        let mut w = File::from(write);
        for i in 0..100 {
            writeln!(w, "line {i}").unwrap();
            source.sync();
            assert_eq!(sink.0.lock().unwrap().len(), i + 1);
        }
        drop(w);
        source.stop();
    }

    #[test]
    fn a_writer_left_behind_does_not_hang_stop() {
        let sink = Arc::new(Collect::default());
        let (write, source, _) =
            start(context(sink.clone()), "stdout", None, tempfile_log()).unwrap();
        let mut w = File::from(write);
        writeln!(w, "before").unwrap();
        let t = Instant::now();
        source.stop();
        assert!(t.elapsed() < EOF_WAIT + Duration::from_secs(1));
        assert_eq!(sink.0.lock().unwrap().len(), 1);
        drop(w);
    }

    fn tempfile_log() -> File {
        File::options().write(true).open("/dev/null").unwrap()
    }
}
