//! Layer-4 load balancer (being written).

use crate::cli::LbArgs;

pub async fn standalone(
    _args: LbArgs,
    _stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
