//! Typed views of Kubernetes API values that more than one layer reads.
//!
//! Owns parsing of the API's small value grammars (resource quantities, cron schedules, CIDRs)
//! into plain Rust numbers. It never touches storage, HTTP or objects as a whole: callers pick the
//! field out of the `serde_json::Value` and hand over its text.

pub mod cidr;
pub mod cron;
pub mod labels;
pub mod quantity;
