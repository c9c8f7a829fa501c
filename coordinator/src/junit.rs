//! `--junit FILE`: one testcase per run (test × seed), for CI systems. Each testcase
//! carries its seed and the executor that ran it as properties; tests outside this
//! shard's `--partition` are skipped testcases.

use faultbox_executor::world::run::TestReport;
use faultbox_spec::Verdict;
use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};

/// One entry of the run, as JUnit sees it.
pub enum Entry<'a> {
    Ran {
        report: &'a TestReport,
        executor: &'a str,
    },
    Skipped {
        name: &'a str,
        why: String,
    },
}

/// The JUnit XML document for the runs of `spec`.
pub fn junit(spec: &str, entries: &[Entry<'_>]) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new(spec);
    let mut total = std::time::Duration::ZERO;
    for entry in entries {
        let case = match entry {
            Entry::Ran { report, executor } => {
                let status = match &report.verdict {
                    Verdict::Pass => TestCaseStatus::success(),
                    Verdict::Fail {
                        reason,
                        failure_type,
                    } => {
                        let kind = match failure_type {
                            faultbox_spec::run::FailureType::Assertion
                            | faultbox_spec::run::FailureType::MonitorViolation => {
                                NonSuccessKind::Failure
                            }
                            _ => NonSuccessKind::Error,
                        };
                        let mut s = TestCaseStatus::non_success(kind);
                        s.set_message(reason.as_str())
                            .set_type(failure_type.as_str());
                        s
                    }
                };
                let mut case =
                    TestCase::new(format!("{} seed={}", report.name, report.seed), status);
                case.set_classname(report.name.as_str())
                    .set_time(report.duration)
                    .set_assertions(report.assertions as usize)
                    .add_property(Property::new("seed", report.seed.to_string()))
                    .add_property(Property::new("executor", *executor));
                total += report.duration;
                case
            }
            Entry::Skipped { name, why } => {
                let mut status = TestCaseStatus::skipped();
                status.set_message(why.as_str());
                let mut case = TestCase::new(*name, status);
                case.set_classname(*name);
                case
            }
        };
        suite.add_test_case(case);
    }
    suite.set_time(total);
    let mut report = Report::new("faultbox");
    report.add_test_suite(suite);
    report.to_string()
}
