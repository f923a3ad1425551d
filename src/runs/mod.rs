//! Runs (API.md, "Runs: resumable streams"): every streamed turn and every task as a run with an
//! ordered, bounded event log that clients can replay and follow. [`log`] is the log itself;
//! the stores and routes that use it are issue 17's next steps.

pub mod log;
