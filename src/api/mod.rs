//! Typed views of Kubernetes API values that more than one layer reads.
//!
//! Owns parsing of the API's small value grammars (resource quantities, cron schedules, CIDRs)
//! into plain Rust numbers, and the compact network views nodes keep ([`network`]). It never
//! touches storage or HTTP: callers hand over the value (a field's text, or for [`network`] the
//! object) and get plain values back.

pub mod cidr;
pub mod cron;
pub mod labels;
pub mod network;
pub mod quantity;
pub mod storage;
