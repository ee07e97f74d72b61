//! The nftables table `keelson-net`: masquerade of pod traffic that leaves the cluster CIDR,
//! and forward-accept rules for the cluster CIDR.
//!
//! The table is written as one `nft -f -` script that creates, flushes by deletion and
//! re-creates it in a single transaction, so the kernel holds either the old table or the new
//! one, never half of one. It is rewritten only when its text changes.
//!
//! What it does not do: nftables' `accept` ends a packet's walk through one table's chain only;
//! a `drop` policy in another table on the same hook (iptables-nft's `FORWARD` chain, for
//! example) still drops it. The forward rules here help where keelson's table is the only
//! filter, and make the intent visible; a host whose firewall drops forwarded packets must
//! allow the cluster CIDR there.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::api::cidr::{Cidr, Family};

/// The table's name (family `inet`: one table for IPv4 and IPv6).
pub const TABLE: &str = "keelson-net";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot run {nft}: {source}; install nftables (Debian: apt install nftables) for pod masquerade"
    )]
    Missing {
        nft: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nft refused the {TABLE} table: {stderr}")]
    Refused { stderr: String },
}

/// The table's script for `cluster` pod networks and `services` Service networks.
/// Pod → pod and pod → Service traffic keeps its source address; pod → anywhere else leaves
/// with the node's address. Multicast is left alone (flannel does the same).
pub fn script(cluster: &[Cidr], services: &[Cidr]) -> String {
    let mut rules = String::new();
    let mut forward = String::new();
    for family in [Family::V4, Family::V6] {
        let ip = match family {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        };
        let set = |nets: &[Cidr]| {
            let listed: Vec<String> = nets
                .iter()
                .filter(|c| c.family() == family)
                .map(|c| c.to_string())
                .collect();
            (!listed.is_empty()).then(|| format!("{{ {} }}", listed.join(", ")))
        };
        let Some(pods) = set(cluster) else { continue };
        rules.push_str(&format!("\t\t{ip} saddr {pods} {ip} daddr {pods} return\n"));
        if let Some(svcs) = set(services) {
            rules.push_str(&format!("\t\t{ip} saddr {pods} {ip} daddr {svcs} return\n"));
        }
        let multicast = match family {
            Family::V4 => "224.0.0.0/4",
            Family::V6 => "ff00::/8",
        };
        rules.push_str(&format!(
            "\t\t{ip} saddr {pods} {ip} daddr != {multicast} masquerade fully-random\n"
        ));
        forward.push_str(&format!(
            "\t\t{ip} saddr {pods} accept\n\t\t{ip} daddr {pods} accept\n"
        ));
    }
    format!(
        "table inet {TABLE} {{}}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {rules}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         {forward}\
         \t}}\n\
         }}\n"
    )
}

/// Replaces the table with `script` in one transaction.
pub fn apply(nft: &str, script: &str) -> Result<(), Error> {
    run(nft, script)
}

fn run(nft: &str, script: &str) -> Result<(), Error> {
    let missing = |source| Error::Missing {
        nft: nft.to_owned(),
        source,
    };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(missing)?;
    }
    let out = child.wait_with_output().map_err(missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Refused {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidrs(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|c| Cidr::parse(c).unwrap()).collect()
    }

    #[test]
    fn pods_leaving_the_cluster_are_masqueraded_and_nothing_else() {
        let s = script(&cidrs(&["198.19.0.0/17"]), &cidrs(&["198.19.128.0/17"]));
        assert!(s.starts_with("table inet keelson-net {}\ndelete table inet keelson-net\n"));
        let pods = "{ 198.19.0.0/17 }";
        assert!(s.contains(&format!("ip saddr {pods} ip daddr {pods} return")));
        assert!(s.contains(&format!(
            "ip saddr {pods} ip daddr {{ 198.19.128.0/17 }} return"
        )));
        assert!(s.contains(&format!(
            "ip saddr {pods} ip daddr != 224.0.0.0/4 masquerade fully-random"
        )));
        // The returns come before the masquerade.
        assert!(s.find("return").unwrap() < s.find("masquerade").unwrap());
        assert!(s.contains(&format!("ip daddr {pods} accept")));
        assert!(
            !s.contains("ip6"),
            "no IPv6 rules without an IPv6 cluster CIDR"
        );
    }

    #[test]
    fn dual_stack_gets_rules_per_family() {
        let s = script(
            &cidrs(&["10.42.0.0/16", "fd00:42::/56"]),
            &cidrs(&["10.43.0.0/16"]),
        );
        assert!(s.contains("ip6 saddr { fd00:42::/56 } ip6 daddr { fd00:42::/56 } return"));
        assert!(s.contains("ip6 saddr { fd00:42::/56 } ip6 daddr != ff00::/8 masquerade"));
        // No IPv6 Service CIDR: no IPv6 Service exception.
        assert_eq!(s.matches("return").count(), 3);
    }
}
