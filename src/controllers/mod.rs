//! Controllers that must run on exactly one server at a time: the holder of a database lease.
//!
//! [`lease`] elects the holder and fences it; [`node_lifecycle`] is the first controller run
//! under it. Each server runs the election; only the holder's controllers act.

pub mod lease;
pub mod node_lifecycle;
pub mod scheduler;
