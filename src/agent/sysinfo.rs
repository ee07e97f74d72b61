//! What a node reports about itself: OS, kernel, architecture, capacity, addresses.
//!
//! Read from /proc, /etc and uname once at start; missing files give empty fields, never
//! errors, since containers and minimal images lack some of them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemInfo {
    pub os_image: String,
    pub kernel_version: String,
    pub architecture: String,
    pub machine_id: String,
    pub boot_id: String,
    pub cpus: usize,
    pub memory_kib: u64,
    /// Size of the filesystem holding the data dir (0 until measured).
    #[serde(default)]
    pub nodefs_bytes: u64,
}

pub use crate::api::labels::ARCH;

impl SystemInfo {
    pub fn read() -> SystemInfo {
        let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let os_image = os_release
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "Linux".into());
        let kernel_version = nix::sys::utsname::uname()
            .ok()
            .and_then(|u| u.release().to_str().map(str::to_owned))
            .unwrap_or_default();
        let memory_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
            .unwrap_or(0);
        SystemInfo {
            os_image,
            kernel_version,
            architecture: ARCH.to_owned(),
            machine_id: read_trimmed("/etc/machine-id"),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_kib,
            nodefs_bytes: 0,
        }
    }

    /// `status.nodeInfo`.
    pub fn node_info(&self) -> Value {
        json!({
            "architecture": self.architecture,
            "bootID": self.boot_id,
            "containerRuntimeVersion": format!("keelson://{}", env!("CARGO_PKG_VERSION")),
            "kernelVersion": self.kernel_version,
            "kubeProxyVersion": crate::KUBE_VERSION,
            "kubeletVersion": crate::KUBE_VERSION,
            "machineID": self.machine_id,
            "operatingSystem": "linux",
            "osImage": self.os_image,
            "systemUUID": self.machine_id,
        })
    }

    /// `status.capacity` and `status.allocatable` after `reservations`.
    pub fn capacity(&self, reservations: &crate::node::resources::Reservations) -> (Value, Value) {
        let usage = crate::node::resources::Usage {
            memory_total: self.memory_kib * 1024,
            nodefs_total: self.nodefs_bytes,
            ..Default::default()
        };
        crate::node::resources::capacity_and_allocatable(self.cpus, &usage, reservations)
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The node's addresses: the given ones, or those of the interface holding the default
/// route, or any non-loopback address, or loopback as a last resort.
pub fn node_ips(given: &[IpAddr]) -> Vec<IpAddr> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let default_iface = std::fs::read_to_string("/proc/net/route")
        .ok()
        .and_then(|t| {
            t.lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>())
                .find(|f| f.len() > 2 && f[1] == "00000000")
                .and_then(|f| f.first().map(|s| s.to_string()))
        });
    let addrs: Vec<(String, IpAddr)> = nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|ifa| {
                let ip = ifa
                    .address
                    .as_ref()?
                    .as_sockaddr_in()
                    .map(|s| IpAddr::V4(s.ip()))?;
                Some((ifa.interface_name, ip))
            })
            .collect()
        })
        .unwrap_or_default();
    let pick: Vec<IpAddr> = match &default_iface {
        Some(iface) => addrs
            .iter()
            .filter(|(n, _)| n == iface)
            .map(|(_, ip)| *ip)
            .collect(),
        None => Vec::new(),
    };
    if !pick.is_empty() {
        return pick;
    }
    let any: Vec<IpAddr> = addrs
        .iter()
        .map(|(_, ip)| *ip)
        .filter(|ip| !ip.is_loopback())
        .take(1)
        .collect();
    if any.is_empty() {
        vec![IpAddr::from([127, 0, 0, 1])]
    } else {
        any
    }
}
