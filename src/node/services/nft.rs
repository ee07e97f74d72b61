//! Runs an nftables transaction through the `nft` binary (`nft -f -`, Debian's `nftables`).
//!
//! `nft -f` sends a whole file as one netlink batch: the kernel applies all of it or none, so
//! a failed transaction leaves the table exactly as it was. A run is bounded in time; a hung
//! `nft` is killed.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// Longest one transaction may take; a full table of a thousand Services takes well under a
/// second on a small board.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Stderr kept for the error message.
const STDERR_LIMIT: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not retryable until the operator installs nftables.
    #[error(
        "cannot run {binary:?}: {source}; install nftables (Debian: apt install nftables), or pass --disable-kube-proxy to leave Services to another proxy"
    )]
    Missing {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The kernel or nft refused the transaction; nothing of it was applied.
    #[error("nft refused the transaction ({status}): {stderr}")]
    Refused { status: String, stderr: String },
    #[error("nft did not finish within {0:?} and was killed")]
    Timeout(Duration),
    #[error("talking to nft: {0}")]
    Io(#[source] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The `nft` binary to run.
#[derive(Debug, Clone)]
pub struct Nft {
    binary: PathBuf,
}

impl Nft {
    pub fn new(binary: impl Into<PathBuf>) -> Nft {
        Nft {
            binary: binary.into(),
        }
    }

    /// Applies `script` as one transaction.
    pub async fn apply(&self, script: &str) -> Result<()> {
        let mut child = tokio::process::Command::new(&self.binary)
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Missing {
                binary: self.binary.clone(),
                source,
            })?;
        let run = async {
            if let Some(mut stdin) = child.stdin.take() {
                // A refusal can close stdin early; the exit status tells why.
                let _ = stdin.write_all(script.as_bytes()).await;
            }
            child.wait_with_output().await.map_err(Error::Io)
        };
        let out = tokio::time::timeout(TIMEOUT, run)
            .await
            .map_err(|_| Error::Timeout(TIMEOUT))??;
        if out.status.success() {
            return Ok(());
        }
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.len() > STDERR_LIMIT {
            let mut cut = STDERR_LIMIT;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push('…');
        }
        Err(Error::Refused {
            status: out.status.to_string(),
            stderr,
        })
    }
}
