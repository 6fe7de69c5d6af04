//! Class registry and the per-image rendering pipeline:
//! scene parameters -> defect-free albedo -> (defective albedo) -> camera.
//!
//! The defective albedo is compared with the defect-free one: pixels whose
//! albedo changed by less than [`MIN_DIFF`] (the faint fringe of soft edges
//! and shadows) are reset to the defect-free value. Both albedos then go
//! through the same camera model (same lighting, same sensor-noise field), so
//! a change of at least `MIN_DIFF` (>= 3 grey levels at the darkest lighting)
//! always survives quantisation, and the ground-truth mask is exactly the set
//! of pixels where the defective and defect-free 8-bit images differ.

use crate::canvas::{jitter3, Canvas, Finish};
use crate::defects::{
    anchor, any_angle, color_shift, crack_op, crack_strokes, hole, paint_strokes, random_tint,
    scratch_op, scratch_stroke, stain,
};
use crate::objects::{Flange, FlangeMods, Label, LabelLayout, LabelMods, Screw, ScrewMods};
use crate::rng::{derive, Rng};
use crate::textures;
use crate::{Family, SynthError};
use image::{GrayImage, Luma, RgbImage};

/// Albedo changes below this (max over channels) are not part of a defect.
pub(crate) const MIN_DIFF: f32 = 0.02;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Woven,
    Grained,
    Tiled,
    Flange,
    Screw,
    Label,
}

/// Static description of one class.
#[derive(Debug)]
pub(crate) struct ClassDef {
    pub name: &'static str,
    pub family: Family,
    pub kind: Kind,
    pub defects: &'static [&'static str],
}

const TEXTURE_DEFECTS: &[&str] = &["scratch", "crack", "stain", "hole", "color"];

pub(crate) const CLASSES: [ClassDef; 6] = [
    ClassDef {
        name: "woven",
        family: Family::Texture,
        kind: Kind::Woven,
        defects: TEXTURE_DEFECTS,
    },
    ClassDef {
        name: "grained",
        family: Family::Texture,
        kind: Kind::Grained,
        defects: TEXTURE_DEFECTS,
    },
    ClassDef {
        name: "tiled",
        family: Family::Texture,
        kind: Kind::Tiled,
        defects: TEXTURE_DEFECTS,
    },
    ClassDef {
        name: "flange",
        family: Family::Object,
        kind: Kind::Flange,
        defects: &["scratch", "crack", "stain", "broken", "color"],
    },
    ClassDef {
        name: "screw",
        family: Family::Object,
        kind: Kind::Screw,
        defects: &["scratch", "stain", "broken", "thread", "color"],
    },
    ClassDef {
        name: "label",
        family: Family::Object,
        kind: Kind::Label,
        defects: &["scratch", "stain", "missing", "misplaced", "color"],
    },
];

pub(crate) fn find(name: &str) -> Option<&'static ClassDef> {
    CLASSES.iter().find(|c| c.name == name)
}

/// One parameterised scene that can be re-rendered with structural defects.
enum Scene {
    Texture(Canvas),
    Flange(Flange),
    Screw(Screw),
    Label(Label, LabelLayout),
}

fn build(kind: Kind, rng: &mut Rng, size: usize) -> Scene {
    match kind {
        Kind::Woven => Scene::Texture(textures::woven(rng, size)),
        Kind::Grained => Scene::Texture(textures::grained(rng, size)),
        Kind::Tiled => Scene::Texture(textures::tiled(rng, size)),
        Kind::Flange => Scene::Flange(Flange::sample(rng, size)),
        Kind::Screw => Scene::Screw(Screw::sample(rng, size)),
        Kind::Label => Scene::Label(Label::sample(rng, size), LabelLayout::fixed()),
    }
}

/// Defect-free albedo and object coverage (`None` for textures).
fn render_clean(scene: &Scene, size: usize) -> (Canvas, Option<Vec<f32>>) {
    match scene {
        Scene::Texture(c) => (c.clone(), None),
        Scene::Flange(f) => {
            let r = f.render(size, &FlangeMods::default());
            (r.albedo, Some(r.coverage))
        }
        Scene::Screw(sc) => {
            let r = sc.render(size, &ScrewMods::default());
            (r.albedo, Some(r.coverage))
        }
        Scene::Label(l, lay) => {
            let r = l.render(size, lay, &LabelMods::default());
            (r.albedo, Some(r.coverage))
        }
    }
}

/// Draws defect `defect` into a copy of `clean`.
fn render_defect(
    scene: &Scene,
    clean: &Canvas,
    cov: Option<&[f32]>,
    defect: &str,
    rng: &mut Rng,
    size: usize,
) -> Canvas {
    let s = size as f32 / 256.0;
    let mut a = clean.clone();
    match (scene, defect) {
        // Surface defects shared by all classes.
        (_, "scratch") => {
            let c = anchor(rng, cov, size, 30.0 * s);
            let (ang, len) = match scene {
                Scene::Screw(sc) => (
                    sc.frame.sin.atan2(sc.frame.cos) + rng.range(-0.2, 0.2),
                    rng.range(55.0, 85.0),
                ),
                Scene::Label(..) => (any_angle(rng), rng.range(55.0, 100.0)),
                _ => (any_angle(rng), rng.range(60.0, 115.0)),
            };
            let width = match scene {
                Scene::Screw(_) => rng.range(3.5, 4.5),
                _ => rng.range(2.8, 4.2),
            } * s;
            let st = scratch_stroke(rng, c, ang, len * s, width);
            match scene {
                Scene::Label(..) => paint_strokes(&mut a, cov, &[st], |o| {
                    crate::canvas::lerp3(o, [0.6, 0.6, 0.6], 0.75)
                }),
                _ => {
                    let bright = rng.chance(0.5);
                    paint_strokes(&mut a, cov, &[st], scratch_op(bright));
                }
            }
        }
        (_, "stain") => {
            let c = anchor(rng, cov, size, 24.0 * s);
            let r = match scene {
                Scene::Screw(_) => rng.range(8.0, 13.0),
                _ => rng.range(9.0, 20.0),
            } * s;
            let blob = crate::canvas::Blob::random(rng, c, r, 0.22, 4);
            let palette: &[[f32; 3]] = match scene {
                Scene::Texture(_) => &[[0.10, 0.08, 0.05], [0.50, 0.22, 0.06], [0.30, 0.42, 0.25]],
                Scene::Flange(_) => &[[0.08, 0.07, 0.05], [0.55, 0.25, 0.07], [0.30, 0.40, 0.20]],
                Scene::Screw(_) => &[[0.08, 0.07, 0.05], [0.62, 0.28, 0.07]],
                Scene::Label(..) => &[[0.50, 0.33, 0.16], [0.25, 0.18, 0.10], [0.45, 0.50, 0.20]],
            };
            let base = *rng.pick(palette);
            let col = jitter3(rng, base, 0.02);
            stain(&mut a, cov, &blob, col, rng.range(0.55, 0.75));
        }
        (_, "color") => {
            let c = anchor(rng, cov, size, 30.0 * s);
            let r = match scene {
                Scene::Screw(_) => rng.range(13.0, 20.0),
                Scene::Flange(_) => rng.range(16.0, 26.0),
                _ => rng.range(16.0, 30.0),
            } * s;
            if let Scene::Label(l, lay) = scene {
                // Print colour error: wrong header or logo colour.
                let mut m = LabelMods::default();
                if rng.chance(0.5) {
                    m.header = Some(*rng.pick(&[
                        [0.15, 0.52, 0.25],
                        [0.45, 0.18, 0.55],
                        [0.48, 0.62, 0.88],
                    ]));
                } else {
                    m.logo = Some(*rng.pick(&[
                        [0.15, 0.35, 0.80],
                        [0.20, 0.60, 0.25],
                        [0.90, 0.78, 0.15],
                    ]));
                }
                return l.render(size, lay, &m).albedo;
            }
            let blob = crate::canvas::Blob::random(rng, c, r, 0.2, 4);
            let (tint, off) = random_tint(rng);
            color_shift(&mut a, cov, &blob, tint, off);
        }
        // Texture-only defects.
        (Scene::Texture(_), "crack") => {
            let c = anchor(rng, None, size, 40.0 * s);
            let (ang, len, width) = (
                any_angle(rng),
                rng.range(60.0, 110.0) * s,
                rng.range(2.4, 3.4) * s,
            );
            let strokes = crack_strokes(rng, c, ang, len, width, s);
            paint_strokes(&mut a, None, &strokes, crack_op);
        }
        (Scene::Texture(_), "hole") => {
            let c = anchor(rng, None, size, 24.0 * s);
            let r = rng.range(8.0, 14.0) * s;
            let blob = crate::canvas::Blob::random(rng, c, r, 0.25, 5);
            hole(&mut a, None, &blob);
        }
        // Flange.
        (Scene::Flange(f), "crack") => {
            // Starts at the outer rim and runs inwards.
            let psi = any_angle(rng);
            let r0 = f.r_out - 1.0;
            let start = [f.c[0] + r0 * psi.cos(), f.c[1] + r0 * psi.sin()];
            let ang = psi + std::f32::consts::PI + rng.range(-0.35, 0.35);
            let (len, width) = (rng.range(40.0, 60.0) * s, rng.range(2.6, 3.6) * s);
            let strokes = crack_strokes(rng, start, ang, len, width, s);
            paint_strokes(&mut a, cov, &strokes, crack_op);
        }
        (Scene::Flange(f), "broken") => {
            let psi = any_angle(rng);
            let rr = f.r_out + rng.range(-2.0, 3.0) * s;
            let m = FlangeMods {
                bite: Some((
                    [f.c[0] + rr * psi.cos(), f.c[1] + rr * psi.sin()],
                    rng.range(14.0, 21.0) * s,
                    rng.next_u64(),
                )),
            };
            return f.render(size, &m).albedo;
        }
        // Screw.
        (Scene::Screw(sc), "broken") => {
            let m = ScrewMods {
                cut: Some(rng.range(34.0, 54.0)),
                ..Default::default()
            };
            return sc.render(size, &m).albedo;
        }
        (Scene::Screw(sc), "thread") => {
            let len = rng.range(14.0, 26.0);
            let a0 = rng.range(Screw::HEAD_JOIN + 6.0, 52.0 - len);
            let m = ScrewMods {
                worn: Some((a0, a0 + len)),
                ..Default::default()
            };
            return sc.render(size, &m).albedo;
        }
        // Label.
        (Scene::Label(l, lay), "missing") => {
            let mut m = LabelMods::default();
            if rng.chance(0.5) {
                let li = rng.below(lay.lines.len());
                let n = lay.lines[li].len();
                let k = 3 + rng.below(2);
                let first = rng.below(n.saturating_sub(k) + 1);
                m.missing_words = (first..(first + k).min(n)).map(|w| (li, w)).collect();
            } else {
                let w = rng.range(20.0, 36.0);
                let u0 = rng.range(14.0, 110.0 - w);
                m.missing_bars = Some((u0, u0 + w));
            }
            return l.render(size, lay, &m).albedo;
        }
        (Scene::Label(l, lay), "misplaced") => {
            let ang = any_angle(rng);
            let mag = rng.range(14.0, 24.0);
            let (cu, cv) = (LabelLayout::LOGO[0], LabelLayout::LOGO[1]);
            let nu = (cu + mag * ang.cos()).clamp(18.0, 146.0);
            let nv = (cv + mag * ang.sin()).clamp(30.0, 94.0);
            let m = LabelMods {
                logo_off: [nu - cu, nv - cv],
                ..Default::default()
            };
            return l.render(size, lay, &m).albedo;
        }
        _ => {}
    }
    a
}

/// Resets sub-threshold changes and returns the changed-pixel region.
fn settle(clean: &Canvas, def: &mut Canvas) -> Vec<bool> {
    let mut region = vec![false; clean.px.len()];
    for (i, (c, d)) in clean.px.iter().zip(def.px.iter_mut()).enumerate() {
        let m = (d[0] - c[0])
            .abs()
            .max((d[1] - c[1]).abs())
            .max((d[2] - c[2]).abs());
        if m < MIN_DIFF {
            *d = *c;
        } else {
            region[i] = true;
        }
    }
    region
}

/// Output of [`render`].
pub(crate) struct Output {
    pub image: RgbImage,
    pub clean: RgbImage,
    pub mask: Option<GrayImage>,
}

/// Smallest accepted defect area (pixels) for an image of `size x size`.
pub(crate) fn min_defect_area(size: usize) -> usize {
    (size * size / 1000).max(16)
}

/// Renders one image of class `def` from its per-image seed.
pub(crate) fn render(
    def: &ClassDef,
    image_seed: u64,
    size: usize,
    defect: Option<&str>,
) -> Result<Output, SynthError> {
    let mut scene_rng = Rng::new(derive(&[image_seed, 1]));
    let finish = Finish::random(&mut Rng::new(derive(&[image_seed, 2])));
    let scene = build(def.kind, &mut scene_rng, size);
    let (clean_albedo, cov) = render_clean(&scene, size);
    let clean = finish.apply(&clean_albedo);
    let Some(defect) = defect else {
        return Ok(Output {
            image: clean.clone(),
            clean,
            mask: None,
        });
    };
    const ATTEMPTS: u64 = 16;
    for attempt in 0..ATTEMPTS {
        let mut rng = Rng::new(derive(&[image_seed, 3, attempt]));
        let mut albedo = render_defect(
            &scene,
            &clean_albedo,
            cov.as_deref(),
            defect,
            &mut rng,
            size,
        );
        let region = settle(&clean_albedo, &mut albedo);
        let image = finish.apply(&albedo);
        let mut mask = GrayImage::new(size as u32, size as u32);
        let mut area = 0;
        for (i, ((m, a), b)) in mask
            .pixels_mut()
            .zip(image.pixels())
            .zip(clean.pixels())
            .enumerate()
        {
            if region[i] && a != b {
                *m = Luma([255]);
                area += 1;
            }
        }
        if area >= min_defect_area(size) {
            // Pixels of the region that quantised to the clean value (only
            // possible through clipping) already equal the clean image.
            return Ok(Output {
                image,
                clean,
                mask: Some(mask),
            });
        }
    }
    Err(SynthError::Degenerate {
        class: def.name.to_string(),
        defect: defect.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settle_drops_faint_changes_and_keeps_real_ones() {
        let clean = Canvas {
            w: 3,
            h: 1,
            px: vec![[0.5; 3]; 3],
        };
        let mut def = clean.clone();
        def.px[0] = [0.5 + MIN_DIFF * 0.5, 0.5, 0.5];
        def.px[1] = [0.5, 0.5 - MIN_DIFF * 1.5, 0.5];
        let region = settle(&clean, &mut def);
        assert_eq!(region, vec![false, true, false]);
        assert_eq!(def.px[0], clean.px[0]);
        assert_eq!(def.px[1], [0.5, 0.5 - MIN_DIFF * 1.5, 0.5]);
    }

    #[test]
    fn every_class_lists_distinct_defects() {
        for c in &CLASSES {
            let mut d = c.defects.to_vec();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), c.defects.len(), "{}", c.name);
            assert!(find(c.name).is_some());
        }
        assert!(find("unknown").is_none());
    }
}
