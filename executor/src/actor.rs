//! The Executor actor: N slots on one host, each running one job at a time in its own
//! sandbox (network namespace, scratch directory). Work is pulled: every free slot
//! asks the coordinator for a job, so fast and slow hosts balance by themselves.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use faultbox_spec::{Loaded, Verdict};
use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::cancel::Cancel;
use crate::job::{CoordinatorMsg, ExecutorMsg, Job};
use crate::testrun::{self, TestOptions, TestReport};

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
    /// The off switches of the jobs running now.
    running: HashMap<u64, Arc<Cancel>>,
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
        for cancel in state.running.values() {
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
                state.running.insert(job.id, cancel.clone());
                let loaded = state.args.loaded.clone();
                let opts = TestOptions {
                    seed: job.seed,
                    shim: state.args.shim.clone(),
                    runtime: state.args.runtime.clone(),
                    virtual_time: job.virtual_time,
                    order: job.order,
                    cancel,
                };
                // A test blocks its thread for its whole run; it gets a thread of its own.
                std::thread::Builder::new()
                    .name(format!("faultbox-job-{}", job.id))
                    .spawn(move || {
                        let report = run_job(&loaded, &job, opts);
                        let _ = myself.cast(ExecutorMsg::Finished {
                            job: job.id,
                            report: Box::new(report),
                        });
                    })?;
            }
            ExecutorMsg::Cancel(job) => {
                if let Some(c) = state.running.get(&job) {
                    c.cancel();
                }
            }
            ExecutorMsg::Finished { job, report } => {
                state.running.remove(&job);
                let coordinator = &state.args.coordinator;
                coordinator.cast(CoordinatorMsg::Done {
                    executor: state.args.name.clone(),
                    job,
                    report,
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
