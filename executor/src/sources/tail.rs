//! `tail(path=)`: every line appended to a file becomes a `tail` event, like
//! `tail -F -n0`.
//!
//! One thread per source follows the file. inotify on the file's parent directory
//! wakes it on writes, creation, renames and deletion, and it also looks every
//! [`TICK`], so a missed or unsupported notification (a directory that does not exist
//! yet, a file renamed into another directory, a filesystem without inotify) costs
//! latency, never lines. Each look compares the path's inode with the open file's:
//! the file is followed by descriptor, so a rotated file is read to its end while the
//! new one is followed from its beginning.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use faultbox_spec::decode::Decoder;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};

use super::{decoded_fields, Context, Observation, Running, Sink};

/// The longest line emitted whole; the rest of a longer line is skipped (the event
/// says `truncated`), so one runaway write cannot hold unbounded memory.
pub const LINE_CAP: usize = 1 << 20;

/// How often the file is looked at without a notification.
const TICK: Duration = Duration::from_millis(100);

/// How long `sync` waits for the follower thread at most.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// How long a rotated-away file is still read after its last growth: a writer that
/// has not reopened its log yet (logrotate's `create` before the service's reload)
/// keeps writing there.
const RETIRE_AFTER: Duration = Duration::from_secs(1);

/// Bytes read per `pread`.
const CHUNK: usize = 64 * 1024;

/// Starts following `path` (absolute; may be under `/proc/PID/root/` for a file inside
/// a container). The file's current content is skipped if it exists now; a file
/// that appears later is read from its beginning.
pub fn start(ctx: Context, path: PathBuf, decoder: Option<Decoder>) -> Box<dyn Running> {
    let (cmds, inbox) = mpsc::channel();
    let wake = UnixDatagram::pair().and_then(|(tx, rx)| {
        tx.set_nonblocking(true)?;
        rx.set_nonblocking(true)?;
        Ok((tx, rx))
    });
    let emit = Emitter {
        sink: ctx.sink.clone(),
        decoder,
        path: path.to_string_lossy().into_owned(),
    };
    let (wake_tx, wake_rx) = match wake {
        Ok(pair) => pair,
        Err(e) => {
            // Without a wake-up socket the thread could not be told to stop: report
            // it and follow nothing.
            emit.error(format!("cannot create the wake-up socket: {e}"));
            return Box::new(Tail {
                cmds,
                wake: None,
                thread: None,
            });
        }
    };
    // The watch and the first open happen here, before `start` returns, so that a
    // line written right after it is a line after the start.
    let mut follower = Follower::new(path, emit);
    let thread = std::thread::Builder::new()
        .name(format!("faultbox-tail-{}", ctx.service))
        .spawn(move || follower.run(inbox, wake_rx));
    let thread = match thread {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.sink.emit(Observation::error(
                "tail",
                format!("cannot start the tail thread: {e}"),
            ));
            None
        }
    };
    Box::new(Tail {
        cmds,
        wake: Some(wake_tx),
        thread,
    })
}

enum Cmd {
    Sync(mpsc::SyncSender<()>),
    Stop,
}

struct Tail {
    cmds: mpsc::Sender<Cmd>,
    wake: Option<UnixDatagram>,
    thread: Option<JoinHandle<()>>,
}

impl Tail {
    fn send(&self, cmd: Cmd) -> bool {
        if self.thread.is_none() || self.cmds.send(cmd).is_err() {
            return false;
        }
        if let Some(w) = &self.wake {
            // A full socket already holds a wake-up: nothing is lost.
            let _ = w.send(&[1]);
        }
        true
    }
}

impl Running for Tail {
    fn sync(&self) {
        let (tx, rx) = mpsc::sync_channel(1);
        if self.send(Cmd::Sync(tx)) {
            let _ = rx.recv_timeout(SYNC_WAIT);
        }
    }

    fn stop(mut self: Box<Self>) {
        self.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Turns lines into events.
struct Emitter {
    sink: Arc<dyn Sink>,
    decoder: Option<Decoder>,
    path: String,
}

impl Emitter {
    fn line(&self, raw: &[u8], truncated: bool) {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let mut fields = decoded_fields(raw, self.decoder.as_ref());
        fields.insert("path".into(), self.path.clone());
        if truncated {
            fields.insert("truncated".into(), "true".into());
        }
        self.sink.emit(Observation {
            kind: "tail",
            detail: None,
            fields,
        });
    }

    fn error(&self, message: String) {
        let mut o = Observation::error("tail", message);
        o.fields.insert("path".into(), self.path.clone());
        self.sink.emit(o);
    }
}

/// The unfinished line of one file.
#[derive(Default)]
struct LineBuf {
    pending: Vec<u8>,
    /// Past [`LINE_CAP`]: the rest of the line up to its newline is dropped.
    skipping: bool,
    /// `pending` is the unterminated line the file ended with at the start: it is
    /// emitted once its writer finishes it, not on its own.
    inherited: bool,
}

impl LineBuf {
    fn feed(&mut self, emit: &Emitter, mut bytes: &[u8]) {
        self.inherited &= bytes.is_empty();
        while !bytes.is_empty() {
            let newline = memchr::memchr(b'\n', bytes);
            let chunk = &bytes[..newline.unwrap_or(bytes.len())];
            if newline.is_some() && !self.skipping && self.pending.is_empty() {
                // The common case: a whole line inside one read, emitted in place.
                if chunk.len() <= LINE_CAP {
                    emit.line(chunk, false);
                } else {
                    emit.line(&chunk[..LINE_CAP], true);
                }
            } else if !self.skipping {
                // One byte past the cap tells a capped line from one exactly that long.
                let room = LINE_CAP + 1 - self.pending.len();
                self.pending
                    .extend_from_slice(&chunk[..chunk.len().min(room)]);
                if self.pending.len() > LINE_CAP {
                    emit.line(&self.pending[..LINE_CAP], true);
                    self.pending.clear();
                    self.skipping = true;
                }
                if newline.is_some() && !self.skipping {
                    emit.line(&self.pending, false);
                    self.pending.clear();
                }
            }
            match newline {
                Some(i) => {
                    self.skipping = false;
                    bytes = &bytes[i + 1..];
                }
                None => break,
            }
        }
    }

    /// Takes the unterminated line that ends the first `size` bytes of `file`
    /// (looking back at most [`LINE_CAP`] bytes, past which the line is skipped).
    fn inherit(&mut self, file: &File, size: u64) -> std::io::Result<()> {
        let mut tail = Vec::new();
        let mut start = size;
        while start > 0 && tail.len() <= LINE_CAP {
            let n = (CHUNK as u64).min(start);
            start -= n;
            let mut chunk = vec![0; n as usize];
            file.read_exact_at(&mut chunk, start)?;
            chunk.extend_from_slice(&tail);
            tail = chunk;
            if let Some(i) = memchr::memrchr(b'\n', &tail[..n as usize]) {
                tail.drain(..=i);
                break;
            }
        }
        if tail.len() > LINE_CAP {
            self.skipping = true;
        } else {
            self.pending = tail;
        }
        self.inherited = true;
        Ok(())
    }

    /// Emits the unterminated last line, if any: the file will not finish it.
    fn flush(&mut self, emit: &Emitter) {
        if !self.pending.is_empty() && !self.inherited {
            emit.line(&self.pending, false);
        }
        self.pending.clear();
        self.skipping = false;
        self.inherited = false;
    }
}

/// A file being read, by descriptor.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
    pos: u64,
    lines: LineBuf,
    /// When it last grew (for a rotated-away file).
    grew: Instant,
}

impl Open {
    /// `from_end`: follow from the current end, keeping an unterminated last line so
    /// that the line its writer finishes later is emitted whole.
    fn new(file: File, from_end: bool) -> std::io::Result<Open> {
        let meta = file.metadata()?;
        let mut lines = LineBuf::default();
        let pos = if from_end {
            lines.inherit(&file, meta.len())?;
            meta.len()
        } else {
            0
        };
        Ok(Open {
            dev: meta.dev(),
            ino: meta.ino(),
            pos,
            file,
            lines,
            grew: Instant::now(),
        })
    }

    /// Reads up to the file's size as of now (a writer that never pauses cannot keep
    /// this going) and emits the complete lines. A file shorter than what was read
    /// was truncated: reading goes on from its new start.
    fn drain(&mut self, emit: &Emitter, buf: &mut [u8]) -> std::io::Result<()> {
        let size = self.file.metadata()?.len();
        if size < self.pos {
            self.lines.flush(emit);
            self.pos = 0;
        }
        while self.pos < size {
            let want = buf.len().min((size - self.pos) as usize);
            let n = match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            self.grew = Instant::now();
            self.lines.feed(emit, &buf[..n]);
        }
        Ok(())
    }

    fn same_file(&self, meta: &std::fs::Metadata) -> bool {
        self.dev == meta.dev() && self.ino == meta.ino()
    }
}

struct Follower {
    path: PathBuf,
    dir: PathBuf,
    emit: Emitter,
    inotify: Option<Inotify>,
    watch: Option<WatchDescriptor>,
    /// The file now at the path (or the last one that was, if it was removed).
    current: Option<Open>,
    /// The previous file after a rotation, read until it stops growing.
    retired: Option<Open>,
    /// Cookies of renames away from the path whose destination is not known yet.
    moving: Vec<u32>,
    /// Where files at the path were renamed to since the last look.
    moved_away: Vec<PathBuf>,
    /// Whether anything ever existed at the path.
    seen: bool,
    /// The last error reported, so a lasting failure is reported once.
    last_error: Option<String>,
    buf: Vec<u8>,
}

impl Follower {
    fn new(path: PathBuf, emit: Emitter) -> Follower {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let inotify = match Inotify::init() {
            Ok(i) => Some(i),
            Err(e) => {
                // Looking every tick still finds every line, only later.
                tracing::warn!(path = %emit.path, "tail without inotify: {e}");
                None
            }
        };
        let mut f = Follower {
            path,
            dir,
            emit,
            inotify,
            watch: None,
            current: None,
            retired: None,
            moving: Vec::new(),
            moved_away: Vec::new(),
            seen: false,
            last_error: None,
            buf: vec![0; CHUNK],
        };
        f.ensure_watch();
        match File::open(&f.path) {
            Ok(file) => match Open::new(file, true) {
                Ok(open) => {
                    f.seen = true;
                    f.current = Some(open);
                }
                Err(e) => f.fail(format!("cannot read {}: {e}", f.emit.path)),
            },
            // Not there yet: it is read from its beginning when it appears.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => f.fail(format!("cannot open {}: {e}", f.emit.path)),
        }
        f
    }

    fn run(&mut self, inbox: mpsc::Receiver<Cmd>, wake: UnixDatagram) {
        let mut events = [0u8; 4096];
        let mut waiting = Vec::new();
        loop {
            self.wait(&wake);
            self.read_notifications(&mut events);
            while wake.recv(&mut [0u8; 64]).is_ok() {}
            let mut stop = false;
            loop {
                match inbox.try_recv() {
                    Ok(Cmd::Sync(done)) => waiting.push(done),
                    Ok(Cmd::Stop) => stop = true,
                    Err(mpsc::TryRecvError::Empty) => break,
                    // The source was dropped without `stop`: nobody reads any more.
                    Err(mpsc::TryRecvError::Disconnected) => return,
                }
            }
            self.look();
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
            if stop {
                self.finish();
                return;
            }
        }
    }

    /// Sleeps until a notification, a command, or the next tick.
    fn wait(&self, wake: &UnixDatagram) {
        let mut fds = vec![libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(i) = &self.inotify {
            fds.push(libc::pollfd {
                fd: i.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs whose
        // descriptors this follower owns for the duration of the call.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                TICK.as_millis() as libc::c_int,
            )
        };
    }

    /// Consumes pending notifications; they only say "look". A watch the kernel
    /// dropped (the directory was removed) or that moved away with its directory is
    /// forgotten, to be set again on the path's directory.
    fn read_notifications(&mut self, events: &mut [u8]) {
        let Some(inotify) = &mut self.inotify else {
            return;
        };
        let mut lost = false;
        while let Ok(batch) = inotify.read_events(events) {
            for e in batch {
                if Some(&e.wd) != self.watch.as_ref() {
                    continue;
                }
                if e.mask
                    .intersects(EventMask::IGNORED | EventMask::MOVE_SELF | EventMask::DELETE_SELF)
                {
                    lost = true;
                }
                if e.mask.contains(EventMask::MOVED_FROM) && e.name == self.path.file_name() {
                    if self.moving.len() >= 16 {
                        self.moving.remove(0);
                    }
                    self.moving.push(e.cookie);
                }
                if e.mask.contains(EventMask::MOVED_TO) && self.moving.contains(&e.cookie) {
                    self.moving.retain(|&c| c != e.cookie);
                    if let Some(name) = e.name {
                        self.moved_away.push(self.dir.join(name));
                    }
                }
            }
        }
        if lost {
            if let Some(wd) = self.watch.take() {
                let _ = inotify.watches().remove(wd);
            }
        }
    }

    fn ensure_watch(&mut self) {
        let (Some(inotify), None) = (&mut self.inotify, &self.watch) else {
            return;
        };
        let mask = WatchMask::MODIFY
            | WatchMask::CREATE
            | WatchMask::DELETE
            | WatchMask::MOVED_FROM
            | WatchMask::MOVED_TO
            | WatchMask::CLOSE_WRITE
            | WatchMask::ATTRIB
            | WatchMask::DELETE_SELF
            | WatchMask::MOVE_SELF
            | WatchMask::ONLYDIR;
        match inotify.watches().add(&self.dir, mask) {
            Ok(wd) => self.watch = Some(wd),
            // The directory does not exist yet: the next tick tries again.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), "no inotify watch: {e}");
            }
        }
    }

    /// Reads what was appended and follows the path to a new file if it changed.
    fn look(&mut self) {
        self.ensure_watch();
        if let Some(old) = &mut self.retired {
            let r = old.drain(&self.emit, &mut self.buf);
            if r.is_err() || old.grew.elapsed() > RETIRE_AFTER {
                old.lines.flush(&self.emit);
                self.retired = None;
            }
        }
        if let Some(open) = &mut self.current {
            if let Err(e) = open.drain(&self.emit, &mut self.buf) {
                self.fail(format!("cannot read {}: {e}", self.emit.path));
            }
        }
        for path in std::mem::take(&mut self.moved_away) {
            self.read_moved(&path);
        }
        let meta = match std::fs::metadata(&self.path) {
            Ok(m) => m,
            // Removed or renamed away: the open file is still read, in case its
            // writer goes on, until another appears at the path.
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(e) => return self.fail(format!("cannot stat {}: {e}", self.emit.path)),
        };
        self.seen = true;
        if meta.is_dir() {
            return self.fail(format!("{} is a directory", self.emit.path));
        }
        if self.current.as_ref().is_some_and(|o| o.same_file(&meta)) {
            self.last_error = None;
            return;
        }
        match File::open(&self.path).and_then(|f| Open::new(f, false)) {
            Ok(mut new) => {
                self.last_error = None;
                if let Some(old) = self.current.take() {
                    self.retire(old);
                }
                if let Err(e) = new.drain(&self.emit, &mut self.buf) {
                    self.fail(format!("cannot read {}: {e}", self.emit.path));
                }
                self.current = Some(new);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => self.fail(format!("cannot open {}: {e}", self.emit.path)),
        }
    }

    /// Keeps reading a rotated-away file for a while. Its last unterminated line
    /// waits for the writer until then; a file rotated before it is done.
    fn retire(&mut self, mut old: Open) {
        old.grew = Instant::now();
        if let Some(mut older) = self.retired.replace(old) {
            older.lines.flush(&self.emit);
        }
    }

    /// A file renamed away from the path (to `path`, in the same directory): if it
    /// is not one already being read, it appeared and was rotated between two looks,
    /// and is read from its beginning before the file now at the path.
    fn read_moved(&mut self, path: &std::path::Path) {
        let Ok(file) = File::open(path) else {
            return;
        };
        let Ok(meta) = file.metadata() else {
            return;
        };
        let known = |o: &Option<Open>| o.as_ref().is_some_and(|o| o.same_file(&meta));
        if known(&self.current) || known(&self.retired) {
            return;
        }
        let Ok(mut moved) = Open::new(file, false) else {
            return;
        };
        self.seen = true;
        let _ = moved.drain(&self.emit, &mut self.buf);
        self.retire(moved);
    }

    /// Reports a failure once while it lasts.
    fn fail(&mut self, message: String) {
        if self.last_error.as_deref() != Some(message.as_str()) {
            self.emit.error(message.clone());
            self.last_error = Some(message);
        }
    }

    /// Reads to the end, emits unterminated lines, and releases the watch.
    fn finish(&mut self) {
        self.look();
        if let Some(old) = &mut self.retired {
            old.lines.flush(&self.emit);
        }
        if let Some(open) = &mut self.current {
            open.lines.flush(&self.emit);
        }
        if !self.seen {
            self.emit.error(format!(
                "{} never existed while it was followed",
                self.emit.path
            ));
        }
        if let (Some(inotify), Some(wd)) = (&mut self.inotify, self.watch.take()) {
            let _ = inotify.watches().remove(wd);
        }
        self.inotify = None;
        self.current = None;
        self.retired = None;
    }
}
