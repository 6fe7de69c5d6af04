//! Procedural texture classes (full-frame, MVTec "texture" category
//! analogues): woven fabric, wood grain and ceramic tiles.
//!
//! Every renderer draws an albedo canvas of `size x size` pixels; geometry is
//! expressed for a 256-pixel image and scaled by `size / 256`. Natural
//! variation between normal images: small rotation, pattern phase, colour
//! jitter and the noise fields' seeds.

use crate::canvas::{jitter3, lerp3, scale3, smoothstep, Canvas, Rgb};
use crate::rng::{fbm, mix64, value_noise, Rng};
use std::f32::consts::PI;

/// Twill-woven fabric (denim-like): blue warp over light weft.
pub(crate) fn woven(rng: &mut Rng, size: usize) -> Canvas {
    let s = size as f32 / 256.0;
    let angle = rng.range(-3.0, 3.0).to_radians();
    let period = 10.0 * s * rng.range(0.97, 1.03);
    let (pu, pv) = (rng.range(0.0, 40.0 * s), rng.range(0.0, 40.0 * s));
    let bright = rng.range(0.94, 1.06);
    let warp = scale3(jitter3(rng, [0.20, 0.29, 0.50], 0.02), bright);
    let weft = scale3(jitter3(rng, [0.72, 0.70, 0.64], 0.02), bright);
    let fiber_seed = rng.next_u64();
    let mottle_seed = rng.next_u64();
    let (ca, sa) = (angle.cos(), angle.sin());
    let c = size as f32 * 0.5;
    Canvas::from_fn(size, size, |x, y| {
        let (dx, dy) = (x - c, y - c);
        let u = (dx * ca + dy * sa + pu) / period;
        let v = (-dx * sa + dy * ca + pv) / period;
        let (i, j) = (u.floor() as i64, v.floor() as i64);
        let (fu, fv) = (u - u.floor(), v - v.floor());
        // 2/1 twill: warp floats over two weft rows, under one.
        let warp_top = (i - j).rem_euclid(3) != 0;
        let half = 0.42;
        let (col, across, along, fu_dir) = if warp_top {
            (warp, (fu - 0.5).abs(), fv, true)
        } else {
            (weft, (fv - 0.5).abs(), fu, false)
        };
        let mut rgb = if across < half {
            let t = across / half;
            let round = (1.0 - t * t).sqrt();
            let bulge = (PI * along).sin();
            let fib = if fu_dir {
                fbm(fiber_seed, u * 6.0, v * 0.9, 2)
            } else {
                fbm(fiber_seed ^ 1, u * 0.9, v * 6.0, 2)
            };
            scale3(
                col,
                (0.5 + 0.5 * round) * (0.82 + 0.18 * bulge) * (1.0 + 0.12 * fib),
            )
        } else {
            // Gap between top threads: the crossing thread, in shadow.
            let other = if warp_top { weft } else { warp };
            scale3(other, 0.45)
        };
        let m = 1.0 + 0.05 * fbm(mottle_seed, x / (50.0 * s), y / (50.0 * s), 3);
        rgb = scale3(rgb, m);
        rgb
    })
}

/// Planed wood: wavy growth rings with fine fibre streaks.
pub(crate) fn grained(rng: &mut Rng, size: usize) -> Canvas {
    let s = size as f32 / 256.0;
    let angle = rng.range(-6.0, 6.0).to_radians();
    let freq = 1.0 / (17.0 * s * rng.range(0.92, 1.08));
    let phase = rng.range(0.0, 1.0);
    let amp = rng.range(16.0, 26.0) * s;
    let bright = rng.range(0.95, 1.05);
    let light = scale3(jitter3(rng, [0.78, 0.58, 0.37], 0.02), bright);
    let dark = scale3(jitter3(rng, [0.50, 0.31, 0.17], 0.02), bright);
    let warp_seed = rng.next_u64();
    let streak_seed = rng.next_u64();
    let mottle_seed = rng.next_u64();
    let (ca, sa) = (angle.cos(), angle.sin());
    let c = size as f32 * 0.5;
    Canvas::from_fn(size, size, |x, y| {
        let (dx, dy) = (x - c, y - c);
        let u = dx * ca + dy * sa;
        let v = -dx * sa + dy * ca;
        let w = fbm(warp_seed, u / (110.0 * s), v / (45.0 * s), 3);
        let t = (v + amp * w) * freq + phase;
        let ring = t - t.floor();
        // Sharp latewood band followed by a slow fade into earlywood.
        let late = smoothstep(0.55, 0.72, ring) * (1.0 - smoothstep(0.78, 1.0, ring));
        let streak = value_noise(streak_seed, u / (14.0 * s), v / (0.9 * s));
        let fine = value_noise(streak_seed ^ 7, u / (40.0 * s), v / (2.5 * s));
        let k =
            (0.72 * late + 0.12 * (0.5 + 0.5 * streak) + 0.10 * (0.5 + 0.5 * fine)).clamp(0.0, 1.0);
        let m = 1.0 + 0.05 * fbm(mottle_seed, x / (70.0 * s), y / (70.0 * s), 2);
        scale3(lerp3(light, dark, k), m)
    })
}

/// Glazed ceramic tiles on a grout grid, each tile slightly different.
pub(crate) fn tiled(rng: &mut Rng, size: usize) -> Canvas {
    let s = size as f32 / 256.0;
    let tile = 52.0 * s;
    let grout_half = 2.2 * s;
    let angle = rng.range(-1.5, 1.5).to_radians();
    let (ox, oy) = (rng.range(0.0, tile), rng.range(0.0, tile));
    let bright = rng.range(0.95, 1.04);
    let base = scale3(jitter3(rng, [0.80, 0.76, 0.68], 0.015), bright);
    let grout: Rgb = scale3(jitter3(rng, [0.47, 0.46, 0.44], 0.02), bright);
    let tile_seed = rng.next_u64();
    let speck_seed = rng.next_u64();
    let glaze_seed = rng.next_u64();
    let (ca, sa) = (angle.cos(), angle.sin());
    let c = size as f32 * 0.5;
    Canvas::from_fn(size, size, |x, y| {
        let (dx, dy) = (x - c, y - c);
        let u = (dx * ca + dy * sa + ox) / tile;
        let v = (-dx * sa + dy * ca + oy) / tile;
        let (i, j) = (u.floor() as i64, v.floor() as i64);
        let (fu, fv) = ((u - u.floor()) * tile, (v - v.floor()) * tile);
        // Distance (pixels) to the nearest tile edge.
        let edge = fu.min(tile - fu).min(fv).min(tile - fv);
        let h = mix64(
            tile_seed ^ (i as u64).wrapping_mul(0x9E37_79B9) ^ (j as u64).wrapping_mul(0x85EB_CA6B),
        );
        let tj = |k: u32| ((h >> (k * 12)) & 0xFFF) as f32 / 4095.0 - 0.5;
        let tb = 0.05 * tj(4);
        let tcol = [
            base[0] + tb + 0.025 * tj(0),
            base[1] + tb + 0.025 * tj(1),
            base[2] + tb + 0.025 * tj(2),
        ];
        let g = fbm(speck_seed, x / (3.0 * s), y / (3.0 * s), 2);
        let grout_px = scale3(grout, 1.0 + 0.12 * g);
        if edge < grout_half {
            return grout_px;
        }
        // Rounded (bevelled) tile edge, slow glaze variation and clay specks.
        let bevel = smoothstep(grout_half, grout_half + 3.0 * s, edge);
        let glaze = 1.0
            + 0.04 * fbm(glaze_seed, x / (30.0 * s), y / (30.0 * s), 2)
            + 0.03 * (tj(3) * 2.0) * (fu / tile - 0.5);
        let speck = if value_noise(speck_seed ^ 3, x / (1.6 * s), y / (1.6 * s)) > 0.86 {
            0.88
        } else {
            1.0
        };
        let t = scale3(tcol, glaze * speck * (0.8 + 0.2 * bevel));
        lerp3(grout_px, t, smoothstep(grout_half, grout_half + 0.8, edge))
    })
}
