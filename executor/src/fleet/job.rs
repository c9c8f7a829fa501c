//! Jobs and the messages between the coordinator and an executor. A job is one run
//! of one test (a matrix cell is a test of its own) with one seed: the unit that is
//! scheduled, run in a slot and reported. The same messages serve an in-process
//! executor and a remote one behind a QUIC link.

use ractor::ActorRef;

use faultbox_spec::world::Event;

use crate::engine::scheduler::Order;
use crate::world::run::TestReport;

/// One run to do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Job {
    /// Unique within a coordinator's run; results are keyed by it.
    pub id: u64,
    /// The test's name, `test_...`.
    pub test: String,
    pub seed: u64,
    /// How `parallel()` orders calls in this run.
    pub order: Order,
    pub virtual_time: bool,
    /// How long the test's body may run, unless the test sets its own limit.
    pub timeout: std::time::Duration,
}

/// What an executor is told.
#[derive(Debug)]
pub enum ExecutorMsg {
    /// Run this job in the slot that asked for work.
    Run(Job),
    /// Stop this job now: its result is no longer wanted.
    Cancel(u64),
    /// The coordinator took one batch of this job's events: the next may go.
    Ack(u64),
    /// A slot's job ended (sent by the executor to itself).
    Finished {
        job: u64,
        report: Box<TestReport>,
        streamed: u64,
    },
}

/// What the coordinator is told.
#[derive(Debug)]
pub enum CoordinatorMsg {
    /// A slot of `executor` is free and wants a job; answered with
    /// [`ExecutorMsg::Run`] when there is one.
    Pull {
        executor: String,
        reply: ActorRef<ExecutorMsg>,
    },
    /// The next batch of `job`'s events, in order, while it runs; answered with
    /// [`ExecutorMsg::Ack`].
    Events {
        executor: String,
        job: u64,
        events: Vec<Event>,
        reply: ActorRef<ExecutorMsg>,
    },
    /// `executor` finished `job`. The report carries no events: they came as
    /// [`CoordinatorMsg::Events`], `streamed` of them.
    Done {
        executor: String,
        job: u64,
        report: Box<TestReport>,
        streamed: u64,
    },
    /// `executor` is gone: its unfinished jobs must run elsewhere.
    Lost { executor: String },
    /// The user interrupted the run: cancel everything and end.
    Interrupt,
}
