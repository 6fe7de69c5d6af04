//! Antialiased bilinear resize, bit-compatible with Pillow's
//! `Image.resize(size, Image.BILINEAR)` on 8-bit images.
//!
//! Reimplements the algorithm of Pillow's `libImaging/Resample.c`
//! (`ImagingResample`): a triangle filter whose support is scaled by the
//! downscale factor (so downscaling averages every covered source pixel),
//! coefficients computed in `f64`, normalised to sum 1, converted to fixed
//! point with `PRECISION_BITS = 22`, then applied separably: one pass into an
//! 8-bit intermediate image (rounded and clipped), then the other
//! pass, rounded and clipped again (Pillow >= 13 runs the vertical pass first
//! when the height shrinks much more than the width; so does this code).
//! Results are identical to Pillow 13's for 8-bit data.

/// Fixed-point precision of Pillow's 8-bit resampler (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Per-output-pixel filter windows for one axis.
struct Coeffs {
    /// `(first source index, number of taps)` for every output index.
    bounds: Vec<(usize, usize)>,
    /// Maximum number of taps; `kk` holds `ksize` entries per output index.
    ksize: usize,
    /// Fixed-point weights, `out_size * ksize`.
    kk: Vec<i32>,
}

/// The bilinear (triangle) filter of Pillow, support 1.
fn triangle(x: f64) -> f64 {
    let x = x.abs();
    if x < 1.0 {
        1.0 - x
    } else {
        0.0
    }
}

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for a full-image box.
fn precompute(in_size: usize, out_size: usize) -> Coeffs {
    // Pillow passes the box as floats; `in1 - in0` is exact for any realistic size.
    let in0 = 0.0f64;
    let in1 = in_size as f32 as f64;
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = if scale < 1.0 { 1.0 } else { scale };
    let support = filterscale; // bilinear support (1.0) * filterscale
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    let mut weights = vec![0.0f64; ksize];
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C `(int)` casts truncate toward zero, as Rust's `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax_abs = ((center + support + 0.5) as i64).min(in_size as i64);
        let taps = (xmax_abs - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, w) in weights.iter_mut().enumerate().take(taps) {
            let v = triangle(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            *w = v;
            ww += v;
        }
        let row = &mut kk[xx * ksize..(xx + 1) * ksize];
        for (k, w) in row.iter_mut().zip(weights.iter()).take(taps) {
            let v = if ww != 0.0 { *w / ww } else { *w };
            let scaled = v * f64::from(1u32 << PRECISION_BITS);
            *k = if v < 0.0 {
                (-0.5 + scaled) as i32
            } else {
                (0.5 + scaled) as i32
            };
        }
        bounds.push((xmin as usize, taps));
    }
    Coeffs { bounds, ksize, kk }
}

/// Pillow's `clip8`: rounding already added, shift out the fraction, clamp to 0..=255.
#[inline]
fn clip8(v: i32) -> u8 {
    if v >= (1 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// One horizontal pass: `[rows, in_w, channels]` (starting at row `row0` of
/// `src`) to `[rows, out_w, channels]`.
fn horizontal_pass(
    src: &[u8],
    in_w: usize,
    channels: usize,
    row0: usize,
    rows: usize,
    coeffs: &Coeffs,
    out_w: usize,
) -> Vec<u8> {
    let half: i32 = 1 << (PRECISION_BITS - 1);
    let mut out = vec![0u8; rows * out_w * channels];
    for (ty, out_row) in out.chunks_exact_mut(out_w * channels).enumerate() {
        let y = ty + row0;
        let in_row = &src[y * in_w * channels..(y + 1) * in_w * channels];
        for (xx, out_px) in out_row.chunks_exact_mut(channels).enumerate() {
            let (xmin, taps) = coeffs.bounds[xx];
            let k = &coeffs.kk[xx * coeffs.ksize..xx * coeffs.ksize + taps];
            let window = &in_row[xmin * channels..(xmin + taps) * channels];
            if channels == 3 {
                let (mut s0, mut s1, mut s2) = (half, half, half);
                for (p, &w) in window.chunks_exact(3).zip(k) {
                    s0 += i32::from(p[0]) * w;
                    s1 += i32::from(p[1]) * w;
                    s2 += i32::from(p[2]) * w;
                }
                out_px[0] = clip8(s0);
                out_px[1] = clip8(s1);
                out_px[2] = clip8(s2);
            } else {
                for (c, o) in out_px.iter_mut().enumerate() {
                    let mut ss = half;
                    for (p, &w) in window.chunks_exact(channels).zip(k) {
                        ss += i32::from(p[c]) * w;
                    }
                    *o = clip8(ss);
                }
            }
        }
    }
    out
}

/// One vertical pass: `[.., width, channels]` to `[out_h, width, channels]`;
/// source rows are `bounds.0 - row_offset ..`. Accumulates whole rows (the
/// integer sums are exact, so the order of additions does not matter).
fn vertical_pass(
    src: &[u8],
    width: usize,
    channels: usize,
    row_offset: usize,
    coeffs: &Coeffs,
    out_h: usize,
) -> Vec<u8> {
    let half: i32 = 1 << (PRECISION_BITS - 1);
    let stride = width * channels;
    let mut out = vec![0u8; out_h * stride];
    let mut acc = vec![0i32; stride];
    for (yy, out_row) in out.chunks_exact_mut(stride).enumerate() {
        let (ymin_abs, taps) = coeffs.bounds[yy];
        let ymin = ymin_abs - row_offset;
        let k = &coeffs.kk[yy * coeffs.ksize..yy * coeffs.ksize + taps];
        acc.fill(half);
        for (y, &w) in k.iter().enumerate() {
            let row = &src[(ymin + y) * stride..(ymin + y + 1) * stride];
            for (a, &v) in acc.iter_mut().zip(row) {
                *a += i32::from(v) * w;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

/// Resizes an interleaved 8-bit image exactly as Pillow's `resize(..., BILINEAR)`.
///
/// * `src`: `[in_h, in_w, channels]` row-major, `channels` in 1..=4.
/// * returns `[out_h, out_w, channels]`.
///
/// Pass order follows Pillow >= 13.0 (`ImagingResampleInner`): the vertical
/// pass runs first when the height shrinks by more than twice as many pixels
/// as the width (`in_h - out_h > 0 && in_h - out_h > 2 * (in_w - out_w)`),
/// otherwise the horizontal pass runs first (older Pillow always ran it first;
/// the two orders differ by at most one 8-bit level on some pixels).
///
/// Sizes must be non-zero and `src.len() == in_w * in_h * channels`; callers in
/// this crate guarantee it (it is checked with a debug assertion only).
pub(crate) fn resize_bilinear_u8(
    src: &[u8],
    in_w: usize,
    in_h: usize,
    channels: usize,
    out_w: usize,
    out_h: usize,
) -> Vec<u8> {
    debug_assert_eq!(src.len(), in_w * in_h * channels);
    debug_assert!(in_w > 0 && in_h > 0 && out_w > 0 && out_h > 0);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    if !need_h && !need_v {
        return src.to_vec();
    }
    let dh = in_h as i64 - out_h as i64;
    let dw = in_w as i64 - out_w as i64;
    let horizontal_first = !(dh > 0 && dh > dw * 2);
    if horizontal_first {
        if !need_h {
            return vertical_pass(src, in_w, channels, 0, &precompute(in_h, out_h), out_h);
        }
        let horiz = precompute(in_w, out_w);
        if !need_v {
            return horizontal_pass(src, in_w, channels, 0, in_h, &horiz, out_w);
        }
        let vert = precompute(in_h, out_h);
        // Only the source rows used by the vertical pass are resampled horizontally.
        let first = vert.bounds[0].0;
        let (lmin, ln) = vert.bounds[out_h - 1];
        let tmp = horizontal_pass(src, in_w, channels, first, lmin + ln - first, &horiz, out_w);
        vertical_pass(&tmp, out_w, channels, first, &vert, out_h)
    } else {
        // Here the height shrinks, so the vertical pass is needed.
        let tmp = vertical_pass(src, in_w, channels, 0, &precompute(in_h, out_h), out_h);
        if !need_h {
            return tmp;
        }
        horizontal_pass(
            &tmp,
            in_w,
            channels,
            0,
            out_h,
            &precompute(in_w, out_w),
            out_w,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic ramp-with-noise test image.
    fn pattern(w: usize, h: usize, c: usize) -> Vec<u8> {
        (0..w * h * c)
            .map(|i| ((i * 37 + (i / 7) * 11) % 256) as u8)
            .collect()
    }

    // Expected values were produced with Pillow 13.0 from the same `pattern`:
    // Image.frombytes(mode, (w, h), bytes).resize((ow, oh), Image.BILINEAR).
    #[test]
    fn matches_pillow_downscale_gray() {
        let src = pattern(7, 5, 1);
        let out = resize_bilinear_u8(&src, 7, 5, 1, 3, 2);
        assert_eq!(out, vec![46, 125, 200, 74, 153, 166]);
    }

    #[test]
    fn matches_pillow_upscale_rgb() {
        let src = pattern(3, 2, 3);
        let out = resize_bilinear_u8(&src, 3, 2, 3, 5, 3);
        assert_eq!(
            out,
            vec![
                0, 37, 74, 44, 81, 118, 111, 148, 185, 178, 68, 105, 222, 14, 51, 44, 81, 118, 88,
                125, 113, 155, 192, 107, 149, 112, 100, 144, 58, 95, 88, 125, 162, 132, 169, 108,
                199, 236, 28, 119, 156, 95, 65, 102, 139
            ]
        );
    }

    /// Height shrinks much more than width: Pillow >= 13 runs the vertical pass
    /// first (horizontal-first would differ on 6 of these 24 pixels).
    #[test]
    fn matches_pillow_vertical_first() {
        let src = pattern(5, 17, 1);
        let out = resize_bilinear_u8(&src, 5, 17, 1, 6, 4);
        assert_eq!(
            out,
            vec![
                126, 131, 114, 115, 131, 114, 160, 141, 120, 126, 142, 121, 130, 137, 124, 130,
                146, 126, 92, 121, 126, 139, 155, 137
            ]
        );
    }

    #[test]
    fn identity_when_size_unchanged() {
        let src = pattern(4, 3, 3);
        assert_eq!(resize_bilinear_u8(&src, 4, 3, 3, 4, 3), src);
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = vec![200u8; 33 * 17];
        let out = resize_bilinear_u8(&src, 33, 17, 1, 8, 9);
        assert!(out.iter().all(|&v| v == 200));
    }
}
