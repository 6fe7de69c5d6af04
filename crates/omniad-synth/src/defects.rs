//! Surface defects painted onto an albedo canvas: scratches, cracks, stains,
//! holes and colour shifts.
//!
//! Each defect is a shape (anti-aliased coverage in `[0, 1]`) and a colour
//! operation; the change is `lerp(old, op(old), shape * object_coverage)`, so
//! nothing outside the shape (or, for objects, outside the part) is touched.
//! Sizes are design units for a 256-pixel image, scaled by `s = size / 256`.

use crate::canvas::{clamp3, lerp3, mul3, scale3, BBox, Blob, Canvas, Rgb, Stroke, P2};
use crate::rng::Rng;
use std::f32::consts::TAU;

/// Applies `op` inside `shape` (restricted to `obj` coverage when given).
pub(crate) fn paint(
    a: &mut Canvas,
    obj: Option<&[f32]>,
    bb: BBox,
    shape: impl Fn(P2) -> f32,
    op: impl Fn(Rgb, P2, f32) -> Rgb,
) {
    for y in bb.y0..bb.y1 {
        for x in bb.x0..bb.x1 {
            let i = y * a.w + x;
            let ok = obj.map_or(1.0, |o| o[i]);
            if ok <= 0.0 {
                continue;
            }
            let p = [x as f32 + 0.5, y as f32 + 0.5];
            let k = shape(p) * ok;
            if k > 0.0 {
                let old = a.px[i];
                a.px[i] = clamp3(lerp3(old, op(old, p, k), k), 0.02, 0.95);
            }
        }
    }
}

/// A random point for a defect: anywhere at least `margin` pixels from the
/// border (`obj == None`), or on the part (object coverage ~1).
pub(crate) fn anchor(rng: &mut Rng, obj: Option<&[f32]>, size: usize, margin: f32) -> P2 {
    let lo = margin.min(size as f32 * 0.5);
    let hi = (size as f32 - margin).max(lo);
    match obj {
        None => [rng.range(lo, hi), rng.range(lo, hi)],
        Some(o) => {
            for _ in 0..4000 {
                let p = [rng.range(lo, hi), rng.range(lo, hi)];
                let i = p[1] as usize * size + p[0] as usize;
                if o.get(i).is_some_and(|&k| k >= 0.99) {
                    return p;
                }
            }
            // The part always covers the image centre region; fall back to it.
            [size as f32 * 0.5, size as f32 * 0.5]
        }
    }
}

/// Slightly curved scratch through `c` at angle `ang`.
pub(crate) fn scratch_stroke(rng: &mut Rng, c: P2, ang: f32, len: f32, width: f32) -> Stroke {
    let (dx, dy) = (ang.cos(), ang.sin());
    let bend = rng.range(-0.18, 0.18) * len;
    let n = 24;
    let pts = (0..=n)
        .map(|i| {
            let t = i as f32 / n as f32 - 0.5;
            let off = bend * (1.0 - 4.0 * t * t);
            [
                c[0] + dx * t * len - dy * off,
                c[1] + dy * t * len + dx * off,
            ]
        })
        .collect();
    Stroke { pts, width }
}

/// Jagged random-walk crack starting at `start` heading `ang`.
pub(crate) fn crack_strokes(
    rng: &mut Rng,
    start: P2,
    ang: f32,
    len: f32,
    width: f32,
    s: f32,
) -> Vec<Stroke> {
    let step = 5.0 * s;
    let walk = |rng: &mut Rng, from: P2, mut a: f32, n: usize, w: f32| {
        let mut pts = vec![from];
        let mut p = from;
        let a0 = a;
        for _ in 0..n {
            a += rng.range(-0.55, 0.55);
            a = a0 + (a - a0).clamp(-0.9, 0.9);
            p = [p[0] + a.cos() * step, p[1] + a.sin() * step];
            pts.push(p);
        }
        Stroke { pts, width: w }
    };
    let n = ((len / step) as usize).max(3);
    let main = walk(rng, start, ang, n, width);
    let mut out = vec![];
    if rng.chance(0.6) {
        let at = main.pts[n / 2 + rng.below(n / 3 + 1).min(n / 2)];
        let turn = rng.sign() * rng.range(0.5, 1.0);
        let b = walk(rng, at, ang + turn, n / 3 + 2, width * 0.75);
        out.push(b);
    }
    out.push(main);
    out
}

/// Paints a set of strokes with one colour operation.
pub(crate) fn paint_strokes(
    a: &mut Canvas,
    obj: Option<&[f32]>,
    strokes: &[Stroke],
    op: impl Fn(Rgb) -> Rgb,
) {
    for st in strokes {
        let bb = st.bbox(a.w, a.h);
        paint(a, obj, bb, |p| st.coverage(p), |old, _, _| op(old));
    }
}

/// Bright (abraded) or dark (grooved) scratch colour operation.
pub(crate) fn scratch_op(bright: bool) -> impl Fn(Rgb) -> Rgb {
    move |old: Rgb| {
        if bright {
            lerp3(old, [0.93, 0.92, 0.90], 0.8)
        } else {
            scale3(old, 0.3)
        }
    }
}

/// Crack colour operation: a deep dark gap.
pub(crate) fn crack_op(old: Rgb) -> Rgb {
    [
        old[0] * 0.2 + 0.015,
        old[1] * 0.2 + 0.012,
        old[2] * 0.2 + 0.01,
    ]
}

/// Stain: translucent contamination of colour `col` with a darker rim.
pub(crate) fn stain(a: &mut Canvas, obj: Option<&[f32]>, blob: &Blob, col: Rgb, alpha: f32) {
    let bb = blob.bbox(a.w, a.h);
    paint(
        a,
        obj,
        bb,
        |p| blob.coverage(p),
        |old, p, _| {
            let rim = (1.0 + blob.sdf(p) / (0.35 * blob.r)).clamp(0.0, 1.0);
            lerp3(old, col, (alpha + 0.2 * rim).min(0.95))
        },
    );
}

/// Hole: the material is missing and the dark void behind shows through.
pub(crate) fn hole(a: &mut Canvas, obj: Option<&[f32]>, blob: &Blob) {
    let bb = blob.bbox(a.w, a.h);
    paint(
        a,
        obj,
        bb,
        |p| blob.coverage(p),
        |old, p, _| {
            let rim = (1.0 + blob.sdf(p) / 2.0).clamp(0.0, 1.0);
            lerp3([0.035, 0.03, 0.028], scale3(old, 0.55), rim * 0.6)
        },
    );
}

/// Colour shift (discolouration) of everything inside the blob.
pub(crate) fn color_shift(
    a: &mut Canvas,
    obj: Option<&[f32]>,
    blob: &Blob,
    tint: Rgb,
    offset: Rgb,
) {
    let bb = blob.bbox(a.w, a.h);
    paint(
        a,
        obj,
        bb,
        |p| blob.coverage(p),
        |old, _, _| {
            let t = mul3(old, tint);
            [t[0] + offset[0], t[1] + offset[1], t[2] + offset[2]]
        },
    );
}

/// A few strongly different tints `(multiplier, offset)`.
pub(crate) fn random_tint(rng: &mut Rng) -> (Rgb, Rgb) {
    const TINTS: [(Rgb, Rgb); 4] = [
        ([1.45, 0.72, 0.6], [0.06, 0.0, 0.0]),
        ([0.62, 0.85, 1.5], [0.0, 0.02, 0.08]),
        ([0.75, 1.35, 0.7], [0.0, 0.05, 0.0]),
        ([1.3, 1.1, 0.45], [0.05, 0.03, 0.0]),
    ];
    *rng.pick(&TINTS)
}

/// Random direction in radians.
pub(crate) fn any_angle(rng: &mut Rng) -> f32 {
    rng.range(0.0, TAU)
}
