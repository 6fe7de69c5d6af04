//! Float RGB albedo canvas, 2-D shape helpers and the camera model
//! (lighting, colour gain, sensor noise, 8-bit quantisation).

use crate::rng::Rng;
use image::RgbImage;

/// Linear RGB triple, each channel nominally in `[0, 1]`.
pub(crate) type Rgb = [f32; 3];

/// Row-major `[H, W]` grid of RGB albedo values in `[0, 1]`.
#[derive(Clone, Debug)]
pub(crate) struct Canvas {
    pub w: usize,
    pub h: usize,
    pub px: Vec<Rgb>,
}

impl Canvas {
    /// Fills every pixel from `f(x, y)` evaluated at the pixel centre.
    pub(crate) fn from_fn(w: usize, h: usize, mut f: impl FnMut(f32, f32) -> Rgb) -> Self {
        let mut px = Vec::with_capacity(w * h);
        for y in 0..h {
            for x in 0..w {
                px.push(f(x as f32 + 0.5, y as f32 + 0.5));
            }
        }
        Self { w, h, px }
    }
}

pub(crate) fn lerp(a: f32, b: f32, t: f32) -> f32 {
    a + (b - a) * t
}

pub(crate) fn lerp3(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        lerp(a[0], b[0], t),
        lerp(a[1], b[1], t),
        lerp(a[2], b[2], t),
    ]
}

pub(crate) fn scale3(a: Rgb, k: f32) -> Rgb {
    [a[0] * k, a[1] * k, a[2] * k]
}

pub(crate) fn mul3(a: Rgb, b: Rgb) -> Rgb {
    [a[0] * b[0], a[1] * b[1], a[2] * b[2]]
}

pub(crate) fn clamp3(a: Rgb, lo: f32, hi: f32) -> Rgb {
    [a[0].clamp(lo, hi), a[1].clamp(lo, hi), a[2].clamp(lo, hi)]
}

/// Adds `amp * U(-1, 1)` independently to each channel.
pub(crate) fn jitter3(rng: &mut Rng, a: Rgb, amp: f32) -> Rgb {
    [
        a[0] + rng.range(-amp, amp),
        a[1] + rng.range(-amp, amp),
        a[2] + rng.range(-amp, amp),
    ]
}

pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Anti-aliased coverage of a signed distance (negative inside), 1-pixel ramp.
pub(crate) fn cover(sdf: f32) -> f32 {
    (0.5 - sdf).clamp(0.0, 1.0)
}

/// 2-D point in pixel units.
pub(crate) type P2 = [f32; 2];

/// Distance from `p` to the segment `a`–`b`.
pub(crate) fn seg_dist(p: P2, a: P2, b: P2) -> f32 {
    let (vx, vy) = (b[0] - a[0], b[1] - a[1]);
    let (wx, wy) = (p[0] - a[0], p[1] - a[1]);
    let l2 = vx * vx + vy * vy;
    let t = if l2 > 0.0 {
        ((wx * vx + wy * vy) / l2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (dx, dy) = (wx - t * vx, wy - t * vy);
    (dx * dx + dy * dy).sqrt()
}

/// Pixel rectangle `[x0, x1) x [y0, y1)`, clipped to a canvas.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BBox {
    pub x0: usize,
    pub y0: usize,
    pub x1: usize,
    pub y1: usize,
}

impl BBox {
    /// Box around `[minx, maxx] x [miny, maxy]` grown by `pad`, clipped to `w x h`.
    pub(crate) fn around(
        minx: f32,
        miny: f32,
        maxx: f32,
        maxy: f32,
        pad: f32,
        w: usize,
        h: usize,
    ) -> Self {
        let c = |v: f32, hi: usize| -> usize { v.clamp(0.0, hi as f32) as usize };
        Self {
            x0: c((minx - pad).floor(), w),
            y0: c((miny - pad).floor(), h),
            x1: c((maxx + pad).ceil() + 1.0, w),
            y1: c((maxy + pad).ceil() + 1.0, h),
        }
    }
}

/// Thick open polyline (a scratch or a crack).
#[derive(Clone, Debug)]
pub(crate) struct Stroke {
    pub pts: Vec<P2>,
    pub width: f32,
}

impl Stroke {
    pub(crate) fn bbox(&self, w: usize, h: usize) -> BBox {
        let mut b = [f32::MAX, f32::MAX, f32::MIN, f32::MIN];
        for p in &self.pts {
            b[0] = b[0].min(p[0]);
            b[1] = b[1].min(p[1]);
            b[2] = b[2].max(p[0]);
            b[3] = b[3].max(p[1]);
        }
        BBox::around(b[0], b[1], b[2], b[3], self.width + 2.0, w, h)
    }

    /// Anti-aliased coverage of the stroke at `p`.
    pub(crate) fn coverage(&self, p: P2) -> f32 {
        let mut d = f32::MAX;
        for s in self.pts.windows(2) {
            d = d.min(seg_dist(p, s[0], s[1]));
        }
        cover(d - self.width * 0.5)
    }
}

/// Irregular round blob: radius `r * (1 + sum a_k sin(k theta + phi_k))`.
#[derive(Clone, Debug)]
pub(crate) struct Blob {
    pub c: P2,
    pub r: f32,
    pub harm: Vec<(f32, f32, f32)>, // (k, amplitude, phase)
}

impl Blob {
    /// Random blob with `n` harmonics of relative amplitude up to `rough`.
    pub(crate) fn random(rng: &mut Rng, c: P2, r: f32, rough: f32, n: usize) -> Self {
        let harm = (0..n)
            .map(|i| {
                let k = (i + 2) as f32;
                (
                    k,
                    rng.range(0.3, 1.0) * rough / (1.0 + 0.3 * i as f32),
                    rng.range(0.0, std::f32::consts::TAU),
                )
            })
            .collect();
        Self { c, r, harm }
    }

    /// Largest possible radius.
    pub(crate) fn r_max(&self) -> f32 {
        self.r * (1.0 + self.harm.iter().map(|h| h.1).sum::<f32>())
    }

    pub(crate) fn bbox(&self, w: usize, h: usize) -> BBox {
        let r = self.r_max();
        BBox::around(
            self.c[0] - r,
            self.c[1] - r,
            self.c[0] + r,
            self.c[1] + r,
            2.0,
            w,
            h,
        )
    }

    /// Approximate signed distance (negative inside).
    pub(crate) fn sdf(&self, p: P2) -> f32 {
        let (dx, dy) = (p[0] - self.c[0], p[1] - self.c[1]);
        let d = (dx * dx + dy * dy).sqrt();
        let th = dy.atan2(dx);
        let mut k = 1.0;
        for &(n, a, ph) in &self.harm {
            k += a * (n * th + ph).sin();
        }
        d - self.r * k
    }

    pub(crate) fn coverage(&self, p: P2) -> f32 {
        cover(self.sdf(p))
    }
}

/// Rotation by `angle` (radians) around `c`, returning local `(u, v)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Frame {
    pub c: P2,
    pub cos: f32,
    pub sin: f32,
}

impl Frame {
    pub(crate) fn new(c: P2, angle: f32) -> Self {
        Self {
            c,
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    /// Image point to local coordinates.
    pub(crate) fn local(&self, p: P2) -> P2 {
        let (dx, dy) = (p[0] - self.c[0], p[1] - self.c[1]);
        [
            dx * self.cos + dy * self.sin,
            -dx * self.sin + dy * self.cos,
        ]
    }
}

/// Camera / illumination model applied identically to the defect-free and
/// the defective albedo of one image, so that both share lighting and noise.
#[derive(Clone, Debug)]
pub(crate) struct Finish {
    /// Global brightness factor.
    pub brightness: f32,
    /// Linear illumination gradient across the image (relative, per image width).
    pub grad: [f32; 2],
    /// Radial fall-off strength (0 = none).
    pub vignette: f32,
    /// Per-channel white-balance gain.
    pub gain: Rgb,
    /// Sensor noise standard deviation (in `[0, 1]` intensity units).
    pub sigma: f32,
    /// Seed of the sensor-noise field.
    pub noise_seed: u64,
}

impl Finish {
    /// Random natural variation of illumination and sensor noise.
    pub(crate) fn random(rng: &mut Rng) -> Self {
        Self {
            brightness: rng.range(0.9, 1.07),
            grad: [rng.range(-0.12, 0.12), rng.range(-0.12, 0.12)],
            vignette: rng.range(0.0, 0.12),
            gain: [
                rng.range(0.975, 1.025),
                rng.range(0.975, 1.025),
                rng.range(0.975, 1.025),
            ],
            sigma: rng.range(0.006, 0.016),
            noise_seed: rng.next_u64(),
        }
    }

    /// Renders the albedo to an 8-bit RGB image.
    pub(crate) fn apply(&self, a: &Canvas) -> RgbImage {
        let mut rng = Rng::new(self.noise_seed);
        let mut img = RgbImage::new(a.w as u32, a.h as u32);
        let (wf, hf) = (a.w as f32, a.h as f32);
        let out: &mut [u8] = &mut img;
        let mut i = 0;
        for y in 0..a.h {
            let ny = (y as f32 + 0.5) / hf - 0.5;
            for x in 0..a.w {
                let nx = (x as f32 + 0.5) / wf - 0.5;
                let light = self.brightness
                    * (1.0 + self.grad[0] * nx + self.grad[1] * ny)
                    * (1.0 - self.vignette * 2.0 * (nx * nx + ny * ny));
                let p = a.px[y * a.w + x];
                for (v, g) in p.iter().zip(self.gain) {
                    let v = v * light * g + self.sigma * rng.gauss();
                    out[i] = (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
                    i += 1;
                }
            }
        }
        img
    }
}
