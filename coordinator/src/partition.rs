//! `--partition`: which tests this CI shard runs. `hash:K/N` keeps a test when a hash
//! of its name falls in shard K, so adding or removing a test never moves the others;
//! `slice:K/N` takes every N-th test in spec order, starting with the K-th.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Partition {
    Hash { shard: u64, of: u64 },
    Slice { shard: u64, of: u64 },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0:?} is not hash:K/N or slice:K/N with 1 <= K <= N")]
pub struct PartitionError(String);

impl FromStr for Partition {
    type Err = PartitionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PartitionError(s.to_string());
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        let (k, n) = rest.split_once('/').ok_or_else(bad)?;
        let number = |t: &str| {
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse::<u64>().map_err(|_| bad())
        };
        let (shard, of) = (number(k)?, number(n)?);
        if shard == 0 || shard > of {
            return Err(bad());
        }
        match kind {
            "hash" => Ok(Partition::Hash { shard, of }),
            "slice" => Ok(Partition::Slice { shard, of }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::Hash { shard, of } => write!(f, "hash:{shard}/{of}"),
            Partition::Slice { shard, of } => write!(f, "slice:{shard}/{of}"),
        }
    }
}

impl Partition {
    /// Whether the test `name`, at `index` in spec order, belongs to this shard.
    pub fn keeps(&self, index: usize, name: &str) -> bool {
        match *self {
            Partition::Hash { shard, of } => fnv1a(name) % of == shard - 1,
            Partition::Slice { shard, of } => index as u64 % of == shard - 1,
        }
    }
}

/// FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_refuses() {
        assert_eq!("hash:2/4".parse(), Ok(Partition::Hash { shard: 2, of: 4 }));
        assert_eq!(
            "slice:1/1".parse(),
            Ok(Partition::Slice { shard: 1, of: 1 })
        );
        for bad in [
            "",
            "hash",
            "hash:0/2",
            "hash:3/2",
            "hash:1/0",
            "mod:1/2",
            "hash:+1/2",
            "hash:1/2/3",
            "slice:a/b",
        ] {
            assert!(bad.parse::<Partition>().is_err(), "{bad}");
        }
    }

    #[test]
    fn every_test_lands_in_exactly_one_shard() {
        let names: Vec<String> = (0..200).map(|i| format!("test_{i}")).collect();
        for kind in ["hash", "slice"] {
            for (i, name) in names.iter().enumerate() {
                let owners = (1..=3)
                    .filter(|k| {
                        format!("{kind}:{k}/3")
                            .parse::<Partition>()
                            .unwrap()
                            .keeps(i, name)
                    })
                    .count();
                assert_eq!(owners, 1, "{kind} {name}");
            }
        }
    }

    #[test]
    fn hash_shards_do_not_move_when_tests_are_added() {
        let p: Partition = "hash:1/4".parse().unwrap();
        let before: Vec<bool> = (0..50).map(|i| p.keeps(i, &format!("test_{i}"))).collect();
        // A new test first in spec order shifts every index; hash shards ignore that.
        let after: Vec<bool> = (0..50)
            .map(|i| p.keeps(i + 1, &format!("test_{i}")))
            .collect();
        assert_eq!(before, after);
        assert!(before.iter().any(|&k| k) && before.iter().any(|&k| !k));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_and_round_trips(s in "\\PC{0,20}|(hash|slice):[0-9]{1,3}/[0-9]{1,3}") {
            if let Ok(p) = s.parse::<Partition>() {
                prop_assert_eq!(p.to_string().parse::<Partition>(), Ok(p));
            }
        }
    }
}
