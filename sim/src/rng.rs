//! The simulator's only source of randomness: a small seeded PRNG (xoshiro256**, seeded through
//! splitmix64).
//!
//! Why not the `rand` crate: the simulator's promise is "same seed + same input ⇒ byte-identical
//! report", forever. A 30-line generator we own cannot change its stream under us in a semver
//! bump, and keeps the dependency list to what the workspace already builds.
//!
//! Data flow: `main` picks (or is given) one `u64` seed; [`SimRng::new`] expands it; every jitter,
//! backoff, join time and room size in a run is drawn from that one stream (or from a stream
//! [`SimRng::fork`]ed from it with a fixed label), in a fixed order, by the single-threaded event
//! loop. Nothing here reads a clock.

/// splitmix64: expands one seed into well-mixed words (used to seed xoshiro and for forks).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// xoshiro256** (Blackman & Vigna): fast, 256-bit state, good statistical quality.
#[derive(Clone, Debug)]
pub struct SimRng {
    s: [u64; 4],
}

impl SimRng {
    /// A generator whose whole stream is a function of `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm), splitmix64(&mut sm)];
        SimRng { s }
    }

    /// An independent generator derived from this one's seed material and a fixed `label`, so that
    /// adding draws to one part of the model does not shift the stream of another part.
    pub fn fork(&self, label: u64) -> Self {
        let mut sm = self.s[0] ^ self.s[3].rotate_left(17) ^ label.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        SimRng::new(splitmix64(&mut sm))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `0..n` (Lemire's multiply-shift; the tiny bias is irrelevant for a model).
    /// Returns 0 when `n == 0`.
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `base + uniform(0..=jitter)`: the shape of every latency and timeout in the model.
    pub fn jittered(&mut self, base: u64, jitter: u64) -> u64 {
        base + if jitter == 0 { 0 } else { self.below(jitter + 1) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_and_forks_differ() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mut c = SimRng::new(43);
        assert_ne!(xs[0], c.next_u64());
        let mut f1 = a.fork(1);
        let mut f2 = a.fork(2);
        assert_ne!(f1.next_u64(), f2.next_u64());
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut rng = SimRng::new(7);
        let mut seen = [false; 10];
        for _ in 0..10_000 {
            let x = rng.below(10);
            assert!(x < 10);
            seen[x as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
        let u = rng.unit();
        assert!((0.0..1.0).contains(&u));
    }
}
