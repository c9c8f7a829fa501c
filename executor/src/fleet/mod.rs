//! Jobs and executors: the Executor actor and its slots ([`actor`]), the messages
//! and jobs it exchanges with a coordinator ([`job`], [`stream`]), the QUIC wire and
//! server ([`wire`], [`server`]), events in their compact wire form ([`batch`]),
//! fleet identities and certificate roles ([`identity`]), bundles shipped by content
//! hash ([`bundle`]), and the executor's private work directory ([`workdir`]).

pub mod actor;
pub mod batch;
pub mod bundle;
pub mod identity;
pub mod job;
pub mod server;
pub mod stream;
pub mod wire;
pub mod workdir;
