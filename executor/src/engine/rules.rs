//! The rule chain: which rules apply to a syscall, whether they match its file, and
//! the decision. Rules on one syscall are tried in the order given; the first that
//! fires decides. Every rule whose syscall and path match counts the call, so `nth=`
//! and `after=` count matching calls only, independent of other rules.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use globset::{GlobBuilder, GlobMatcher};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

use faultbox_shim::errno;
use faultbox_shim::rule::{Action, FaultRule, RuleError, Trigger};
use faultbox_shim::syscalls::{self, Arch, PathArg};

/// Paths that are never faulted by a rule without a glob, so the dynamic linker and
/// the target's view of the system keep working. The name-service cache socket is
/// here because the C library probes it on every host lookup, whether or not the
/// daemon runs.
const SYSTEM_PREFIXES: &[&str] = &[
    "/lib/",
    "/lib64/",
    "/usr/lib/",
    "/usr/lib64/",
    "/proc/",
    "/sys/",
    "/dev/",
    "/etc/ld.so.",
    "/run/nscd/",
    "/var/run/nscd/",
];

/// Whether `path` is a system path in the sense above.
pub fn is_system_path(path: &str) -> bool {
    SYSTEM_PREFIXES.iter().any(|p| path.starts_with(p))
}

/// What happens to one call.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Allow,
    /// Allowed because the file is a system path and no rule gave a glob.
    AllowSystemPath,
    Deny(i32),
    Delay(Duration),
}

impl Decision {
    /// Whether a fault was injected.
    pub fn is_fault(&self) -> bool {
        matches!(self, Decision::Deny(_) | Decision::Delay(_))
    }
}

impl fmt::Display for Decision {
    /// The form the logs and reports use: `deny(input/output error)`, `delay(500ms)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allow"),
            Decision::AllowSystemPath => f.write_str("allow (system path)"),
            Decision::Deny(e) => write!(f, "deny({})", errno::describe(*e)),
            Decision::Delay(d) => write!(f, "delay({})", faultbox_shim::rule::format_duration(*d)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("fault {rule:?}: bad path glob {glob:?}: {why}")]
    Glob {
        rule: String,
        glob: String,
        why: String,
    },
}

/// A rule ready to match: compiled once, so its call counter survives when other
/// rules are added to or removed from a running target.
pub struct Compiled {
    index: usize,
    action: Action,
    probability: f64,
    glob: Option<GlobMatcher>,
    trigger: Trigger,
    label: Option<Arc<str>>,
    /// Calls that matched this rule's syscalls and path so far.
    seen: AtomicU64,
}

/// The rules for one syscall number.
pub struct Chain {
    pub name: Arc<str>,
    pub path_arg: PathArg,
    rules: Vec<Arc<Compiled>>,
}

/// The outcome of evaluating a chain.
pub struct Verdict {
    pub decision: Decision,
    /// Index (in the order given) of the rule that fired.
    pub rule: Option<usize>,
    pub label: Option<Arc<str>>,
}

/// Compiles `rule` (the `index`th of its set) for `arch`: its glob and the syscalls
/// it covers.
pub fn compile(
    rule: &FaultRule,
    index: usize,
    arch: Arch,
) -> Result<(Arc<Compiled>, Vec<syscalls::Syscall>), EngineError> {
    let glob = match &rule.path_glob {
        None => None,
        Some(g) => Some(
            GlobBuilder::new(g)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| EngineError::Glob {
                    rule: rule.to_string(),
                    glob: g.clone(),
                    why: e.kind().to_string(),
                })?
                .compile_matcher(),
        ),
    };
    let compiled = Arc::new(Compiled {
        index,
        action: rule.action.clone(),
        probability: rule.probability,
        glob,
        trigger: rule.trigger,
        label: rule.label.as_deref().map(Arc::from),
        seen: AtomicU64::new(0),
    });
    Ok((compiled, rule.syscalls(arch)?))
}

/// A shared source of probability rolls, kept across engine rebuilds so a seed
/// decides a whole run.
pub type Rolls = Arc<Mutex<Pcg64>>;

/// A roll source seeded with `seed`.
pub fn rolls(seed: u64) -> Rolls {
    Arc::new(Mutex::new(Pcg64::seed_from_u64(seed)))
}

/// The engine a supervisor consults, replaceable while the target runs (faults come
/// and go during a test; the filter stays as it was at launch).
#[derive(Clone)]
pub struct EngineSlot(Arc<RwLock<Arc<Engine>>>);

impl EngineSlot {
    pub fn new(engine: Engine) -> EngineSlot {
        EngineSlot(Arc::new(RwLock::new(Arc::new(engine))))
    }

    /// The current engine.
    pub fn load(&self) -> Arc<Engine> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the engine; calls already being decided finish with the old one.
    pub fn store(&self, engine: Engine) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(engine);
    }
}

/// All rules of a target, indexed by syscall number.
pub struct Engine {
    chains: Vec<Option<Chain>>,
    rng: Rolls,
}

impl Engine {
    /// Compiles `rules` for `arch`, seeding the probability rolls with `seed`.
    pub fn new(rules: &[FaultRule], arch: Arch, seed: u64) -> Result<Engine, EngineError> {
        let mut compiled = Vec::new();
        for (index, rule) in rules.iter().enumerate() {
            compiled.push(compile(rule, index, arch)?);
        }
        Ok(Engine::assemble(&compiled, &[], rolls(seed)))
    }

    /// Builds chains from compiled rules, in order, plus empty chains for `observed`
    /// syscalls, whose calls are reported but never faulted.
    pub fn assemble(
        rules: &[(Arc<Compiled>, Vec<syscalls::Syscall>)],
        observed: &[syscalls::Syscall],
        rng: Rolls,
    ) -> Engine {
        fn slot<'a>(chains: &'a mut Vec<Option<Chain>>, sc: &syscalls::Syscall) -> &'a mut Chain {
            let nr = sc.nr as usize;
            if chains.len() <= nr {
                chains.resize_with(nr + 1, || None);
            }
            chains[nr].get_or_insert_with(|| Chain {
                path_arg: syscalls::path_arg(&sc.name),
                name: Arc::from(sc.name.as_str()),
                rules: Vec::new(),
            })
        }
        let mut chains: Vec<Option<Chain>> = Vec::new();
        for (compiled, scs) in rules {
            for sc in scs {
                slot(&mut chains, sc).rules.push(compiled.clone());
            }
        }
        for sc in observed {
            slot(&mut chains, sc);
        }
        Engine { chains, rng }
    }

    /// The syscall numbers the filter must notify, sorted.
    pub fn syscalls(&self) -> Vec<i32> {
        self.chains
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_some())
            .map(|(nr, _)| nr as i32)
            .collect()
    }

    /// The chain for syscall `nr`, if any rule names it.
    pub fn chain(&self, nr: i32) -> Option<&Chain> {
        self.chains.get(usize::try_from(nr).ok()?)?.as_ref()
    }

    /// Decides the fate of one call to `chain`'s syscall on `path`.
    pub fn decide(&self, chain: &Chain, path: Option<&str>) -> Verdict {
        let has_path_arg = chain.path_arg != PathArg::None;
        let mut fired: Option<&Compiled> = None;
        let mut system_skip = false;
        for rule in &chain.rules {
            let matches = match (&rule.glob, path) {
                (Some(g), Some(p)) => g.is_match(p),
                (Some(_), None) => false,
                (None, Some(p)) if has_path_arg && is_system_path(p) => {
                    system_skip = true;
                    false
                }
                (None, _) => true,
            };
            if !matches {
                continue;
            }
            let n = rule.seen.fetch_add(1, Ordering::Relaxed) + 1;
            if fired.is_some() {
                continue;
            }
            let due = match rule.trigger {
                Trigger::Always => true,
                Trigger::Nth(k) => n == k,
                Trigger::After(k) => n > k,
            };
            if due && self.roll(rule.probability) {
                fired = Some(rule);
            }
        }
        match fired {
            Some(rule) => Verdict {
                decision: match &rule.action {
                    Action::Deny(e) => Decision::Deny(*e),
                    Action::Delay(d) => Decision::Delay(*d),
                },
                rule: Some(rule.index),
                label: rule.label.clone(),
            },
            None => Verdict {
                decision: if system_skip {
                    Decision::AllowSystemPath
                } else {
                    Decision::Allow
                },
                rule: None,
                label: None,
            },
        }
    }

    fn roll(&self, probability: f64) -> bool {
        if probability >= 100.0 {
            return true;
        }
        if probability <= 0.0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random::<f64>() * 100.0 < probability
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine(rules: &[&str]) -> Engine {
        let rules: Vec<FaultRule> = rules.iter().map(|r| FaultRule::parse(r).unwrap()).collect();
        Engine::new(&rules, Arch::X86_64, 7).unwrap()
    }

    fn decide(e: &Engine, nr: i32, path: &str) -> Decision {
        e.decide(e.chain(nr).unwrap(), Some(path)).decision
    }

    const OPENAT: i32 = 257;
    const WRITE: i32 = 1;

    #[test]
    fn globs_star_stays_in_a_directory() {
        let e = engine(&["openat=ENOENT:100%:/data/*"]);
        assert_eq!(decide(&e, OPENAT, "/data/a"), Decision::Deny(libc::ENOENT));
        assert_eq!(decide(&e, OPENAT, "/data/x/b"), Decision::Allow);
        let e = engine(&["openat=ENOENT:100%:/data/**"]);
        assert_eq!(
            decide(&e, OPENAT, "/data/x/b"),
            Decision::Deny(libc::ENOENT)
        );
    }

    #[test]
    fn system_paths_only_without_glob() {
        let e = engine(&["openat=ENOENT:100%"]);
        assert_eq!(
            decide(&e, OPENAT, "/lib/x86_64-linux-gnu/libc.so.6"),
            Decision::AllowSystemPath
        );
        assert_eq!(
            decide(&e, OPENAT, "/etc/ld.so.cache"),
            Decision::AllowSystemPath
        );
        assert_eq!(
            decide(&e, OPENAT, "/etc/passwd"),
            Decision::Deny(libc::ENOENT)
        );
        let e = engine(&["openat=ENOENT:100%:/lib/**"]);
        assert_eq!(
            decide(&e, OPENAT, "/lib/x86_64-linux-gnu/libc.so.6"),
            Decision::Deny(libc::ENOENT)
        );
    }

    #[test]
    fn triggers_count_matching_calls_only() {
        let e = engine(&["write=EIO:100%:/tmp/a:nth=2"]);
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Allow);
        assert_eq!(decide(&e, WRITE, "/tmp/b"), Decision::Allow);
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Deny(libc::EIO));
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Allow);
        let e = engine(&["fsync=EIO:100%:after=2"]);
        let fsync = 74;
        let seq: Vec<_> = (0..4).map(|_| decide(&e, fsync, "/tmp/a")).collect();
        assert_eq!(
            seq,
            [
                Decision::Allow,
                Decision::Allow,
                Decision::Deny(libc::EIO),
                Decision::Deny(libc::EIO)
            ]
        );
    }

    #[test]
    fn first_rule_that_fires_decides() {
        let e = engine(&["write=EACCES:100%:nth=2", "write=EIO:100%"]);
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Deny(libc::EIO));
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Deny(libc::EACCES));
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Deny(libc::EIO));
    }

    #[test]
    fn families_share_one_counter() {
        let e = engine(&["write=EIO:100%:nth=2"]);
        let writev = 20;
        assert_eq!(decide(&e, WRITE, "/tmp/a"), Decision::Allow);
        assert_eq!(decide(&e, writev, "/tmp/a"), Decision::Deny(libc::EIO));
        assert_eq!(e.syscalls(), vec![1, 18, 20, 296, 328]);
    }

    #[test]
    fn probability_is_seeded() {
        let run = |seed| {
            let rules = [FaultRule::parse("write=EIO:50%").unwrap()];
            let e = Engine::new(&rules, Arch::X86_64, seed).unwrap();
            (0..64)
                .map(|_| decide(&e, WRITE, "/tmp/a").is_fault())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
        let hits = run(3).iter().filter(|&&f| f).count();
        assert!((16..=48).contains(&hits), "{hits} of 64");
    }

    #[test]
    fn decisions_print_like_the_logs() {
        assert_eq!(
            Decision::Deny(libc::EIO).to_string(),
            "deny(input/output error)"
        );
        assert_eq!(
            Decision::Delay(Duration::from_millis(500)).to_string(),
            "delay(500ms)"
        );
        assert_eq!(Decision::AllowSystemPath.to_string(), "allow (system path)");
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever the rule parser accepts as a glob compiles, and nothing panics.
        #[test]
        fn accepted_globs_compile(glob in "[/*?{}\\[\\],!^a-c:.\\\\0-9-]{1,40}") {
            let rule = FaultRule {
                target: "openat".into(),
                kind: faultbox_shim::rule::TargetKind::Syscall,
                action: Action::Deny(libc::EIO),
                probability: 100.0,
                path_glob: Some(glob.clone()),
                trigger: Trigger::Always,
                label: None,
            };
            if faultbox_shim::rule::check_glob(&glob).is_ok() {
                prop_assert!(compile(&rule, 0, Arch::X86_64).is_ok(), "{glob}");
            }
        }
    }
}
