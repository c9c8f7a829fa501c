//! Test helpers: play a scripted exchange through a conversation with the bytes
//! cut every which way, and check every cut gives the same requests and counts.

use crate::{Opaque, Protocol, Request};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    C,
    S,
}

/// What a conversation made of a script: every request in order, and the
/// responses completed by each server segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) requests: Vec<Request>,
    pub(crate) responses: Vec<usize>,
}

impl Outcome {
    pub(crate) fn total_responses(&self) -> usize {
        self.responses.iter().sum()
    }

    pub(crate) fn total_replies(&self) -> usize {
        self.requests.iter().map(|r| r.replies).sum()
    }
}

/// A small deterministic generator for random cuts.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

/// Plays `script`, cutting each segment into chunks of the sizes `cut` gives.
pub(crate) fn play(
    protocol: &dyn Protocol,
    script: &[(Dir, Vec<u8>)],
    cut: &mut dyn FnMut(usize) -> Vec<usize>,
) -> Result<Outcome, Opaque> {
    let mut conv = protocol.conversation();
    let mut requests = Vec::new();
    let mut responses = Vec::new();
    for (dir, bytes) in script {
        let mut at = 0;
        let mut done = 0;
        for size in cut(bytes.len()) {
            let chunk = &bytes[at..at + size];
            at += size;
            match dir {
                Dir::C => requests.extend(conv.client(chunk)?),
                Dir::S => done += conv.server(chunk)?,
            }
        }
        assert_eq!(at, bytes.len(), "cuts must cover the segment");
        if *dir == Dir::S {
            responses.push(done);
        }
    }
    Ok(Outcome {
        requests,
        responses,
    })
}

fn whole(n: usize) -> Vec<usize> {
    vec![n]
}

fn bytewise(n: usize) -> Vec<usize> {
    vec![1; n]
}

/// Plays `script` whole, byte by byte, cut in two at every point of every
/// segment, and at random cuts; asserts they all agree and returns the outcome.
pub(crate) fn check_cuts(protocol: &dyn Protocol, script: &[(Dir, Vec<u8>)]) -> Outcome {
    let reference = play(protocol, script, &mut whole);
    assert_eq!(
        play(protocol, script, &mut bytewise),
        reference,
        "byte by byte"
    );
    for (i, (_, seg)) in script.iter().enumerate() {
        for point in 1..seg.len() {
            let mut seen = 0;
            let mut cut = |n: usize| {
                seen += 1;
                if seen - 1 == i {
                    vec![point, n - point]
                } else {
                    vec![n]
                }
            };
            assert_eq!(
                play(protocol, script, &mut cut),
                reference,
                "segment {i} cut at {point}"
            );
        }
    }
    let mut rng = Rng::new(7);
    for round in 0..50 {
        let mut cut = |n: usize| {
            let mut sizes = Vec::new();
            let mut left = n;
            while left > 0 {
                let s = 1 + rng.below(left.min(64));
                sizes.push(s);
                left -= s;
            }
            sizes
        };
        assert_eq!(
            play(protocol, script, &mut cut),
            reference,
            "random cuts, round {round}"
        );
    }
    reference.expect("the script plays")
}

/// Plays `script` whole.
pub(crate) fn play_whole(
    protocol: &dyn Protocol,
    script: &[(Dir, Vec<u8>)],
) -> Result<Outcome, Opaque> {
    play(protocol, script, &mut whole)
}
