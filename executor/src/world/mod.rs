//! One test, end to end ([`run`]): the `World` its body runs against
//! ([`test_world`]), the step clients ([`steps`]), the event log with vector clocks
//! ([`eventlog`]), and the job's off switch ([`cancel`]).

pub mod cancel;
pub mod eventlog;
pub mod run;
pub mod steps;
pub mod test_world;
