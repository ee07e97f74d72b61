//! The cluster's DNS records, built from the node's network view, and the lookup of one
//! question in them: what CoreDNS's `kubernetes` plugin answers, without IO.
//!
//! Names: `<svc>.<ns>.svc.<domain>` (A/AAAA: the ClusterIPs; headless: every published
//! endpoint address; ExternalName: a CNAME), `<endpoint>.<svc>.<ns>.svc.<domain>` for headless
//! endpoints (the endpoint's hostname, or its address with `-` for `.`/`:`), SRV at
//! `_<port>._<proto>.<svc>.<ns>.svc.<domain>` for named ports, PTR for ClusterIPs and endpoint
//! addresses, and the zone's own SOA/NS (`ns.dns.<domain>` is the server's address).
//!
//! Invariants: owner names are stored lower-case without the final dot, so lookups are
//! case-insensitive; a [`Zone`] is immutable once built (the server swaps whole zones), so a
//! reader never sees half a change; every record carries [`TTL`].

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::api::network::{Protocol, ServiceKind};
use crate::node::network::View;

/// Seconds every answer may be cached: CoreDNS's `kubernetes` plugin default.
pub const TTL: u32 = 5;

/// The records of one cluster domain and the reverse names of its addresses.
#[derive(Debug, Default)]
pub struct Zone {
    /// The cluster domain, lower-case, without the final dot (`cluster.local`).
    domain: String,
    records: HashMap<String, Vec<Data>>,
    /// Names that hold no records but have names below them (`svc.<domain>`, `<ns>.svc.<domain>`):
    /// they exist, so a question about them is NODATA, not NXDOMAIN.
    interior: HashSet<String>,
    /// Address → the names its PTR answers.
    reverse: HashMap<IpAddr, Vec<String>>,
}

/// What one question finds.
#[derive(Debug, PartialEq)]
pub enum Lookup {
    /// Records of the asked type (and the SRV targets' addresses for the additional section).
    Found {
        answers: Vec<Record>,
        additionals: Vec<Record>,
    },
    /// The name exists without records of that type: NOERROR with the SOA.
    NoData,
    /// Inside the cluster domain, and no such name: NXDOMAIN with the SOA.
    NxDomain,
    /// An ExternalName Service: this CNAME, then whatever the target resolves to.
    Alias { cname: Box<Record>, target: Name },
    /// Not ours: for the upstream resolvers.
    Outside,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Data {
    Address(IpAddr),
    Alias(String),
    Service {
        port: u16,
        weight: u16,
        target: String,
    },
}

// === impl Zone ===

impl Zone {
    /// The records the view implies; an empty zone until the view has the cluster settings.
    pub fn build(view: &View) -> Zone {
        let Some(cluster) = &view.cluster else {
            return Zone::default();
        };
        let domain = cluster
            .cluster_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let mut zone = Zone {
            domain: domain.clone(),
            ..Zone::default()
        };
        if let Some(ip) = cluster.cluster_dns {
            zone.add(format!("ns.dns.{domain}"), Data::Address(ip));
        }
        // Slices by the Service they belong to.
        let mut slices: HashMap<(&str, &str), Vec<_>> = HashMap::new();
        for s in view.slices.values() {
            slices
                .entry((s.key.namespace.as_str(), s.service.as_str()))
                .or_default()
                .push(s);
        }
        for svc in view.services.values() {
            let (ns, name) = (&svc.key.namespace, &svc.key.name);
            let base = format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase();
            if let ServiceKind::ExternalName(target) = &svc.kind {
                if !target.is_empty() {
                    zone.add(
                        base,
                        Data::Alias(target.trim_end_matches('.').to_ascii_lowercase()),
                    );
                }
                continue;
            }
            let mine = slices
                .get(&(ns.as_str(), name.as_str()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if !svc.is_headless() {
                for ip in &svc.cluster_ips {
                    zone.add(base.clone(), Data::Address(*ip));
                    zone.reverse.entry(*ip).or_default().push(base.clone());
                }
                for p in svc.ports.iter().filter(|p| !p.name.is_empty()) {
                    zone.add(
                        srv_name(&p.name, p.protocol, &base),
                        Data::Service {
                            port: p.port,
                            weight: 100,
                            target: base.clone(),
                        },
                    );
                }
            }
            for slice in mine {
                for ep in &slice.endpoints {
                    if !(ep.ready || svc.publish_not_ready) {
                        continue;
                    }
                    for ip in &ep.addresses {
                        let label = match &ep.hostname {
                            Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
                            _ => dashed(*ip),
                        };
                        let host = format!("{label}.{base}");
                        zone.reverse.entry(*ip).or_default().push(host.clone());
                        if !svc.is_headless() {
                            continue;
                        }
                        zone.add(base.clone(), Data::Address(*ip));
                        zone.add(host.clone(), Data::Address(*ip));
                        for p in slice.ports.iter().filter(|p| !p.name.is_empty()) {
                            zone.add(
                                srv_name(&p.name, p.protocol, &base),
                                Data::Service {
                                    port: p.port,
                                    weight: 0,
                                    target: host.clone(),
                                },
                            );
                        }
                    }
                }
            }
        }
        zone.finish();
        zone
    }

    /// Looks one question up; `name` is answered with the asker's spelling.
    pub fn lookup(&self, name: &Name, qtype: RecordType) -> Lookup {
        if self.domain.is_empty() {
            return Lookup::Outside;
        }
        let key = key_of(name);
        if is_reverse(&key) {
            return self.lookup_reverse(name, qtype);
        }
        if !(key == self.domain || key.ends_with(&format!(".{}", self.domain))) {
            return Lookup::Outside;
        }
        if key == self.domain && matches!(qtype, RecordType::SOA | RecordType::NS) {
            let record = match qtype {
                RecordType::SOA => self.soa_for(name),
                _ => Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::NS(NS(self.name(&format!("ns.dns.{}", self.domain)))),
                ),
            };
            return Lookup::Found {
                answers: vec![record],
                additionals: vec![],
            };
        }
        let Some(data) = self.records.get(&key) else {
            return if self.interior.contains(&key) || key == self.domain {
                Lookup::NoData
            } else {
                Lookup::NxDomain
            };
        };
        if let Some(Data::Alias(target)) = data.first() {
            return Lookup::Alias {
                cname: Box::new(Record::from_rdata(
                    name.clone(),
                    TTL,
                    RData::CNAME(CNAME(self.name(target))),
                )),
                target: self.name(target),
            };
        }
        let mut answers = Vec::new();
        let mut additionals = Vec::new();
        for d in data {
            let rdata = match (d, qtype) {
                (Data::Address(IpAddr::V4(ip)), RecordType::A | RecordType::ANY) => {
                    RData::A(A(*ip))
                }
                (Data::Address(IpAddr::V6(ip)), RecordType::AAAA | RecordType::ANY) => {
                    RData::AAAA(AAAA(*ip))
                }
                (
                    Data::Service {
                        port,
                        weight,
                        target,
                    },
                    RecordType::SRV | RecordType::ANY,
                ) => {
                    for a in self.records.get(target).into_iter().flatten() {
                        if let Data::Address(ip) = a {
                            additionals.push(Record::from_rdata(
                                self.name(target),
                                TTL,
                                RData::from(*ip),
                            ));
                        }
                    }
                    RData::SRV(SRV::new(0, *weight, *port, self.name(target)))
                }
                _ => continue,
            };
            answers.push(Record::from_rdata(name.clone(), TTL, rdata));
        }
        if answers.is_empty() {
            Lookup::NoData
        } else {
            Lookup::Found {
                answers,
                additionals,
            }
        }
    }

    /// The zone's SOA, for the authority section of NXDOMAIN and NODATA answers.
    pub fn soa(&self) -> Record {
        let apex = self.name(&self.domain);
        self.soa_for(&apex)
    }

    fn soa_for(&self, owner: &Name) -> Record {
        // CoreDNS's values: refresh 7200, retry 1800, expire 86400, minimum = the TTL.
        let soa = SOA::new(
            self.name(&format!("ns.dns.{}", self.domain)),
            self.name(&format!("hostmaster.{}", self.domain)),
            serial(),
            7200,
            1800,
            86400,
            TTL,
        );
        Record::from_rdata(owner.clone(), TTL, RData::SOA(soa))
    }

    fn lookup_reverse(&self, name: &Name, qtype: RecordType) -> Lookup {
        let ip = match name.parse_arpa_name() {
            Ok(net) if net.prefix_len() == net.max_prefix_len() => net.addr(),
            // A partial reverse name, or not a reverse name at all: not ours (K3s's Corefile
            // lets reverse questions fall through to the upstream resolvers too).
            _ => return Lookup::Outside,
        };
        let Some(names) = self.reverse.get(&ip) else {
            return Lookup::Outside;
        };
        if !matches!(qtype, RecordType::PTR | RecordType::ANY) {
            return Lookup::NoData;
        }
        Lookup::Found {
            answers: names
                .iter()
                .map(|n| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(self.name(n)))))
                .collect(),
            additionals: vec![],
        }
    }

    fn add(&mut self, owner: String, data: Data) {
        self.records.entry(owner).or_default().push(data);
    }

    /// Dedupes records and notes every name between an owner and the domain.
    fn finish(&mut self) {
        for data in self.records.values_mut() {
            let mut seen = Vec::with_capacity(data.len());
            data.retain(|d| {
                let new = !seen.contains(d);
                if new {
                    seen.push(d.clone());
                }
                new
            });
        }
        for names in self.reverse.values_mut() {
            names.sort();
            names.dedup();
        }
        let suffix = format!(".{}", self.domain);
        for owner in self.records.keys() {
            let mut rest = owner.as_str();
            while let Some((_, parent)) = rest.split_once('.') {
                if !parent.ends_with(&suffix) {
                    break;
                }
                self.interior.insert(parent.to_owned());
                rest = parent;
            }
        }
    }

    /// A name from our own (valid) parts; falls back to the root, which cannot happen for
    /// names built from Kubernetes' DNS-label object names.
    fn name(&self, text: &str) -> Name {
        Name::from_ascii(format!("{text}.")).unwrap_or_else(|_| Name::root())
    }
}

/// `_<port>._<proto>.<base>`.
fn srv_name(port: &str, protocol: Protocol, base: &str) -> String {
    format!("_{}._{}.{base}", port.to_ascii_lowercase(), protocol.name())
}

/// An endpoint without a hostname is named by its address, `.` and `:` made `-` (CoreDNS).
fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// The lookup key: lower-case, without the final dot.
fn key_of(name: &Name) -> String {
    let mut s = name.to_ascii().to_ascii_lowercase();
    if s.ends_with('.') {
        s.pop();
    }
    s
}

fn is_reverse(key: &str) -> bool {
    key.ends_with(".in-addr.arpa") || key.ends_with(".ip6.arpa")
}

/// The SOA serial: the time, as CoreDNS does (clients only compare it).
fn serial() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(1)
}
