//! What a test does when this machine lacks something it needs (root, a program, a database):
//! it fails, so a missing prerequisite never passes as `ok`. Only an explicit
//! `KEELSON_ALLOW_SKIP=1` turns that into a loud skip, and never under `CI=true`.
//!
//! Standalone (no other harness module), so test files that do not use `common` include it
//! with `#[path = "common/skip.rs"] mod skip;`.

/// Set to `1` to let tests whose prerequisites are missing return early instead of failing.
pub const ALLOW_SKIP: &str = "KEELSON_ALLOW_SKIP";

/// `test` cannot run here because `why`. Panics unless [`ALLOW_SKIP`] is `1` and `CI` is not
/// `true`; then prints a loud line and returns, and the caller returns early.
pub fn missing(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("\n\n!!! {why}\n!!! CI=true: refusing to skip `{test}`\n");
    }
    if !std::env::var(ALLOW_SKIP).is_ok_and(|v| v == "1") {
        panic!(
            "\n\n!!! {why}\n!!! `{test}` cannot run on this machine; set {ALLOW_SKIP}=1 to let it \
             pass as a skip\n"
        );
    }
    eprintln!("\n!!! SKIPPING `{test}` ({ALLOW_SKIP}=1): {why}\n");
}
