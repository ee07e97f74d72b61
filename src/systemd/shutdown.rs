//! Whether the SIGTERM this process got is the system shutting down rather than its service
//! being stopped or restarted: only then do a node's pods stop with it.
//!
//! Pods outlive a stop of the service (`KillMode=process`), as K3s's do, so an upgrade or a
//! restart never touches them. At a shutdown that leaves their processes to systemd's final
//! kill, which sends SIGTERM once and waits 90 s before SIGKILL — and a container's PID 1
//! without a handler ignores SIGTERM, so every reboot of a board with pods took 90 s longer,
//! and its apps never got their grace period. The manager's own state says which it is:
//! `systemctl is-system-running` prints `stopping` once a shutdown transaction runs.
//!
//! Invariant: anything unclear (not run by systemd, no `systemctl`, no answer within
//! [`ASK_FOR`]) counts as "not shutting down", the answer that keeps pods running.

use std::time::Duration;

/// How long the manager gets to answer; it answers in milliseconds unless it is wedged.
const ASK_FOR: Duration = Duration::from_secs(2);

/// Whether the system is shutting down (or rebooting) now.
pub async fn system_stopping() -> bool {
    // systemd sets INVOCATION_ID for every service it runs; without it no manager of ours is
    // stopping anything.
    if std::env::var_os("INVOCATION_ID").is_none() {
        return false;
    }
    let asked = tokio::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(ASK_FOR, asked).await {
        Ok(Ok(out)) => says_stopping(&out.stdout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "cannot ask systemctl whether the system is stopping");
            false
        }
        Err(_) => {
            tracing::warn!(
                "systemctl is-system-running did not answer within 2 s: leaving the pods running"
            );
            false
        }
    }
}

/// `is-system-running` prints one state word (and exits non-zero for most of them).
fn says_stopping(stdout: &[u8]) -> bool {
    String::from_utf8_lossy(stdout).trim() == "stopping"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stopping_state_is_a_shutdown() {
        assert!(says_stopping(b"stopping\n"));
        for other in [
            &b"running\n"[..],
            b"degraded\n",
            b"starting\n",
            b"maintenance\n",
            b"offline\n",
            b"",
        ] {
            assert!(
                !says_stopping(other),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }
}
