//! The fleet's wire: MessagePack (rmp-serde) frames, each prefixed by its length as
//! a big-endian u32, on one bidirectional QUIC stream per link. The first frame each
//! way is a [`Frame::Hello`] carrying the protocol version; a link whose versions
//! differ is refused with both named. A frame that does not decode ends that link
//! with an error; it never takes the process down.

use serde::{Deserialize, Serialize};

use crate::fleet::batch::EventBatch;
use crate::fleet::bundle::Bundle;
use crate::fleet::job::Job;
use crate::world::run::TestReport;

/// Bumped whenever a frame changes shape.
pub const PROTOCOL_VERSION: u32 = 7;

/// The largest frame accepted: a bundle's files travel in frames of their own.
pub const MAX_FRAME: usize = 512 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// The first frame each way. `name` is the sender's; `slots`, an executor's.
    Hello {
        version: u32,
        name: String,
        slots: u32,
    },
    /// The link is refused; the reason is shown on both sides.
    Refused { reason: String },
    /// Coordinator → executor: the files of the spec to run.
    Offer(Bundle),
    /// Executor → coordinator: the contents it lacks, by hash.
    Need { hashes: Vec<String> },
    /// Coordinator → executor: one file's contents.
    Blob {
        hash: String,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
    /// Executor → coordinator: the bundle is unpacked and its spec loaded.
    Ready,
    /// Executor → coordinator: a slot is free.
    Pull,
    /// Coordinator → executor: run this job.
    Run(Job),
    /// Coordinator → executor: stop this job; its result is no longer wanted.
    Cancel { job: u64 },
    /// Executor → coordinator: the next batch of a running job's events, in the
    /// compact form of [`EventBatch`].
    Events { job: u64, events: EventBatch },
    /// Coordinator → executor: one batch of the job's events was taken.
    Ack { job: u64 },
    /// Executor → coordinator: a job ended; `streamed` events came before it.
    Done {
        job: u64,
        report: Box<TestReport>,
        streamed: u64,
    },
    /// Either way: something went wrong with the link's work; the link ends.
    Error { message: String },
}

impl Frame {
    /// The frame's name, for errors: a frame's contents can be a whole trace.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Refused { .. } => "Refused",
            Frame::Offer(_) => "Offer",
            Frame::Need { .. } => "Need",
            Frame::Blob { .. } => "Blob",
            Frame::Ready => "Ready",
            Frame::Pull => "Pull",
            Frame::Run(_) => "Run",
            Frame::Cancel { .. } => "Cancel",
            Frame::Events { .. } => "Events",
            Frame::Ack { .. } => "Ack",
            Frame::Done { .. } => "Done",
            Frame::Error { .. } => "Error",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the link closed")]
    Closed,
    #[error("reading from the link: {0}")]
    Read(String),
    #[error("writing to the link: {0}")]
    Write(String),
    #[error("a frame of {0} bytes is larger than the limit of {MAX_FRAME}")]
    TooLarge(usize),
    #[error("a malformed frame: {0}")]
    Malformed(String),
}

/// Writes one frame.
pub async fn send(stream: &mut quinn::SendStream, frame: &Frame) -> Result<(), WireError> {
    let body = rmp_serde::to_vec(frame).map_err(|e| WireError::Write(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(WireError::TooLarge(body.len()));
    }
    stream
        .write_all(&(body.len() as u32).to_be_bytes())
        .await
        .map_err(|e| WireError::Write(e.to_string()))?;
    stream
        .write_all(&body)
        .await
        .map_err(|e| WireError::Write(e.to_string()))
}

/// Reads one frame; [`WireError::Closed`] when the peer finished the stream cleanly.
pub async fn recv(stream: &mut quinn::RecvStream) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0))
        | Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(_),
        ))) => return Err(WireError::Closed),
        Err(e) => return Err(WireError::Read(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| WireError::Read(e.to_string()))?;
    decode(&body)
}

/// Decodes a frame's body.
pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
    rmp_serde::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))
}

/// Checks a peer's Hello against ours.
pub fn check_version(theirs: u32) -> Result<(), String> {
    if theirs == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(format!(
            "protocol version mismatch: the peer speaks {theirs}, this side {PROTOCOL_VERSION}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let f = Frame::Hello {
            version: PROTOCOL_VERSION,
            name: "a".into(),
            slots: 3,
        };
        let body = rmp_serde::to_vec(&f).unwrap();
        assert!(matches!(
            decode(&body).unwrap(),
            Frame::Hello { slots: 3, .. }
        ));
        assert!(check_version(PROTOCOL_VERSION).is_ok());
        let e = check_version(PROTOCOL_VERSION + 1).unwrap_err();
        assert!(
            e.contains(&format!("{}", PROTOCOL_VERSION + 1))
                && e.contains(&PROTOCOL_VERSION.to_string())
        );
    }

    #[test]
    fn kinds_name_frames_without_their_contents() {
        let events = Frame::Events {
            job: 1,
            events: EventBatch::default(),
        };
        assert_eq!(events.kind(), "Events");
        assert_eq!(Frame::Ack { job: 1 }.kind(), "Ack");
        assert_eq!(Frame::Pull.kind(), "Pull");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Whatever arrives, decoding answers with a frame or an error.
        #[test]
        fn arbitrary_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&body);
        }
    }
}
