//! The node side of keelson: node identity, registration and heartbeats.
//!
//! A server runs its own node through this same code; joining remote agents over the tunnel
//! is a later addition.

pub mod node;
pub mod registration;
pub mod sysinfo;
