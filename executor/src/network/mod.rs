//! The network between a test's services. Each service runs in a network namespace
//! of its own; for every declared interface, a relay listens inside every other
//! party's namespace (the other services', and the test driver's) at the service's
//! name and, where unambiguous, at `localhost`, and dials the service inside its own
//! namespace. So every way a client can address a service reaches a relay, with no
//! rewriting of anyone's environment, and each relay is one edge (a consumer and an
//! interface): the place where protocol faults act, partitions cut, and traffic is
//! observed.
//!
//! - [`namespace`]: namespaces, and sockets created inside them.
//! - [`sockdiag`]: the sockets left in a namespace, so it can serve another test.
//! - [`plan`]: addresses, the hosts file, and which relays a test has.
//! - [`relay`]: the relays themselves: listeners, connections, the pumps.
//! - [`pump`]: a relayed connection's two directions, framed by its protocol.
//! - [`rules`]: protocol-level rules on the relays, and the decision per request.
//! - [`h2`]: HTTP/2 (gRPC, h2c), terminated by the relay and acted on per stream.

pub mod h2;
pub mod namespace;
pub mod plan;
pub mod pump;
pub mod relay;
pub mod rules;
pub mod sockdiag;
