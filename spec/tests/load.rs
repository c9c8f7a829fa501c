//! Loading specs: topology, load(), start order and located errors.

use std::path::{Path, PathBuf};

use faultbox_spec::model::HealthcheckKind;
use faultbox_spec::{load, SpecError};

fn spec(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/specs")
        .join(name)
}

/// Writes `source` to a temporary spec file and loads it.
fn load_src(name: &str, source: &str) -> Result<faultbox_spec::Loaded, SpecError> {
    let dir = std::env::temp_dir().join(format!("fbspec-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("spec.star");
    std::fs::write(&path, source).unwrap();
    let r = load(&path);
    std::fs::remove_dir_all(&dir).unwrap();
    r
}

fn error(name: &str, source: &str) -> String {
    match load_src(name, source) {
        Ok(_) => panic!("{name}: loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn topology_loads_in_dependency_order() {
    let loaded = load(&spec("topology.star")).unwrap();
    let s = &loaded.spec;
    let order: Vec<_> = s.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        order,
        ["cache", "db", "api"],
        "dependencies first, ties by name"
    );
    let api = s.service("api").unwrap();
    assert_eq!(api.binary, "/usr/local/bin/api");
    assert_eq!(api.args, ["--port", "8080"]);
    assert_eq!(
        api.env,
        [
            ("DB_ADDR".into(), "localhost:5432".into()),
            ("DB_PORT".into(), "5432".into())
        ]
    );
    assert_eq!(api.depends_on, ["db"]);
    let hc = api.healthcheck.as_ref().unwrap();
    assert_eq!(hc.kind, HealthcheckKind::Http);
    assert_eq!(hc.timeout, std::time::Duration::from_secs(3));
    let db = s.service("db").unwrap();
    assert_eq!(
        db.healthcheck.as_ref().unwrap().timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(db.ops["persist"].syscalls, ["write", "fsync"]);
    assert_eq!(db.ops["persist"].path.as_deref(), Some("/tmp/*.wal"));
    assert_eq!(db.declared_at.line, 3);
    assert!(db.declared_at.file.ends_with("topology.star"));
    assert_eq!(
        db.injected_env(),
        [
            ("FAULTBOX_DB_MAIN_ADDR".into(), "localhost:5432".into()),
            ("FAULTBOX_DB_MAIN_HOST".into(), "localhost".into()),
            ("FAULTBOX_DB_MAIN_PORT".into(), "5432".into()),
        ]
    );
    let tests: Vec<_> = s.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(tests, ["test_a", "test_b"]);
}

#[test]
fn ready_points_at_its_interface() {
    let loaded = load_src(
        "ready",
        "db = service('db', '/bin/db', interface('main', 'postgres', 5432),\n\
         \x20   interface('metrics', 'http', 9187), healthcheck = ready())\n\
         api = service('api', '/bin/api', interface('admin', 'tcp', 9000),\n\
         \x20   interface('public', 'http', 8080),\n\
         \x20   healthcheck = ready(interface = 'public', timeout = '30s'))\n",
    )
    .unwrap();
    let hc = |name: &str| {
        loaded
            .spec
            .service(name)
            .unwrap()
            .healthcheck
            .clone()
            .unwrap()
    };
    let db = hc("db");
    assert_eq!(
        db.kind,
        HealthcheckKind::Ready {
            interface: Some("main".into())
        },
        "the first interface"
    );
    assert_eq!(db.target, "localhost:5432");
    assert_eq!(db.timeout, std::time::Duration::from_secs(10));
    let api = hc("api");
    assert_eq!(
        api.kind,
        HealthcheckKind::Ready {
            interface: Some("public".into())
        }
    );
    assert_eq!(api.target, "localhost:8080");
    assert_eq!(api.timeout, std::time::Duration::from_secs(30));

    let cases = [
        (
            "ready_unknown",
            "service('a', '/bin/a', interface('main', 'redis', 6379), healthcheck = ready(interface = 'x'))\n",
            "spec.star:1: service \"a\": ready(interface=\"x\") names no interface of it (it has main)",
        ),
        (
            "ready_none",
            "service('a', '/bin/a', healthcheck = ready())\n",
            "ready() needs an interface to speak to, and it declares none",
        ),
        (
            "ready_grpc",
            "service('a', '/bin/a', interface('rpc', 'grpc', 9090), healthcheck = ready())\n",
            "interface \"rpc\" is grpc: use tcp(\"localhost:9090\")",
        ),
        (
            "ready_kw",
            "service('a', '/bin/a', interface('m', 'redis', 1), healthcheck = ready('5s'))\n",
            "spec.star:1:",
        ),
    ];
    for (name, src, expect) in cases {
        let e = error(name, src);
        assert!(e.contains(expect), "{name}: expected {expect:?} in {e:?}");
    }
}

#[test]
fn errors_name_the_file_and_line() {
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "x = (\n", "spec.star:"),
        ("unknown_builtin", "\n\nservce('a', '/bin/a')\n", "spec.star:3:"),
        ("unknown_kw", "service('a', '/bin/a', interface('m', 'tcp', 1), colour = 'red')\n", "colour"),
        ("wrong_type", "service('a', '/bin/a', interface('m', 'tcp', 'x'))\n", "spec.star:1:"),
        ("bad_port", "service('a', '/bin/a', interface('m', 'tcp', 70000))\n", "70000"),
        ("errno", "x = 1\nf = deny('EBOGUS')\n", "spec.star:2: unknown errno \"EBOGUS\""),
        ("syscall", "o = op(syscalls = ['nosuch'])\n", "unknown syscall \"nosuch\""),
        ("duration", "d = delay('soon')\n", "bad duration"),
        ("prob", "d = deny('EIO', probability = '150%')\n", "between 0% and 100%"),
        ("no_source", "service('a', interface('m', 'tcp', 1))\n", "needs exactly one of"),
        ("image_and_binary", "service('a', '/bin/a', image = 'pg:16')\n", "give only one of a binary, image= or build="),
        ("volumes_on_a_binary", "service('a', '/bin/a', volumes = {'./d': '/d'})\n", "volumes= and seccomp= apply to container services"),
        ("blank_image", "service('a', image = 'pg 16')\n", "image \"pg 16\" is not an image name"),
        ("empty_build", "service('a', build = '')\n", "build= needs a directory with a Dockerfile"),
        ("user_on_a_container", "service('a', image = 'pg:16', user = 'postgres')\n", "user= applies to binaries"),
        ("relative_volume_target", "service('a', image = 'pg:16', volumes = {'./d': 'd'})\n", "the container path absolute"),
        ("observe", "service('a', '/bin/a', observe = ['x'])\n", "observe= takes event sources"),
        ("twice", "service('a', '/bin/a')\nservice('a', '/bin/b')\n", "spec.star:2: service \"a\" declared twice"),
        ("unknown_dep", "service('a', '/bin/a', depends_on = ['zz'])\n", "spec.star:1: service \"a\" depends on unknown service \"zz\""),
        ("cycle", "a = service('a', '/bin/a', depends_on = ['b'])\nb = service('b', '/bin/b', depends_on = [a])\n", "dependency cycle among services a, b"),
        ("env_type", "service('a', '/bin/a', env = {'X': 1})\n", "env must map strings to strings"),
        ("missing_load", "load('nope.star', 'x')\n", "nope.star"),
        (
            "errno_in_body",
            "a = service('a', '/bin/a')\ndef test_t():\n    fault(a, write = deny('EWHAT'), run = lambda: None)\n",
            "spec.star:3: unknown errno \"EWHAT\"",
        ),
        (
            "syscall_in_body",
            "a = service('a', '/bin/a', ops = {'persist': op(syscalls = ['fsync'])})\ndef test_t():\n    fault(a, persist = deny('EIO'), run = lambda: None)\n    fault_start(a, wirte = deny('EIO'))\n",
            "spec.star:4: unknown syscall or op \"wirte\"",
        ),
    ];
    for (name, src, expect) in cases {
        let e = error(name, src);
        assert!(e.contains(expect), "{name}: expected {expect:?} in {e:?}");
        assert!(
            e.contains("spec.star") || e.contains("nope.star"),
            "{name}: no file in {e:?}"
        );
    }
}

#[test]
fn loaded_files_run_once() {
    let dir = std::env::temp_dir().join(format!("fbspec-{}-once", std::process::id()));
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(
        dir.join("sub/lib.star"),
        "svc = service('one', '/bin/true')\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("sub/mid.star"),
        "load('lib.star', 'svc')\nx = svc\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("main.star"),
        "load('sub/lib.star', 'svc')\nload('sub/mid.star', 'x')\n",
    )
    .unwrap();
    let loaded = load(&dir.join("main.star"));
    std::fs::remove_dir_all(&dir).unwrap();
    let loaded = loaded.unwrap();
    assert_eq!(
        loaded.spec.services.len(),
        1,
        "lib.star ran once, relative to its loader"
    );
}

#[test]
fn filters_cover_what_the_spec_can_fault() {
    let loaded = load(&spec("tests.star")).unwrap();
    let s = &loaded.spec;
    // db: persist (write, fsync), connect, write, fsync, nosuch (ignored), mkdir;
    // and what its queries name: the write family, unlink, and the glob wr*.
    assert_eq!(
        s.filter_syscalls("db"),
        [
            "connect", "fsync", "mkdir", "openat", "pwrite64", "pwritev", "pwritev2", "unlink",
            "write", "writev"
        ]
    );
    assert_eq!(
        s.filter_syscalls("api"),
        ["pwrite64", "pwritev", "pwritev2", "write", "writev"],
        "nothing faults api, but a query names write on every service"
    );
    let dynamic = load_src(
        "dyn",
        "a = service('a', '/bin/a')\nb = service('b', '/bin/b')\ndef f(svc):\n    fault(svc, openat = deny('EIO'), run = lambda: None)\ndef test_t():\n    trace(b, syscalls = ['fsync'], run = lambda: None)\n",
    )
    .unwrap();
    assert_eq!(
        dynamic.spec.filter_syscalls("a"),
        ["openat"],
        "unresolved targets may be any service"
    );
    assert_eq!(dynamic.spec.filter_syscalls("b"), ["fsync", "openat"]);
}
