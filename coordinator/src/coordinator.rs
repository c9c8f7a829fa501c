//! The Coordinator actor: owns the whole run. It expands the tests into jobs (test ×
//! seed, or test × ordering under `--explore=all`), hands them to executor slots that
//! ask for work, and merges the results in plan order, whatever order they arrive
//! in. A test stops at its first failing run: its later runs are not started, and
//! those already running are dropped from the report, so the result is the same as
//! running the runs one after another.

use std::collections::{HashMap, VecDeque};

use faultbox_executor::engine::scheduler::{factorial, Order};
use faultbox_executor::fleet::job::{CoordinatorMsg, ExecutorMsg, Job};
use faultbox_executor::world::run::TestReport;
use faultbox_spec::Verdict;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::oneshot;

/// The largest K for which `--explore=all` runs all K! orderings.
pub const MAX_EXPLORE: usize = 8;

/// How runs of a test are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Explore {
    /// One run per seed.
    Seeds,
    /// One run per seed; each must reach `parallel()`.
    Sample,
    /// One run per ordering of the first batch of held calls.
    All,
}

/// What the coordinator is asked to do.
pub struct Plan {
    pub tests: Vec<String>,
    pub seeds: Vec<u64>,
    pub explore: Explore,
    pub virtual_time: bool,
    /// How long a test's body may run (`--timeout`).
    pub timeout: std::time::Duration,
    /// The executors expected to ask for work.
    pub executors: Vec<String>,
}

/// Called with each test's kept runs, in plan order, as soon as all of them are in.
pub type Emit = Box<dyn FnMut(&TestReport) + Send>;

/// What the progress display is told.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Runs that count and are finished, of `total`.
    pub done: u64,
    pub total: u64,
    /// Finished runs that did not pass.
    pub failed: u64,
    /// Events received so far, from every run, as they stream in.
    pub events: u64,
}

/// Called as runs finish and their events arrive.
pub type OnProgress = Box<dyn FnMut(Counts) + Send>;

/// A run and the executor that ran it.
pub struct Ran {
    pub report: TestReport,
    pub executor: String,
}

/// How the run ended.
pub enum Finished {
    /// Every test's kept runs, in plan order.
    Reports(Vec<Ran>),
    /// A problem with the run itself (not a failing test): exit 1.
    Error(String),
    /// Every executor was lost with work left.
    NoExecutor(String),
    /// The user interrupted the run; running jobs were cancelled.
    Interrupted,
}

pub struct CoordinatorArgs {
    pub plan: Plan,
    pub emit: Emit,
    pub progress: OnProgress,
    pub done: oneshot::Sender<Finished>,
}

pub struct Coordinator;

enum RunState {
    Queued,
    Running {
        executor: String,
        job: u64,
        slot: ActorRef<ExecutorMsg>,
    },
    Done {
        report: Box<TestReport>,
        executor: String,
    },
}

struct Run {
    seed: u64,
    order: Order,
    state: RunState,
}

struct TestPlan {
    name: String,
    runs: Vec<Run>,
    /// The index of the first failing run, once known.
    first_fail: Option<usize>,
    /// Under `--explore=all`, whether the first run has told how many orderings exist.
    expanded: bool,
    /// Finished runs among the kept ones, and how many of them failed: kept up to
    /// date so that a message costs the same with 10 runs as with 10,000.
    done: usize,
    failed: usize,
}

impl TestPlan {
    /// The runs that count: all of them, or those up to the first failure.
    fn kept(&self) -> usize {
        self.first_fail.map_or(self.runs.len(), |f| f + 1)
    }

    fn complete(&self) -> bool {
        self.expanded && self.done == self.kept()
    }

    /// Counts the finished runs again, after the kept ones changed.
    fn recount(&mut self) {
        let kept = self.kept();
        let (mut done, mut failed) = (0, 0);
        for run in &self.runs[..kept] {
            if let RunState::Done { report, .. } = &run.state {
                done += 1;
                failed += usize::from(report.verdict != Verdict::Pass);
            }
        }
        (self.done, self.failed) = (done, failed);
    }
}

pub struct CoordinatorState {
    explore: Explore,
    virtual_time: bool,
    timeout: std::time::Duration,
    tests: Vec<TestPlan>,
    /// (test, run) in the order they are handed out.
    queue: VecDeque<(usize, usize)>,
    /// Free slots waiting for work.
    waiting: VecDeque<(String, ActorRef<ExecutorMsg>)>,
    /// Job id → (test, run).
    jobs: HashMap<u64, (usize, usize)>,
    /// Events streamed so far by each running job.
    streams: HashMap<u64, Vec<faultbox_spec::world::Event>>,
    /// Events received in all.
    events: u64,
    next_job: u64,
    emit: Emit,
    progress: OnProgress,
    emitted_upto: usize,
    error: Option<String>,
    /// Executors that have asked for work and are not lost.
    live: std::collections::HashSet<String>,
    no_executor: bool,
    interrupted: bool,
    done: Option<oneshot::Sender<Finished>>,
}

impl Actor for Coordinator {
    type Msg = CoordinatorMsg;
    type State = CoordinatorState;
    type Arguments = CoordinatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        args: CoordinatorArgs,
    ) -> Result<CoordinatorState, ActorProcessingErr> {
        let plan = args.plan;
        let tests: Vec<TestPlan> = plan
            .tests
            .iter()
            .map(|name| {
                let runs = match plan.explore {
                    // The first run tells how many orderings there are.
                    Explore::All => vec![Run {
                        seed: plan.seeds.first().copied().unwrap_or(0),
                        order: Order::Nth(0),
                        state: RunState::Queued,
                    }],
                    _ => plan
                        .seeds
                        .iter()
                        .map(|&s| Run {
                            seed: s,
                            order: Order::Seeded(s),
                            state: RunState::Queued,
                        })
                        .collect(),
                };
                TestPlan {
                    name: name.clone(),
                    runs,
                    first_fail: None,
                    expanded: plan.explore != Explore::All,
                    done: 0,
                    failed: 0,
                }
            })
            .collect();
        let queue = tests
            .iter()
            .enumerate()
            .flat_map(|(t, p)| (0..p.runs.len()).map(move |r| (t, r)))
            .collect();
        let mut state = CoordinatorState {
            explore: plan.explore,
            virtual_time: plan.virtual_time,
            timeout: plan.timeout,
            tests,
            queue,
            waiting: VecDeque::new(),
            jobs: HashMap::new(),
            streams: HashMap::new(),
            events: 0,
            next_job: 0,
            emit: args.emit,
            progress: args.progress,
            emitted_upto: 0,
            error: None,
            live: plan.executors.iter().cloned().collect(),
            no_executor: false,
            interrupted: false,
            done: Some(args.done),
        };
        state.report_progress();
        state.settle(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<CoordinatorMsg>,
        message: CoordinatorMsg,
        state: &mut CoordinatorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CoordinatorMsg::Pull { executor, reply } => {
                state.live.insert(executor.clone());
                state.waiting.push_back((executor, reply));
            }
            CoordinatorMsg::Events {
                job, events, reply, ..
            } => {
                state.events += events.len() as u64;
                if state.jobs.contains_key(&job) {
                    state.streams.entry(job).or_default().extend(events);
                }
                // Taken: the job may send its next batch.
                let _ = reply.cast(ExecutorMsg::Ack(job));
                state.report_progress();
            }
            CoordinatorMsg::Done {
                executor,
                job,
                mut report,
                streamed,
            } => {
                let events = state.streams.remove(&job).unwrap_or_default();
                if let Some((t, r)) = state.jobs.remove(&job) {
                    if events.len() as u64 != streamed {
                        state.error.get_or_insert(format!(
                            "executor {executor}: {} of {streamed} streamed events of {} (seed {}) arrived",
                            events.len(),
                            report.name,
                            report.seed
                        ));
                    }
                    report.events = events;
                    state.finished(t, r, report, executor);
                    state.report_progress();
                }
            }
            CoordinatorMsg::Lost { executor } => state.lost(&executor),
            CoordinatorMsg::Interrupt => {
                state.interrupted = true;
                state.error.get_or_insert("interrupted".into());
                for test in &state.tests {
                    for run in &test.runs {
                        if let RunState::Running { job, slot, .. } = &run.state {
                            let _ = slot.cast(ExecutorMsg::Cancel(*job));
                        }
                    }
                }
            }
        }
        state.settle(&myself);
        Ok(())
    }
}

impl CoordinatorState {
    /// Hands out work, emits what is complete, and ends the run when nothing is left.
    fn settle(&mut self, myself: &ActorRef<CoordinatorMsg>) {
        if self.error.is_some() {
            self.queue.clear();
        }
        while !self.waiting.is_empty() {
            let Some((t, r)) = self.next_queued() else {
                break;
            };
            let (executor, slot) = self.waiting.pop_front().expect("a waiting slot");
            let job = Job {
                id: self.next_job,
                test: self.tests[t].name.clone(),
                seed: self.tests[t].runs[r].seed,
                order: self.tests[t].runs[r].order,
                virtual_time: self.virtual_time,
                timeout: self.timeout,
            };
            self.next_job += 1;
            self.jobs.insert(job.id, (t, r));
            self.tests[t].runs[r].state = RunState::Running {
                executor: executor.clone(),
                job: job.id,
                slot: slot.clone(),
            };
            if slot.cast(ExecutorMsg::Run(job.clone())).is_err() {
                // The slot's executor is gone; the run goes back to the queue.
                self.jobs.remove(&job.id);
                self.tests[t].runs[r].state = RunState::Queued;
                self.queue.push_front((t, r));
            }
        }
        self.emit_complete();
        if self.jobs.is_empty() && self.queue.is_empty() {
            if let Some(done) = self.done.take() {
                let finished = match self.error.take() {
                    Some(_) if self.interrupted => Finished::Interrupted,
                    Some(e) if self.no_executor => Finished::NoExecutor(e),
                    Some(e) => Finished::Error(e),
                    None => Finished::Reports(self.take_reports()),
                };
                let _ = done.send(finished);
                myself.stop(None);
            }
        }
    }

    /// The next queued run still worth doing.
    fn next_queued(&mut self) -> Option<(usize, usize)> {
        while let Some((t, r)) = self.queue.pop_front() {
            if r < self.tests[t].kept() && matches!(self.tests[t].runs[r].state, RunState::Queued) {
                return Some((t, r));
            }
        }
        None
    }

    fn finished(&mut self, t: usize, r: usize, report: Box<TestReport>, executor: String) {
        let failed = report.verdict != Verdict::Pass;
        if r == 0 && self.explore != Explore::Seeds {
            self.check_exploration(t, &report);
        }
        let test = &mut self.tests[t];
        test.runs[r].state = RunState::Done { report, executor };
        if r < test.kept() {
            test.done += 1;
            test.failed += usize::from(failed);
        }
        if failed && test.first_fail.is_none_or(|f| r < f) {
            test.first_fail = Some(r);
            test.recount();
            // Later seeds already running are not wanted any more.
            for run in &test.runs[r + 1..] {
                if let RunState::Running { job, slot, .. } = &run.state {
                    let _ = slot.cast(ExecutorMsg::Cancel(*job));
                }
            }
        }
    }

    /// The first run of an exploration: did it reach `parallel()`, and how many
    /// orderings are there to run?
    fn check_exploration(&mut self, t: usize, report: &TestReport) {
        let name = self.tests[t].name.clone();
        if report.explored.is_none() && report.verdict == Verdict::Pass {
            self.error.get_or_insert(format!(
                "--explore: {name} does not call parallel(), so there is nothing to explore"
            ));
            return;
        }
        if self.explore != Explore::All {
            return;
        }
        let test = &mut self.tests[t];
        test.expanded = true;
        let Some(k) = report.explored else {
            return;
        };
        if k > MAX_EXPLORE {
            self.error.get_or_insert(format!(
                "--explore=all: {name} holds {k} calls at its first ordering decision, {} orderings; use --explore=sample",
                factorial(k)
            ));
            return;
        }
        let seed = test.runs[0].seed;
        let total = factorial(k) as usize;
        for n in 1..total {
            test.runs.push(Run {
                seed,
                order: Order::Nth(n as u64),
                state: RunState::Queued,
            });
        }
        // Ahead of later tests, in order.
        for n in (1..total).rev() {
            self.queue.push_front((t, n));
        }
    }

    /// `executor` is gone: what it was running goes back to the queue, first. With no
    /// executor left, the run ends.
    fn lost(&mut self, executor: &str) {
        self.live.remove(executor);
        self.waiting.retain(|(e, _)| e != executor);
        let mut back = Vec::new();
        self.jobs.retain(|_, &mut (t, r)| {
            let gone = matches!(&self.tests[t].runs[r].state, RunState::Running { executor: e, .. } if e == executor);
            if gone {
                back.push((t, r));
            }
            !gone
        });
        // Their events so far are dropped; the reruns stream their own.
        let jobs = &self.jobs;
        self.streams.retain(|j, _| jobs.contains_key(j));
        back.sort_unstable();
        for &(t, r) in back.iter().rev() {
            self.tests[t].runs[r].state = RunState::Queued;
            self.queue.push_front((t, r));
        }
        if self.live.is_empty() {
            let left = self.queue.len();
            self.no_executor = true;
            self.error.get_or_insert(format!(
                "no executor left: the last one ({executor}) was lost with {left} runs to go"
            ));
        }
    }

    /// Emits every test, in plan order, whose kept runs are all in.
    fn emit_complete(&mut self) {
        while self.emitted_upto < self.tests.len() && self.tests[self.emitted_upto].complete() {
            let test = &mut self.tests[self.emitted_upto];
            let kept = test.kept();
            for run in &test.runs[..kept] {
                if let RunState::Done { report, .. } = &run.state {
                    (self.emit)(report);
                }
            }
            self.emitted_upto += 1;
        }
    }

    fn take_reports(&mut self) -> Vec<Ran> {
        let mut out = Vec::new();
        for test in &mut self.tests {
            let kept = test.kept();
            for run in test.runs.drain(..).take(kept) {
                if let RunState::Done { report, executor } = run.state {
                    out.push(Ran {
                        report: *report,
                        executor,
                    });
                }
            }
        }
        out
    }

    /// Runs that count and events so far, to the progress display. Costs one step
    /// per test, not per run.
    fn report_progress(&mut self) {
        let (mut done, mut total, mut failed) = (0, 0, 0);
        for test in &self.tests {
            total += test.kept() as u64;
            done += test.done as u64;
            failed += test.failed as u64;
        }
        (self.progress)(Counts {
            done,
            total,
            failed,
            events: self.events,
        });
    }
}

/// Starts a Coordinator for `plan`; the receiver gets the result when it is done.
pub async fn start(
    plan: Plan,
    emit: Emit,
    progress: OnProgress,
) -> Result<
    (
        ActorRef<CoordinatorMsg>,
        ractor::concurrency::JoinHandle<()>,
        oneshot::Receiver<Finished>,
    ),
    String,
> {
    let (done, finished) = oneshot::channel();
    let (actor, handle) = Actor::spawn(
        None,
        Coordinator,
        CoordinatorArgs {
            plan,
            emit,
            progress,
            done,
        },
    )
    .await
    .map_err(|e| format!("starting the coordinator: {e}"))?;
    Ok((actor, handle, finished))
}

/// The default number of slots on a host: its CPUs.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The runtime the CLI's async parts run on.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("starting the runtime: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An executor whose jobs end at once: the (test, seed) pairs in `failing` fail,
    /// the others pass; each streams `events` events before its result, which says
    /// `claimed` were streamed.
    struct InstantExecutor;

    struct InstantArgs {
        coordinator: ActorRef<CoordinatorMsg>,
        slots: usize,
        failing: Vec<(&'static str, u64)>,
        events: u64,
        /// How many events each result says were streamed.
        claimed: u64,
    }

    impl Actor for InstantExecutor {
        type Msg = ExecutorMsg;
        type State = InstantArgs;
        type Arguments = InstantArgs;

        async fn pre_start(
            &self,
            myself: ActorRef<ExecutorMsg>,
            args: InstantArgs,
        ) -> Result<InstantArgs, ActorProcessingErr> {
            for _ in 0..args.slots {
                args.coordinator.cast(CoordinatorMsg::Pull {
                    executor: "instant".into(),
                    reply: myself.clone(),
                })?;
            }
            Ok(args)
        }

        async fn handle(
            &self,
            myself: ActorRef<ExecutorMsg>,
            message: ExecutorMsg,
            s: &mut InstantArgs,
        ) -> Result<(), ActorProcessingErr> {
            let ExecutorMsg::Run(job) = message else {
                return Ok(());
            };
            let events = (1..=s.events)
                .map(|seq| faultbox_spec::world::Event {
                    seq,
                    timestamp_ns: 0,
                    service: "svc".into(),
                    kind: "syscall".into(),
                    event_type: "syscall.write".into(),
                    partition_key: "".into(),
                    fields: Default::default(),
                    vector_clock: Default::default(),
                })
                .collect();
            s.coordinator.cast(CoordinatorMsg::Events {
                executor: "instant".into(),
                job: job.id,
                events,
                reply: myself.clone(),
            })?;
            let verdict = if s.failing.contains(&(job.test.as_str(), job.seed)) {
                Verdict::Fail {
                    reason: "seeded".into(),
                    failure_type: faultbox_spec::run::FailureType::Assertion,
                }
            } else {
                Verdict::Pass
            };
            s.coordinator.cast(CoordinatorMsg::Done {
                executor: "instant".into(),
                job: job.id,
                report: Box::new(TestReport::empty(job.test, job.seed, verdict)),
                streamed: s.claimed,
            })?;
            s.coordinator.cast(CoordinatorMsg::Pull {
                executor: "instant".into(),
                reply: myself,
            })?;
            Ok(())
        }
    }

    /// What a plan run against an [`InstantExecutor`] gave: how it ended, the runs
    /// emitted, and every progress update.
    type Outcome = (Finished, Vec<(String, u64)>, Vec<Counts>);

    fn run_plan(seeds: u64, failing: Vec<(&'static str, u64)>, claimed: u64) -> Outcome {
        let rt = runtime().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let told = Arc::new(Mutex::new(Vec::<Counts>::new()));
        let (s2, l2) = (seen.clone(), told.clone());
        let finished = rt.block_on(async move {
            let plan = Plan {
                tests: vec!["test_a".into(), "test_b".into()],
                seeds: (0..seeds).collect(),
                explore: Explore::Seeds,
                virtual_time: false,
                timeout: std::time::Duration::from_secs(60),
                executors: vec!["instant".into()],
            };
            let emit: Emit = Box::new(move |r| s2.lock().unwrap().push((r.name.clone(), r.seed)));
            let progress: OnProgress = Box::new(move |c| l2.lock().unwrap().push(c));
            let (coord, handle, done) = start(plan, emit, progress).await.unwrap();
            let (exec, exec_handle) = Actor::spawn(
                None,
                InstantExecutor,
                InstantArgs {
                    coordinator: coord,
                    slots: 3,
                    failing,
                    events: 5,
                    claimed,
                },
            )
            .await
            .unwrap();
            let finished = done.await.unwrap();
            let _ = handle.await;
            exec.stop(None);
            let _ = exec_handle.await;
            finished
        });
        let seen = seen.lock().unwrap().clone();
        let told = told.lock().unwrap().clone();
        (finished, seen, told)
    }

    #[test]
    fn runs_merge_in_plan_order_and_stop_at_the_first_failure() {
        let (finished, seen, told) = run_plan(20000, vec![("test_a", 7), ("test_a", 9)], 5);
        let Finished::Reports(ran) = finished else {
            panic!("the run did not end with reports");
        };
        // test_a stops at seed 7 (seed 9, running beside it, is dropped); test_b runs
        // every seed. Plan order throughout.
        let expect: Vec<(String, u64)> = (0..=7)
            .map(|s| ("test_a".to_string(), s))
            .chain((0..20000).map(|s| ("test_b".to_string(), s)))
            .collect();
        let got: Vec<(String, u64)> = ran
            .iter()
            .map(|r| (r.report.name.clone(), r.report.seed))
            .collect();
        assert_eq!(got, expect);
        assert_eq!(seen, expect);
        assert!(ran.iter().all(|r| r.report.events.len() == 5));
        // Every update, events included, counts against the whole plan.
        assert!(told.iter().all(|c| c.total >= 20008 && c.done <= c.total));
        let c = *told.last().unwrap();
        assert_eq!((c.done, c.total, c.failed), (20008, 20008, 1));
        assert!(c.events >= 20008 * 5, "{c:?}");
    }

    #[test]
    fn a_result_claiming_events_that_never_came_ends_the_run_with_an_error() {
        let (finished, _, _) = run_plan(3, Vec::new(), 6);
        let Finished::Error(e) = finished else {
            panic!("the run did not end with an error");
        };
        assert!(
            e.contains("executor instant: 5 of 6 streamed events of test_a (seed 0) arrived"),
            "{e}"
        );
    }
}
