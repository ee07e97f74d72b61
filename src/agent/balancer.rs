//! Client-side balancing: which server an agent tunnels to, and in what order it tries others.
//!
//! Agents learn every server's address through the tunnel and keep the list in their data
//! dir. Each agent tries the known servers in its own random order, so a fleet spreads over
//! the servers; when its server goes away it tries the others at once, the failed one last,
//! and the `--server` address only after every known server failed. Between full rounds it
//! waits with capped exponential backoff and jitter, so a fleet does not stampede a server
//! that comes back.

use std::time::Duration;

use ring::rand::SecureRandom;

use super::credentials::Files;

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);

pub struct Balancer {
    fallback: String,
    known: Vec<String>,
    files: Files,
    rng: Rng,
}

impl Balancer {
    pub fn new(fallback: String, files: Files) -> Balancer {
        Balancer {
            known: files.servers(),
            fallback,
            files,
            rng: Rng::new(),
        }
    }

    /// Takes a server list from a server; remembers it across restarts.
    pub fn learn(&mut self, mut servers: Vec<String>) {
        servers.sort();
        servers.dedup();
        if servers.is_empty() || servers == self.known {
            return;
        }
        tracing::info!(?servers, "learnt the cluster's servers");
        if let Err(e) = self.files.save_servers(&servers) {
            tracing::warn!(error = %e, "cannot keep the server list in the data dir");
        }
        self.known = servers;
    }

    /// Servers to try, in order: known ones shuffled with `avoid` last, then `--server`.
    pub fn order(&mut self, avoid: Option<&str>) -> Vec<String> {
        let mut list = self.known.clone();
        self.rng.shuffle(&mut list);
        if let Some(bad) = avoid
            && let Some(i) = list.iter().position(|s| s == bad)
        {
            let s = list.remove(i);
            list.push(s);
        }
        if !list.contains(&self.fallback) {
            list.push(self.fallback.clone());
        }
        list
    }

    pub fn fallback(&self) -> &str {
        &self.fallback
    }

    /// A random duration in `[d/2, d]`.
    pub fn jitter(&mut self, d: Duration) -> Duration {
        let half = d / 2;
        half + Duration::from_micros(self.rng.next() % (half.as_micros() as u64 + 1))
    }
}

/// Capped exponential backoff.
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next delay before jitter.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// xorshift64*, seeded from the system RNG: enough to spread agents, not for secrets.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut b = [0u8; 8];
        let _ = ring::rand::SystemRandom::new().fill(&mut b);
        Rng(u64::from_le_bytes(b) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_server_goes_last_and_the_fixed_address_after_all() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Balancer::new("vip:6443".into(), Files::new(dir.path()));
        assert_eq!(b.order(None), vec!["vip:6443".to_owned()]);
        b.learn(vec!["b:6443".into(), "a:6443".into(), "c:6443".into()]);
        for _ in 0..20 {
            let o = b.order(Some("a:6443"));
            assert_eq!(o.len(), 4);
            assert_eq!(o[2], "a:6443");
            assert_eq!(o[3], "vip:6443");
        }
        // Remembered across restarts.
        let b2 = Balancer::new("vip:6443".into(), Files::new(dir.path()));
        assert_eq!(b2.known, vec!["a:6443", "b:6443", "c:6443"]);
    }

    #[test]
    fn agents_spread_over_servers() {
        let dir = tempfile::tempdir().unwrap();
        let mut firsts = std::collections::HashMap::new();
        for _ in 0..300 {
            let mut b = Balancer::new("vip:6443".into(), Files::new(dir.path()));
            b.known = vec!["a".into(), "b".into(), "c".into()];
            *firsts.entry(b.order(None)[0].clone()).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3, "{firsts:?}");
        assert!(firsts.values().all(|n| *n > 50), "{firsts:?}");
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        let mut b = Backoff::new();
        let steps: Vec<Duration> = (0..10).map(|_| b.step()).collect();
        assert_eq!(steps[0], BACKOFF_MIN);
        assert_eq!(*steps.last().unwrap(), BACKOFF_MAX);
        let dir = tempfile::tempdir().unwrap();
        let mut bal = Balancer::new("x".into(), Files::new(dir.path()));
        for _ in 0..100 {
            let j = bal.jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }
}
