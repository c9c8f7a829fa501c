//! `faultbox diff A B`: compares two normalized traces. Exit 0 when identical, 2 when
//! they differ (showing where), 1 when a file cannot be read.

use std::io::Write;

use similar::{ChangeTag, TextDiff};

/// Lines of context around each difference.
const CONTEXT: usize = 2;

pub fn run(a: &std::path::Path, b: &std::path::Path) -> i32 {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p).map_err(|e| format!("faultbox: error: {}: {e}", p.display()))
    };
    let (left, right) = match (read(a), read(b)) {
        (Ok(l), Ok(r)) => (l, r),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("{e}");
            return 1;
        }
    };
    if left == right {
        return match crate::stdout::write("traces are identical\n") {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("faultbox: error: {e}");
                1
            }
        };
    }
    // A reader that stops early (`| head`) is not an error: the answer is still 2.
    let _ = show(&mut std::io::stdout().lock(), a, b, &left, &right);
    2
}

fn show(
    out: &mut impl Write,
    a: &std::path::Path,
    b: &std::path::Path,
    left: &str,
    right: &str,
) -> std::io::Result<()> {
    let diff = TextDiff::from_lines(left, right);
    writeln!(out, "--- {}\n+++ {}", a.display(), b.display())?;
    for group in diff.grouped_ops(CONTEXT) {
        let first = &group[0];
        writeln!(
            out,
            "@@ line {} / line {} @@",
            first.old_range().start + 1,
            first.new_range().start + 1
        )?;
        for op in group {
            for change in diff.iter_changes(&op) {
                let sign = match change.tag() {
                    ChangeTag::Delete => '-',
                    ChangeTag::Insert => '+',
                    ChangeTag::Equal => ' ',
                };
                write!(out, "{sign}{change}")?;
                if change.missing_newline() {
                    writeln!(out)?;
                }
            }
        }
    }
    Ok(())
}
