//! Protocol-level rules on the relays: which are installed on which interface (for
//! every consumer, or one), and the decision at each request: the first rule whose
//! patterns all match and whose probability roll passes acts. Rolls come from one
//! generator per edge, seeded from the test's seed and the edge, so `--seed` replays
//! each edge's decisions in its order of requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64;

use faultbox_protocols::rules::Pattern;
use faultbox_protocols::FieldView;
use faultbox_spec::world::ProxyRule;

/// An installed rule, ready to match.
#[derive(Debug)]
pub struct Active {
    /// Unique within the test, for its report.
    pub id: usize,
    pub rule: ProxyRule,
    patterns: Vec<(String, Pattern)>,
    /// Requests it acted on.
    pub hits: AtomicU64,
    /// Installed for one consumer (`source=`). Only such a rule acts on what the
    /// server sends that consumer (deliveries): unscoped, a message is acted on
    /// once, where it enters the server, not again on each subscriber's connection.
    pub scoped: bool,
}

impl Active {
    /// `rule` for an interface of `protocol`, whose keys it compares its own way.
    pub fn new(id: usize, protocol: &str, rule: ProxyRule) -> Active {
        let patterns = rule
            .matches
            .iter()
            .map(|(k, p)| (k.clone(), Pattern::for_protocol(protocol, k, p)))
            .collect();
        Active {
            id,
            rule,
            patterns,
            hits: AtomicU64::new(0),
            scoped: false,
        }
    }

    /// The rule, installed for one consumer or not.
    pub fn scoped(mut self, scoped: bool) -> Active {
        self.scoped = scoped;
        self
    }

    /// Whether a request with `fields` matches every pattern (a key the request does
    /// not have never matches).
    pub fn matches(&self, fields: &dyn FieldView) -> bool {
        self.patterns
            .iter()
            .all(|(k, p)| fields.field(k).is_some_and(|v| p.matches(v)))
    }
}

struct Installed {
    handle: u64,
    /// The one consumer it applies to, if scoped.
    source: Option<String>,
    rules: Vec<Arc<Active>>,
}

/// Every protocol-level rule of a test, by (service, interface).
#[derive(Default)]
pub struct Rules {
    seed: u64,
    installed: RwLock<HashMap<(String, String), Vec<Installed>>>,
    /// Bumped after every change to `installed`, so a connection looks its edge's
    /// rules up again only when they may have changed.
    generation: AtomicU64,
    rolls: Mutex<HashMap<(String, String, String), Pcg64>>,
}

/// One edge's rules as a connection last looked them up ([`Rules::for_edge_cached`]).
pub struct EdgeRules {
    generation: u64,
    rules: Vec<Arc<Active>>,
}

impl Default for EdgeRules {
    fn default() -> Self {
        EdgeRules {
            // No generation yet: the first lookup always happens.
            generation: u64::MAX,
            rules: Vec::new(),
        }
    }
}

impl Rules {
    pub fn new(seed: u64) -> Rules {
        Rules {
            seed,
            ..Rules::default()
        }
    }

    pub fn install(
        &self,
        handle: u64,
        service: &str,
        interface: &str,
        source: Option<&str>,
        rules: Vec<Arc<Active>>,
    ) {
        let mut all = self.installed.write().unwrap_or_else(|p| p.into_inner());
        all.entry((service.to_string(), interface.to_string()))
            .or_default()
            .push(Installed {
                handle,
                source: source.map(str::to_string),
                rules,
            });
        self.changed();
    }

    /// Called with the write lock held, after the change: a reader that sees the new
    /// generation then waits for the lock and sees the change.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Removes the rules installed under `handle`; whether there were any.
    pub fn remove(&self, handle: u64) -> bool {
        let mut all = self.installed.write().unwrap_or_else(|p| p.into_inner());
        let mut found = false;
        for list in all.values_mut() {
            let before = list.len();
            list.retain(|i| i.handle != handle);
            found |= list.len() != before;
        }
        self.changed();
        found
    }

    /// Removes every rule of `service`'s `interface`.
    pub fn clear(&self, service: &str, interface: &str) {
        let mut all = self.installed.write().unwrap_or_else(|p| p.into_inner());
        all.remove(&(service.to_string(), interface.to_string()));
        self.changed();
    }

    /// The rules that apply to `consumer`'s connections to `service`'s `interface`,
    /// in the order they were installed.
    pub fn for_edge(&self, consumer: &str, service: &str, interface: &str) -> Vec<Arc<Active>> {
        let all = self.installed.read().unwrap_or_else(|p| p.into_inner());
        all.get(&(service.to_string(), interface.to_string()))
            .into_iter()
            .flatten()
            .filter(|i| i.source.as_deref().is_none_or(|s| s == consumer))
            .flat_map(|i| i.rules.iter().cloned())
            .collect()
    }

    /// [`Rules::for_edge`] through `cache`: one atomic load while nothing was
    /// installed or removed since the last call, which is what a connection pays per
    /// chunk it reads.
    pub fn for_edge_cached<'a>(
        &self,
        consumer: &str,
        service: &str,
        interface: &str,
        cache: &'a mut EdgeRules,
    ) -> &'a [Arc<Active>] {
        let now = self.generation.load(Ordering::Acquire);
        if cache.generation != now {
            cache.rules = self.for_edge(consumer, service, interface);
            cache.generation = now;
        }
        &cache.rules
    }

    /// The rule that acts on a request with `fields` on an edge: the first of `rules`
    /// that matches and whose roll passes. The fields may be a view borrowed from
    /// the request, so that deciding no rule acts copies nothing.
    pub fn decide(
        &self,
        edge: (&str, &str, &str),
        rules: &[Arc<Active>],
        fields: &dyn FieldView,
    ) -> Option<Arc<Active>> {
        for r in rules.iter().filter(|r| r.matches(fields)) {
            if r.rule.probability >= 100.0 || self.roll(edge) < r.rule.probability {
                r.hits.fetch_add(1, Ordering::Relaxed);
                return Some(r.clone());
            }
        }
        None
    }

    /// A roll in [0, 100) from the edge's own generator.
    fn roll(&self, (consumer, service, interface): (&str, &str, &str)) -> f64 {
        let key = (
            consumer.to_string(),
            service.to_string(),
            interface.to_string(),
        );
        let mut rolls = self.rolls.lock().unwrap_or_else(|p| p.into_inner());
        let seed = self.seed ^ fnv(&format!("{consumer}>{service}.{interface}"));
        rolls
            .entry(key)
            .or_insert_with(|| Pcg64::seed_from_u64(seed))
            .random_range(0.0..100.0)
    }
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use faultbox_protocols::Fields;
    use faultbox_spec::world::ProxyAction;

    fn rule(matches: &[(&str, &str)], probability: f64) -> ProxyRule {
        ProxyRule {
            action: ProxyAction::Error {
                message: None,
                status: None,
            },
            matches: matches
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            probability,
            label: None,
        }
    }

    fn fields(pairs: &[(&'static str, &str)]) -> Fields {
        pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn source_scopes_and_the_first_match_acts() {
        let r = Rules::new(1);
        let any = Arc::new(Active::new(
            1,
            "postgres",
            rule(&[("query", "select*")], 100.0),
        ));
        let only_api = Arc::new(Active::new(
            2,
            "postgres",
            rule(&[("query", "INSERT*")], 100.0),
        ));
        r.install(10, "db", "main", None, vec![any.clone()]);
        r.install(11, "db", "main", Some("api"), vec![only_api.clone()]);
        assert_eq!(r.for_edge("worker", "db", "main").len(), 1);
        let rules = r.for_edge("api", "db", "main");
        assert_eq!(rules.len(), 2);
        let edge = ("api", "db", "main");
        let hit = r.decide(
            edge,
            &rules,
            &fields(&[("query", "insert  into t values (1)")]),
        );
        assert_eq!(hit.unwrap().id, 2);
        assert!(r
            .decide(edge, &rules, &fields(&[("query", "update t")]))
            .is_none());
        assert!(r.decide(edge, &rules, &fields(&[("path", "/x")])).is_none());
        assert!(r.remove(11));
        assert_eq!(r.for_edge("api", "db", "main").len(), 1);
        r.clear("db", "main");
        assert!(r.for_edge("api", "db", "main").is_empty());
    }

    #[test]
    fn the_cached_lookup_follows_installs_and_removals() {
        let r = Rules::new(1);
        let mut cache = EdgeRules::default();
        assert!(r
            .for_edge_cached("api", "db", "main", &mut cache)
            .is_empty());
        let one = Arc::new(Active::new(1, "postgres", rule(&[("query", "x*")], 100.0)));
        r.install(10, "db", "main", None, vec![one]);
        assert_eq!(r.for_edge_cached("api", "db", "main", &mut cache).len(), 1);
        r.install(11, "db", "main", Some("worker"), vec![]);
        assert_eq!(r.for_edge_cached("api", "db", "main", &mut cache).len(), 1);
        assert!(r.remove(10));
        assert!(r
            .for_edge_cached("api", "db", "main", &mut cache)
            .is_empty());
        r.install(12, "db", "main", None, vec![]);
        r.clear("db", "main");
        assert!(r
            .for_edge_cached("api", "db", "main", &mut cache)
            .is_empty());
    }

    #[test]
    fn rolls_replay_per_edge() {
        let run = |seed| {
            let r = Rules::new(seed);
            let half = vec![Arc::new(Active::new(1, "postgres", rule(&[], 50.0)))];
            (0..64)
                .map(|_| {
                    r.decide(("api", "db", "main"), &half, &Fields::new())
                        .is_some()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
        let hits = run(5).iter().filter(|h| **h).count();
        assert!((16..=48).contains(&hits), "{hits} of 64");
    }
}
