//! Typed views of Kubernetes API values that more than one layer reads.
//!
//! Owns parsing of the API's small value grammars (today: resource quantities) into plain
//! Rust numbers. It never touches storage, HTTP or objects as a whole: callers pick the
//! field out of the `serde_json::Value` and hand over its text.

pub mod quantity;
