//! The `process_*` figures every Prometheus client exports (memory, CPU, file descriptors,
//! start time), read from `/proc/self` at each scrape; nothing is kept between scrapes.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{gauge, saturating};

/// The collector; a figure `/proc` cannot give (another OS, a hidepid mount) is left out.
#[derive(Debug)]
pub struct Process;

impl Collector for Process {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| Stat::parse(&s));
        let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK);
        let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE);
        if let (Some(stat), Some(ticks)) = (&stat, ticks.filter(|t| *t > 0)) {
            let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
            ConstCounter::new(cpu).encode(enc.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                MetricType::Counter,
            )?)?;
            if let Some(boot) = boot_time() {
                let start = boot as f64 + stat.start_ticks as f64 / ticks as f64;
                ConstGauge::new(start).encode(enc.encode_descriptor(
                    "process_start_time_seconds",
                    "Start time of the process since unix epoch in seconds.",
                    None,
                    MetricType::Gauge,
                )?)?;
            }
        }
        if let Some(stat) = &stat {
            gauge(
                &mut enc,
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                saturating(stat.vsize),
            )?;
            if let Some(page) = page {
                gauge(
                    &mut enc,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    saturating(stat.rss_pages.saturating_mul(page)),
                )?;
            }
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // The directory's own descriptor is among the entries; leave it out.
            let open = fds.count().saturating_sub(1);
            gauge(
                &mut enc,
                "process_open_fds",
                "Number of open file descriptors.",
                saturating(open as u64),
            )?;
        }
        let limit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE);
        if let Ok((soft, _)) = limit {
            // `rlim_t` is narrower than u64 on some 32-bit targets.
            #[allow(clippy::useless_conversion)]
            let soft = u64::from(soft);
            gauge(
                &mut enc,
                "process_max_fds",
                "Maximum number of open file descriptors.",
                saturating(soft),
            )?;
        }
        Ok(())
    }
}

/// The fields of `/proc/self/stat` used here (proc(5)).
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// User and system CPU time, in clock ticks.
    utime: u64,
    stime: u64,
    /// When the process started, in clock ticks after boot.
    start_ticks: u64,
    vsize: u64,
    rss_pages: u64,
}

impl Stat {
    /// Parses the line; `None` if it is not what proc(5) describes. The command name (field
    /// 2) may hold spaces and parentheses, so fields are counted after its last `)`.
    fn parse(line: &str) -> Option<Stat> {
        let (_, rest) = line.rsplit_once(')')?;
        // Field 3 (state) is the first after the name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        Some(Stat {
            utime: field(14)?,
            stime: field(15)?,
            start_ticks: field(22)?,
            vsize: field(23)?,
            rss_pages: field(24)?,
        })
    }
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<u64> {
    nix::unistd::sysconf(var)
        .ok()
        .flatten()
        .and_then(|v| u64::try_from(v).ok())
}

/// Boot time in seconds since the epoch (`btime` of `/proc/stat`).
fn boot_time() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 2000 0 0 0 150 25 0 0 20 0 3 0 98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 150,
                stime: 25,
                start_ticks: 98765,
                vsize: 123456789,
                rss_pages: 2048,
            })
        );
        assert_eq!(Stat::parse("4242 (truncated) S 1"), None);
    }
}
