//! IP networks in CIDR notation (`10.42.0.0/16`, `fd00:10:244::/56`) and the arithmetic the
//! node IPAM and the Service allocator need: containment, overlap, the lowest free block of a
//! size, and addresses by their index in a network.
//!
//! Parsing follows Go's `net.ParseCIDR`, which Kubernetes uses for `--cluster-cidr` and
//! `spec.podCIDRs`: the host bits of the address are dropped (`10.42.1.7/16` is
//! `10.42.0.0/16`). Text out is the network address and the prefix, IPv6 in its compressed
//! form, as Go prints it. It owns no policy: which blocks are taken is the caller's.
//!
//! Invariant: a [`Cidr`]'s address has no bits set past its prefix, and the prefix is at
//! most the family's width (32 or 128).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("{0:?} has no /PREFIX")]
    NoPrefix(String),
    #[error("{0:?} is not an IP address")]
    Address(String),
    #[error("{0:?} is not a prefix length")]
    Prefix(String),
    #[error("prefix /{prefix} is longer than {max}")]
    PrefixTooLong { prefix: u8, max: u8 },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An address family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

/// One IP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// Invariant: no bits past `prefix`.
    network: IpAddr,
    /// Invariant: at most [`Family::bits`].
    prefix: u8,
}

// === impl Family ===

impl Family {
    /// Address width in bits.
    pub fn bits(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

// === impl Cidr ===

impl Cidr {
    /// `ADDRESS/PREFIX`; host bits are dropped, as Go's `net.ParseCIDR` does.
    pub fn parse(raw: &str) -> Result<Cidr> {
        let raw = raw.trim();
        let (addr, prefix) = raw
            .split_once('/')
            .ok_or_else(|| Error::NoPrefix(raw.to_owned()))?;
        let addr: IpAddr = addr.parse().map_err(|_| Error::Address(addr.to_owned()))?;
        // Digits only: `u8::from_str` would also take `+24`.
        let prefix: u8 = Some(prefix)
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| Error::Prefix(prefix.to_owned()))?;
        Cidr::new(addr, prefix)
    }

    /// The network of `addr` with `prefix` bits.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr> {
        let family = family_of(addr);
        let max = family.bits();
        if prefix > max {
            return Err(Error::PrefixTooLong { prefix, max });
        }
        Ok(Cidr::from_bits(
            family,
            bits_of(addr) & mask(family, prefix),
            prefix,
        ))
    }

    pub fn family(&self) -> Family {
        family_of(self.network)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether every address of `other` is in `self`.
    pub fn contains(&self, other: &Cidr) -> bool {
        self.family() == other.family()
            && other.prefix >= self.prefix
            && other.first() & mask(self.family(), self.prefix) == self.first()
    }

    /// Whether the two share an address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.contains(other) || other.contains(self)
    }

    /// The lowest block with `prefix` bits inside `self` that overlaps none of `used`; `None`
    /// when every such block is taken (or `prefix` is shorter than `self`'s or too long).
    ///
    /// Used networks may be of any size and need not lie inside `self`; the cost is one sort
    /// of the used networks, whatever the number of blocks (a /8 of /64s included).
    pub fn lowest_free<'a>(
        &self,
        prefix: u8,
        used: impl IntoIterator<Item = &'a Cidr>,
    ) -> Option<Cidr> {
        let family = self.family();
        if prefix < self.prefix || prefix > family.bits() {
            return None;
        }
        let mut taken: Vec<(u128, u128)> = used
            .into_iter()
            .filter(|c| c.overlaps(self))
            .map(|c| (c.first(), c.last()))
            .collect();
        taken.sort_unstable();
        // Block size minus one, so a /0 of IPv6 does not overflow.
        let span = size_minus_one(family, prefix);
        let end = self.last();
        let mut candidate = self.first();
        for (first, last) in taken {
            if first > candidate.checked_add(span)? {
                break;
            }
            if last >= candidate {
                // The next block boundary after `last`; none left if `last` ends the space.
                candidate = last.checked_add(1)?;
                let misaligned = candidate & span;
                if misaligned != 0 {
                    candidate = candidate.checked_add(span - misaligned + 1)?;
                }
            }
        }
        (candidate.checked_add(span)? <= end).then(|| Cidr::from_bits(family, candidate, prefix))
    }

    /// The address `index` places past the network address; `None` past the network's end.
    pub fn nth(&self, index: u128) -> Option<IpAddr> {
        if index > size_minus_one(self.family(), self.prefix) {
            return None;
        }
        let bits = self.first() + index;
        Some(match self.family() {
            // At most 32 bits for V4: the index is within the network.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
        })
    }

    /// How far `addr` lies past the network address; `None` if it is outside the network.
    pub fn index_of(&self, addr: IpAddr) -> Option<u128> {
        (family_of(addr) == self.family()
            && bits_of(addr) & mask(self.family(), self.prefix) == self.first())
        .then(|| bits_of(addr) - self.first())
    }

    fn from_bits(family: Family, bits: u128, prefix: u8) -> Cidr {
        let network = match family {
            // Only called with a value of at most 32 bits for V4.
            Family::V4 => IpAddr::V4(Ipv4Addr::from(bits as u32)),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(bits)),
        };
        Cidr { network, prefix }
    }

    fn first(&self) -> u128 {
        bits_of(self.network)
    }

    fn last(&self) -> u128 {
        self.first() | size_minus_one(self.family(), self.prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// On the wire (the tunnel's frames) a network travels as its text, so a peer never has to
/// trust bits past the prefix: parsing restores the invariant.
impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Cidr, D::Error> {
        let raw = String::deserialize(d)?;
        Cidr::parse(&raw).map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Cidr {
    type Err = Error;

    fn from_str(s: &str) -> Result<Cidr> {
        Cidr::parse(s)
    }
}

fn family_of(addr: IpAddr) -> Family {
    match addr {
        IpAddr::V4(_) => Family::V4,
        IpAddr::V6(_) => Family::V6,
    }
}

fn bits_of(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Addresses in a network of `prefix` bits, minus one (all host bits set).
fn size_minus_one(family: Family, prefix: u8) -> u128 {
    let host_bits = u32::from(family.bits() - prefix);
    if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    }
}

/// The network bits of `prefix` within the family's width.
fn mask(family: Family, prefix: u8) -> u128 {
    let width = if family == Family::V4 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    width & !size_minus_one(family, prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn parsing_drops_host_bits_and_names_what_is_wrong() {
        assert_eq!(c("10.42.1.7/16").to_string(), "10.42.0.0/16");
        assert_eq!(c("fd00:10:244:1:2::/56").to_string(), "fd00:10:244::/56");
        assert_eq!(c("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(c("::/0").to_string(), "::/0");
        assert_eq!(
            Cidr::parse("10.42.0.0"),
            Err(Error::NoPrefix("10.42.0.0".into()))
        );
        assert_eq!(
            Cidr::parse("10.42.0/16"),
            Err(Error::Address("10.42.0".into()))
        );
        assert_eq!(
            Cidr::parse("10.42.0.0/+16"),
            Err(Error::Prefix("+16".into()))
        );
        assert_eq!(
            Cidr::parse("10.42.0.0/33"),
            Err(Error::PrefixTooLong {
                prefix: 33,
                max: 32
            })
        );
        assert!(Cidr::parse("::/129").is_err());
    }

    #[test]
    fn containment_and_overlap() {
        assert!(c("10.42.0.0/16").contains(&c("10.42.3.0/24")));
        assert!(!c("10.42.3.0/24").contains(&c("10.42.0.0/16")));
        assert!(c("10.42.3.0/24").overlaps(&c("10.42.0.0/16")));
        assert!(!c("10.42.0.0/16").overlaps(&c("10.43.0.0/24")));
        assert!(!c("10.42.0.0/16").overlaps(&c("::/0")));
    }

    #[test]
    fn addresses_by_index_and_back() {
        let v6 = c("fd00:43::/112");
        assert_eq!(v6.nth(10), Some("fd00:43::a".parse().unwrap()));
        assert_eq!(v6.nth(0xffff), Some("fd00:43::ffff".parse().unwrap()));
        assert_eq!(v6.nth(0x1_0000), None);
        assert_eq!(v6.index_of("fd00:43::ffff".parse().unwrap()), Some(0xffff));
        assert_eq!(v6.index_of("fd00:43::1:0".parse().unwrap()), None);
        assert_eq!(v6.index_of("10.43.0.1".parse().unwrap()), None);
        let v4 = c("10.43.0.0/16");
        assert_eq!(v4.nth(1), Some("10.43.0.1".parse().unwrap()));
        assert_eq!(v4.index_of("10.43.255.255".parse().unwrap()), Some(0xffff));
        assert_eq!(
            c("::/0").nth(u128::MAX),
            Some("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
    }

    #[test]
    fn the_lowest_free_block_skips_taken_ones_of_any_size() {
        let cluster = c("10.42.0.0/16");
        let free = |used: &[&str]| {
            let used: Vec<Cidr> = used.iter().map(|u| c(u)).collect();
            cluster.lowest_free(24, &used).map(|b| b.to_string())
        };
        assert_eq!(free(&[]).as_deref(), Some("10.42.0.0/24"));
        assert_eq!(
            free(&["10.42.0.0/24", "10.42.2.0/24"]).as_deref(),
            Some("10.42.1.0/24")
        );
        // A smaller block someone set by hand takes its whole /24 out.
        assert_eq!(free(&["10.42.0.128/25"]).as_deref(), Some("10.42.1.0/24"));
        // A larger one takes every /24 inside it; blocks outside the cluster do not count.
        assert_eq!(
            free(&["10.42.0.0/23", "10.99.0.0/24"]).as_deref(),
            Some("10.42.2.0/24")
        );
        assert_eq!(free(&["10.0.0.0/8"]), None);
        assert_eq!(cluster.lowest_free(15, []), None);
        assert_eq!(cluster.lowest_free(33, []), None);
    }

    #[test]
    fn the_last_block_of_the_address_space_is_found_and_nothing_overflows() {
        let top = c("255.255.255.0/24");
        assert_eq!(
            top.lowest_free(25, [&c("255.255.255.0/25")]),
            Some(c("255.255.255.128/25"))
        );
        assert_eq!(top.lowest_free(24, [&c("255.255.255.255/32")]), None);
        let all = c("::/0");
        assert_eq!(all.lowest_free(0, []), Some(all));
        assert_eq!(all.lowest_free(0, [&c("::1/128")]), None);
        assert_eq!(all.lowest_free(1, [&c("::/1")]), Some(c("8000::/1")));
    }
}
