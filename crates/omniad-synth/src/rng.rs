//! Tiny deterministic random numbers and value noise.
//!
//! Everything here is a pure function of its seed so that every image of the
//! dataset can be rendered independently (and in any order, on any number of
//! threads) with byte-identical results.

/// The SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable
/// pseudorandom number generators", OOPSLA 2014): a bijective 64-bit mixer.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a hash of a string (stable across platforms and Rust versions,
/// unlike `std::hash`).
pub(crate) fn hash_str(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Combines several values into one well-mixed seed.
pub(crate) fn derive(parts: &[u64]) -> u64 {
    let mut h: u64 = 0x243F_6A88_85A3_08D3;
    for &p in parts {
        h = mix64(h ^ mix64(p.wrapping_add(0x9E37_79B9_7F4A_7C15)));
    }
    h
}

/// SplitMix64 generator: small, fast and good enough for procedural content.
#[derive(Clone, Debug)]
pub(crate) struct Rng {
    state: u64,
}

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
    }

    /// Uniform in `[lo, hi)`.
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.f32()
    }

    /// Uniform integer in `0..n` (`n > 0`; the modulo bias is irrelevant here).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next_u64() % n as u64) as usize
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.f32() < p
    }

    /// `+1` or `-1` with equal probability.
    pub(crate) fn sign(&mut self) -> f32 {
        if self.next_u64() & 1 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Approximately standard normal (sum of three uniforms, rescaled to unit
    /// variance; bounded to `[-3, 3]`). One 64-bit draw per sample.
    pub(crate) fn gauss(&mut self) -> f32 {
        let r = self.next_u64();
        let m = (1u64 << 21) - 1;
        let a = (r & m) as f32;
        let b = ((r >> 21) & m) as f32;
        let c = ((r >> 42) & m) as f32;
        let s = (a + b + c) / m as f32; // in [0, 3], mean 1.5, var 1/4
        (s - 1.5) * 2.0
    }

    /// Picks one element of a non-empty slice.
    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pseudo-random lattice value in `[-1, 1]`.
fn lattice(seed: u64, ix: i32, iy: i32) -> f32 {
    let h = mix64(
        seed ^ (ix as i64 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ (iy as i64 as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    (h >> 40) as f32 * (2.0 / (1u64 << 24) as f32) - 1.0
}

/// Smoothly interpolated 2-D value noise in `[-1, 1]`, lattice spacing 1.
pub(crate) fn value_noise(seed: u64, x: f32, y: f32) -> f32 {
    let fx = x.floor();
    let fy = y.floor();
    let ix = fx as i32;
    let iy = fy as i32;
    let tx = x - fx;
    let ty = y - fy;
    let sx = tx * tx * (3.0 - 2.0 * tx);
    let sy = ty * ty * (3.0 - 2.0 * ty);
    let a = lattice(seed, ix, iy);
    let b = lattice(seed, ix + 1, iy);
    let c = lattice(seed, ix, iy + 1);
    let d = lattice(seed, ix + 1, iy + 1);
    let top = a + (b - a) * sx;
    let bot = c + (d - c) * sx;
    top + (bot - top) * sy
}

/// Fractal sum of `octaves` value-noise layers (gain 0.5, lacunarity 2),
/// normalised to roughly `[-1, 1]`.
pub(crate) fn fbm(seed: u64, x: f32, y: f32, octaves: u32) -> f32 {
    let mut sum = 0.0;
    let mut amp = 1.0;
    let mut norm = 0.0;
    let mut f = 1.0;
    for o in 0..octaves {
        sum += amp
            * value_noise(
                seed.wrapping_add(u64::from(o) * 0x51_7CC1_B727_220A),
                x * f,
                y * f,
            );
        norm += amp;
        amp *= 0.5;
        f *= 2.0;
    }
    sum / norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_uniform() {
        let mut a = Rng::new(42);
        let mut b = Rng::new(42);
        let xs: Vec<f32> = (0..10_000).map(|_| a.f32()).collect();
        let ys: Vec<f32> = (0..10_000).map(|_| b.f32()).collect();
        assert_eq!(xs, ys);
        let mean = xs.iter().sum::<f32>() / xs.len() as f32;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn gauss_has_unit_variance() {
        let mut r = Rng::new(7);
        let n = 20_000;
        let xs: Vec<f32> = (0..n).map(|_| r.gauss()).collect();
        let mean = xs.iter().sum::<f32>() / n as f32;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f32>() / n as f32;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }

    #[test]
    fn noise_is_bounded_and_continuous() {
        for i in 0..1000 {
            let x = i as f32 * 0.137;
            let v = fbm(3, x, x * 0.5, 4);
            assert!((-1.0..=1.0).contains(&v));
            let w = fbm(3, x + 1e-3, x * 0.5, 4);
            assert!((v - w).abs() < 0.05);
        }
        assert_ne!(value_noise(1, 0.5, 0.5), value_noise(2, 0.5, 0.5));
    }

    #[test]
    fn derive_separates_inputs() {
        assert_ne!(derive(&[1, 2, 3]), derive(&[1, 3, 2]));
        assert_ne!(derive(&[0]), derive(&[0, 0]));
        assert_ne!(hash_str("woven"), hash_str("tiled"));
    }
}
