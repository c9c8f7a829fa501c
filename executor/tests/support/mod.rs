//! What the event-source tests share: a sink that keeps every observation, and
//! scratch directories and child processes that are removed and killed on drop, so
//! a failing test leaves nothing behind.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faultbox_executor::network::namespace::NetNs;
use faultbox_executor::sources::{Context, Observation, Sink};

/// Keeps what the source emits, in order.
#[derive(Default)]
pub struct Collect {
    seen: Mutex<Vec<Observation>>,
}

impl Sink for Collect {
    fn emit(&self, o: Observation) {
        self.seen.lock().unwrap().push(o);
    }
}

impl Collect {
    pub fn new() -> Arc<Collect> {
        Arc::new(Collect::default())
    }

    pub fn all(&self) -> Vec<Observation> {
        self.seen.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The `line` of every event that is not an error.
    pub fn lines(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|o| o.detail.is_none())
            .map(|o| o.fields["line"].clone())
            .collect()
    }

    pub fn errors(&self) -> Vec<Observation> {
        self.all()
            .into_iter()
            .filter(|o| o.detail.as_deref() == Some("error"))
            .collect()
    }

    /// Waits (without asking the source to sync) until `done` holds.
    pub fn wait_for(&self, what: &str, limit: Duration, done: impl Fn(&[Observation]) -> bool) {
        let start = Instant::now();
        loop {
            if done(&self.seen.lock().unwrap()) {
                return;
            }
            if start.elapsed() > limit {
                panic!("{what}: not within {limit:?}; seen {:#?}", self.all());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until some event's `line` is `line`.
    pub fn wait_line(&self, line: &str) {
        self.wait_for(&format!("line {line:?}"), Duration::from_secs(5), |seen| {
            seen.iter()
                .any(|o| o.fields.get("line").is_some_and(|l| l == line))
        });
    }
}

/// Counts observations and keeps nothing (for throughput).
#[derive(Default)]
pub struct Count(pub AtomicUsize);

impl Sink for Count {
    fn emit(&self, _: Observation) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// A source context in the test process's own network namespace.
pub fn context(sink: Arc<dyn Sink>) -> Context {
    Context {
        service: "svc".into(),
        netns: Arc::new(NetNs::current().expect("the test's network namespace")),
        sink,
    }
}

/// A directory under /tmp, removed with everything in it on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = PathBuf::from(format!(
            "/tmp/fbtest-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process, killed and reaped on drop.
pub struct Proc(pub Option<Child>);

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        Proc(Some(child))
    }

    /// `sh -c script sh args...`
    pub fn sh(script: &str, args: &[&Path]) -> Proc {
        Proc::spawn(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg("sh")
                .args(args),
        )
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }

    /// Waits for the process to end on its own.
    pub fn wait(mut self, limit: Duration) -> ExitStatus {
        let start = Instant::now();
        let child = self.0.as_mut().unwrap();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.0 = None;
                return st;
            }
            assert!(
                start.elapsed() < limit,
                "the process did not end within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `f` and says how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = f();
    (r, start.elapsed())
}
