//! The node's claims on LoadBalancer addresses, as an IO-free state machine: which renewals to
//! send, and when an address is held. The driver ([`super::Holder`]) feeds it the addresses
//! this node is a candidate for, the server's grants and the time, and carries out the
//! [`Action`]s it returns.
//!
//! Fencing, as for the controllers' lease ([`crate::controllers::lease`]), with the tunnel in
//! between: the node notes its monotonic clock *before* each renewal leaves, and holds the
//! address only until that instant plus [`Timing::renew_deadline`] for the newest renewal the
//! server granted. The server dates the lease from its compare-and-swap on the database's
//! clock, which happens later, so the lease still has `lease − renew_deadline` to run for the
//! standby when the node lets go. A late or lost grant can only shorten the hold; a node cut
//! off from its server lets go by itself.
//!
//! Invariants: an address is held only while `now < until`; a grant counts only for a
//! renewal still outstanding (an unknown `seq` is ignored), and it retires every older one, so
//! grants never move `until` backwards from a newer one's; at most [`MAX_OUTSTANDING`]
//! renewals per address are outstanding.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Renewals of one address awaiting a grant; older ones are forgotten (their grants ignored).
pub const MAX_OUTSTANDING: usize = 4;

/// How long a lease lasts, when its holder must have renewed, and how often nodes try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a lease lasts without renewal, by the database's clock.
    pub lease: Duration,
    /// A holder whose newest granted renewal left this long ago lets the address go.
    pub renew_deadline: Duration,
    /// How often the holder renews and a candidate tries to take over.
    pub retry: Duration,
}

impl From<crate::api::network::LbTiming> for Timing {
    fn from(t: crate::api::network::LbTiming) -> Timing {
        Timing {
            lease: Duration::from_millis(t.lease_ms.into()),
            renew_deadline: Duration::from_millis(t.renew_deadline_ms.into()),
            retry: Duration::from_millis(t.retry_ms.into()),
        }
    }
}

/// What a node asks of its server about one address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Take or renew the lease on `address`; answered by a [`Grant`] with the same `seq`.
    Renew { address: IpAddr, seq: u64 },
    /// This node no longer answers for `address` (sent only after it removed it): release
    /// the lease so the standby need not wait for it to expire.
    Release { address: IpAddr },
}

/// The server's answer to [`Request::Renew`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub address: IpAddr,
    pub seq: u64,
    /// The node holds the lease now (taken or renewed).
    pub held: bool,
    /// The lease's epoch when `held`: grows by one with every new holder.
    pub epoch: i64,
}

/// What the driver must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Request),
    /// Add and announce the address: this node holds it with `epoch`.
    Take {
        address: IpAddr,
        epoch: i64,
    },
    /// Remove the address at once and stop announcing it.
    LetGo {
        address: IpAddr,
        why: LetGo,
    },
}

/// Why an address was let go, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LetGo {
    /// No renewal was granted in time (the tunnel or the database is slow or gone).
    Deadline,
    /// The server said someone else holds the lease.
    Lost,
    /// This node is no longer a candidate, or the address no longer belongs to a Service.
    NotCandidate,
    /// The node is stopping.
    Shutdown,
}

/// Every address this node contends for or holds.
#[derive(Debug)]
pub struct Claims {
    timing: Timing,
    claims: BTreeMap<IpAddr, Claim>,
    /// The last `seq` used, for any address.
    seq: u64,
}

#[derive(Debug, Default)]
struct Claim {
    /// Renewals sent and not yet answered, oldest first, with the instant each left.
    /// Invariant: at most [`MAX_OUTSTANDING`] long, `seq`s increasing.
    outstanding: VecDeque<(u64, Instant)>,
    last_sent: Option<Instant>,
    /// Set while this node holds the address. Invariant: `until > now` whenever the driver
    /// acts on it; [`Claims::step`] lets go once it passes.
    held: Option<Held>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    epoch: i64,
    /// The instant before the newest granted renewal left, plus the renew deadline.
    until: Instant,
}

// === impl LetGo ===

impl LetGo {
    pub fn reason(self) -> &'static str {
        match self {
            LetGo::Deadline => "no renewal was granted before the renew deadline",
            LetGo::Lost => "another node holds the lease",
            LetGo::NotCandidate => "this node is no longer a candidate for the address",
            LetGo::Shutdown => "shutting down",
        }
    }
}

// === impl Claims ===

impl Claims {
    /// The timing changed (the servers restarted with other `--service-lb-*` flags): what is
    /// held keeps its deadlines; the next renewals and tries follow the new timing.
    pub fn set_timing(&mut self, timing: Timing) {
        self.timing = timing;
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn new(timing: Timing) -> Claims {
        Claims {
            timing,
            claims: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Whether this node holds `address` now.
    #[cfg(test)]
    pub fn holds(&self, address: IpAddr) -> bool {
        self.claims.get(&address).is_some_and(|c| c.held.is_some())
    }

    /// The addresses held now.
    #[cfg(test)]
    pub fn held(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.claims
            .iter()
            .filter(|(_, c)| c.held.is_some())
            .map(|(a, _)| *a)
    }

    /// Brings the claims in line with `wanted` (the addresses this node is a candidate for)
    /// at `now`: lets go of what passed its deadline or is no longer wanted, and sends the
    /// renewals that are due.
    pub fn step(&mut self, wanted: &BTreeSet<IpAddr>, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        let dropped: Vec<IpAddr> = self
            .claims
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        for address in dropped {
            if let Some(claim) = self.claims.remove(&address) {
                if claim.held.is_some() {
                    actions.push(Action::LetGo {
                        address,
                        why: LetGo::NotCandidate,
                    });
                }
                // A renewal in flight may take the lease for us after all: release it too.
                if claim.held.is_some() || !claim.outstanding.is_empty() {
                    actions.push(Action::Send(Request::Release { address }));
                }
            }
        }
        for &address in wanted {
            let claim = self.claims.entry(address).or_default();
            if claim.held.is_some_and(|h| now >= h.until) {
                claim.held = None;
                actions.push(Action::LetGo {
                    address,
                    why: LetGo::Deadline,
                });
            }
            if claim
                .last_sent
                .is_none_or(|at| now >= at + self.timing.retry)
            {
                self.seq += 1;
                if claim.outstanding.len() == MAX_OUTSTANDING {
                    claim.outstanding.pop_front();
                }
                claim.outstanding.push_back((self.seq, now));
                claim.last_sent = Some(now);
                actions.push(Action::Send(Request::Renew {
                    address,
                    seq: self.seq,
                }));
            }
        }
        actions
    }

    /// Applies the server's answer to a renewal.
    pub fn grant(&mut self, g: Grant, now: Instant) -> Vec<Action> {
        let Some(claim) = self.claims.get_mut(&g.address) else {
            tracing::debug!(address = %g.address, seq = g.seq, "a grant for an address this node no longer claims; ignored");
            return Vec::new();
        };
        let Some(pos) = claim.outstanding.iter().position(|(s, _)| *s == g.seq) else {
            tracing::debug!(address = %g.address, seq = g.seq, "a grant for a renewal that is not outstanding; ignored");
            return Vec::new();
        };
        let (_, sent) = claim.outstanding[pos];
        // Grants come back in the order renewals left: older ones will not be answered now.
        claim.outstanding.drain(..=pos);
        let address = g.address;
        if !g.held {
            return match claim.held.take() {
                Some(_) => vec![Action::LetGo {
                    address,
                    why: LetGo::Lost,
                }],
                None => Vec::new(),
            };
        }
        let until = sent + self.timing.renew_deadline;
        if until <= now {
            // Too late to count: the deadline it would give has passed already.
            return match claim.held.take() {
                Some(_) => vec![Action::LetGo {
                    address,
                    why: LetGo::Deadline,
                }],
                None => Vec::new(),
            };
        }
        match &mut claim.held {
            Some(h) if h.epoch == g.epoch => {
                h.until = h.until.max(until);
                Vec::new()
            }
            held => {
                // A different epoch while holding means the lease changed hands in between:
                // what this node announced under the old epoch is stale, so it takes the
                // address afresh (its announcements start again).
                let mut actions = Vec::new();
                if held.is_some() {
                    actions.push(Action::LetGo {
                        address,
                        why: LetGo::Lost,
                    });
                }
                *held = Some(Held {
                    epoch: g.epoch,
                    until,
                });
                actions.push(Action::Take {
                    address,
                    epoch: g.epoch,
                });
                actions
            }
        }
    }

    /// When [`Claims::step`] next has something to do.
    pub fn next_wake(&self) -> Option<Instant> {
        self.claims
            .values()
            .flat_map(|c| {
                let renew = c.last_sent.map(|at| at + self.timing.retry);
                let deadline = c.held.map(|h| h.until);
                [renew, deadline]
            })
            .flatten()
            .min()
    }

    /// Lets everything go: every address is removed, then every lease released.
    pub fn shutdown(&mut self) -> Vec<Action> {
        let claims = std::mem::take(&mut self.claims);
        let mut lets_go = Vec::new();
        let mut releases = Vec::new();
        for (address, claim) in claims {
            if claim.held.is_some() {
                lets_go.push(Action::LetGo {
                    address,
                    why: LetGo::Shutdown,
                });
            }
            if claim.held.is_some() || !claim.outstanding.is_empty() {
                releases.push(Action::Send(Request::Release { address }));
            }
        }
        lets_go.extend(releases);
        lets_go
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        lease: Duration::from_millis(1000),
        renew_deadline: Duration::from_millis(700),
        retry: Duration::from_millis(200),
    };

    fn ip() -> IpAddr {
        "198.18.3.10".parse().unwrap()
    }

    fn wanted() -> BTreeSet<IpAddr> {
        [ip()].into()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The `seq` of the one renewal in `actions`.
    fn renewal(actions: &[Action]) -> u64 {
        let seqs: Vec<u64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Request::Renew { seq, .. }) => Some(*seq),
                _ => None,
            })
            .collect();
        assert_eq!(seqs.len(), 1, "{actions:?}");
        seqs[0]
    }

    fn granted(seq: u64, epoch: i64) -> Grant {
        Grant {
            address: ip(),
            seq,
            held: true,
            epoch,
        }
    }

    #[test]
    fn a_grant_holds_the_address_until_the_renewal_left_plus_the_deadline() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let seq = renewal(&c.step(&wanted(), t0));
        assert!(!c.holds(ip()), "nothing is held before a grant");
        let took = c.grant(granted(seq, 3), t0 + ms(50));
        assert_eq!(
            took,
            vec![Action::Take {
                address: ip(),
                epoch: 3
            }]
        );
        // The deadline counts from when the renewal left (t0), not from the grant (t0 + 50).
        assert_eq!(c.next_wake(), Some(t0 + T.retry));
        assert!(
            c.step(&wanted(), t0 + ms(699))
                .iter()
                .all(|a| !matches!(a, Action::LetGo { .. }))
        );
        let late = c.step(&wanted(), t0 + ms(700));
        assert!(late.contains(&Action::LetGo {
            address: ip(),
            why: LetGo::Deadline
        }));
        assert!(!c.holds(ip()));
    }

    #[test]
    fn without_grants_the_holder_lets_go_at_the_renew_deadline_while_renewing() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let seq = renewal(&c.step(&wanted(), t0));
        c.grant(granted(seq, 1), t0 + ms(10));
        // The tunnel goes quiet: renewals keep leaving every retry period, none is answered.
        let mut now = t0;
        let mut let_go_at = None;
        while now < t0 + ms(2000) {
            now += ms(50);
            let actions = c.step(&wanted(), now);
            if actions.iter().any(|a| matches!(a, Action::LetGo { .. })) {
                let_go_at = Some(now);
                break;
            }
        }
        assert_eq!(let_go_at, Some(t0 + T.renew_deadline));
    }

    #[test]
    fn a_late_grant_only_shortens_the_hold() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let first = renewal(&c.step(&wanted(), t0));
        c.grant(granted(first, 1), t0 + ms(10));
        let second = renewal(&c.step(&wanted(), t0 + ms(200)));
        // Answered 600 ms after it left: the hold runs to 200 + 700, not 800 + 700.
        assert!(c.grant(granted(second, 1), t0 + ms(800)).is_empty());
        assert!(c.holds(ip()));
        let actions = c.step(&wanted(), t0 + ms(900));
        assert!(actions.contains(&Action::LetGo {
            address: ip(),
            why: LetGo::Deadline
        }));
        // A grant that arrives after the deadline it would give takes nothing.
        let third = renewal(&c.step(&wanted(), t0 + ms(1100)));
        assert!(c.grant(granted(third, 1), t0 + ms(1800)).is_empty());
        assert!(!c.holds(ip()));
    }

    #[test]
    fn a_grant_for_an_unknown_seq_is_ignored() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let seq = renewal(&c.step(&wanted(), t0));
        assert!(c.grant(granted(seq + 7, 1), t0 + ms(10)).is_empty());
        assert!(!c.holds(ip()));
        c.grant(granted(seq, 1), t0 + ms(20));
        assert!(c.holds(ip()));
        // The same grant again (its renewal is no longer outstanding) changes nothing.
        assert!(c.grant(granted(seq, 2), t0 + ms(30)).is_empty());
        // Only the newest MAX_OUTSTANDING renewals are remembered.
        let mut seqs = Vec::new();
        for i in 1..=(MAX_OUTSTANDING as u64 + 1) {
            seqs.push(renewal(&c.step(&wanted(), t0 + ms(200 * i))));
        }
        assert!(c.grant(granted(seqs[0], 1), t0 + ms(1100)).is_empty());
    }

    #[test]
    fn a_refusal_lets_go_and_a_lost_candidacy_lets_go_then_releases() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let seq = renewal(&c.step(&wanted(), t0));
        c.grant(granted(seq, 1), t0 + ms(10));
        let seq = renewal(&c.step(&wanted(), t0 + ms(200)));
        let refused = Grant {
            held: false,
            ..granted(seq, 0)
        };
        assert_eq!(
            c.grant(refused, t0 + ms(210)),
            vec![Action::LetGo {
                address: ip(),
                why: LetGo::Lost
            }]
        );
        let seq = renewal(&c.step(&wanted(), t0 + ms(400)));
        c.grant(granted(seq, 2), t0 + ms(410));
        assert_eq!(
            c.step(&BTreeSet::new(), t0 + ms(420)),
            vec![
                Action::LetGo {
                    address: ip(),
                    why: LetGo::NotCandidate
                },
                Action::Send(Request::Release { address: ip() })
            ],
            "the address goes before the lease"
        );
        assert_eq!(c.next_wake(), None);
    }

    #[test]
    fn shutdown_removes_every_address_before_releasing_any_lease() {
        let t0 = Instant::now();
        let mut c = Claims::new(T);
        let other: IpAddr = "198.18.3.11".parse().unwrap();
        let both: BTreeSet<IpAddr> = [ip(), other].into();
        let actions = c.step(&both, t0);
        for a in actions {
            if let Action::Send(Request::Renew { address, seq }) = a {
                c.grant(
                    Grant {
                        address,
                        seq,
                        held: true,
                        epoch: 1,
                    },
                    t0 + ms(5),
                );
            }
        }
        let out = c.shutdown();
        assert_eq!(out.len(), 4);
        assert!(matches!(out[0], Action::LetGo { .. }) && matches!(out[1], Action::LetGo { .. }));
        assert!(matches!(out[2], Action::Send(Request::Release { .. })));
        assert_eq!(c.held().count(), 0);
    }
}
