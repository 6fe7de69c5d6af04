//! Procedural object classes (a single part on a background, MVTec "object"
//! category analogues): a round flange, a screw and a printed label.
//!
//! Each object is described by a parameter struct sampled once per image
//! (position, rotation, colours, noise seeds = the natural variation) and a
//! `Mods` struct of structural defects (broken, worn or missing parts,
//! misplaced print) so that the defective image is a re-render of the very
//! same scene. Rendering returns the albedo canvas and the per-pixel object
//! coverage in `[0, 1]` (used to keep surface defects on the part).
//! Geometry is given for a 256-pixel image and scaled by `size / 256`.

use crate::canvas::{cover, jitter3, lerp3, scale3, smoothstep, Canvas, Frame, Rgb, P2};
use crate::rng::{fbm, value_noise, Rng};
use std::f32::consts::{PI, TAU};

/// Albedo plus object coverage, both `[H, W]` row-major.
pub(crate) struct Rendered {
    pub albedo: Canvas,
    pub coverage: Vec<f32>,
}

fn render_with(size: usize, mut f: impl FnMut(P2) -> (Rgb, f32)) -> Rendered {
    let mut px = Vec::with_capacity(size * size);
    let mut coverage = Vec::with_capacity(size * size);
    for y in 0..size {
        for x in 0..size {
            let (c, k) = f([x as f32 + 0.5, y as f32 + 0.5]);
            px.push(c);
            coverage.push(k);
        }
    }
    Rendered {
        albedo: Canvas {
            w: size,
            h: size,
            px,
        },
        coverage,
    }
}

// ---------------------------------------------------------------- flange ---

/// Round machined flange with a centre bore and four bolt holes.
#[derive(Clone, Debug)]
pub(crate) struct Flange {
    pub c: P2,
    pub rot: f32,
    pub s: f32,
    pub r_out: f32,
    metal: Rgb,
    bg: Rgb,
    light: f32,
    brush_seed: u64,
    bg_seed: u64,
}

/// Structural defects of a [`Flange`].
#[derive(Clone, Debug, Default)]
pub(crate) struct FlangeMods {
    /// A chunk broken out of the part: (centre, radius, jaggedness seed) in pixels.
    pub bite: Option<(P2, f32, u64)>,
}

impl Flange {
    pub(crate) const R_IN: f32 = 25.0;
    pub(crate) const R_HUB: f32 = 37.0;
    pub(crate) const R_RING: f32 = 55.0;
    pub(crate) const R_BOLT: f32 = 7.5;

    pub(crate) fn sample(rng: &mut Rng, size: usize) -> Self {
        let s = size as f32 / 256.0;
        let mid = size as f32 * 0.5;
        let b = rng.range(0.95, 1.05);
        Self {
            c: [
                mid + rng.range(-12.0, 12.0) * s,
                mid + rng.range(-12.0, 12.0) * s,
            ],
            rot: rng.range(0.0, TAU),
            s,
            r_out: 80.0 * s * rng.range(0.98, 1.02),
            metal: scale3(jitter3(rng, [0.64, 0.65, 0.68], 0.015), b),
            bg: jitter3(rng, [0.13, 0.14, 0.16], 0.01),
            light: rng.range(-2.6, -1.8),
            brush_seed: rng.next_u64(),
            bg_seed: rng.next_u64(),
        }
    }

    pub(crate) fn bolt_centres(&self) -> [P2; 4] {
        let r = Self::R_RING * self.s;
        let mut out = [[0.0; 2]; 4];
        for (k, o) in out.iter_mut().enumerate() {
            let a = self.rot + k as f32 * PI * 0.5;
            *o = [self.c[0] + r * a.cos(), self.c[1] + r * a.sin()];
        }
        out
    }

    pub(crate) fn render(&self, size: usize, m: &FlangeMods) -> Rendered {
        let s = self.s;
        let bolts = self.bolt_centres();
        let (r_in, r_hub, r_bolt) = (Self::R_IN * s, Self::R_HUB * s, Self::R_BOLT * s);
        let shadow_off = [3.5 * s, 5.0 * s];
        render_with(size, |p| {
            let (dx, dy) = (p[0] - self.c[0], p[1] - self.c[1]);
            let d = (dx * dx + dy * dy).sqrt();
            let th = dy.atan2(dx);
            // Background: dark matte surface with the part's soft shadow.
            let sx = p[0] - shadow_off[0] - self.c[0];
            let sy = p[1] - shadow_off[1] - self.c[1];
            let sd = (sx * sx + sy * sy).sqrt();
            let mut shadow = smoothstep(self.r_out + 7.0 * s, self.r_out - 4.0 * s, sd)
                * smoothstep(r_in - 5.0 * s, r_in + 4.0 * s, sd);
            if let Some((bc, br, _)) = m.bite {
                // The broken-off chunk casts no shadow.
                let bd = ((p[0] - shadow_off[0] - bc[0]).powi(2)
                    + (p[1] - shadow_off[1] - bc[1]).powi(2))
                .sqrt();
                shadow *= smoothstep(br - 4.0 * s, br + 4.0 * s, bd);
            }
            let g = fbm(self.bg_seed, p[0] / (18.0 * s), p[1] / (18.0 * s), 3);
            let bg = scale3(self.bg, (1.0 + 0.12 * g) * (1.0 - 0.45 * shadow));
            // Part silhouette (signed distance, pixels).
            let mut bolt_d = f32::MAX;
            let mut bolt_k = 0;
            for (k, b) in bolts.iter().enumerate() {
                let bd = ((p[0] - b[0]).powi(2) + (p[1] - b[1]).powi(2)).sqrt();
                if bd < bolt_d {
                    bolt_d = bd;
                    bolt_k = k;
                }
            }
            let mut sdf = (d - self.r_out).max(r_in - d).max(r_bolt - bolt_d);
            if let Some((bc, br, bseed)) = m.bite {
                let (ex, ey) = (p[0] - bc[0], p[1] - bc[1]);
                let ed = (ex * ex + ey * ey).sqrt();
                let ea = ey.atan2(ex);
                let jag = br
                    * (1.0 + 0.22 * value_noise(bseed, ea.cos() * 3.0 + 9.0, ea.sin() * 3.0 + 9.0));
                sdf = sdf.max(jag - ed);
            }
            let k = cover(sdf);
            if k <= 0.0 {
                return (bg, 0.0);
            }
            // Radially brushed metal: circular streaks, a bow-tie sheen,
            // bevelled rim, raised hub and chamfered bolt holes.
            let brush = value_noise(self.brush_seed, d / (0.7 * s), th * 2.0) * 0.6
                + value_noise(self.brush_seed ^ 5, d / (3.0 * s), th * 6.0) * 0.4;
            let mut shade = 0.9 + 0.07 * brush + 0.12 * (2.0 * (th - self.light)).cos();
            let rim = smoothstep(self.r_out - 6.0 * s, self.r_out, d);
            shade *= 1.0 + 0.3 * rim * (th - self.light).cos();
            if d < r_hub {
                shade *= 1.06;
                let bore = smoothstep(r_in + 4.0 * s, r_in, d);
                shade *= 1.0 - 0.35 * bore * (th - self.light).cos();
            }
            shade *= 1.0 - 0.4 * (-((d - r_hub) / (1.3 * s)).powi(2)).exp();
            let b = bolts[bolt_k];
            let ba = (p[1] - b[1]).atan2(p[0] - b[0]);
            let chamfer = smoothstep(r_bolt + 3.0 * s, r_bolt, bolt_d);
            shade *= 1.0 - 0.35 * chamfer * (ba - self.light).cos();
            let metal = scale3(self.metal, shade.clamp(0.3, 1.35));
            (lerp3(bg, metal, k), k)
        })
    }
}

// ----------------------------------------------------------------- screw ---

/// Side view of a pan-head machine screw.
#[derive(Clone, Debug)]
pub(crate) struct Screw {
    pub frame: Frame,
    pub s: f32,
    len_k: f32,
    period: f32,
    phase: f32,
    metal: Rgb,
    bg: Rgb,
    bg_seed: u64,
    wear_seed: u64,
}

/// Structural defects of a [`Screw`] (positions in design units along the axis).
#[derive(Clone, Debug, Default)]
pub(crate) struct ScrewMods {
    /// The shank is broken off beyond this axial position (with a jagged edge).
    pub cut: Option<f32>,
    /// The thread is worn flat between these axial positions.
    pub worn: Option<(f32, f32)>,
}

impl Screw {
    pub(crate) const HEAD_END: f32 = -72.0;
    pub(crate) const HEAD_JOIN: f32 = -50.0;
    pub(crate) const TIP: f32 = 72.0;
    pub(crate) const CORE: f32 = 8.5;
    pub(crate) const CREST: f32 = 12.0;
    pub(crate) const HEAD: f32 = 21.0;

    pub(crate) fn sample(rng: &mut Rng, size: usize) -> Self {
        let s = size as f32 / 256.0;
        let mid = size as f32 * 0.5;
        let c = [
            mid + rng.range(-14.0, 14.0) * s,
            mid + rng.range(-14.0, 14.0) * s,
        ];
        let b = rng.range(0.95, 1.05);
        Self {
            frame: Frame::new(c, rng.range(-30.0, 30.0).to_radians()),
            s,
            len_k: rng.range(0.97, 1.03),
            period: 7.0,
            phase: rng.range(0.0, 1.0),
            metal: scale3(jitter3(rng, [0.58, 0.59, 0.62], 0.015), b),
            bg: jitter3(rng, [0.66, 0.57, 0.44], 0.015),
            bg_seed: rng.next_u64(),
            wear_seed: rng.next_u64(),
        }
    }

    /// Local design-unit coordinates `(u along the axis, v across)`.
    pub(crate) fn design(&self, p: P2) -> P2 {
        let q = self.frame.local(p);
        [q[0] / (self.s * self.len_k), q[1] / self.s]
    }

    fn tri(&self, u: f32, v: f32) -> f32 {
        let t = (u + v.signum() * self.period * 0.25) / self.period + self.phase;
        1.0 - 2.0 * (t - t.floor() - 0.5).abs()
    }

    /// Half height of the silhouette at `(u, v)` (design units).
    fn half_height(&self, u: f32, v: f32, m: &ScrewMods) -> f32 {
        if u < Self::HEAD_JOIN {
            let e = Self::HEAD_END + 9.0;
            if u < e {
                Self::HEAD * (1.0 - ((u - e) / 9.5).powi(2)).max(0.0).sqrt()
            } else {
                Self::HEAD
            }
        } else {
            let worn = m.worn.is_some_and(|(a, b)| u >= a && u <= b);
            let tooth = if worn { 0.2 } else { 1.0 };
            let mut hh = Self::CORE + (Self::CREST - Self::CORE) * tooth * self.tri(u, v);
            if u > 56.0 {
                hh *= 1.0 - 0.8 * ((u - 56.0) / 16.0).min(1.0);
            }
            hh
        }
    }

    pub(crate) fn render(&self, size: usize, m: &ScrewMods) -> Rendered {
        let s = self.s;
        let shadow_off = [3.0 * s, 4.5 * s];
        render_with(size, |p| {
            let [u, v] = self.design(p);
            // Background: matte beige card with the screw's soft shadow.
            let [su, sv] = self.design([p[0] - shadow_off[0], p[1] - shadow_off[1]]);
            let sh_h = if su < Self::HEAD_JOIN {
                Self::HEAD
            } else {
                Self::CREST
            };
            let mut shadow = smoothstep(sh_h + 6.0, sh_h - 2.0, sv.abs())
                * smoothstep(Self::TIP + 6.0, Self::TIP - 4.0, su.abs());
            if let Some(c) = m.cut {
                // The broken-off tip casts no shadow.
                shadow *= smoothstep(c + 4.0, c - 3.0, su);
            }
            let g = fbm(self.bg_seed, p[0] / (14.0 * s), p[1] / (14.0 * s), 3);
            let bg = scale3(self.bg, (1.0 + 0.05 * g) * (1.0 - 0.35 * shadow));
            let hh = self.half_height(u, v, m);
            let mut sdf = (v.abs() - hh).max(Self::HEAD_END - u).max(u - Self::TIP);
            // Slot of the head, seen from the side.
            if u < Self::HEAD_END + 6.0 {
                sdf = sdf.max(2.5 - v.abs());
            }
            // Jagged fracture line of a broken shank.
            let fracture = m.cut.map(|c| {
                c + 3.5 * value_noise(self.wear_seed ^ 11, v / 3.0, 0.5) + 1.5 * (v * 1.7).sin()
            });
            if let Some(f) = fracture {
                sdf = sdf.max(u - f);
            }
            let k = cover(sdf * s);
            if k <= 0.0 {
                return (bg, 0.0);
            }
            let n = (v / hh.max(1.0)).clamp(-1.0, 1.0);
            let cyl = (1.0 - n * n).max(0.0).sqrt();
            let spec = (-((n + 0.4) / 0.18).powi(2)).exp();
            let mut shade = 0.38 + 0.5 * cyl + 0.32 * spec;
            if u < Self::HEAD_JOIN {
                // Dome of the head and the shadow line under it.
                let e = Self::HEAD_END + 9.0;
                if u < e {
                    shade *= 0.75 + 0.25 * (1.0 - ((u - e) / 9.5).powi(2)).max(0.0).sqrt();
                }
                shade *= 1.0 - 0.35 * smoothstep(Self::HEAD_JOIN - 3.0, Self::HEAD_JOIN, u);
            } else {
                let worn = m.worn.is_some_and(|(a, b)| u >= a && u <= b);
                if worn {
                    let scuff = value_noise(self.wear_seed, u / 1.5, v / 0.6);
                    shade *= 1.08 + 0.1 * scuff;
                } else {
                    let t = (u + 0.3 * v) / self.period + self.phase;
                    let groove = 0.5 + 0.5 * (TAU * t).cos();
                    shade *= 0.66 + 0.34 * groove;
                }
                if let Some(f) = fracture {
                    // Rough, bright fracture face along the break.
                    if f - u < 4.0 {
                        shade = 0.8 + 0.45 * value_noise(self.wear_seed ^ 13, u / 1.1, v / 1.1);
                    }
                }
            }
            let metal = scale3(self.metal, shade.clamp(0.25, 1.45));
            (lerp3(bg, metal, k), k)
        })
    }
}

// ----------------------------------------------------------------- label ---

/// Fixed artwork of the printed label (identical on every normal image).
#[derive(Clone, Debug)]
pub(crate) struct LabelLayout {
    /// `(u0, u1)` of the white title words in the header band.
    pub title: Vec<(f32, f32)>,
    /// Per text line: `(u0, u1)` of each word.
    pub lines: Vec<Vec<(f32, f32)>>,
    /// Inked barcode modules as `(u0, u1)`.
    pub bars: Vec<(f32, f32)>,
}

impl LabelLayout {
    pub(crate) const W: f32 = 164.0;
    pub(crate) const H: f32 = 112.0;
    pub(crate) const HEADER: f32 = 26.0;
    pub(crate) const TITLE_V: (f32, f32) = (9.0, 17.0);
    pub(crate) const LINE_V: [f32; 3] = [34.0, 46.0, 58.0];
    pub(crate) const LINE_H: f32 = 6.0;
    pub(crate) const BAR_V: (f32, f32) = (72.0, 100.0);
    pub(crate) const LOGO: P2 = [137.0, 47.0];
    pub(crate) const LOGO_R: f32 = 14.0;
    pub(crate) const LOGO_IN: f32 = 6.0;

    /// The artwork is a pure function of this constant seed.
    pub(crate) fn fixed() -> Self {
        let mut r = Rng::new(0x1ABE_1ABE);
        let mut words = |u_start: f32, u_end: f32, lo: f32, hi: f32, gap: f32| {
            let mut out = Vec::new();
            let mut u = u_start;
            loop {
                let w = r.range(lo, hi);
                if u + w > u_end {
                    break;
                }
                out.push((u, u + w));
                u += w + gap;
            }
            out
        };
        let title = words(10.0, 100.0, 14.0, 30.0, 6.0);
        let lines = vec![
            words(12.0, 116.0, 8.0, 26.0, 4.0),
            words(12.0, 110.0, 8.0, 26.0, 4.0),
            words(12.0, 90.0, 8.0, 26.0, 4.0),
        ];
        let mut bars = vec![(12.0, 14.0), (16.0, 18.0)];
        let mut u = 20.0;
        while u < 104.0 {
            let w = 2.0 * (1 + r.below(2)) as f32;
            if r.chance(0.5) {
                bars.push((u, u + w));
            }
            u += w;
        }
        bars.push((106.0, 108.0));
        bars.push((110.0, 112.0));
        Self { title, lines, bars }
    }
}

/// Paper label stuck on cardboard.
#[derive(Clone, Debug)]
pub(crate) struct Label {
    pub frame: Frame,
    pub s: f32,
    pub header: Rgb,
    pub logo: Rgb,
    paper: Rgb,
    ink: Rgb,
    bg: Rgb,
    paper_seed: u64,
    bg_seed: u64,
}

/// Structural (print) defects of a [`Label`].
#[derive(Clone, Debug, Default)]
pub(crate) struct LabelMods {
    /// Logo displaced by this offset (design units).
    pub logo_off: P2,
    /// Words `(line, index)` not printed.
    pub missing_words: Vec<(usize, usize)>,
    /// Barcode span `(u0, u1)` not printed.
    pub missing_bars: Option<(f32, f32)>,
    /// Wrong header colour.
    pub header: Option<Rgb>,
    /// Wrong logo colour.
    pub logo: Option<Rgb>,
}

/// Signed distance of a rounded box (centre `c`, half extents `h`, corner `r`).
fn rbox(p: P2, c: P2, h: P2, r: f32) -> f32 {
    let qx = (p[0] - c[0]).abs() - (h[0] - r);
    let qy = (p[1] - c[1]).abs() - (h[1] - r);
    let ox = qx.max(0.0);
    let oy = qy.max(0.0);
    (ox * ox + oy * oy).sqrt() + qx.max(qy).min(0.0) - r
}

fn span_sdf(u: f32, v: f32, u0: f32, u1: f32, v0: f32, v1: f32, r: f32) -> f32 {
    rbox(
        [u, v],
        [(u0 + u1) * 0.5, (v0 + v1) * 0.5],
        [(u1 - u0) * 0.5, (v1 - v0) * 0.5],
        r,
    )
}

impl Label {
    pub(crate) fn sample(rng: &mut Rng, size: usize) -> Self {
        let s = size as f32 / 256.0;
        let mid = size as f32 * 0.5;
        let c = [
            mid + rng.range(-12.0, 12.0) * s,
            mid + rng.range(-10.0, 10.0) * s,
        ];
        let ink_k = rng.range(0.9, 1.1);
        Self {
            frame: Frame::new(c, rng.range(-5.0, 5.0).to_radians()),
            s,
            header: jitter3(rng, [0.12, 0.30, 0.66], 0.015),
            logo: jitter3(rng, [0.86, 0.30, 0.12], 0.015),
            paper: jitter3(rng, [0.90, 0.89, 0.84], 0.012),
            ink: scale3([0.11, 0.11, 0.13], ink_k),
            bg: jitter3(rng, [0.60, 0.46, 0.30], 0.02),
            paper_seed: rng.next_u64(),
            bg_seed: rng.next_u64(),
        }
    }

    /// Label design coordinates (origin at the top-left corner) of an image point.
    pub(crate) fn design(&self, p: P2) -> P2 {
        let q = self.frame.local(p);
        [
            q[0] / self.s + LabelLayout::W * 0.5,
            q[1] / self.s + LabelLayout::H * 0.5,
        ]
    }

    pub(crate) fn render(&self, size: usize, lay: &LabelLayout, m: &LabelMods) -> Rendered {
        let s = self.s;
        let (w, h) = (LabelLayout::W, LabelLayout::H);
        let header = m.header.unwrap_or(self.header);
        let logo = m.logo.unwrap_or(self.logo);
        let shadow_off = [2.5 * s, 3.5 * s];
        render_with(size, |p| {
            let [u, v] = self.design(p);
            let [su, sv] = self.design([p[0] - shadow_off[0], p[1] - shadow_off[1]]);
            let sh = rbox([su, sv], [w * 0.5, h * 0.5], [w * 0.5, h * 0.5], 6.0);
            let shadow = smoothstep(5.0, -2.0, sh);
            let g = fbm(self.bg_seed, p[0] / (9.0 * s), p[1] / (40.0 * s), 3);
            let bg = scale3(self.bg, (1.0 + 0.07 * g) * (1.0 - 0.3 * shadow));
            let k = cover(rbox([u, v], [w * 0.5, h * 0.5], [w * 0.5, h * 0.5], 6.0) * s);
            if k <= 0.0 {
                return (bg, 0.0);
            }
            let fib = fbm(self.paper_seed, p[0] / (2.5 * s), p[1] / (2.5 * s), 2);
            let paper = scale3(self.paper, 1.0 + 0.025 * fib);
            let ink_tex =
                1.0 + 0.12 * value_noise(self.paper_seed ^ 3, p[0] / (1.5 * s), p[1] / (1.5 * s));
            let ink = scale3(self.ink, ink_tex);
            let mut col = paper;
            let put = |col: &mut Rgb, sdf: f32, c: Rgb| {
                let a = cover(sdf * s);
                if a > 0.0 {
                    *col = lerp3(*col, c, a);
                }
            };
            // Header band with white title words.
            put(&mut col, v - LabelLayout::HEADER, header);
            if v < LabelLayout::HEADER + 1.0 {
                for &(u0, u1) in &lay.title {
                    put(
                        &mut col,
                        span_sdf(
                            u,
                            v,
                            u0,
                            u1,
                            LabelLayout::TITLE_V.0,
                            LabelLayout::TITLE_V.1,
                            1.5,
                        ),
                        paper,
                    );
                }
            }
            // Text lines.
            for (li, &v0) in LabelLayout::LINE_V.iter().enumerate() {
                if v > v0 - 1.0 && v < v0 + LabelLayout::LINE_H + 1.0 {
                    for (wi, &(u0, u1)) in lay.lines[li].iter().enumerate() {
                        if !m.missing_words.contains(&(li, wi)) {
                            put(
                                &mut col,
                                span_sdf(u, v, u0, u1, v0, v0 + LabelLayout::LINE_H, 1.0),
                                ink,
                            );
                        }
                    }
                }
            }
            // Barcode.
            let (bv0, bv1) = LabelLayout::BAR_V;
            if v > bv0 - 1.0 && v < bv1 + 1.0 {
                for &(u0, u1) in &lay.bars {
                    let gone = m.missing_bars.is_some_and(|(a, b)| u0 < b && u1 > a);
                    if !gone {
                        put(&mut col, span_sdf(u, v, u0, u1, bv0, bv1, 0.2), ink);
                    }
                }
            }
            // Price box in the header colour.
            put(
                &mut col,
                span_sdf(u, v, 124.0, 152.0, 76.0, 84.0, 1.0),
                header,
            );
            put(
                &mut col,
                span_sdf(u, v, 129.0, 147.0, 89.0, 96.0, 1.0),
                header,
            );
            // Logo: a ring with a dot.
            let lc = [
                LabelLayout::LOGO[0] + m.logo_off[0],
                LabelLayout::LOGO[1] + m.logo_off[1],
            ];
            let ld = ((u - lc[0]).powi(2) + (v - lc[1]).powi(2)).sqrt();
            let ring = (ld - LabelLayout::LOGO_R).max(LabelLayout::LOGO_IN - ld);
            put(&mut col, ring, logo);
            put(&mut col, ld - 2.5, logo);
            (lerp3(bg, col, k), k)
        })
    }
}
