//! Throttling of failed logins: per agent id and per peer address, over a sliding window.
//!
//! Pure bookkeeping with the time passed in, so that it is tested without waiting. Agent ids are
//! kept as 64-bit keyed hashes, not as the text a client sent: a flood of made-up ids of 60 KiB
//! each costs the same few bytes per entry as a real one, and no id sits in memory longer than
//! its window.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;

/// Entries kept per map before expired ones are swept (the sweep runs again only when the map
/// has doubled since, so it costs O(1) per failure on average).
const SWEEP_FROM: usize = 4096;

/// Failure times within the window, oldest first, for one key. Never holds more than the bound:
/// past it the key is throttled and no more failures are counted.
#[derive(Default)]
struct Failures(VecDeque<u64>);

impl Failures {
    fn prune(&mut self, now_ms: u64, window_ms: u64) {
        while self.0.front().is_some_and(|&t| t + window_ms <= now_ms) {
            self.0.pop_front();
        }
    }
}

struct Bounded<K> {
    max: usize,
    map: HashMap<K, Failures>,
    swept_at_len: usize,
}

impl<K: Hash + Eq + Copy> Bounded<K> {
    fn new(max: u32) -> Self {
        Bounded {
            max: max as usize,
            map: HashMap::new(),
            swept_at_len: SWEEP_FROM,
        }
    }

    /// How long until `key` may try again, if it is throttled now.
    fn wait(&mut self, key: K, now_ms: u64, window_ms: u64) -> Option<u64> {
        let failures = self.map.get_mut(&key)?;
        failures.prune(now_ms, window_ms);
        if failures.0.len() < self.max {
            if failures.0.is_empty() {
                self.map.remove(&key);
            }
            return None;
        }
        let oldest = *failures.0.front()?;
        Some((oldest + window_ms).saturating_sub(now_ms).max(1))
    }

    fn fail(&mut self, key: K, now_ms: u64, window_ms: u64) {
        let failures = self.map.entry(key).or_default();
        failures.prune(now_ms, window_ms);
        if failures.0.len() < self.max {
            failures.0.push_back(now_ms);
        }
        if self.map.len() >= self.swept_at_len.max(SWEEP_FROM) {
            self.map.retain(|_, f| {
                f.prune(now_ms, window_ms);
                !f.0.is_empty()
            });
            self.swept_at_len = self.map.len() * 2;
        }
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Failed logins counted per agent id and per peer address.
pub struct Throttle {
    window_ms: u64,
    agents: Bounded<u64>,
    peers: Bounded<IpAddr>,
    hasher: foldhash::quality::RandomState,
}

impl Throttle {
    pub fn new(max_per_agent: u32, max_per_peer: u32, window_ms: u64) -> Throttle {
        Throttle {
            window_ms,
            agents: Bounded::new(max_per_agent),
            peers: Bounded::new(max_per_peer),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// `Err(ms)`: this agent id or this peer has failed too often within the window; it may try
    /// again in `ms`. Its credential is not even checked meanwhile.
    pub fn check(&mut self, agent: &str, peer: IpAddr, now_ms: u64) -> Result<(), u64> {
        let key = self.hasher.hash_one(agent);
        let by_agent = self.agents.wait(key, now_ms, self.window_ms);
        let by_peer = self.peers.wait(peer, now_ms, self.window_ms);
        match by_agent.max(by_peer) {
            Some(ms) => Err(ms),
            None => Ok(()),
        }
    }

    /// Counts a failed login against the agent id and the peer.
    pub fn fail(&mut self, agent: &str, peer: IpAddr, now_ms: u64) {
        let key = self.hasher.hash_one(agent);
        self.agents.fail(key, now_ms, self.window_ms);
        self.peers.fail(peer, now_ms, self.window_ms);
    }

    /// Agent ids and peers with failures being remembered.
    pub fn tracked(&self) -> (usize, usize) {
        (self.agents.len(), self.peers.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn five_failures_throttle_the_agent_until_the_window_passes() {
        let mut t = Throttle::new(5, 100, 60_000);
        for i in 0..5 {
            assert_eq!(t.check("1042", peer(1), 1_000 + i), Ok(()));
            t.fail("1042", peer(1), 1_000 + i);
        }
        // The first failure was at 1000: the window passes at 61000.
        assert_eq!(t.check("1042", peer(1), 2_000), Err(59_000));
        assert_eq!(t.check("1042", peer(2), 60_999), Err(1));
        assert_eq!(t.check("1042", peer(2), 61_000), Ok(()));
        // Another agent from the same peer is not throttled.
        assert_eq!(t.check("1043", peer(1), 2_000), Ok(()));
    }

    #[test]
    fn a_peer_is_throttled_across_agent_ids_at_its_own_bound() {
        let mut t = Throttle::new(5, 20, 60_000);
        for i in 0..20 {
            let agent = format!("guess-{i}");
            assert_eq!(t.check(&agent, peer(9), 10), Ok(()));
            t.fail(&agent, peer(9), 10);
        }
        assert_eq!(t.check("anyone", peer(9), 11), Err(59_999));
        assert_eq!(t.check("anyone", peer(8), 11), Ok(()));
    }

    #[test]
    fn failures_outside_the_window_are_forgotten_and_swept() {
        let mut t = Throttle::new(5, 1_000_000, 1_000);
        for i in 0..10_000u64 {
            t.fail(&format!("made-up-{i}"), peer((i % 200) as u8), i);
        }
        // Entries older than the window were swept as the maps grew: far fewer than 10,000 left.
        let (agents, peers) = t.tracked();
        assert!(agents < 6_000, "{agents} agent entries kept");
        assert!(peers <= 200);
        assert_eq!(t.check("made-up-1", peer(1), 20_000), Ok(()));
    }
}
