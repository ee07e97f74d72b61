//! Cluster-wide settings that every server must agree on (`--cluster-cidr`,
//! `--node-cidr-mask-size*`, `--service-cidr`, `--cluster-dns`, `--cluster-domain`,
//! `--disable`, `--secrets-encryption`).
//!
//! The first server records them in the datastore; a later server compares its own and
//! refuses to start on any difference, naming every mismatched flag with both values. K3s
//! only checks this with embedded etcd; with a SQL datastore it silently misbehaves.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSettings {
    pub cluster_cidr: String,
    /// Each pod network's node block size, in `--cluster-cidr` order (`24`, `24,64`). `None`
    /// in settings recorded before it existed: not compared then.
    #[serde(default)]
    pub node_cidr_mask_sizes: Option<String>,
    /// `--flannel-backend`; `None` in settings recorded before it existed: not compared then.
    #[serde(default)]
    pub flannel_backend: Option<String>,
    /// `--service-lb-pool`, normalised; `None` in settings recorded before it existed.
    #[serde(default)]
    pub service_lb_pools: Option<String>,
    /// The `--service-lb-*` timing as `<lease>ms/<deadline>ms/<retry>ms`; `None` in settings
    /// recorded before it existed.
    #[serde(default)]
    pub service_lb_timing: Option<String>,
    pub service_cidr: String,
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub disable: BTreeSet<String>,
    pub secrets_encryption: bool,
}

/// One flag whose value differs from the cluster's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub flag: &'static str,
    pub ours: String,
    pub cluster: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is {:?} here but {:?} in the cluster",
            self.flag, self.ours, self.cluster
        )
    }
}

impl ClusterSettings {
    /// Every flag on which `self` (this server) differs from `cluster` (recorded).
    pub fn mismatches(&self, cluster: &ClusterSettings) -> Vec<Mismatch> {
        let list = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(",");
        let pairs = [
            (
                "--cluster-cidr",
                self.cluster_cidr.clone(),
                cluster.cluster_cidr.clone(),
            ),
            (
                "--service-cidr",
                self.service_cidr.clone(),
                cluster.service_cidr.clone(),
            ),
            (
                "--cluster-dns",
                self.cluster_dns.clone(),
                cluster.cluster_dns.clone(),
            ),
            (
                "--cluster-domain",
                self.cluster_domain.clone(),
                cluster.cluster_domain.clone(),
            ),
            ("--disable", list(&self.disable), list(&cluster.disable)),
            (
                "--secrets-encryption",
                self.secrets_encryption.to_string(),
                cluster.secrets_encryption.to_string(),
            ),
        ];
        let masks = match (&self.node_cidr_mask_sizes, &cluster.node_cidr_mask_sizes) {
            (Some(ours), Some(theirs)) => {
                Some(("--node-cidr-mask-size", ours.clone(), theirs.clone()))
            }
            _ => None,
        };
        let backend = match (&self.flannel_backend, &cluster.flannel_backend) {
            (Some(ours), Some(theirs)) => Some(("--flannel-backend", ours.clone(), theirs.clone())),
            _ => None,
        };
        let pools = match (&self.service_lb_pools, &cluster.service_lb_pools) {
            (Some(ours), Some(theirs)) => Some(("--service-lb-pool", ours.clone(), theirs.clone())),
            _ => None,
        };
        let lb_timing = match (&self.service_lb_timing, &cluster.service_lb_timing) {
            (Some(ours), Some(theirs)) => Some((
                "--service-lb-lease-duration/--service-lb-renew-deadline/--service-lb-retry-period",
                ours.clone(),
                theirs.clone(),
            )),
            _ => None,
        };
        pairs
            .into_iter()
            .chain(masks)
            .chain(backend)
            .chain(pools)
            .chain(lb_timing)
            .filter(|(_, a, b)| a != b)
            .map(|(flag, ours, cluster)| Mismatch {
                flag,
                ours,
                cluster,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ClusterSettings {
        ClusterSettings {
            cluster_cidr: "10.42.0.0/16".into(),
            node_cidr_mask_sizes: Some("24".into()),
            flannel_backend: Some("vxlan".into()),
            service_lb_pools: Some(String::new()),
            service_lb_timing: Some("1000ms/700ms/200ms".into()),
            service_cidr: "10.43.0.0/16".into(),
            cluster_dns: "10.43.0.10".into(),
            cluster_domain: "cluster.local".into(),
            disable: BTreeSet::new(),
            secrets_encryption: false,
        }
    }

    #[test]
    fn every_mismatch_is_named_with_both_values() {
        let mut ours = settings();
        ours.cluster_cidr = "10.52.0.0/16".into();
        ours.disable.insert("traefik".into());
        let m = ours.mismatches(&settings());
        let text: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            vec![
                "--cluster-cidr is \"10.52.0.0/16\" here but \"10.42.0.0/16\" in the cluster",
                "--disable is \"traefik\" here but \"\" in the cluster",
            ]
        );
        assert!(settings().mismatches(&settings()).is_empty());
    }

    #[test]
    fn node_block_sizes_are_compared_once_recorded() {
        let mut ours = settings();
        ours.node_cidr_mask_sizes = Some("26".into());
        let text: Vec<String> = ours
            .mismatches(&settings())
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            text,
            vec!["--node-cidr-mask-size is \"26\" here but \"24\" in the cluster"]
        );
        // Settings recorded by a server that did not know the flag have none to compare.
        let old: ClusterSettings = serde_json::from_str(
            r#"{"cluster_cidr":"10.42.0.0/16","service_cidr":"10.43.0.0/16","cluster_dns":"10.43.0.10","cluster_domain":"cluster.local","disable":[],"secrets_encryption":false}"#,
        )
        .unwrap();
        assert_eq!(old.node_cidr_mask_sizes, None);
        assert!(ours.mismatches(&old).is_empty());
    }
}
