//! An executor's work directory: only one that nobody else can touch is used, and
//! nothing found in it is trusted without checking its hash.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use super::{faultbox_bounded, faultbox_cmd, fleet, Executor, SERIAL};
use crate::common::{faultbox, Scratch};

fn start_refused(dir: &Path, work: &Path) -> crate::common::Out {
    faultbox_bounded(&[
        "executor",
        "--listen",
        "127.0.0.1:7773",
        "--name",
        "e1",
        "--fleet",
        dir.to_str().unwrap(),
        "--work",
        work.to_str().unwrap(),
    ])
}

#[test]
fn work_directories_others_could_touch_are_refused() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-workdir");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);

    // Made by another user (as anyone can in a shared temporary directory).
    let theirs = s.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let out = start_refused(&dir, &theirs);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("--work: {}: owned by uid 65534", theirs.display())),
        "{}",
        out.stderr
    );
    // Ours, but others may write into it.
    let open = s.0.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = start_refused(&dir, &open);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("--work: {}:", open.display()))
            && out.stderr.contains("others can write"),
        "{}",
        out.stderr
    );
    // A symbolic link, even to a good directory.
    let good = s.0.join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = s.0.join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let out = start_refused(&dir, &link);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("--work: {}:", link.display()))
            && out.stderr.contains("symbolic link"),
        "{}",
        out.stderr
    );
    // Not a directory.
    let file = s.0.join("file");
    std::fs::write(&file, "").unwrap();
    let out = start_refused(&dir, &file);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(out.stderr.contains("not a directory"), "{}", out.stderr);
    // None of them was written to.
    for d in [&theirs, &open, &good] {
        assert_eq!(std::fs::read_dir(d).unwrap().count(), 0, "{}", d.display());
    }
}

/// A blob planted under the hash of a spec the executor will be sent is found out,
/// deleted and received again: the real spec runs.
#[test]
fn a_planted_blob_is_replaced_by_the_real_contents() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-planted");
    let dir = s.0.join("fleet");
    fleet(&dir, &["e1"]);
    let spec = crate::common::root().join("coordinator/tests/specs/seeds.star");
    let real = std::fs::read(&spec).unwrap();
    let hash = faultbox_executor::fleet::bundle::hash(&real);
    let work = s.0.join("w1");
    let blobs = work.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(
        blobs.join(&hash),
        "def test_always():\n    fail(\"the planted spec ran\")\n",
    )
    .unwrap();
    let e1 = Executor::start(&dir, "e1", 7774, &work, "1");
    let out = faultbox_cmd(&[
        "test",
        spec.to_str().unwrap(),
        "--test",
        "always",
        "--executors",
        &e1.addr,
        "--fleet",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(std::fs::read(blobs.join(&hash)).unwrap(), real);
    e1.wait_for("does not match its hash");
}

/// Without --work, a root executor keeps its files under /var/lib/faultbox, in a
/// directory only root can enter.
#[test]
fn the_default_work_directory_is_private() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the default for root is what is tested here");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("fleet-default-work");
    let dir = s.0.join("fleet");
    let name = format!("default{}", std::process::id());
    fleet(&dir, &[&name]);
    let parent = Path::new("/var/lib/faultbox");
    let made_parent = !parent.exists();
    let work = parent.join(format!("executor-{name}"));
    let log = s.0.join("executor.log");
    let child = Command::new(faultbox())
        .args(["executor", "--listen", "127.0.0.1:7775", "--name", &name])
        .arg("--fleet")
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let e = Executor {
        child: Some(child),
        log,
        addr: "127.0.0.1:7775".into(),
    };
    e.wait_for("executor ready");
    let meta = std::fs::symlink_metadata(&work);
    drop(e);
    let _ = std::fs::remove_dir_all(&work);
    if made_parent {
        let _ = std::fs::remove_dir(parent);
    }
    let meta = meta.unwrap_or_else(|e| panic!("{}: {e}", work.display()));
    assert!(meta.is_dir());
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
}
