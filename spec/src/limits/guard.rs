//! When an evaluation must stop. The evaluator asks before every statement and every
//! thousand instructions (loop iterations and calls), so a loop with no host call in
//! it is still stopped; builtins that wait (steps, `assert_eventually`) use
//! [`Guard::left`] so they never wait past the limit.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use starlark::codemap::{FileSpan, FileSpanRef};
use starlark::eval::{BeforeStmtFunc, BeforeStmtFuncDyn, Evaluator};

use super::memory;

/// Why an evaluation was stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// It ran past its time limit.
    Timeout(Duration),
    /// Its run was cancelled (Ctrl-C, SIGTERM, an earlier seed failed).
    Cancelled,
    /// It allocated past its memory budget.
    Memory(usize),
}

impl Stop {
    /// What to tell the user, after `what` ("the test", "the spec's top level").
    pub fn describe(&self, what: &str) -> String {
        match self {
            Stop::Timeout(d) => format!(
                "{what} ran past its time limit of {}",
                faultbox_shim::rule::format_duration(*d)
            ),
            Stop::Cancelled => format!("{what} was cancelled"),
            Stop::Memory(b) => format!(
                "{what} used more than its memory limit of {}",
                memory::describe(*b)
            ),
        }
    }
}

/// The limits one evaluation runs under.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeout: Duration,
    /// Bytes its Starlark may allocate.
    pub memory: usize,
    /// Set from outside to stop it.
    pub cancel: Arc<AtomicBool>,
    /// Set if the evaluating thread was parked for asking too much memory at once.
    pub signal: Arc<memory::Signal>,
}

impl Limits {
    pub fn new(timeout: Duration) -> Limits {
        Limits {
            timeout,
            memory: memory::DEFAULT_BUDGET,
            cancel: Arc::new(AtomicBool::new(false)),
            signal: Arc::default(),
        }
    }
}

/// One evaluation's limits, started: its deadline, the statement it is in, and why
/// it stopped, if it did.
pub struct Guard(Rc<State>);

struct State {
    limits: Limits,
    deadline: Instant,
    stopped: Cell<Option<Stop>>,
    /// The statement being run, for locating a stop: the evaluator's own stop error
    /// carries no location.
    statement: RefCell<Option<FileSpan>>,
}

impl State {
    fn check(&self) -> Option<Stop> {
        if self.stopped.get().is_none() {
            let stop = if self.limits.cancel.load(Ordering::Relaxed) {
                Some(Stop::Cancelled)
            } else if memory::Scope::over() {
                Some(Stop::Memory(self.limits.memory))
            } else if Instant::now() >= self.deadline {
                Some(Stop::Timeout(self.limits.timeout))
            } else {
                None
            };
            self.stopped.set(stop);
        }
        self.stopped.get()
    }
}

/// Runs before every statement: records it, and stops the evaluation there if it
/// must (the evaluator's own check comes only every thousand instructions, which can
/// be seconds of slow statements, or far past a memory budget). The memory budget is
/// looked at every time; the clock and the cancel flag every few statements.
struct Statements {
    state: Rc<State>,
    count: u32,
}

/// Statements between two looks at the clock and the cancel flag.
const CLOCK_EVERY: u32 = 16;

impl<'e> BeforeStmtFuncDyn<'e> for Statements {
    fn call<'v>(
        &mut self,
        span: FileSpanRef,
        _continued: bool,
        _eval: &mut Evaluator<'v, '_, 'e>,
    ) -> starlark::Result<()> {
        *self.state.statement.borrow_mut() = Some(span.to_file_span());
        self.count = self.count.wrapping_add(1);
        if !self.count.is_multiple_of(CLOCK_EVERY) && !memory::Scope::over() {
            return Ok(());
        }
        match self.state.check() {
            Some(stop) => Err(starlark::Error::new_other(anyhow::anyhow!(
                "{}",
                stop.describe("the evaluation")
            ))),
            None => Ok(()),
        }
    }
}

impl Guard {
    /// Starts the clock.
    pub fn start(limits: Limits) -> Guard {
        Guard(Rc::new(State {
            deadline: Instant::now() + limits.timeout,
            limits,
            stopped: Cell::new(None),
            statement: RefCell::new(None),
        }))
    }

    /// Whether the evaluation must stop now; the first reason found is kept.
    pub fn check(&self) -> Option<Stop> {
        self.0.check()
    }

    /// Why the evaluation was stopped, if it was.
    pub fn stopped(&self) -> Option<Stop> {
        self.0.stopped.get()
    }

    /// Time left before the deadline.
    pub fn left(&self) -> Duration {
        self.0.deadline.saturating_duration_since(Instant::now())
    }

    pub fn limits(&self) -> &Limits {
        &self.0.limits
    }

    /// The statement the evaluation was in when it was last checked.
    pub fn statement(&self) -> Option<FileSpan> {
        self.0.statement.borrow().clone()
    }

    /// Makes `eval` stop (with an error) once [`Guard::check`] says so, and follow
    /// the statements it runs. Code compiled by such an evaluator (every function a
    /// spec defines: they are compiled at load) reports its statements to whichever
    /// evaluator later runs it with a guard installed.
    pub fn install(&self, eval: &mut Evaluator<'_, '_, '_>) {
        let state = self.0.clone();
        eval.set_check_cancelled(Box::new(move || state.check().is_some()));
        // The statement hook is public for debuggers only; it is the one way to know
        // where a long loop was when it was stopped.
        eval.before_stmt_for_dap(BeforeStmtFunc::from_dyn(Box::new(Statements {
            state: self.0.clone(),
            count: 0,
        })));
    }
}
