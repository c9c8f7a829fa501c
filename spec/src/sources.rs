//! The spec side of event sources: the `stdout()`, `stderr()`, `tail()`, `poll()`,
//! `wal_stream()` and `topic()` constructors a service's `observe=[...]` takes, the
//! decoders they take, and resolving each source against the topology (which
//! interface a `wal_stream` reads, which broker a `topic` names) with file:line
//! errors at load.

use std::time::Duration;

use allocative::Allocative;
use anyhow::{anyhow, bail};
use starlark::environment::GlobalsBuilder;
use starlark::eval::Evaluator;
use starlark::starlark_module;
use starlark::starlark_simple_value;
use starlark::values::list::ListRef;
use starlark::values::{
    starlark_value, NoSerialize, ProvidesStaticType, StarlarkValue, Value, ValueLike,
};

use crate::decode::{Decoder, Pattern};
use crate::model::{Interface, Location, Service, Source, SourceKind};
use crate::runtime::location;
use crate::values::InterfaceRef;

/// A `tail(path=)` prefix for the test's temporary directory, the services' `$TMPDIR`.
pub const TMPDIR: &str = "$TMPDIR/";

/// Shortest `poll(interval=)`: faster polling would be load, not observation.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(10);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// A decoder value (`json_decoder()` ...).
#[derive(Debug, Clone, ProvidesStaticType, NoSerialize, Allocative, derive_more::Display)]
#[display("{}()", _0.name())]
pub struct DecoderValue(#[allocative(skip)] pub Decoder);
starlark_simple_value!(DecoderValue);

#[starlark_value(type = "decoder")]
impl<'v> StarlarkValue<'v> for DecoderValue {}

/// An event source as its constructor built it; `service()` resolves it.
#[derive(Debug, Clone, ProvidesStaticType, NoSerialize, Allocative, derive_more::Display)]
#[display("{}()", _0.kind.event_type())]
pub struct SourceValue(#[allocative(skip)] pub Declared);
starlark_simple_value!(SourceValue);

#[starlark_value(type = "event_source")]
impl<'v> StarlarkValue<'v> for SourceValue {}

/// A source before it knows its service.
#[derive(Debug, Clone)]
pub struct Declared {
    pub kind: DeclaredKind,
    pub decoder: Option<Decoder>,
    pub at: Location,
}

#[derive(Debug, Clone)]
pub enum DeclaredKind {
    Stdout,
    Stderr,
    Tail {
        path: String,
    },
    Poll {
        url: String,
        interval: Duration,
    },
    Wal {
        slot: String,
        tables: Vec<String>,
    },
    Topic {
        broker: Broker,
        topic: String,
        group: Option<String>,
    },
}

impl DeclaredKind {
    fn event_type(&self) -> &'static str {
        match self {
            DeclaredKind::Stdout => "stdout",
            DeclaredKind::Stderr => "stderr",
            DeclaredKind::Tail { .. } => "tail",
            DeclaredKind::Poll { .. } => "poll",
            DeclaredKind::Wal { .. } => "wal_stream",
            DeclaredKind::Topic { .. } => "topic",
        }
    }
}

/// Where a `topic()` reads from, as written.
#[derive(Debug, Clone)]
pub struct Broker {
    /// `kafka` or `nats` from a `kafka://`/`nats://` scheme or an interface reference.
    pub protocol: Option<String>,
    /// A service name; `None` for `localhost`/`127.0.0.1` or no `broker=`: the
    /// observed service itself.
    pub service: Option<String>,
    /// `None` when not written: the service's first Kafka or NATS interface.
    pub port: Option<u16>,
    pub written: String,
}

fn decoder_of(v: Option<Value>, what: &str) -> anyhow::Result<Option<Decoder>> {
    match v {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => v
            .downcast_ref::<DecoderValue>()
            .map(|d| Some(d.0.clone()))
            .ok_or_else(|| {
                anyhow!(
                    "{what}: decoder= must be json_decoder(), logfmt_decoder() or regex_decoder(pattern=), got {}",
                    v.get_type()
                )
            }),
    }
}

fn source(kind: DeclaredKind, decoder: Option<Decoder>, eval: &Evaluator) -> SourceValue {
    SourceValue(Declared {
        kind,
        decoder,
        at: location(eval),
    })
}

/// Parses `broker=`: `HOST:PORT`, `kafka://HOST:PORT`, `nats://HOST[:PORT]`, a bare
/// host, or an interface reference (`kafka.broker`).
fn parse_broker(v: Option<Value>) -> anyhow::Result<Broker> {
    let Some(v) = v.filter(|v| !v.is_none()) else {
        return Ok(Broker {
            protocol: None,
            service: None,
            port: None,
            written: String::new(),
        });
    };
    if let Some(i) = v.downcast_ref::<InterfaceRef>() {
        return Ok(Broker {
            protocol: Some(i.interface.protocol.clone()),
            service: Some(i.service.clone()),
            port: Some(i.interface.port),
            written: format!("{}.{}", i.service, i.interface.name),
        });
    }
    let written = v.unpack_str().ok_or_else(|| {
        anyhow!(
            "topic(): broker= must be an address (\"kafka:9092\", \"nats://localhost:4222\") or an interface, got {}",
            v.get_type()
        )
    })?;
    let (protocol, rest) = match written.split_once("://") {
        Some((scheme @ ("kafka" | "nats"), rest)) => (Some(scheme.to_string()), rest),
        Some((scheme, _)) => {
            bail!("topic(): broker={written:?}: scheme {scheme:?} is not kafka:// or nats://")
        }
        None => (None, written),
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| anyhow!("topic(): broker={written:?}: {p:?} is not a port"))?;
            (h, Some(port))
        }
        None => (rest, None),
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        bail!("topic(): broker={written:?} is not HOST:PORT");
    }
    let service = match host {
        "localhost" | "127.0.0.1" => None,
        name => Some(name.to_string()),
    };
    Ok(Broker {
        protocol,
        service,
        port,
        written: written.to_string(),
    })
}

/// Checks a `poll(url=)`: `http://HOST:PORT/PATH` with a host the observed service's
/// own namespace knows (`localhost` or an IPv4 address).
pub fn check_poll_url(url: &str) -> anyhow::Result<()> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        anyhow!("poll(): url={url:?} must start with http:// (https is not supported)")
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]` alone: the colons are the address's.
        Some((h, p)) if !p.ends_with(']') => (h, Some(p)),
        _ => (authority, None),
    };
    if let Some(p) = port {
        if p.parse::<u16>().ok().filter(|p| *p > 0).is_none() {
            bail!("poll(): url={url:?}: {p:?} is not a port");
        }
    }
    let ipv6 = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok());
    if host != "localhost" && host.parse::<std::net::Ipv4Addr>().is_err() && !ipv6 {
        bail!(
            "poll(): url={url:?}: the host must be localhost or an IP address (the request is made from inside the observed service's network namespace)"
        );
    }
    Ok(())
}

#[starlark_module]
pub fn event_sources(builder: &mut GlobalsBuilder) {
    /// `json_decoder()`: a JSON object per line; its top-level keys are `e.data`.
    fn json_decoder() -> anyhow::Result<DecoderValue> {
        Ok(DecoderValue(Decoder::Json))
    }

    /// `logfmt_decoder()`: `key=value key2="value 2"` pairs.
    fn logfmt_decoder() -> anyhow::Result<DecoderValue> {
        Ok(DecoderValue(Decoder::Logfmt))
    }

    /// `regex_decoder(pattern=)`: the named groups of the first match.
    fn regex_decoder(#[starlark(require = named)] pattern: &str) -> anyhow::Result<DecoderValue> {
        let p = Pattern::new(pattern)
            .map_err(|e| anyhow!("regex_decoder(pattern={pattern:?}): the pattern {e}"))?;
        Ok(DecoderValue(Decoder::Regex(p)))
    }

    /// `stdout(decoder=)`: the service's standard output, a line per event.
    fn stdout<'v>(
        #[starlark(require = named)] decoder: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let d = decoder_of(decoder, "stdout()")?;
        Ok(source(DeclaredKind::Stdout, d, eval))
    }

    /// `stderr(decoder=)`: the service's standard error, a line per event.
    fn stderr<'v>(
        #[starlark(require = named)] decoder: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let d = decoder_of(decoder, "stderr()")?;
        Ok(source(DeclaredKind::Stderr, d, eval))
    }

    /// `tail(path=, decoder=)`: lines appended to a file.
    fn tail<'v>(
        #[starlark(require = pos)] positional: Option<&str>,
        #[starlark(require = named)] path: Option<&str>,
        #[starlark(require = named)] decoder: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let path = match (positional, path) {
            (Some(_), Some(_)) => bail!("tail(): the path is given both positionally and as path="),
            (Some(p), None) | (None, Some(p)) => p,
            (None, None) => bail!("tail(): needs path="),
        };
        if path.is_empty() || path.contains('\0') {
            bail!("tail(): path={path:?} is not a path");
        }
        let d = decoder_of(decoder, "tail()")?;
        Ok(source(
            DeclaredKind::Tail {
                path: path.to_string(),
            },
            d,
            eval,
        ))
    }

    /// `poll(url=, interval=, decoder=)`: GET `url` every `interval` (default 1s).
    fn poll<'v>(
        #[starlark(require = pos)] positional: Option<&str>,
        #[starlark(require = named)] url: Option<&str>,
        #[starlark(require = named)] interval: Option<&str>,
        #[starlark(require = named)] decoder: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let url = match (positional, url) {
            (Some(_), Some(_)) => bail!("poll(): the url is given both positionally and as url="),
            (Some(u), None) | (None, Some(u)) => u,
            (None, None) => bail!("poll(): needs url="),
        };
        check_poll_url(url)?;
        let interval = match interval {
            None => DEFAULT_POLL_INTERVAL,
            Some(i) => faultbox_shim::rule::parse_duration(i)
                .map_err(|e| anyhow!("poll(): interval={i:?}: {e}"))?,
        };
        if interval < MIN_POLL_INTERVAL {
            bail!(
                "poll(): interval={:?} is shorter than {:?}",
                faultbox_shim::rule::format_duration(interval),
                faultbox_shim::rule::format_duration(MIN_POLL_INTERVAL)
            );
        }
        let d = decoder_of(decoder, "poll()")?;
        Ok(source(
            DeclaredKind::Poll {
                url: url.to_string(),
                interval,
            },
            d,
            eval,
        ))
    }

    /// `wal_stream(slot=, tables=)`: PostgreSQL row changes through logical decoding.
    fn wal_stream<'v>(
        #[starlark(require = named)] slot: Option<&str>,
        #[starlark(require = named)] tables: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let slot = slot.unwrap_or("faultbox");
        // PostgreSQL's rule for replication slot names.
        if slot.is_empty()
            || slot.len() > 63
            || !slot
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!("wal_stream(): slot={slot:?} must be 1 to 63 lowercase letters, digits or '_'");
        }
        let tables = match tables {
            None => Vec::new(),
            Some(v) => {
                let list = ListRef::from_value(v).ok_or_else(|| {
                    anyhow!("wal_stream(): tables= must be a list of table names")
                })?;
                let mut out = Vec::new();
                for t in list.iter() {
                    let t = t.unpack_str().ok_or_else(|| {
                        anyhow!("wal_stream(): tables= must be a list of table names")
                    })?;
                    if t.is_empty() || t.contains(['"', ';', '\0']) {
                        bail!("wal_stream(): table {t:?} is not a table name");
                    }
                    out.push(t.to_string());
                }
                out
            }
        };
        Ok(source(
            DeclaredKind::Wal {
                slot: slot.to_string(),
                tables,
            },
            None,
            eval,
        ))
    }

    /// `topic(topic, broker=, group=, decoder=)`: messages of a Kafka topic or NATS
    /// subject. `broker=` defaults to the observed service's own broker interface.
    fn topic<'v>(
        #[starlark(require = pos)] positional: Option<&str>,
        #[starlark(require = named)] topic: Option<&str>,
        #[starlark(require = named)] broker: Option<Value<'v>>,
        #[starlark(require = named)] group: Option<&str>,
        #[starlark(require = named)] decoder: Option<Value<'v>>,
        eval: &mut Evaluator<'v, '_, '_>,
    ) -> anyhow::Result<SourceValue> {
        let name = match (positional, topic) {
            (Some(_), Some(_)) => {
                bail!("topic(): the topic is given both positionally and as topic=")
            }
            (Some(t), None) | (None, Some(t)) => t,
            (None, None) => bail!("topic(): needs topic="),
        };
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            bail!("topic(): topic={name:?} is not a topic or subject name");
        }
        if group.is_some_and(|g| g.is_empty() || g.contains(char::is_whitespace)) {
            bail!(
                "topic(): group={:?} is not a group name",
                group.unwrap_or("")
            );
        }
        let b = parse_broker(broker)?;
        let d = decoder_of(decoder, "topic()")?;
        Ok(source(
            DeclaredKind::Topic {
                broker: b,
                topic: name.to_string(),
                group: group.map(str::to_string),
            },
            d,
            eval,
        ))
    }
}

/// Reads `observe=[...]` for a service of `interfaces`, `container` telling whether
/// it runs in a container. What only the whole topology can tell (another service's
/// broker) is left to [`resolve`].
pub fn observe(
    service: &str,
    v: Value,
    interfaces: &[Interface],
    container: bool,
    home: &std::path::Path,
) -> anyhow::Result<Vec<Source>> {
    let list = ListRef::from_value(v)
        .ok_or_else(|| anyhow!("service {service:?}: observe must be a list of event sources"))?;
    let mut out = Vec::new();
    for item in list.iter() {
        let Some(s) = item.downcast_ref::<SourceValue>() else {
            bail!(
                "service {service:?}: observe= takes event sources (stdout(), stderr(), tail(), poll(), wal_stream(), topic()), got {}",
                item.get_type()
            );
        };
        let d = &s.0;
        let kind = match &d.kind {
            DeclaredKind::Stdout => SourceKind::Stdout,
            DeclaredKind::Stderr => SourceKind::Stderr,
            DeclaredKind::Tail { path } => {
                let p = std::path::Path::new(path.as_str());
                if container && path.starts_with(TMPDIR) {
                    bail!(
                        "{}: service {service:?}: tail(path={path:?}): $TMPDIR is a binary service's; give a container service's path inside the container",
                        d.at
                    );
                }
                let path = if p.is_absolute() || path.starts_with(TMPDIR) {
                    path.clone()
                } else if container {
                    bail!(
                        "{}: service {service:?}: tail(path={path:?}): a container service's path must be absolute (a path inside the container)",
                        d.at
                    );
                } else {
                    home.join(p).to_string_lossy().into_owned()
                };
                SourceKind::Tail { path }
            }
            DeclaredKind::Poll { url, interval } => SourceKind::Poll {
                interval: *interval,
                url: url.clone(),
            },
            DeclaredKind::Wal { slot, tables } => {
                let Some(i) = interfaces.iter().find(|i| i.protocol == "postgres") else {
                    bail!(
                        "{}: service {service:?}: wal_stream() reads PostgreSQL's WAL through a postgres interface, and the service declares none",
                        d.at
                    );
                };
                SourceKind::Wal {
                    slot: slot.clone(),
                    tables: tables.clone(),
                    port: i.port,
                }
            }
            DeclaredKind::Topic {
                broker,
                topic,
                group,
            } => SourceKind::Topic {
                protocol: broker.protocol.clone().unwrap_or_default(),
                service: broker
                    .service
                    .clone()
                    .unwrap_or_else(|| service.to_string()),
                port: broker.port.unwrap_or(0),
                topic: topic.clone(),
                group: group.clone(),
            },
        };
        if out.iter().any(|o: &Source| {
            matches!(
                (&o.kind, &kind),
                (SourceKind::Stdout, SourceKind::Stdout) | (SourceKind::Stderr, SourceKind::Stderr)
            )
        }) {
            bail!(
                "{}: service {service:?}: {}() is observed twice",
                d.at,
                kind.event_type()
            );
        }
        if let SourceKind::Wal { slot, .. } = &kind {
            if out
                .iter()
                .any(|o| matches!(&o.kind, SourceKind::Wal { slot: s, .. } if s == slot))
            {
                bail!(
                    "{}: service {service:?}: two wal_stream() with slot={slot:?}",
                    d.at
                );
            }
        }
        out.push(Source {
            kind,
            decoder: d.decoder.clone(),
            declared_at: d.at.clone(),
        });
    }
    Ok(out)
}

/// Resolves every `topic()` against the whole topology: the broker's service must
/// exist and have a Kafka or NATS interface on the port (or, with no port, exactly
/// one such interface); the protocol is that interface's.
pub fn resolve(services: &mut [Service]) -> Result<(), (Location, String)> {
    let all: Vec<(String, Vec<Interface>)> = services
        .iter()
        .map(|s| (s.name.clone(), s.interfaces.clone()))
        .collect();
    for s in services.iter_mut() {
        for src in &mut s.observe {
            let SourceKind::Topic {
                protocol,
                service,
                port,
                ..
            } = &mut src.kind
            else {
                continue;
            };
            let fail = |m: String| Err((src.declared_at.clone(), m));
            let Some((_, interfaces)) = all.iter().find(|(n, _)| n == service) else {
                let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
                return fail(format!(
                    "service {:?}: topic(): broker service {service:?} is not declared (services: {})",
                    s.name,
                    names.join(", ")
                ));
            };
            let brokers: Vec<&Interface> = interfaces
                .iter()
                .filter(|i| matches!(i.protocol.as_str(), "kafka" | "nats"))
                .filter(|i| *port == 0 || i.port == *port)
                .collect();
            let found = match brokers.as_slice() {
                [one] => *one,
                [] if *port == 0 => {
                    return fail(format!(
                        "service {:?}: topic(): service {service:?} has no kafka or nats interface; give broker= the broker's address",
                        s.name
                    ))
                }
                [] => {
                    return fail(format!(
                        "service {:?}: topic(): service {service:?} has no kafka or nats interface on port {port}",
                        s.name
                    ))
                }
                _ => {
                    return fail(format!(
                        "service {:?}: topic(): service {service:?} has several broker interfaces; name one in broker= (\"{service}:PORT\")",
                        s.name
                    ))
                }
            };
            if !protocol.is_empty() && *protocol != found.protocol {
                return fail(format!(
                    "service {:?}: topic(): broker is {protocol}:// but {service:?} port {} is a {} interface",
                    s.name, found.port, found.protocol
                ));
            }
            *protocol = found.protocol.clone();
            *port = found.port;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_urls_are_http_to_the_services_own_addresses() {
        for ok in [
            "http://localhost:8080/metrics",
            "http://localhost/",
            "http://127.0.0.1:9/x?y=1",
            "http://[::1]:8080/",
            "http://[::1]",
        ] {
            assert!(check_poll_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://localhost/",
            "localhost:8080",
            "http://example.com/",
            "http://localhost:0/",
            "http://localhost:99999/",
            "http://[nope]/",
        ] {
            assert!(check_poll_url(bad).is_err(), "{bad}");
        }
    }
}
