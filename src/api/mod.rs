//! Typed views of Kubernetes API values that more than one layer reads.
//!
//! Owns parsing of the API's small value grammars (today: resource quantities) into plain
//! Rust numbers. It never touches storage, HTTP or objects as a whole: callers pick the
//! field out of the `serde_json::Value` and hand over its text.

// Its first caller is the scheduler, called by the scheduling loop (issue 12).
#![allow(dead_code)]

pub mod quantity;
