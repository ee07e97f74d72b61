//! Everything keelson does for systemd: the unit files it ships ([`unit`]), the readiness,
//! status and watchdog notifications of a `Type=notify` service ([`notify`]), log lines
//! journald files under the right priority ([`journal`]), and telling a system shutdown from a
//! stop of the service ([`shutdown`]).
//!
//! Each part is inert without systemd; the wiring in `main.rs` decides where they plug in.

pub mod journal;
pub mod notify;
pub mod shutdown;
pub mod unit;

pub use notify::Notify;
pub use unit::{DEFAULT_BIN_DIR, Role, parse_bin_dir, unit};
