//! Writing results to stdout. A reader that stops early (`faultbox ... | head`) is not
//! an error: what it wanted it has, and the command goes on to its files and exit code.

use std::io::Write as _;

/// Writes `text` to stdout and flushes; a closed pipe is ignored, other errors are
/// returned as a message.
pub fn write(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(format!("writing to stdout: {e}")),
        Ok(()) => Ok(()),
    }
}
