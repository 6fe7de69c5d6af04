//! Order-preserving mapping of `f32` scores to `u32` keys.
//!
//! For finite floats, `a < b` ⇔ `key(a) < key(b)` and `a == b` ⇔
//! `key(a) == key(b)` (`-0.0` and `+0.0` get the same key, as they compare
//! equal in scikit-learn). Sorting, bucketing and threshold cuts all work on
//! these keys.

/// Key of `x`; `x` must not be NaN (callers validate finiteness first).
#[inline(always)]
pub(crate) fn key_of(x: f32) -> u32 {
    // `x + 0.0` turns -0.0 into +0.0 and leaves every other value unchanged.
    let b = (x + 0.0).to_bits();
    let mask = (((b as i32) >> 31) as u32) | 0x8000_0000;
    b ^ mask
}

/// Inverse of [`key_of`].
#[inline(always)]
pub(crate) fn f32_of(k: u32) -> f32 {
    let mask = (!(((k as i32) >> 31) as u32)) | 0x8000_0000;
    f32::from_bits(k ^ mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_preserve_order_and_equality() {
        let xs = [
            f32::MIN,
            -1e30,
            -1.0,
            -1e-40,
            -0.0,
            0.0,
            1e-45,
            1e-40,
            0.5,
            1.0,
            3.0e38,
            f32::MAX,
        ];
        for w in xs.windows(2) {
            if w[0] == w[1] {
                assert_eq!(key_of(w[0]), key_of(w[1]));
            } else {
                assert!(key_of(w[0]) < key_of(w[1]), "{} vs {}", w[0], w[1]);
            }
        }
        for &x in &xs {
            let back = f32_of(key_of(x));
            assert_eq!(back, x);
        }
        assert_eq!(f32_of(key_of(-0.0)).to_bits(), 0.0f32.to_bits());
        // adjacent keys are adjacent floats
        assert_eq!(
            f32_of(key_of(1.0) + 1),
            f32::from_bits(1.0f32.to_bits() + 1)
        );
        assert_eq!(
            f32_of(key_of(-1.0) + 1),
            f32::from_bits((-1.0f32).to_bits() - 1)
        );
    }
}
