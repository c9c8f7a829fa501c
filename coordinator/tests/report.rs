//! `faultbox test --report`: real specs run with real services, and the page opened in
//! a real headless Chromium (Debian's `chromium`, installed by scripts/setup.sh).
//! The page records in `#fb-status` what it drew and any error it saw; the tests read
//! that from the DOM Chromium dumps after the script ran, check Chromium's log for
//! console output, and look at the pixels of its screenshots.

mod common;

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use common::{root, Scratch};

/// Faultbox runs are checked for leftover services and Chromium is heavy: one test at
/// a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const WIDTH: u32 = 1400;
const HEIGHT: u32 = 900;

/// Runs `faultbox test <spec> --report <out> <extra>` from the workspace root; no
/// service of it, and not its scratch directory, may outlive it.
fn faultbox_test(spec: &str, out: &Path, extra: &[&str]) -> common::Out {
    let child = Command::new(common::faultbox())
        .current_dir(root())
        .args(["test", spec, "--report"])
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("faultbox runs");
    let pid = child.id();
    let o = child.wait_with_output().unwrap();
    common::wait_processes(
        "report_svc.py",
        |n| n == 0,
        3,
        "report_svc.py still running",
    );
    // Its own only: other checkouts' runs on this machine have theirs.
    let scratch = PathBuf::from(format!("/tmp/faultbox-{pid}"));
    assert!(!scratch.exists(), "{} left behind", scratch.display());
    common::Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// The JSON the page carries, read from the file as written.
fn page_data(html: &str) -> Value {
    let open = r#"<script type="application/json" id="fb-data">"#;
    let start = html.find(open).expect("the data element") + open.len();
    let len = html[start..].find("</script>").expect("its end");
    serde_json::from_str(&html[start..start + len]).expect("the data is JSON")
}

/// A headless Chromium whose profile, home and logs live in a directory of its own.
/// Every process it starts is killed, and the directory removed, when a load ends and
/// on drop, whether the test passed or not.
struct Browser {
    dir: PathBuf,
    /// How long the last load took, Chromium's start included.
    elapsed: std::cell::Cell<Duration>,
}

/// What one page load gave.
struct Load {
    stdout: String,
    stderr: String,
}

/// Kills a process group on drop: Chromium's browser, zygotes, renderers and GPU
/// process share the group of the process we start.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours; the group
        // is the one we created for the child, so it names no process of anyone else.
        unsafe {
            libc::kill(-self.0, libc::SIGKILL);
        }
    }
}

static BROWSERS: AtomicUsize = AtomicUsize::new(0);

impl Browser {
    fn new() -> Browser {
        assert!(
            Command::new("chromium")
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            "chromium is not installed: run scripts/setup.sh"
        );
        let dir = PathBuf::from(format!(
            "/tmp/fbtest-chromium-{}-{}",
            std::process::id(),
            BROWSERS.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Browser {
            dir,
            elapsed: std::cell::Cell::new(Duration::ZERO),
        }
    }

    /// Opens `url` with `mode` (`--dump-dom`, `--screenshot=FILE`) and waits for
    /// Chromium to exit.
    fn load(&self, url: &str, mode: &str) -> Load {
        let (out, err) = (self.dir.join("stdout"), self.dir.join("stderr"));
        let start = Instant::now();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--enable-logging=stderr",
                "--v=0",
                "--virtual-time-budget=3000",
            ])
            .arg(format!("--window-size={WIDTH},{HEIGHT}"))
            .arg(format!(
                "--user-data-dir={}",
                self.dir.join("profile").display()
            ))
            .arg(mode)
            .arg(url)
            // Chromium's crash handler keeps its database under $HOME: here, so that
            // it too is found by the directory's name and cleaned up.
            .env("HOME", &self.dir)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("DBUS_SESSION_BUS_ADDRESS", "disabled:")
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        let group = Group(child.id() as i32);
        let deadline = start + Duration::from_secs(120);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                drop(group);
                let _ = child.wait();
                self.stop_strays();
                panic!("chromium did not finish loading {url} in 120 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = start.elapsed();
        self.elapsed.set(elapsed);
        drop(group);
        self.stop_strays();
        Load {
            stdout: std::fs::read_to_string(&out).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        }
    }

    /// Processes whose command line names this browser's directory: its own, and the
    /// crash handlers, which leave the process group.
    fn strays(&self) -> Vec<i32> {
        let marker = self.dir.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                if String::from_utf8_lossy(&cmd).contains(&marker) {
                    found.push(pid);
                }
            }
        }
        found
    }

    /// Kills what [`Browser::strays`] finds and waits until it is gone.
    fn stop_strays(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.strays();
            if left.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "chromium processes survive: {left:?}"
            );
            for pid in left {
                // SAFETY: kill(2) takes plain integers; the pid was just read from
                // /proc with this browser's private directory in its command line.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The DOM after the page's script ran, with the page's status; fails on any error
    /// the page saw or console output Chromium logged.
    fn dom(&self, page: &Path, hash: &str) -> (String, HashMap<String, String>) {
        let url = format!("file://{}#{hash}", page.display());
        let load = self.load(&url, "--dump-dom");
        assert_no_console_output(&load.stderr);
        let status = status(&load.stdout);
        assert_eq!(status["state"], "ready", "{url}: {status:?}");
        assert_eq!(
            status["errors"],
            "0",
            "{url}: {}",
            errors_listed(&load.stdout)
        );
        assert_eq!(status["resources"], "0", "{url} fetched something");
        (load.stdout, status)
    }

    /// A screenshot of the page at `hash`, decoded.
    fn screenshot(&self, page: &Path, hash: &str, keep_as: &str) -> Image {
        let file = self.dir.join("shot.png");
        let url = format!("file://{}#{hash}", page.display());
        let load = self.load(&url, &format!("--screenshot={}", file.display()));
        assert_no_console_output(&load.stderr);
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{url}: no screenshot: {e}"));
        // Kept for people to look at (CI can publish target/tmp).
        let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join("report-screenshots");
        std::fs::create_dir_all(&keep).unwrap();
        std::fs::write(keep.join(keep_as), &bytes).unwrap();
        Image::decode(&bytes)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Never a panic inside a panic: kill what is left quietly, then remove.
        for pid in self.strays() {
            // SAFETY: as in `stop_strays`.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Chromium logs every console message of the page as `INFO:CONSOLE`; the page itself
/// writes none, so any is a script error or a warning it did not expect.
fn assert_no_console_output(stderr: &str) {
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains(":CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(bad.is_empty(), "chromium logged: {bad:#?}");
}

/// The `data-*` attributes of `#fb-status` in a dumped DOM.
fn status(dom: &str) -> HashMap<String, String> {
    let start = dom
        .find(r#"<output id="fb-status""#)
        .unwrap_or_else(|| panic!("no status element in {dom}"));
    let tag = &dom[start..start + dom[start..].find('>').unwrap()];
    let mut out = HashMap::new();
    for part in tag.split("\" ") {
        if let Some((k, v)) = part.trim().split_once("=\"") {
            if let Some(name) = k.rsplit(' ').next().unwrap().strip_prefix("data-") {
                out.insert(name.to_string(), v.trim_end_matches('"').to_string());
            }
        }
    }
    out
}

/// What the page's own error list holds.
fn errors_listed(dom: &str) -> String {
    dom.split(r#"<ol id="fb-errors""#)
        .nth(1)
        .and_then(|s| s.split("</ol>").next())
        .unwrap_or_default()
        .to_string()
}

fn num(status: &HashMap<String, String>, key: &str) -> u64 {
    status
        .get(key)
        .unwrap_or_else(|| panic!("no {key} in {status:?}"))
        .parse::<f64>()
        .unwrap_or_else(|e| panic!("{key}: {e}")) as u64
}

/// An RGB(A) screenshot.
struct Image {
    width: u32,
    height: u32,
    channels: usize,
    pixels: Vec<u8>,
}

impl Image {
    fn decode(bytes: &[u8]) -> Image {
        let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        decoder.set_transformations(png::Transformations::EXPAND);
        let mut reader = decoder.read_info().expect("a PNG");
        let mut pixels = vec![0; reader.output_buffer_size().expect("a size")];
        let info = reader.next_frame(&mut pixels).expect("a frame");
        pixels.truncate(info.buffer_size());
        Image {
            width: info.width,
            height: info.height,
            channels: info.color_type.samples(),
            pixels,
        }
    }

    /// Pixels within a few steps of `rgb`.
    fn count(&self, rgb: [u8; 3]) -> usize {
        self.pixels
            .chunks(self.channels)
            .filter(|p| (0..3).all(|i| p[i].abs_diff(rgb[i]) <= 6))
            .count()
    }
}

/// The index in `runs` of the run of `test`.
fn run_index(data: &Value, test: &str) -> usize {
    data["runs"]
        .as_array()
        .unwrap()
        .iter()
        .position(|r| r["name"] == test)
        .unwrap_or_else(|| panic!("{test} not in the report"))
}

/// `trace.events` rows: `[seq, µs, lane, kind, type, flags, about, fields, clock]`.
fn events(run: &Value) -> &Vec<Value> {
    run["trace"]["events"].as_array().unwrap()
}

fn no_external_reference(html: &str) {
    for needle in [
        "http://",
        "https://",
        "src=",
        "url(",
        "@import",
        "<link rel=\"stylesheet",
    ] {
        assert!(!html.contains(needle), "the page names {needle}");
    }
}

#[test]
fn a_fault_matrix_and_a_trace_as_chromium_shows_them() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("report-matrix");
    let page = s.0.join("report.html");
    let json = s.0.join("out.json");
    let o = faultbox_test(
        "examples/composition.star",
        &page,
        &["--output", json.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    no_external_reference(&html);
    let data = page_data(&html);
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(data["pass"], doc["pass"]);
    assert_eq!(data["runs"].as_array().unwrap().len(), 10);
    assert_eq!(data["matrix"], doc["matrix"]);

    let browser = Browser::new();
    let (dom, st) = browser.dom(&page, "overview");
    assert_eq!(st["tab"], "overview");
    assert_eq!(st["runs"], "10");
    assert_eq!(dom.matches(r#"<td class="pass""#).count(), 5, "pass cells");
    assert_eq!(dom.matches(r#"<td class="excluded""#).count(), 1);
    assert!(dom.contains("5/5 cells passed"));
    // Each cell links to its run.
    let cell = run_index(&data, "test_matrix_order_flow_disk_full");
    assert!(dom.contains(&format!(r##"href="#run-{cell}""##)));

    let shot = browser.screenshot(&page, "overview", "matrix.png");
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT));
    // Five green cells of about 140×48 pixels.
    let green = shot.count([0xda, 0xfb, 0xe1]);
    assert!(green > 5 * 3000, "{green} pass-green pixels");

    // The run where inventory's WAL write was denied: its trace, at that event.
    let run = &data["runs"][cell];
    let evs = events(run);
    let denied = evs
        .iter()
        .find(|e| e[5].as_u64().unwrap() & 1 == 1)
        .expect("a fault fired");
    let seq = denied[0].as_u64().unwrap();
    let in_json = doc["tests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "test_matrix_order_flow_disk_full")
        .unwrap()["events"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(evs.len(), in_json, "the same events as the JSON document");
    let arrows = run["trace"]["arrows"].as_array().unwrap().len() / 2;
    assert!(
        arrows >= 3,
        "test → orders → inventory → ... → test: {arrows}"
    );
    let (dom, st) = browser.dom(&page, &format!("trace-{cell}/seq-{seq}"));
    assert_eq!(st["tab"], "trace");
    assert_eq!(num(&st, "run"), cell as u64);
    assert_eq!(st["lanes"], "3", "test, orders, inventory");
    assert_eq!(num(&st, "events"), evs.len() as u64);
    assert_eq!(num(&st, "rows"), evs.len() as u64);
    assert_eq!(num(&st, "arrows"), arrows as u64);
    assert_eq!(num(&st, "selected"), seq);
    assert!(num(&st, "drawn-events") > 10, "{st:?}");
    assert!(num(&st, "drawn-arrows") >= 1, "{st:?}");
    // The clicked event's fields, as text.
    assert!(dom.contains("deny(no space left on device)"), "{dom}");

    let shot = browser.screenshot(&page, &format!("trace-{cell}/seq-{seq}"), "trace.png");
    let red = shot.count([0xd1, 0x24, 0x2f]);
    let step = shot.count([0x09, 0x69, 0xda]);
    assert!(red > 100, "the denied write is marked: {red} red pixels");
    assert!(step > 20, "the test's steps are drawn: {step} blue pixels");

    // Filters, as the address carries them.
    let kinds = ["fault", "step_send", "step_recv"];
    let kind_names: Vec<&str> = run["trace"]["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    let want = evs
        .iter()
        .filter(|e| kinds.contains(&kind_names[e[3].as_u64().unwrap() as usize]))
        .count();
    let (_, st) = browser.dom(&page, &format!("trace-{cell}/kinds-{}", kinds.join(",")));
    assert_eq!(num(&st, "rows"), want as u64);
    assert_eq!(st["lanes"], "3");
    let lanes: Vec<&str> = run["trace"]["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let keep = ["test", "orders"];
    let want = evs
        .iter()
        .filter(|e| keep.contains(&lanes[e[2].as_u64().unwrap() as usize]))
        .count();
    let (_, st) = browser.dom(&page, &format!("trace-{cell}/services-test,orders"));
    assert_eq!(st["lanes"], "2");
    assert_eq!(num(&st, "rows"), want as u64);
    assert!(num(&st, "arrows") >= 2, "test ⇄ orders: {st:?}");
    let dir = browser.dir.clone();
    drop(browser);
    assert!(!dir.exists(), "the browser's directory is removed");
}

#[test]
fn output_that_is_not_utf8_and_a_failing_test_still_give_a_valid_page() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("report-output");
    let page = s.0.join("report.html");
    let o = faultbox_test("coordinator/tests/specs/report/output.star", &page, &[]);
    assert_eq!(o.code, 2, "{}", o.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    no_external_reference(&html);
    assert_eq!(html.matches("</script>").count(), 2, "data and code only");
    let data = page_data(&html);
    let ok = run_index(&data, "test_output_that_is_not_utf8");
    let failed = run_index(&data, "test_a_failing_assertion");
    assert_eq!(data["runs"][failed]["result"], "fail");
    let line = events(&data["runs"][ok])
        .iter()
        .find_map(|e| e[7]["line"].as_str().filter(|l| l.contains("</script>")))
        .expect("the service's line is an event");
    assert_eq!(
        line,
        "\u{fffd}\u{fffd} raw </script><!-- <b>not markup</b> & done"
    );
    let seq = events(&data["runs"][ok])
        .iter()
        .find(|e| e[7]["line"].as_str() == Some(line))
        .unwrap()[0]
        .as_u64()
        .unwrap();

    let browser = Browser::new();
    let (dom, st) = browser.dom(&page, &format!("trace-{ok}/seq-{seq}"));
    assert_eq!(num(&st, "selected"), seq);
    assert!(
        dom.contains(
            "\u{fffd}\u{fffd} raw &lt;/script&gt;&lt;!-- &lt;b&gt;not markup&lt;/b&gt; &amp; done"
        ),
        "the line shows as text"
    );
    assert!(!dom.contains("<b>not markup</b>"), "and never as markup");

    let (dom, st) = browser.dom(&page, "overview");
    assert_eq!(st["runs"], "2");
    assert!(dom.contains(r#"<span id="verdict" class="fail">1 failed</span>"#));
    assert!(
        dom.contains(r#"<section id="failures">"#),
        "failures listed"
    );
    let (dom, _) = browser.dom(&page, &format!("run-{failed}"));
    let block = dom
        .split(&format!(
            r#"<details class="run" id="run-{failed}" open="""#
        ))
        .nth(1)
        .expect("the failed run is open");
    assert!(block.contains("not what the service says"));
    assert!(block.contains(
        "faultbox test coordinator/tests/specs/report/output.star --test a_failing_assertion --seed 0"
    ));
}

#[test]
fn no_tests_and_specs_that_do_not_load_still_give_a_page() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("report-empty");
    let browser = Browser::new();

    let page = s.0.join("empty.html");
    let o = faultbox_test("coordinator/tests/specs/report/empty.star", &page, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let (dom, st) = browser.dom(&page, "");
    assert_eq!(st["runs"], "0");
    assert!(dom.contains("no tests ran"), "{dom}");
    assert!(dom.contains("The spec has no tests to run."));
    let (_, st) = browser.dom(&page, "trace");
    assert_eq!(st["tab"], "trace");
    // Every time: nothing to run once raced the executor's start and exited 1.
    for _ in 0..20 {
        let o = faultbox_test("coordinator/tests/specs/report/empty.star", &page, &[]);
        assert_eq!(o.code, 0, "{}", o.stderr);
    }

    // An unknown name on line 3: exit 1 as without --report, and a page naming it.
    let spec = s.0.join("spec.star");
    std::fs::write(&spec, "x = 1\ndef test_a():\n    assert_eq(1, nowhere)\n").unwrap();
    let page = s.0.join("broken.html");
    let o = faultbox_test(spec.to_str().unwrap(), &page, &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let (dom, st) = browser.dom(&page, "");
    assert_eq!(st["runs"], "0");
    assert!(dom.contains(r#"<span id="verdict" class="fail">no results</span>"#));
    let shown = dom
        .split(r#"<pre id="aborted-text">"#)
        .nth(1)
        .and_then(|s| s.split("</pre>").next())
        .expect("the error is shown");
    assert!(
        shown.starts_with(&format!("{}:3: ", spec.display())),
        "{shown}"
    );

    // A service whose binary does not exist: the spec's line of it.
    std::fs::write(
        &spec,
        "\nservice('a', '/nonexistent/fbtest-never', interface('m', 'tcp', 7400))\ndef test_t():\n    pass\n",
    )
    .unwrap();
    let o = faultbox_test(spec.to_str().unwrap(), &page, &[]);
    assert_eq!(o.code, 1, "{}", o.stderr);
    let (dom, _) = browser.dom(&page, "");
    assert!(
        dom.contains(&format!("{}:2", spec.display())) && dom.contains("/nonexistent/fbtest-never"),
        "{dom}"
    );
}

#[test]
fn a_trace_of_50000_events_draws_only_what_is_in_view() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("report-burst");
    let page = s.0.join("report.html");
    let o = faultbox_test("coordinator/tests/specs/report/burst.star", &page, &[]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let html = std::fs::read_to_string(&page).unwrap();
    let data = page_data(&html);
    let evs = events(&data["runs"][0]);
    let n = evs.len() as u64;
    assert!(n > 50_000, "{n} events");
    let faulted = evs
        .iter()
        .filter(|e| e[5].as_u64().unwrap() & 3 != 0)
        .count() as u64;
    assert!(
        faulted > 100,
        "about one write in a hundred is denied: {faulted}"
    );

    let browser = Browser::new();
    let middle = evs[evs.len() / 2][0].as_u64().unwrap();
    let (_, st) = browser.dom(&page, &format!("trace-0/seq-{middle}"));
    let elapsed = browser.elapsed.get();
    assert_eq!(num(&st, "events"), n);
    assert_eq!(num(&st, "rows"), n);
    assert_eq!(num(&st, "selected"), middle);
    // The selected event is in view, and only the rows in view were drawn.
    let (first, last) = (num(&st, "first-row"), num(&st, "last-row"));
    let row = evs.len() as u64 / 2;
    assert!(first <= row && row <= last, "{first}..{last} ∌ {row}");
    assert!(num(&st, "drawn-events") <= 80, "{st:?}");
    assert!(num(&st, "nodes") < 1000, "no DOM node per event: {st:?}");
    // Parsing the data, indexing the trace and the first frame: well under the
    // seconds a person waits; each later frame well under a tenth of a second.
    let render = num(&st, "render-ms");
    let frame = num(&st, "draw-max-ms");
    assert!(render < 5000, "first frame after {render} ms");
    assert!(frame < 250, "a frame took {frame} ms");
    assert!(
        elapsed < Duration::from_secs(60),
        "chromium took {elapsed:?} for the page"
    );
    eprintln!(
        "{n} events: first frame {render} ms, slowest frame {frame} ms, chromium {elapsed:?}"
    );

    // Only the faults: the denied writes and the fault rule's start and end.
    let (_, st) = browser.dom(&page, "trace-0/faults");
    assert_eq!(num(&st, "rows"), faulted);
}

/// A `faultbox` run that a test interrupts; on drop, one still running is interrupted
/// (so it stops its services) and, if that does not end it, killed.
struct Interruptible(std::process::Child);

impl Interruptible {
    /// Sends SIGINT and waits up to 30 s for the exit code.
    fn interrupt(&mut self) -> Option<Option<i32>> {
        // SAFETY: kill(2) takes plain integers; the pid is our own child's, which is
        // not reaped before `try_wait` sees it exit.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return Some(st.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) && self.interrupt().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn an_interrupted_run_still_gives_a_page() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("report-interrupted");
    let page = s.0.join("report.html");
    let mut run = Interruptible(
        Command::new(common::faultbox())
            .current_dir(root())
            .args([
                "test",
                "coordinator/tests/specs/report/burst.star",
                "--report",
            ])
            .arg(&page)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Interrupted while its service makes its 50,000 calls.
    common::wait_processes("report_svc.py", |n| n > 0, 20, "the service never started");
    std::thread::sleep(Duration::from_millis(300));
    let code = run.interrupt().expect("faultbox stops after SIGINT");
    assert_eq!(code, Some(130));
    common::wait_processes(
        "report_svc.py",
        |n| n == 0,
        3,
        "report_svc.py still running",
    );
    let data = page_data(&std::fs::read_to_string(&page).unwrap());
    assert!(
        data["aborted"].as_str().unwrap().starts_with("interrupted"),
        "{}",
        data["aborted"]
    );
    let (dom, _) = Browser::new().dom(&page, "");
    assert!(dom.contains(r#"<span id="verdict" class="fail">no results</span>"#));
}
