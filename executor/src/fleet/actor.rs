//! The Executor actor: N slots on one host, each running one job at a time in its own
//! sandbox (network namespace, scratch directory). Work is pulled: every free slot
//! asks the coordinator for a job, so fast and slow hosts balance by themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use faultbox_spec::{Loaded, Verdict};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::fleet::job::{CoordinatorMsg, ExecutorMsg, Job};
use crate::fleet::stream::EventStream;
use crate::world::cancel::Cancel;
use crate::world::run::{self as testrun, TestOptions, TestReport};

/// What an executor needs to run jobs of one spec.
pub struct ExecutorArgs {
    pub name: String,
    pub slots: usize,
    pub loaded: Arc<Loaded>,
    pub shim: PathBuf,
    pub runtime: tokio::runtime::Handle,
    pub coordinator: ActorRef<CoordinatorMsg>,
}

pub struct Executor;

pub struct ExecutorState {
    args: ExecutorArgs,
    /// The off switches and event streams of the jobs running now.
    running: HashMap<u64, (Arc<Cancel>, Arc<EventStream>)>,
}

impl Actor for Executor {
    type Msg = ExecutorMsg;
    type State = ExecutorState;
    type Arguments = ExecutorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ExecutorMsg>,
        args: ExecutorArgs,
    ) -> Result<ExecutorState, ActorProcessingErr> {
        for _ in 0..args.slots.max(1) {
            args.coordinator.cast(CoordinatorMsg::Pull {
                executor: args.name.clone(),
                reply: myself.clone(),
            })?;
        }
        Ok(ExecutorState {
            args,
            running: HashMap::new(),
        })
    }

    /// An executor that stops (its coordinator is gone) cancels the jobs it runs.
    async fn post_stop(
        &self,
        _myself: ActorRef<ExecutorMsg>,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        for (cancel, _) in state.running.values() {
            cancel.cancel();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<ExecutorMsg>,
        message: ExecutorMsg,
        state: &mut ExecutorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ExecutorMsg::Run(job) => {
                let cancel = Arc::new(Cancel::default());
                let stream = {
                    let coordinator = state.args.coordinator.clone();
                    let (executor, id, me) = (state.args.name.clone(), job.id, myself.clone());
                    EventStream::new(
                        Box::new(move |events| {
                            coordinator
                                .cast(CoordinatorMsg::Events {
                                    executor: executor.clone(),
                                    job: id,
                                    events,
                                    reply: me.clone(),
                                })
                                .is_ok()
                        }),
                        cancel.clone(),
                    )
                };
                stream.tick_on(&state.args.runtime);
                state
                    .running
                    .insert(job.id, (cancel.clone(), stream.clone()));
                let loaded = state.args.loaded.clone();
                let opts = TestOptions {
                    seed: job.seed,
                    shim: state.args.shim.clone(),
                    runtime: state.args.runtime.clone(),
                    virtual_time: job.virtual_time,
                    timeout: job.timeout,
                    order: job.order,
                    cancel,
                    stream: Some(stream.clone()),
                };
                // A test blocks its thread for its whole run; it gets a thread of its own.
                std::thread::Builder::new()
                    .name(format!("faultbox-job-{}", job.id))
                    .spawn(move || {
                        let mut report = run_job(&loaded, &job, opts);
                        // The events went to the coordinator as they happened.
                        let streamed = stream.finish();
                        report.events = Vec::new();
                        let _ = myself.cast(ExecutorMsg::Finished {
                            job: job.id,
                            report: Box::new(report),
                            streamed,
                        });
                    })?;
            }
            ExecutorMsg::Cancel(job) => {
                if let Some((c, _)) = state.running.get(&job) {
                    c.cancel();
                }
            }
            ExecutorMsg::Ack(job) => {
                if let Some((_, s)) = state.running.get(&job) {
                    s.ack();
                }
            }
            ExecutorMsg::Finished {
                job,
                report,
                streamed,
            } => {
                state.running.remove(&job);
                let coordinator = &state.args.coordinator;
                coordinator.cast(CoordinatorMsg::Done {
                    executor: state.args.name.clone(),
                    job,
                    report,
                    streamed,
                })?;
                coordinator.cast(CoordinatorMsg::Pull {
                    executor: state.args.name.clone(),
                    reply: myself,
                })?;
            }
        }
        Ok(())
    }
}

/// Runs one job of `loaded`'s spec on this thread's host.
pub fn run_job(loaded: &Arc<Loaded>, job: &Job, opts: TestOptions) -> TestReport {
    match loaded.spec.tests.iter().find(|t| t.name == job.test) {
        Some(test) => testrun::run_test(loaded.clone(), test.clone(), opts),
        None => TestReport::empty(
            job.test.clone(),
            job.seed,
            Verdict::Fail {
                reason: format!("the spec has no test {}", job.test),
                failure_type: faultbox_spec::run::FailureType::Error,
            },
        ),
    }
}
