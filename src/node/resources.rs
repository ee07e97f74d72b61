//! What a node has and how much of it pods may use: capacity, kubelet's reservations
//! (`--kube-reserved`, `--system-reserved`, `--eviction-hard`) and the pressure conditions
//! measured against the eviction thresholds.
//!
//! Invariants: allocatable never exceeds capacity nor goes below zero; a pressure condition
//! is reported only from a measurement (a value that cannot be read counts as no pressure,
//! never as pressure); once reported, a condition stays True until no measurement has crossed
//! its threshold for the pressure-transition period ([`Conditions`]), so it does not flap.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};

/// kubelet's default `--eviction-hard` (Linux).
pub const DEFAULT_EVICTION_HARD: &str =
    "memory.available<100Mi,nodefs.available<10%,imagefs.available<15%,nodefs.inodesFree<5%";
/// kubelet's `--eviction-pressure-transition-period` default.
pub const DEFAULT_PRESSURE_TRANSITION: Duration = Duration::from_secs(300);
/// kubelet's `--max-pods` default.
pub const MAX_PODS: u32 = 110;

/// Resources set aside from pods (kube-reserved + system-reserved).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserved {
    pub cpu_milli: u64,
    pub memory: u64,
    pub ephemeral_storage: u64,
    pub pids: u64,
}

/// A hard eviction threshold: an absolute amount or a percentage of capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Threshold {
    Bytes(u64),
    Percent(u8),
}

/// `--eviction-hard`, the signals keelson measures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eviction {
    pub memory_available: Option<Threshold>,
    pub nodefs_available: Option<Threshold>,
    pub pids_available: Option<Threshold>,
}

/// The node's reservations, from its flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservations {
    pub reserved: Reserved,
    pub eviction: Eviction,
}

/// One measurement of the node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub memory_total: u64,
    pub memory_available: u64,
    /// The filesystem holding the data dir (kubelet's nodefs).
    pub nodefs_total: u64,
    pub nodefs_available: u64,
    pub pids_max: u64,
    pub pids_used: u64,
}

/// Which pressure conditions hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pid: bool,
}

/// The node's pressure conditions over time (kubelet's eviction manager keeps them so): a
/// condition turns True at the first measurement past its threshold and turns False only after
/// `transition` without one. IO-free: measurements and the clock come in.
#[derive(Debug, Clone)]
pub struct Conditions {
    transition: Duration,
    /// When each signal (memory, disk, pid) last crossed its threshold.
    last_crossed: [Option<Instant>; 3],
}

impl Conditions {
    pub fn new(transition: Duration) -> Conditions {
        Conditions {
            transition,
            last_crossed: [None; 3],
        }
    }

    /// Takes in the measurement made at `now`; returns the conditions to report.
    pub fn observe(&mut self, measured: Pressure, now: Instant) -> Pressure {
        let crossed = [measured.memory, measured.disk, measured.pid];
        for (last, on) in self.last_crossed.iter_mut().zip(crossed) {
            if on {
                *last = Some(now);
            }
        }
        let holds = |i: usize| {
            self.last_crossed[i].is_some_and(|t| now.saturating_duration_since(t) < self.transition)
                || crossed[i]
        };
        Pressure {
            memory: holds(0),
            disk: holds(1),
            pid: holds(2),
        }
    }
}

/// Parses `cpu=100m,memory=256Mi,ephemeral-storage=1Gi,pid=1000` (kubelet's reserved format).
pub fn parse_reserved(flag: &str, text: &str) -> Result<Reserved, String> {
    let mut out = Reserved::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = part.split_once('=') else {
            return Err(format!(
                "{flag} {part:?}: expected NAME=QUANTITY, e.g. memory=256Mi"
            ));
        };
        let q = crate::api::quantity::parse(v).map_err(|e| format!("{flag} {k}={v:?}: {e}"))?;
        let n = |x: i64| x.max(0) as u64;
        match k {
            "cpu" => out.cpu_milli = n(q.milli()),
            "memory" => out.memory = n(q.value()),
            "ephemeral-storage" => out.ephemeral_storage = n(q.value()),
            "pid" => out.pids = n(q.value()),
            other => {
                return Err(format!(
                    "{flag}: unknown resource {other:?} (cpu, memory, ephemeral-storage, pid)"
                ));
            }
        }
    }
    Ok(out)
}

/// Parses `memory.available<100Mi,nodefs.available<10%` (kubelet's `--eviction-hard`).
/// Signals keelson does not measure (`imagefs.*`, `nodefs.inodesFree`) are accepted and
/// ignored, so kubelet's defaults and K3s configs carry over.
pub fn parse_eviction(text: &str) -> Result<Eviction, String> {
    let mut out = Eviction::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((signal, value)) = part.split_once('<') else {
            return Err(format!(
                "--eviction-hard {part:?}: expected SIGNAL<QUANTITY or SIGNAL<PERCENT%, e.g. memory.available<100Mi"
            ));
        };
        let threshold = match value.strip_suffix('%') {
            Some(p) => match p.parse::<f64>() {
                Ok(p) if (0.0..=100.0).contains(&p) => Threshold::Percent(p.round() as u8),
                _ => {
                    return Err(format!(
                        "--eviction-hard {signal}: {value:?} is not a percentage"
                    ));
                }
            },
            None => Threshold::Bytes(
                crate::api::quantity::parse(value)
                    .map_err(|e| format!("--eviction-hard {signal}<{value:?}: {e}"))?
                    .value()
                    .max(0) as u64,
            ),
        };
        match signal {
            "memory.available" => out.memory_available = Some(threshold),
            "nodefs.available" => out.nodefs_available = Some(threshold),
            "pid.available" => out.pids_available = Some(threshold),
            "imagefs.available" | "nodefs.inodesFree" | "imagefs.inodesFree" => {}
            other => {
                return Err(format!(
                    "--eviction-hard: unknown signal {other:?} (memory.available, nodefs.available, pid.available)"
                ));
            }
        }
    }
    Ok(out)
}

impl Threshold {
    fn bytes_of(self, total: u64) -> u64 {
        match self {
            Threshold::Bytes(b) => b,
            Threshold::Percent(p) => total / 100 * p as u64,
        }
    }
}

impl Usage {
    /// Measures the node now: memory from /proc/meminfo, the data dir's filesystem,
    /// processes against the kernel's pid limit. Unreadable values are 0.
    pub fn measure(data_dir: &Path) -> Usage {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib = |field: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        // The casts are needed where statvfs's counts are 32 bits (armv7).
        #[allow(clippy::unnecessary_cast)]
        let (nodefs_total, nodefs_available) = nix::sys::statvfs::statvfs(data_dir)
            .map(|s| {
                let frag = s.fragment_size() as u64;
                (s.blocks() as u64 * frag, s.blocks_available() as u64 * frag)
            })
            .unwrap_or((0, 0));
        let pids_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        let pids_used = std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_str()
                            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        Usage {
            memory_total: kib("MemTotal:"),
            memory_available: kib("MemAvailable:"),
            nodefs_total,
            nodefs_available,
            pids_max,
            pids_used,
        }
    }

    /// The pressure conditions against `eviction`'s thresholds.
    pub fn pressure(&self, eviction: &Eviction) -> Pressure {
        let under = |available: u64, total: u64, t: Option<Threshold>| {
            total > 0 && t.is_some_and(|t| available < t.bytes_of(total))
        };
        Pressure {
            memory: under(
                self.memory_available,
                self.memory_total,
                eviction.memory_available,
            ),
            disk: under(
                self.nodefs_available,
                self.nodefs_total,
                eviction.nodefs_available,
            ),
            pid: under(
                self.pids_max.saturating_sub(self.pids_used),
                self.pids_max,
                eviction.pids_available,
            ),
        }
    }
}

/// `status.capacity` and `status.allocatable` (kubelet: allocatable = capacity − kube-reserved
/// − system-reserved − the hard eviction threshold).
pub fn capacity_and_allocatable(
    cpus: usize,
    usage: &Usage,
    r: &Reservations,
) -> (serde_json::Value, serde_json::Value) {
    let cpu_milli = cpus as u64 * 1000;
    let hard = |t: Option<Threshold>, total: u64| t.map_or(0, |t| t.bytes_of(total));
    let alloc_cpu = cpu_milli.saturating_sub(r.reserved.cpu_milli);
    let alloc_mem = usage
        .memory_total
        .saturating_sub(r.reserved.memory)
        .saturating_sub(hard(r.eviction.memory_available, usage.memory_total));
    let alloc_disk = usage
        .nodefs_total
        .saturating_sub(r.reserved.ephemeral_storage)
        .saturating_sub(hard(r.eviction.nodefs_available, usage.nodefs_total));
    let capacity = serde_json::json!({
        "cpu": cpus.to_string(),
        "memory": format!("{}Ki", usage.memory_total / 1024),
        "ephemeral-storage": format!("{}Ki", usage.nodefs_total / 1024),
        "pods": MAX_PODS.to_string(),
    });
    let cpu = if alloc_cpu.is_multiple_of(1000) {
        (alloc_cpu / 1000).to_string()
    } else {
        format!("{alloc_cpu}m")
    };
    let allocatable = serde_json::json!({
        "cpu": cpu,
        "memory": format!("{}Ki", alloc_mem / 1024),
        "ephemeral-storage": alloc_disk.to_string(),
        "pods": MAX_PODS.to_string(),
    });
    (capacity, allocatable)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1024 * 1024;

    #[test]
    fn reservations_parse_like_kubelets() {
        let r = parse_reserved(
            "--kube-reserved",
            "cpu=250m, memory=256Mi,ephemeral-storage=1Gi",
        )
        .unwrap();
        assert_eq!(
            (r.cpu_milli, r.memory, r.ephemeral_storage),
            (250, 256 * MI, 1024 * MI)
        );
        assert!(
            parse_reserved("--system-reserved", "gpu=1")
                .unwrap_err()
                .contains("unknown resource")
        );
        assert!(
            parse_reserved("--system-reserved", "memory")
                .unwrap_err()
                .contains("NAME=QUANTITY")
        );
        let e = parse_eviction(DEFAULT_EVICTION_HARD).unwrap();
        assert_eq!(e.memory_available, Some(Threshold::Bytes(100 * MI)));
        assert_eq!(e.nodefs_available, Some(Threshold::Percent(10)));
        assert!(parse_eviction("memory.available>1Gi").is_err());
        assert!(
            parse_eviction("swap.available<1Gi")
                .unwrap_err()
                .contains("unknown signal")
        );
    }

    #[test]
    fn allocatable_subtracts_reservations_and_thresholds() {
        let usage = Usage {
            memory_total: 4096 * MI,
            memory_available: 3000 * MI,
            nodefs_total: 1000 * MI,
            nodefs_available: 500 * MI,
            pids_max: 1000,
            pids_used: 100,
        };
        let r = Reservations {
            reserved: parse_reserved("--kube-reserved", "cpu=500m,memory=512Mi").unwrap(),
            eviction: parse_eviction("memory.available<100Mi,nodefs.available<10%").unwrap(),
        };
        let (cap, alloc) = capacity_and_allocatable(4, &usage, &r);
        assert_eq!(cap["cpu"], "4");
        assert_eq!(alloc["cpu"], "3500m");
        assert_eq!(alloc["memory"], format!("{}Ki", (4096 - 512 - 100) * 1024));
        assert_eq!(alloc["ephemeral-storage"], (900 * MI).to_string());
        assert_eq!(alloc["pods"], "110");
        assert_eq!(usage.pressure(&r.eviction), Pressure::default());
        let tight = Usage {
            memory_available: 50 * MI,
            nodefs_available: 50 * MI,
            ..usage
        };
        let p = tight.pressure(&r.eviction);
        assert!(p.memory && p.disk && !p.pid);
        // A value that could not be read is never pressure.
        assert_eq!(Usage::default().pressure(&r.eviction), Pressure::default());
    }

    #[test]
    fn a_condition_holds_for_the_transition_period() {
        let mut c = Conditions::new(Duration::from_secs(300));
        let t0 = Instant::now();
        let memory = Pressure {
            memory: true,
            ..Pressure::default()
        };
        assert_eq!(c.observe(Pressure::default(), t0), Pressure::default());
        assert_eq!(c.observe(memory, t0), memory);
        // The measurement is back under the threshold: still True for 5 minutes.
        let later = t0 + Duration::from_secs(299);
        assert_eq!(c.observe(Pressure::default(), later), memory);
        assert_eq!(
            c.observe(Pressure::default(), t0 + Duration::from_secs(300)),
            Pressure::default()
        );
        // A zero period reports the measurement as it is.
        let mut now_only = Conditions::new(Duration::ZERO);
        assert_eq!(now_only.observe(memory, t0), memory);
        assert_eq!(
            now_only.observe(Pressure::default(), t0),
            Pressure::default()
        );
    }

    #[test]
    fn the_machine_can_be_measured() {
        let u = Usage::measure(Path::new("/"));
        assert!(
            u.memory_total > 0 && u.nodefs_total > 0 && u.pids_used > 0,
            "{u:?}"
        );
    }
}
