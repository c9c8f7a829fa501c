//! Who listens where. Every service gets a loopback address of its own
//! (`127.0.1.1`, `127.0.1.2`, ...), which its name resolves to through a generated
//! hosts file; in every other party's namespace (the other services', and the test
//! driver's), a relay listens at that address on each of the service's interface
//! ports, and at `localhost` (`127.0.0.1` and `::1`) on a port only one of the other
//! services declares. A party never gets a relay on a port it declares itself: that
//! port is its own to listen on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use faultbox_spec::model::Spec;

/// The name the test driver goes by as a consumer (its events' `service`).
pub const DRIVER: &str = crate::world::eventlog::DRIVER;

/// One declared interface of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub interface: String,
    pub protocol: String,
    pub port: u16,
}

/// A service's place on the test's network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub address: Ipv4Addr,
    pub ports: Vec<Port>,
}

/// The address plan of one test.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub nodes: Vec<Node>,
}

/// One relay to open: `consumer` reaches `service`'s `port` at `listen`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    /// A service's name, or [`DRIVER`].
    pub consumer: String,
    pub service: String,
    pub port: Port,
    pub listen: Vec<SocketAddr>,
}

/// The loopback address of the `i`th service (from 0), in `127.0.1.0/24` and up.
fn address(i: usize) -> Ipv4Addr {
    let n = i + 1;
    Ipv4Addr::new(127, 0, 1 + (n / 256) as u8, (n % 256) as u8)
}

impl Plan {
    /// The plan for `spec`'s services, in declaration (start) order.
    pub fn new(spec: &Spec) -> Plan {
        Plan {
            nodes: spec
                .services
                .iter()
                .enumerate()
                .map(|(i, s)| Node {
                    name: s.name.clone(),
                    address: address(i),
                    ports: s
                        .interfaces
                        .iter()
                        .map(|f| Port {
                            interface: f.name.clone(),
                            protocol: f.protocol.clone(),
                            port: f.port,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every relay of the test: for each consumer (every service, then the driver),
    /// each interface of every other service, at the addresses above.
    pub fn edges(&self) -> Vec<Edge> {
        let consumers = self
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .chain(std::iter::once(DRIVER));
        let mut out = Vec::new();
        for consumer in consumers {
            let own: Vec<u16> = self
                .node(consumer)
                .map(|n| n.ports.iter().map(|p| p.port).collect())
                .unwrap_or_default();
            for node in self.nodes.iter().filter(|n| n.name != consumer) {
                for port in &node.ports {
                    if own.contains(&port.port) {
                        continue;
                    }
                    let mut listen = vec![SocketAddr::new(IpAddr::V4(node.address), port.port)];
                    let others_on_port = self
                        .nodes
                        .iter()
                        .filter(|n| {
                            n.name != consumer && n.ports.iter().any(|p| p.port == port.port)
                        })
                        .count();
                    if others_on_port == 1 {
                        listen.push(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port.port));
                        listen.push(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port.port));
                    }
                    out.push(Edge {
                        consumer: consumer.to_string(),
                        service: node.name.clone(),
                        port: port.clone(),
                        listen,
                    });
                }
            }
        }
        out
    }

    /// The hosts file every service sees: `localhost`, and each service's name at its
    /// address.
    pub fn hosts(&self) -> String {
        let mut s =
            String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
        for n in &self.nodes {
            s.push_str(&format!("{}\t{}\n", n.address, n.name));
        }
        s
    }

    /// The service (and its interface) a consumer reaches at `addr`, a connect
    /// address as the supervisor reads it (`127.0.1.2:5432`, `[::1]:80`).
    pub fn reached(&self, consumer: &str, addr: &str) -> Option<(&Node, &Port)> {
        let addr: SocketAddr = addr.parse().ok()?;
        let edge = self
            .edges()
            .into_iter()
            .find(|e| e.consumer == consumer && e.listen.contains(&addr))?;
        let node = self.node(&edge.service)?;
        let port = node
            .ports
            .iter()
            .find(|p| p.interface == edge.port.interface)?;
        Some((node, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(services: &[(&str, &[u16])]) -> Plan {
        Plan {
            nodes: services
                .iter()
                .enumerate()
                .map(|(i, (name, ports))| Node {
                    name: name.to_string(),
                    address: address(i),
                    ports: ports
                        .iter()
                        .map(|p| Port {
                            interface: format!("p{p}"),
                            protocol: "tcp".into(),
                            port: *p,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    #[test]
    fn every_other_party_reaches_each_interface_by_name_and_localhost() {
        let p = plan(&[("db", &[5432]), ("api", &[8080])]);
        let edges = p.edges();
        let api_to_db = edges
            .iter()
            .find(|e| e.consumer == "api" && e.service == "db")
            .unwrap();
        assert_eq!(
            api_to_db.listen,
            [
                "127.0.1.1:5432".parse().unwrap(),
                "127.0.0.1:5432".parse().unwrap(),
                "[::1]:5432".parse().unwrap()
            ]
        );
        assert!(edges
            .iter()
            .any(|e| e.consumer == DRIVER && e.service == "api"));
        assert!(!edges.iter().any(|e| e.consumer == e.service));
        assert_eq!(edges.len(), 4, "db→api, api→db, driver→db, driver→api");
        assert_eq!(
            p.hosts()
                .lines()
                .filter(|l| l.starts_with("127.0.1."))
                .collect::<Vec<_>>(),
            ["127.0.1.1\tdb", "127.0.1.2\tapi"]
        );
        let (node, port) = p.reached("api", "127.0.0.1:5432").unwrap();
        assert_eq!((node.name.as_str(), port.port), ("db", 5432));
        assert_eq!(p.reached("api", "127.0.1.1:5432").unwrap().0.name, "db");
        assert!(p.reached("api", "127.0.0.1:9999").is_none());
    }

    #[test]
    fn a_shared_port_is_reached_by_name_and_never_taken_from_its_owner() {
        let p = plan(&[("a", &[5432]), ("b", &[5432]), ("c", &[80])]);
        let edges = p.edges();
        let c_to_a = edges
            .iter()
            .find(|e| e.consumer == "c" && e.service == "a")
            .unwrap();
        assert_eq!(
            c_to_a.listen,
            ["127.0.1.1:5432".parse().unwrap()],
            "localhost:5432 is ambiguous for c"
        );
        assert!(
            !edges.iter().any(|e| e.consumer == "a" && e.service == "b"),
            "a listens on 5432 itself"
        );
        assert_eq!(address(255), Ipv4Addr::new(127, 0, 2, 0));
    }
}
