//! `stdout(decoder=)` and `stderr(decoder=)`: a service's output, a line per event.
//!
//! The service writes into a pipe. A reader thread empties it as fast as the service
//! fills it: it reads big chunks, copies each to the service's log file
//! (`SERVICE.stdout`, kept for failure messages) and queues it whole, with no work per
//! line, so the pipe drains at memory speed. A decoder thread cuts the chunks into
//! lines, decodes and emits them. The queue is bounded ([`QUEUE_BYTES`]): when the
//! decoder falls that far behind, new chunks are dropped whole rather than letting the
//! pipe fill and the service block on its own `write`. Their lines are counted, as are
//! the two lines a dropped chunk cuts in half (the one it starts inside and the one it
//! ends inside: never glued together), and one `KIND.dropped` event says how many
//! before the next line that made it through.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use faultbox_spec::decode::Decoder;

use super::{decoded_fields, Context, Observation, Running};

/// Bytes waiting for the decoder before new chunks are dropped.
pub const QUEUE_BYTES: usize = 16 << 20;
/// The longest line kept; the rest of a longer line is cut (field `truncated`).
pub const MAX_LINE: usize = 1 << 20;
/// The most one `read` of the pipe takes, and the size of a queued chunk's buffer.
const CHUNK: usize = 256 << 10;
/// Reads up to this size are appended to the last queued chunk when it has room,
/// so that a service writing a line at a time does not queue a buffer per line (every
/// queued buffer but the last is then more than half full).
const APPEND_MAX: usize = CHUNK / 2;
/// A read shorter than this means the service writes slowly (a line or so per
/// `write`): the reader then lets [`GATHER`] pass before reading again, so that it
/// wakes (and wakes the decoder) a thousand times a second at most rather than once a
/// line. Longer reads follow one another at once.
const SMALL_READ: usize = 64 << 10;
/// How long lines of a slow writer gather in the pipe (1 MiB) before a read; `sync`
/// cuts it short.
const GATHER: Duration = Duration::from_millis(1);
/// Observations handed to the sink at once: its lock is taken once per batch, and
/// held for no longer than stamping this many events takes.
const BATCH: usize = 256;
/// How long `stop` waits for the last writer of the pipe to go (a child process the
/// service left behind may hold it open).
const EOF_WAIT: Duration = Duration::from_secs(2);
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// What the reader queues, in the order it read it.
enum Piece {
    /// Bytes as read, any number of lines and parts of lines.
    Bytes(Vec<u8>),
    /// Chunks dropped because the queue was full.
    Gap {
        /// Line ends (`\n`) in the dropped bytes: each ends a line that is lost.
        lines: u64,
        /// The last dropped byte is not a line end: the line it is part of goes on
        /// in what comes next, and is lost too.
        open: bool,
    },
}

struct Queue {
    pieces: VecDeque<Piece>,
    /// Bytes in `pieces`.
    bytes: usize,
    /// When `bytes` would pass this, a chunk is dropped.
    limit: usize,
    /// Buffers the decoder is done with, for the reader to fill again.
    free: Vec<Vec<u8>>,
    /// The reader is done (end of file, or stopped).
    closed: bool,
    /// The decoder holds pieces it took and has not emitted yet.
    decoding: bool,
    /// The decoder waits for pieces (only then is it woken: a wake-up is a syscall).
    waiting: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    /// The reader is between a `read` returning and its bytes being queued.
    reading: AtomicBool,
    /// `stop` asked the reader to give up waiting for end of file.
    abandon: AtomicBool,
    /// The reader's thread, for `sync` to wake while it lets lines gather.
    reader: std::sync::OnceLock<std::thread::Thread>,
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
    start_with(ctx, kind, decoder, log, QUEUE_BYTES)
}

fn start_with(
    ctx: Context,
    kind: &'static str,
    decoder: Option<Decoder>,
    log: File,
    limit: usize,
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
    // Non-blocking on our end only (the service's end is another open file): while
    // the service writes, a read follows a read with no poll between them.
    // SAFETY: F_SETFL on a descriptor we own.
    if unsafe { libc::fcntl(read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let pipe = Arc::new(read);
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            pieces: VecDeque::new(),
            bytes: 0,
            limit,
            free: Vec::new(),
            closed: false,
            decoding: false,
            waiting: false,
        }),
        ready: Condvar::new(),
        reading: AtomicBool::new(false),
        abandon: AtomicBool::new(false),
        reader: std::sync::OnceLock::new(),
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
    let _ = shared.reader.set(std::thread::current());
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
    loop {
        if shared.abandon.load(Ordering::Acquire) && unread(pipe) == 0 {
            break;
        }
        // Set before the read empties the pipe, so that `sync` never sees an empty
        // pipe while the bytes are neither in it nor queued.
        shared.reading.store(true, Ordering::Release);
        buf.clear();
        // SAFETY: the descriptor is open while `pipe` lives, and the kernel writes at
        // most `capacity` bytes into the buffer's spare capacity.
        let n = unsafe { libc::read(pipe.as_raw_fd(), buf.as_mut_ptr().cast(), buf.capacity()) };
        if n < 0 {
            shared.reading.store(false, Ordering::Release);
            match std::io::Error::last_os_error().kind() {
                std::io::ErrorKind::WouldBlock => {
                    poll_in(pipe, 50);
                    continue;
                }
                std::io::ErrorKind::Interrupted => continue,
                _ => break,
            }
        }
        if n == 0 {
            break;
        }
        // SAFETY: `read` initialised the first `n` bytes.
        unsafe { buf.set_len(n as usize) };
        let _ = log.write_all(&buf);
        queue(shared, &mut buf);
        shared.reading.store(false, Ordering::Release);
        if (n as usize) < SMALL_READ {
            std::thread::park_timeout(GATHER);
        }
    }
    let _ = log.flush();
    shared.reading.store(false, Ordering::Release);
    shared.lock().closed = true;
    shared.ready.notify_all();
}

/// Queues what was read, or drops it (counting its lines) when the queue is full.
/// Leaves `buf` empty, or swapped for a buffer the decoder is done with.
fn queue(shared: &Shared, buf: &mut Vec<u8>) {
    let n = buf.len();
    let mut q = shared.lock();
    if q.bytes + n > q.limit {
        drop(q);
        let lines = memchr::memchr_iter(b'\n', buf).count() as u64;
        let open = buf.last() != Some(&b'\n');
        q = shared.lock();
        match q.pieces.back_mut() {
            Some(Piece::Gap { lines: l, open: o }) => {
                *l += lines;
                *o = open;
            }
            _ => q.pieces.push_back(Piece::Gap { lines, open }),
        }
    } else {
        q.bytes += n;
        match q.pieces.back_mut() {
            Some(Piece::Bytes(last)) if n <= APPEND_MAX && last.len() + n <= CHUNK => {
                last.extend_from_slice(buf);
                buf.clear();
            }
            _ => {
                let spare = q.free.pop().unwrap_or_else(|| Vec::with_capacity(CHUNK));
                q.pieces
                    .push_back(Piece::Bytes(std::mem::replace(buf, spare)));
            }
        }
    }
    let waiting = q.waiting;
    drop(q);
    if waiting {
        shared.ready.notify_all();
    }
}

/// One cut of the byte stream, for the decoder to emit.
#[derive(Debug, PartialEq)]
enum Cut<'a> {
    Line {
        bytes: &'a [u8],
        truncated: bool,
    },
    /// Lines lost since the last `Dropped`, reported before the next line.
    Dropped(u64),
}

/// Cuts the queued pieces into lines: holds the start of a line whose end has not
/// come yet, and what a gap left to skip.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
    /// `partial` reached [`MAX_LINE`]; the rest of its line is skipped.
    truncated: bool,
    /// After a gap, the rest of a line that started inside it.
    skipping: bool,
    /// Lost lines not reported yet.
    dropped: u64,
}

impl Lines {
    fn feed(&mut self, mut bytes: &[u8], out: &mut impl FnMut(Cut<'_>)) {
        if self.skipping {
            match memchr::memchr(b'\n', bytes) {
                Some(i) => {
                    self.skipping = false;
                    self.dropped += 1;
                    bytes = &bytes[i + 1..];
                }
                None => return,
            }
        }
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', bytes) {
            let piece = &bytes[start..end];
            start = end + 1;
            self.report_dropped(out);
            if self.partial.is_empty() && !self.truncated {
                // The whole line is in this piece: no copy.
                let (line, truncated) = match piece.get(..MAX_LINE) {
                    Some(cut) if piece.len() > MAX_LINE => (cut, true),
                    _ => (piece, false),
                };
                out(Cut::Line {
                    bytes: strip_cr(line),
                    truncated,
                });
            } else {
                if !self.truncated {
                    take(&mut self.partial, piece, &mut self.truncated);
                }
                out(Cut::Line {
                    bytes: strip_cr(&self.partial),
                    truncated: self.truncated,
                });
                self.partial.clear();
                self.truncated = false;
            }
        }
        if !self.truncated {
            take(&mut self.partial, &bytes[start..], &mut self.truncated);
        }
    }

    /// Chunks were dropped here: the line begun before them is lost with them.
    fn gap(&mut self, lines: u64, open: bool) {
        self.partial.clear();
        self.truncated = false;
        // A line already being skipped ends inside the gap (counted in `lines`) or
        // after it (counted when its end comes).
        self.dropped += lines;
        self.skipping = open;
    }

    /// The stream ended: a last line the service never ended is a line too.
    fn finish(&mut self, out: &mut impl FnMut(Cut<'_>)) {
        if self.skipping {
            self.skipping = false;
            self.dropped += 1;
        } else if !self.partial.is_empty() || self.truncated {
            self.report_dropped(out);
            out(Cut::Line {
                bytes: &self.partial,
                truncated: self.truncated,
            });
            self.partial.clear();
            self.truncated = false;
        }
        self.report_dropped(out);
    }

    fn report_dropped(&mut self, out: &mut impl FnMut(Cut<'_>)) {
        if self.dropped > 0 {
            out(Cut::Dropped(std::mem::take(&mut self.dropped)));
        }
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
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

fn decode_loop(shared: &Shared, ctx: &Context, kind: &'static str, decoder: Option<&Decoder>) {
    let limit = shared.lock().limit;
    let mut lines = Lines::default();
    let mut batch: Vec<Observation> = Vec::with_capacity(BATCH);
    let mut done_with: Vec<Vec<u8>> = Vec::new();
    loop {
        let (mut pieces, closed) = {
            let mut q = shared.lock();
            while q.pieces.is_empty() && !q.closed {
                q.waiting = true;
                q = shared.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.waiting = false;
            q.bytes = 0;
            q.decoding = true;
            (std::mem::take(&mut q.pieces), q.closed)
        };
        let mut out = |cut: Cut<'_>| {
            batch.push(match cut {
                Cut::Line { bytes, truncated } => {
                    let mut fields = decoded_fields(bytes, decoder);
                    if truncated {
                        fields.insert("truncated".into(), "true".into());
                    }
                    Observation {
                        kind,
                        detail: None,
                        fields,
                    }
                }
                Cut::Dropped(n) => dropped(kind, n, limit),
            });
            if batch.len() >= BATCH {
                ctx.sink
                    .emit_batch(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
        };
        for piece in pieces.drain(..) {
            match piece {
                Piece::Bytes(bytes) => {
                    lines.feed(&bytes, &mut out);
                    done_with.push(bytes);
                }
                Piece::Gap { lines: n, open } => lines.gap(n, open),
            }
        }
        if closed {
            lines.finish(&mut out);
        } else {
            lines.report_dropped(&mut out);
        }
        if !batch.is_empty() {
            ctx.sink
                .emit_batch(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
        }
        let mut q = shared.lock();
        q.decoding = false;
        // Enough buffers to refill a full queue; the rest are freed.
        let keep = q.limit / CHUNK + 2;
        for mut b in done_with.drain(..) {
            if q.free.len() >= keep {
                break;
            }
            b.clear();
            q.free.push(b);
        }
        let done = closed && q.pieces.is_empty();
        drop(q);
        shared.ready.notify_all();
        if done {
            return;
        }
    }
}

/// The `KIND.dropped` event for `n` lost lines.
fn dropped(kind: &'static str, n: u64, limit: usize) -> Observation {
    let waiting = if limit >= 1 << 20 {
        format!("{} MiB", limit >> 20)
    } else {
        format!("{limit} bytes")
    };
    Observation {
        kind,
        detail: Some("dropped".into()),
        fields: BTreeMap::from([
            ("dropped".to_string(), n.to_string()),
            (
                "error".to_string(),
                format!(
                    "{n} lines dropped: the service wrote faster than they could be decoded (more than {waiting} waiting)"
                ),
            ),
        ]),
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
                q.pieces.is_empty() && !q.decoding
            };
            let unread = unread(&self.pipe);
            if unread > 0 {
                // Don't wait for the reader to let more lines gather.
                if let Some(reader) = self.shared.reader.get() {
                    reader.unpark();
                }
            }
            if idle && unread == 0 && !self.shared.reading.load(Ordering::Acquire) {
                // Check again after the flags: the reader may have taken a chunk
                // between the two reads.
                let q = self.shared.lock();
                if q.pieces.is_empty() && !q.decoding {
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
    use std::path::PathBuf;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Observation>>);
    impl Sink for Collect {
        fn emit(&self, o: Observation) {
            self.0.lock().unwrap().push(o);
        }
    }

    fn context(sink: Arc<dyn Sink>) -> Context {
        Context {
            service: "svc".into(),
            netns: Arc::new(NetNs::current().unwrap()),
            sink,
        }
    }

    /// A scratch directory, removed on drop (also when a test fails).
    struct Scratch(PathBuf);
    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("fbtest-output-{}-{tag}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn run(script: &str, decoder: Option<Decoder>) -> (Vec<Observation>, String) {
        let dir = Scratch::new(&script.len().to_string());
        let log_path = dir.0.join("svc.stdout");
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

    /// Cuts `pieces` (`Err((lines, open))` a gap) as the decoder does.
    fn cut(pieces: &[Result<&[u8], (u64, bool)>]) -> Vec<String> {
        let mut lines = Lines::default();
        let mut got = Vec::new();
        let mut out = |c: Cut<'_>| {
            got.push(match c {
                Cut::Line { bytes, truncated } => {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(bytes),
                        if truncated { "…" } else { "" }
                    )
                }
                Cut::Dropped(n) => format!("<{n} dropped>"),
            })
        };
        for p in pieces {
            match p {
                Ok(bytes) => lines.feed(bytes, &mut out),
                Err((n, open)) => lines.gap(*n, *open),
            }
        }
        lines.finish(&mut out);
        got
    }

    #[test]
    fn lines_span_pieces_and_crlf_is_cut() {
        assert_eq!(
            cut(&[Ok(b"a\r\nb"), Ok(b"c\nd"), Ok(b"\r"), Ok(b"\n"), Ok(b"e")]),
            ["a", "bc", "d", "e"]
        );
    }

    #[test]
    fn a_gap_never_glues_the_halves_around_it() {
        // "half" ends inside the gap (1 of its 2 line ends); "tail" ends after it.
        assert_eq!(
            cut(&[Ok(b"keep\nhalf"), Err((2, true)), Ok(b"tail\nnext\n")]),
            ["keep", "<3 dropped>", "next"]
        );
        // A gap that ends on a line end leaves nothing to skip.
        assert_eq!(
            cut(&[Ok(b"keep\nhalf"), Err((1, false)), Ok(b"next\n")]),
            ["keep", "<1 dropped>", "next"]
        );
        // Two gaps in the same long line: the line is lost once.
        assert_eq!(
            cut(&[
                Ok(b"lo"),
                Err((0, true)),
                Ok(b"ng"),
                Err((0, true)),
                Ok(b"line\nnext\n")
            ]),
            ["<1 dropped>", "next"]
        );
        // A line being skipped that ends in a second gap is counted by that gap.
        assert_eq!(
            cut(&[
                Ok(b"a"),
                Err((0, true)),
                Ok(b"b"),
                Err((1, false)),
                Ok(b"next")
            ]),
            ["<1 dropped>", "next"]
        );
        // A gap at the very end: the open line is lost, and said so.
        assert_eq!(
            cut(&[Ok(b"keep\nha"), Err((0, true))]),
            ["keep", "<1 dropped>"]
        );
        // A truncated line is not continued past a gap.
        let long = vec![b'x'; MAX_LINE + 10];
        assert_eq!(
            cut(&[Ok(&long), Err((1, false)), Ok(b"next\n")]),
            ["<1 dropped>", "next"]
        );
    }

    /// A sink that holds the decoder in its first `emit` until opened (also on drop,
    /// so that a failing test does not leave the decoder waiting).
    #[derive(Default)]
    struct Gate {
        seen: Mutex<Vec<Observation>>,
        open: Mutex<bool>,
        opened: Condvar,
        entered: AtomicBool,
    }
    impl Sink for Gate {
        fn emit(&self, o: Observation) {
            self.entered.store(true, Ordering::Release);
            let mut open = self.open.lock().unwrap();
            while !*open {
                open = self.opened.wait(open).unwrap();
            }
            drop(open);
            self.seen.lock().unwrap().push(o);
        }
    }
    struct Opener(Arc<Gate>);
    impl Opener {
        fn open(&self) {
            *self.0.open.lock().unwrap() = true;
            self.0.opened.notify_all();
        }
    }
    impl Drop for Opener {
        fn drop(&mut self) {
            self.open();
        }
    }

    fn wait(what: &str, done: impl Fn() -> bool) {
        let t = Instant::now();
        while !done() {
            assert!(t.elapsed() < Duration::from_secs(5), "{what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the reader has queued (or dropped) everything written so far.
    fn read_all(probe: &Probe) {
        wait("the reader empties the pipe", || {
            unread(&probe.pipe) == 0 && !probe.shared.reading.load(Ordering::Acquire)
        });
    }

    #[test]
    fn a_full_queue_drops_whole_chunks_and_counts_their_lines() {
        let dir = Scratch::new("drop");
        let log_path = dir.0.join("svc.stdout");
        let gate = Arc::new(Gate::default());
        let opener = Opener(gate.clone());
        let (write, source, probe) = start_with(
            context(gate.clone()),
            "stdout",
            None,
            File::create(&log_path).unwrap(),
            100,
        )
        .unwrap();
        let mut w = File::from(write);
        // Each write is one read: the reader has emptied the pipe before the next.
        let writes: [&[u8]; 4] = [
            b"first\n",
            // Queued while the decoder is held in its first emit.
            b"keep1\nkeep2\nhal",
            // 15 + 120 bytes > 100: dropped whole, with the two halves at its ends.
            &[&b"f-lost\n"[..], &[b'x'; 99], b"\nlost2\nhead-of-"].concat(),
            b"tail\nafter\n",
        ];
        w.write_all(writes[0]).unwrap();
        wait("the decoder takes the first line", || {
            gate.entered.load(Ordering::Acquire)
        });
        for bytes in &writes[1..] {
            w.write_all(bytes).unwrap();
            read_all(&probe);
        }
        opener.open();
        drop(w);
        source.stop();
        let got: Vec<String> = gate
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|o| match o.detail.as_deref() {
                None => o.fields["line"].clone(),
                Some(d) => format!("{d} {}", o.fields["dropped"]),
            })
            .collect();
        // Lost: half-lost, xxx…, lost2, head-of-tail.
        assert_eq!(got, ["first", "keep1", "keep2", "dropped 4", "after"]);
        // The log file still has every byte.
        assert_eq!(std::fs::read(&log_path).unwrap(), writes.concat());
    }

    /// Holds the decoder a little every few lines, so that it falls behind.
    struct Slow(Collect);
    impl Sink for Slow {
        fn emit(&self, o: Observation) {
            let mut seen = self.0 .0.lock().unwrap();
            if seen.len().is_multiple_of(64) {
                std::thread::sleep(Duration::from_micros(200));
            }
            seen.push(o);
        }
    }

    #[test]
    fn a_slow_decoder_loses_whole_lines_only_and_counts_them() {
        let sink = Arc::new(Slow(Collect::default()));
        let (write, source, _) = start_with(
            context(sink.clone()),
            "stdout",
            None,
            tempfile_log(),
            64 << 10,
        )
        .unwrap();
        let n = 300_000;
        let status = std::process::Command::new("seq")
            .args(["-f", "line-%.0f-end", "1", &n.to_string()])
            .stdout(std::process::Stdio::from(write))
            .status()
            .unwrap();
        assert!(status.success());
        source.stop();
        let seen = std::mem::take(&mut *sink.0 .0.lock().unwrap());
        let (mut decoded, mut dropped, mut last) = (0u64, 0u64, 0u64);
        for o in &seen {
            if o.detail.is_some() {
                dropped += o.fields["dropped"].parse::<u64>().unwrap();
                continue;
            }
            let line = &o.fields["line"];
            let k: u64 = line
                .strip_prefix("line-")
                .and_then(|l| l.strip_suffix("-end"))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("not a whole line: {line:?}"));
            assert!(k > last, "{k} after {last}");
            last = k;
            decoded += 1;
        }
        assert_eq!(decoded + dropped, n, "{decoded} decoded, {dropped} dropped");
        assert!(
            dropped > 0 && decoded > 0,
            "{decoded} decoded, {dropped} dropped"
        );
    }
}
