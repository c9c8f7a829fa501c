//! `faultbox run` against real programs (C, Rust, shell, Python) under real filters:
//! each test checks the errno every call observed.

mod common;

use common::{probe, python_probe, run, Scratch};
use std::time::Duration;

fn p() -> String {
    probe().to_string_lossy().into_owned()
}

#[test]
fn without_faults_the_target_is_isolated_and_unfiltered() {
    let out = run(&[], &[&p(), "getpid", "uid", "ifaces", "seccomp"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.one("getpid", "-"),
        "1",
        "the target sees itself as PID 1"
    );
    assert_eq!(
        out.one("uid", "-"),
        "0",
        "the caller is root inside its user namespace"
    );
    let ifaces: Vec<_> = out.results.iter().filter(|r| r.0 == "ifaces").collect();
    assert_eq!(ifaces.len(), 1, "only loopback: {ifaces:?}");
    assert_eq!((ifaces[0].1.as_str(), ifaces[0].2.as_str()), ("lo", "UP"));
    assert_eq!(out.one("seccomp", "-"), "0", "no filter without --fault");
    assert!(out.logs_with("seccomp filter installed").is_empty());
    assert_eq!(out.logs_with("session completed")[0]["exit_code"], 0);
}

#[test]
fn with_faults_a_filter_is_installed() {
    let out = run(&["--fault", "fsync=EIO:100%"], &[&p(), "getpid", "seccomp"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.one("getpid", "-"), "1");
    assert_eq!(out.one("seccomp", "-"), "2");
    let installed = out.logs_with("seccomp filter installed");
    assert_eq!(installed[0]["names"], "fsync,fdatasync");
}

#[test]
fn write_family_is_denied_with_the_errno() {
    let d = Scratch::new("wfam");
    let (a, b, c) = (d.path("a"), d.path("b"), d.path("c"));
    let out = run(
        &["--fault=write=EIO:100%"],
        &[
            &p(),
            &format!("write:{a}"),
            &format!("writev:{b}"),
            &format!("pwrite:{c}"),
            &format!("open:{a}"),
        ],
    );
    assert_eq!(out.one("write", &a), "EIO");
    assert_eq!(out.one("writev", &b), "EIO");
    assert_eq!(out.one("pwrite", &c), "EIO");
    assert_eq!(out.one("open", &a), "OK");
    let denied = out.logs_with("syscall intercepted");
    assert!(denied
        .iter()
        .any(|l| l["name"] == "writev" && l["path"] == b.as_str()));
    assert!(denied
        .iter()
        .all(|l| l["decision"] == "deny(input/output error)"));
}

#[test]
fn path_globs_on_path_syscalls() {
    let d = Scratch::new("glob");
    std::fs::create_dir_all(d.path("data/sub")).unwrap();
    let (a, other, deep) = (d.path("data/a"), d.path("other"), d.path("data/sub/b"));
    let ops = [
        p(),
        format!("create:{a}"),
        format!("create:{other}"),
        format!("create:{deep}"),
    ];
    let ops: Vec<&str> = ops.iter().map(String::as_str).collect();
    let star = format!("openat=ENOENT:100%:{}/data/*", d.0.display());
    let out = run(&["--fault", &star], &ops);
    assert_eq!(out.one("create", &a), "ENOENT");
    assert_eq!(out.one("create", &other), "OK");
    assert_eq!(
        out.one("create", &deep),
        "OK",
        "* stays within one directory"
    );
    let globstar = format!("openat=ENOENT:100%:{}/data/**", d.0.display());
    let out = run(&["--fault", &globstar], &ops);
    assert_eq!(out.one("create", &deep), "ENOENT", "** crosses directories");
    assert_eq!(out.one("create", &other), "OK");
}

#[test]
fn relative_paths_are_resolved_against_the_working_directory() {
    let d = Scratch::new("rel");
    let glob = format!("openat=EACCES:100%:{}/*.wal", d.0.display());
    let mut cmd = std::process::Command::new(common::faultbox());
    cmd.current_dir(&d.0)
        .args(["run", "--log-format=json", "--fault", &glob, "--"])
        .args([p().as_str(), "create:x.wal", "create:x.txt"]);
    let out = common::run_cmd(cmd);
    assert_eq!(out.one("create", "x.wal"), "EACCES");
    assert_eq!(out.one("create", "x.txt"), "OK");
}

#[test]
fn system_paths_are_never_faulted_without_a_glob() {
    let d = Scratch::new("sys");
    let f = d.path("f");
    // A dynamically linked target still starts: the loader's opens are system paths.
    let out = run(
        &["--fault", "openat=ENOENT:100%"],
        &[
            &p(),
            &format!("create:{f}"),
            "open:/etc/ld.so.cache",
            "open:/proc/self/status",
            "open:/etc/hostname",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.one("create", &f), "ENOENT");
    assert_eq!(out.one("open", "/etc/ld.so.cache"), "OK");
    assert_eq!(out.one("open", "/proc/self/status"), "OK");
    assert_eq!(out.one("open", "/etc/hostname"), "ENOENT");
}

#[test]
fn a_glob_over_system_paths_faults_them_and_the_loader_fails_with_127() {
    let out = run(
        &[
            "--fault",
            "openat=ENOENT:100%:/etc/ld.so.cache",
            "--fault",
            "openat=ENOENT:100%:/lib/**",
            "--fault",
            "openat=ENOENT:100%:/usr/lib/**",
        ],
        &[&p(), "getpid"],
    );
    assert_eq!(
        out.code, 127,
        "the dynamic linker cannot load libc: {}",
        out.stderr
    );
    assert!(out.results.is_empty());
}

#[test]
fn fd_syscalls_match_globs_through_proc() {
    let d = Scratch::new("fdglob");
    let (bad, good) = (d.path("faulty1"), d.path("good"));
    let glob = format!("write=EIO:100%:{}/faulty*", d.0.display());
    let out = run(
        &["--fault", &glob],
        &[&p(), &format!("write:{bad}"), &format!("write:{good}")],
    );
    assert_eq!(out.one("write", &bad), "EIO");
    assert_eq!(out.one("write", &good), "OK");
}

#[test]
fn nth_and_after_count_matching_calls_only() {
    let d = Scratch::new("trig");
    let (f, g) = (d.path("f"), d.path("g"));
    let nth = format!("write=EIO:100%:{f}:nth=3");
    let out = run(
        &["--fault", &nth],
        &[&p(), &format!("rep:5:write:{f}"), &format!("write:{g}")],
    );
    assert_eq!(out.of("write", &f), ["OK", "OK", "EIO", "OK", "OK"]);
    assert_eq!(out.one("write", &g), "OK");
    let after = "fsync=EIO:100%:after=2";
    let out = run(&["--fault", after], &[&p(), &format!("rep:5:fsync:{f}")]);
    assert_eq!(out.of("fsync", &f), ["OK", "OK", "EIO", "EIO", "EIO"]);
}

#[test]
fn probability_rolls_follow_the_seed() {
    let d = Scratch::new("prob");
    let f = d.path("f");
    let rep = format!("rep:40:write:{f}");
    let zero = run(&["--fault", "write=EIO:0%"], &[&p(), &rep]);
    assert!(zero.of("write", &f).iter().all(|r| *r == "OK"));
    let a = run(&["--seed", "42", "--fault", "write=EIO:50%"], &[&p(), &rep]);
    let b = run(&["--seed", "42", "--fault", "write=EIO:50%"], &[&p(), &rep]);
    let fails = a.of("write", &f).iter().filter(|r| **r == "EIO").count();
    assert!((5..=35).contains(&fails), "{fails} of 40 failed at 50%");
    assert_eq!(
        a.of("write", &f),
        b.of("write", &f),
        "same seed, same decisions"
    );
}

#[test]
fn the_first_rule_that_fires_decides() {
    let d = Scratch::new("order");
    let f = d.path("f");
    let out = run(
        &[
            "--fault",
            "write=EACCES:100%:nth=2",
            "--fault",
            "write=EIO:100%",
        ],
        &[&p(), &format!("rep:3:write:{f}")],
    );
    assert_eq!(out.of("write", &f), ["EIO", "EACCES", "EIO"]);
}

#[test]
fn errno_names_are_case_insensitive() {
    let d = Scratch::new("case");
    let f = d.path("f");
    let out = run(
        &["--fault", "fsync=enospc:100%"],
        &[&p(), &format!("fsync:{f}")],
    );
    assert_eq!(out.one("fsync", &f), "ENOSPC");
}

#[test]
fn delays_slow_the_call_and_hold_up_nothing_else() {
    let d = Scratch::new("delay");
    let (slow, fast) = (d.path("slow"), d.path("fast"));
    let out = run(
        &[
            "--fault",
            &format!("write=delay:600ms:100%:{slow}"),
            "--fault",
            &format!("write=EIO:0%:{fast}"),
        ],
        &[
            &p(),
            &format!("spawn:time:write:{slow}"),
            "sleep:50",
            &format!("time:rep:20:write:{fast}"),
            "join",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let slow_ms: f64 = out.one("time", &format!("write:{slow}")).parse().unwrap();
    let fast_ms: f64 = out
        .one("time", &format!("rep:20:write:{fast}"))
        .parse()
        .unwrap();
    assert!(slow_ms >= 590.0, "delayed write took {slow_ms} ms");
    assert!(
        fast_ms < 300.0,
        "other writes waited for the delay: {fast_ms} ms"
    );
    assert_eq!(out.one("write", &slow), "OK");
    let delayed = out.logs_with("syscall intercepted");
    assert!(delayed.iter().any(|l| l["decision"] == "delay(600ms)"));
}

#[test]
fn forks_and_threads_are_followed() {
    let d = Scratch::new("fork");
    let (a, b) = (d.path("a"), d.path("b"));
    let glob = format!("openat=EACCES:100%:{}/*", d.0.display());
    let out = run(
        &["--fault", &glob],
        &[
            &p(),
            &format!("fork:create:{a}"),
            &format!("thread:create:{b}"),
        ],
    );
    assert_eq!(out.one("create", &a), "EACCES");
    assert_eq!(out.one("create", &b), "EACCES");
    let pids: std::collections::HashSet<_> = out
        .logs_with("syscall intercepted")
        .iter()
        .map(|l| l["pid"].as_i64().unwrap())
        .collect();
    assert_eq!(
        pids.len(),
        2,
        "decisions name the calling process or thread: {pids:?}"
    );
}

#[test]
fn fsync_sendto_and_recvfrom_families() {
    let d = Scratch::new("fam");
    let f = d.path("f");
    let out = run(
        &[
            "--fault",
            "fsync=EIO:100%",
            "--fault",
            "sendto=ECONNRESET:100%",
        ],
        &[
            &p(),
            &format!("fsync:{f}"),
            &format!("fdatasync:{f}"),
            "sendto",
            "sendmsg",
        ],
    );
    assert_eq!(out.one("fsync", &f), "EIO");
    assert_eq!(out.one("fdatasync", &f), "EIO");
    assert_eq!(out.one("sendto", "-"), "ECONNRESET");
    assert_eq!(out.one("sendmsg", "-"), "ECONNRESET");
    let out = run(&["--fault", "recvfrom=EAGAIN:100%"], &[&p(), "recvfrom"]);
    assert_eq!(out.one("recvfrom", "-"), "EAGAIN");
}

#[test]
fn fs_fault_operation_names() {
    let d = Scratch::new("fsop");
    let (f, dir, gone) = (d.path("f"), d.path("newdir"), d.path("gone"));
    std::fs::write(&gone, b"x").unwrap();
    let under = format!("{}/**", d.0.display());
    let out = run(
        &[
            "--fs-fault",
            "sync=EIO:100%:after=1",
            "--fs-fault",
            &format!("mkdir=EACCES:100%:{under}"),
            "--fs-fault",
            &format!("delete=EPERM:100%:{under}"),
            "--fs-fault",
            &format!("stat=ENOENT:100%:{under}"),
        ],
        &[
            &p(),
            &format!("rep:2:fsync:{f}"),
            &format!("mkdir:{dir}"),
            &format!("unlink:{gone}"),
            &format!("stat:{f}"),
            &format!("statx:{f}"),
        ],
    );
    assert_eq!(out.of("fsync", &f), ["OK", "EIO"]);
    assert_eq!(out.one("mkdir", &dir), "EACCES");
    assert_eq!(out.one("unlink", &gone), "EPERM");
    assert_eq!(out.one("stat", &f), "ENOENT");
    assert_eq!(out.one("statx", &f), "ENOENT");
    assert!(
        std::path::Path::new(&gone).exists(),
        "the denied unlink did not happen"
    );
}

#[test]
fn connect_is_refused_or_delayed() {
    let out = run(&["--fault", "connect=ETIMEDOUT:100%"], &[&p(), "connect:9"]);
    assert_eq!(out.one("connect", "9"), "ETIMEDOUT");
    let out = run(
        &["--fault", "connect=delay:300ms:100%"],
        &[&p(), "time:connect:9"],
    );
    assert_eq!(
        out.one("connect", "9"),
        "ECONNREFUSED",
        "nothing listens in the empty namespace"
    );
    let ms: f64 = out.one("time", "connect:9").parse().unwrap();
    assert!(ms >= 290.0, "{ms}");
}

#[test]
fn connect_globs_match_the_destination_address() {
    let out = run(
        &["--fault", "connect=ETIMEDOUT:100%:*:9"],
        &[&p(), "connect:9", "connect:10"],
    );
    assert_eq!(out.one("connect", "9"), "ETIMEDOUT");
    assert_eq!(
        out.one("connect", "10"),
        "ECONNREFUSED",
        "other ports are not faulted"
    );
    let hit = out.logs_with("syscall intercepted");
    assert_eq!(hit[0]["path"], "127.0.0.1:9");
}

#[test]
fn exit_codes_pass_through() {
    assert_eq!(run(&[], &[&p(), "exit:42"]).code, 42);
    assert_eq!(
        run(&["--fault", "fsync=EIO:100%"], &[&p(), "exit:3"]).code,
        3
    );
    // PID 1 cannot signal itself to death (its namespace ignores that), but the
    // kernel's own signals still end it.
    assert_eq!(run(&[], &[&p(), "segv"]).code, 139);
    assert_eq!(
        run(&[], &[&p(), "fork:kill:9", "exit:5"]).code,
        5,
        "a child's death is not the target's"
    );
}

#[test]
fn a_file_that_cannot_be_executed_exits_127() {
    let d = Scratch::new("noexec");
    let f = d.path("garbage");
    std::fs::write(&f, b"\x01\x02 not a program\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = run(&[], &[&f]);
    assert_eq!(out.code, 127, "{}", out.stderr);
    assert!(out.stderr.contains("cannot execute"), "{}", out.stderr);
}

/// 250 nested `{}` groups: globset's compiler panicked on these.
const DEEP_GLOB: &str = concat!(
    "openat=ENOENT:100%:/",
    "{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{{",
    "a",
    "}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}}",
);

#[test]
fn bad_input_is_one_clear_line_and_exit_1_with_nothing_started() {
    let d = Scratch::new("bad");
    let noexec = d.path("plain");
    std::fs::write(&noexec, b"#!/bin/sh\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--fault", "writeEIO:100%"], "missing '='"),
        (
            &["--fault", "write=EBOGUS:100%"],
            "unknown errno \"EBOGUS\"",
        ),
        (
            &["--fault", "nosuchcall=EIO:100%"],
            "unknown syscall \"nosuchcall\"",
        ),
        (&["--fault", "write=EIO:101%"], "\"101%\""),
        (&["--fault", "write=EIO:-5%"], "\"-5%\""),
        (&["--fault", "write=EIO:50"], "must end with '%'"),
        (&["--fault", "write=EIO"], "missing probability"),
        (&["--fault", "write=EIO:100%:nth=0"], "nth counts from 1"),
        (&["--fault", "write=EIO:100%:nth=-2"], "\"nth=-2\""),
        (&["--fault", "write=EIO:100%:after=x"], "\"after=x\""),
        (
            &["--fault", "write=delay:soon:100%"],
            "bad duration \"soon\"",
        ),
        (&["--fault", "write=delay:5:100%"], "missing unit"),
        (&["--fault", "write=EIO:100%:/a/[b"], "never closed"),
        (
            &["--fault", "write=EIO:100%:data/*"],
            "--fault: fault \"write=EIO:100%:data/*\": path glob \"data/*\" is relative",
        ),
        (&["--fs-fault", "write=EIO:100%:data/*"], "--fs-fault: "),
        (
            &["--fault", "connect=ECONNREFUSED:100%:localhost:*"],
            "names host \"localhost\"",
        ),
        (&["--fault", DEEP_GLOB], "nests more than 10 {...} groups"),
        (
            &["--fault", "write=EIO:100%:nth=1:/a"],
            "unexpected \"/a\" after the trigger",
        ),
        (
            &["--fs-fault", "rename=EIO:100%"],
            "unknown operation \"rename\"",
        ),
        (&["--env", "NOVALUE"], "--env \"NOVALUE\""),
        (&["--log-format", "xml"], "xml"),
    ];
    for (flags, expect) in cases {
        let mut args: Vec<&str> = flags.to_vec();
        let probe = p();
        args.extend([
            "--",
            probe.as_str(),
            "create:/dev/shm/fbtest-must-not-exist",
        ]);
        let mut cmd = std::process::Command::new(common::faultbox());
        cmd.arg("run").args(&args);
        let out = common::run_cmd(cmd);
        assert_eq!(out.code, 1, "{flags:?}: {}", out.stderr);
        assert!(
            out.stderr.contains(expect),
            "{flags:?}: expected {expect:?} in {:?}",
            out.stderr
        );
        assert!(
            out.results.is_empty() && out.logs.is_empty(),
            "{flags:?} started something"
        );
        assert!(!std::path::Path::new("/dev/shm/fbtest-must-not-exist").exists());
        if !flags.contains(&"--log-format") {
            assert_eq!(
                out.stderr.trim_end().lines().count(),
                1,
                "one line: {:?}",
                out.stderr
            );
        }
    }
    for (target, expect) in [
        ("/nonexistent/bin", "not found"),
        (noexec.as_str(), "not executable"),
    ] {
        let out = run(&[], &[target]);
        assert_eq!(out.code, 1);
        assert!(out.stderr.contains(expect), "{}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{:?}", out.stderr);
    }
}

#[test]
fn env_both_spellings_and_a_shell_target() {
    let out = run(
        &["--env", "FB_A=one", "--env=FB_B=two words"],
        &["/bin/sh", "-c", "echo \"$FB_A|$FB_B\" > \"$PROBE_OUT\""],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.results[0].0, "one|two");
}

#[test]
fn shell_redirection_fails_under_an_open_fault() {
    let d = Scratch::new("sh");
    let f = d.path("out.txt");
    let glob = format!("openat=EACCES:100%:{}/*", d.0.display());
    let script = format!("echo hi > {f} || {{ echo denied > \"$PROBE_OUT\"; exit 9; }}");
    let out = run(&["--fault", &glob], &["/bin/sh", "-c", &script]);
    assert_eq!(out.code, 9, "{}", out.stderr);
    assert_eq!(out.results[0].0, "denied");
    assert!(!std::path::Path::new(&f).exists());
}

#[test]
fn python_target_sees_the_errnos() {
    let d = Scratch::new("py");
    let (a, b) = (d.path("py1"), d.path("py2"));
    let glob = format!("openat=EACCES:100%:{}/py1", d.0.display());
    let script = python_probe();
    let out = run(
        &[
            "--fault",
            &glob,
            "--fault",
            "fsync=EIO:100%",
            "--fault",
            "connect=ETIMEDOUT:100%",
        ],
        &[
            "python3",
            script.to_str().unwrap(),
            &format!("create:{a}"),
            &format!("write:{b}"),
            &format!("fsync:{b}"),
            "connect:9",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.one("create", &a), "EACCES");
    assert_eq!(out.one("write", &b), "OK");
    assert_eq!(out.one("fsync", &b), "EIO");
    assert_eq!(out.one("connect", "9"), "ETIMEDOUT");
}

#[test]
fn rust_example_target() {
    let t = common::example_target();
    let t = t.to_str().unwrap();
    let ok = run(&[], &[t]);
    assert_eq!(ok.code, 0, "{}", ok.stderr);
    assert!(ok.stdout.contains("PID: 1"), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("FS: wrote and read 14 bytes"),
        "{}",
        ok.stdout
    );
    assert!(
        ok.stdout.contains("Network is unreachable"),
        "{}",
        ok.stdout
    );
    let broken = run(&["--fault", "write=EIO:100%"], &[t]);
    assert_eq!(broken.code, 1);
    assert!(broken.stdout.is_empty(), "stdout writes were denied too");
    let elsewhere = run(&["--fault", "openat=ENOENT:100%:/data/*"], &[t]);
    assert_eq!(elsewhere.code, 0, "a fault on /data/ leaves /tmp alone");
}

#[test]
fn many_threads_under_load_get_every_answer() {
    let d = Scratch::new("load");
    let f = d.path("f");
    let job = format!("spawn:rep:1500:write:{f}");
    let mut args = vec![p()];
    args.extend(std::iter::repeat_n(job, 6));
    args.push("join".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(
        &[
            "--seed",
            "1",
            "--fault",
            &format!("write=EIO:30%:{f}"),
            "--fault",
            &format!("openat=delay:1ms:10%:{f}"),
        ],
        &args,
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let all = out.of("write", &f);
    assert_eq!(all.len(), 9000);
    let eio = all.iter().filter(|r| **r == "EIO").count();
    assert!((2200..3200).contains(&eio), "{eio} of 9000 at 30%");
    assert_eq!(
        out.logs_with("syscall intercepted").len(),
        eio + out
            .logs
            .iter()
            .filter(|l| l["decision"] == "delay(1ms)")
            .count()
    );
}

#[test]
fn a_target_that_exits_mid_delay_ends_the_session_promptly() {
    let d = Scratch::new("vanish");
    let f = d.path("slow");
    let out = run(
        &["--fault", &format!("write=delay:20s:100%:{f}")],
        &[&p(), &format!("spawn:write:{f}"), "sleep:100", "exit:0"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.elapsed < Duration::from_secs(5),
        "took {:?}",
        out.elapsed
    );
}

#[test]
fn killing_faultbox_kills_the_target() {
    let d = Scratch::new("orphan");
    let f = d.path("slow");
    let marker = format!("tag:orphan-{}", std::process::id());
    let mut child = std::process::Command::new(common::faultbox())
        .args([
            "run",
            "--log-format=json",
            "--fault",
            &format!("write=delay:60s:100%:{f}"),
            "--",
        ])
        .args([p().as_str(), &marker, &format!("write:{f}")])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while common::processes_with(&marker).len() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let target: Vec<_> = common::processes_with(&marker)
        .into_iter()
        .filter(|&p| p != child.id() as i32)
        .collect();
    assert_eq!(
        target.len(),
        1,
        "the target is running, blocked in its delayed write"
    );
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let start = std::time::Instant::now();
    while !common::processes_with(&marker).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the target outlived faultbox"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_to_faultbox_ends_a_target_without_handlers() {
    let marker = format!("tag:term-{}", std::process::id());
    let mut child = std::process::Command::new(common::faultbox())
        .args(["run", "--log-format=json", "--"])
        .args([p().as_str(), &marker, "sleep:30000"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while common::processes_with(&marker).len() < 2 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(143), "reported as killed by SIGTERM");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(common::processes_with(&marker).is_empty());
}

#[test]
fn unprivileged_callers_get_the_same_isolation_and_faults() {
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the other tests cover this case.
        return;
    }
    let d = Scratch::new("unpriv");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let f = d.path("f");
    let mut cmd = std::process::Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(common::faultbox())
        .args([
            "run",
            "--log-format=json",
            "--fault",
            &format!("write=EIO:100%:{f}"),
            "--",
        ])
        .args([
            p().as_str(),
            "getpid",
            "uid",
            "seccomp",
            &format!("write:{f}"),
            "ifaces",
        ]);
    let out = common::run_cmd(cmd);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.one("getpid", "-"), "1");
    assert_eq!(out.one("uid", "-"), "0", "nobody is mapped to root inside");
    assert_eq!(out.one("seccomp", "-"), "2");
    assert_eq!(out.one("write", &f), "EIO");
    assert_eq!(out.one("ifaces", "lo"), "UP");
}

#[test]
fn json_logs_carry_the_reference_fields() {
    let d = Scratch::new("json");
    let f = d.path("f");
    let out = run(
        &["--fault", &format!("write=EIO:100%:{f}")],
        &[&p(), &format!("write:{f}")],
    );
    let session = out.logs[0]["session_id"].as_str().unwrap().to_string();
    assert_eq!(session.len(), 16);
    for l in &out.logs {
        for key in ["time", "level", "msg", "component", "session_id"] {
            assert!(l.get(key).is_some(), "{key} missing in {l}");
        }
        assert_eq!(l["session_id"], session.as_str());
        assert_eq!(l["component"], "engine");
        assert!(l["time"].as_str().unwrap().ends_with('Z'));
    }
    let states: Vec<_> = out
        .logs
        .iter()
        .filter_map(|l| l["state"].as_str())
        .collect();
    assert_eq!(states, ["starting", "running", "stopped"]);
    let hit = out.logs_with("syscall intercepted");
    assert_eq!(hit.len(), 1, "only faulted calls at INFO");
    assert_eq!(hit[0]["level"], "INFO");
    assert_eq!(hit[0]["name"], "write");
    assert_eq!(hit[0]["path"], f.as_str());
    assert_eq!(hit[0]["decision"], "deny(input/output error)");
    assert!(hit[0]["pid"].is_i64());
    let done = out.logs_with("session completed");
    assert_eq!(done[0]["exit_code"], 0);
    assert!(done[0]["duration"].as_u64().unwrap() > 0);
}

#[test]
fn debug_logs_every_intercepted_call() {
    let d = Scratch::new("debug");
    let (f, g) = (d.path("f"), d.path("g"));
    let glob = format!("openat=ENOENT:100%:{f}");
    let quiet = run(
        &["--fault", &glob],
        &[&p(), &format!("create:{g}"), &format!("create:{f}")],
    );
    assert_eq!(quiet.logs_with("syscall intercepted").len(), 1);
    let loud = run(
        &["--debug", "--fault", &glob],
        &[&p(), &format!("create:{g}"), &format!("create:{f}")],
    );
    let all = loud.logs_with("syscall intercepted");
    assert!(all
        .iter()
        .any(|l| l["level"] == "DEBUG" && l["decision"] == "allow" && l["path"] == g.as_str()));
    assert!(all
        .iter()
        .any(|l| l["level"] == "INFO" && l["path"] == f.as_str()));
    let unglobbed = run(
        &["--debug", "--fault", "openat=ENOENT:100%"],
        &[&p(), "getpid"],
    );
    assert!(unglobbed
        .logs_with("syscall intercepted")
        .iter()
        .any(|l| l["decision"] == "allow (system path)"));
}

#[test]
fn console_logs_without_color() {
    let d = Scratch::new("console");
    let f = d.path("f");
    let mut cmd = std::process::Command::new(common::faultbox());
    cmd.env("NO_COLOR", "1")
        .args([
            "run",
            "--log-format=console",
            "--fault",
            &format!("write=EIO:100%:{f}"),
            "--",
        ])
        .args([p().as_str(), &format!("write:{f}")]);
    let out = common::run_cmd(cmd);
    assert!(
        !out.stderr.contains('\x1b'),
        "NO_COLOR honoured: {:?}",
        out.stderr
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("syscall intercepted"))
        .unwrap();
    let (time, rest) = line.split_at(12);
    assert!(
        time.len() == 12
            && time.as_bytes()[2] == b':'
            && time.as_bytes()[5] == b':'
            && time.as_bytes()[8] == b'.',
        "HH:MM:SS.mmm: {line}"
    );
    assert!(
        rest.starts_with(" INF [engine] syscall intercepted"),
        "{line}"
    );
    assert!(line.contains("decision=deny(input/output error)"), "{line}");
    let mut cmd = std::process::Command::new(common::faultbox());
    cmd.env_remove("NO_COLOR")
        .args(["run", "--log-format=console", "--", p().as_str(), "getpid"]);
    let colored = common::run_cmd(cmd);
    assert!(
        colored.stderr.contains("\x1b[32mINF"),
        "{:?}",
        colored.stderr
    );
}

#[test]
fn piped_stderr_defaults_to_json() {
    let mut cmd = std::process::Command::new(common::faultbox());
    cmd.args(["run", "--", p().as_str(), "getpid"]);
    let out = common::run_cmd(cmd);
    assert!(!out.logs.is_empty());
    assert!(
        out.stderr.lines().all(|l| l.starts_with('{')),
        "{}",
        out.stderr
    );
}

#[test]
fn rules_on_the_shims_own_syscalls_never_trap_the_hand_off() {
    // The shim blocks in getppid during the hand-off and then calls execve: rules on
    // both still let the target start, and apply to the target's own calls.
    let out = run(
        &[
            "--fault",
            "getppid=EPERM:100%",
            "--fault",
            "execve=ENOENT:100%",
        ],
        &[&p(), "getppid", "fork:getpid"],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(
        out.one("getppid", "-"),
        "-1",
        "the target's own getppid is denied"
    );
    let denied: Vec<_> = out
        .logs_with("syscall intercepted")
        .iter()
        .map(|l| l["name"].clone())
        .collect();
    assert_eq!(
        denied,
        ["getppid"],
        "the hand-off and the target's exec were not faulted"
    );
    let sh = run(
        &["--fault", "execve=EACCES:100%"],
        &["/bin/sh", "-c", "/bin/true || echo denied > \"$PROBE_OUT\""],
    );
    assert_eq!(sh.code, 0, "{}", sh.stderr);
    assert_eq!(
        sh.results[0].0, "denied",
        "execve by the target itself is faulted"
    );
}

#[test]
fn any_syscall_of_the_architecture_can_be_named() {
    let out = run(
        &[
            "--fault",
            "getrandom=EAGAIN:100%",
            "--fault",
            "uname=EFAULT:100%",
        ],
        &[
            "python3",
            "-c",
            "import os,sys\ntry:\n os.getrandom(4)\nexcept OSError as e:\n sys.exit(e.errno)",
        ],
    );
    assert_eq!(out.code, libc::EAGAIN, "{}", out.stderr);
}

/// A stderr nobody reads fills up; the target must go on all the same, and the
/// decisions that could not be logged are counted once stderr drains.
#[test]
fn a_stderr_nobody_reads_never_freezes_the_target() {
    use std::io::Read as _;
    let d = Scratch::new("unread");
    let (file, done) = (d.path("wal"), d.path("done"));
    // 20,000 denied writes log some 5 MB, far more than a pipe holds.
    let script = format!(
        "exec 2>/dev/null; i=0; while [ $i -lt 20000 ]; do echo x >> {file}; i=$((i+1)); done; : > {done}"
    );
    let mut child = std::process::Command::new(common::faultbox())
        .args(["run", "--log-format=json", "--fault"])
        .arg(format!("write=EIO:100%:{file}"))
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !std::path::Path::new(&done).exists() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the target froze while nobody read faultbox's stderr");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        &stderr[stderr.len().saturating_sub(2000)..]
    );
    let dropped: u64 = stderr
        .lines()
        .filter(|l| l.contains("decisions not logged"))
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["dropped"]
                .as_u64()
                .unwrap()
        })
        .sum();
    let logged = stderr
        .lines()
        .filter(|l| l.contains("\"syscall intercepted\""))
        .count() as u64;
    assert!(
        dropped > 0,
        "some decisions were dropped while stderr was full"
    );
    assert!(logged > 0);
    assert!(
        logged + dropped >= 20_000,
        "{logged} logged + {dropped} dropped"
    );
}
