//! Pictures of anomaly maps for `omniad predict`: heatmap overlays (a perceptual colour map
//! blended on the image) and binary masks, written as PNG files atomically.
//!
//! Everything here works on plain row-major buffers at the ORIGINAL image size: the anomaly map
//! given to [`overlay`] and [`binary_mask`] is `[H, W]` (`H * W` values, row `y` at
//! `y * W .. (y + 1) * W`) for an image of `W x H` pixels, in the units of
//! [`omniad_model::Prediction::anomaly_map`] (`1 - cos` averaged over scales, in `[0, 2]`).
//!
//! The colour map is Turbo (Google's improved jet, via the `colorous` crate), sampled into a
//! 256-entry lookup table: near-black then blue = low, green/yellow = middle, dark red = high.
use std::path::{Path, PathBuf};

use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, GrayImage, ImageEncoder, RgbImage};
use omniad_io::{write_atomic, WriteError};

/// Errors of overlay and mask rendering and writing.
#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    /// The anomaly map does not have one value per pixel of the image.
    #[error("anomaly map has {got} values, expected {width}x{height} = {}", *width as u64 * *height as u64)]
    MapSize {
        /// Number of values given.
        got: usize,
        /// Image width, pixels.
        width: u32,
        /// Image height, pixels.
        height: u32,
    },
    /// The blend factor is outside `[0, 1]` (or not a number).
    #[error("overlay alpha {0} must be in [0, 1]")]
    Alpha(f32),
    /// PNG encoding failed.
    #[error("{}: cannot encode PNG: {msg}", path.display())]
    Encode {
        /// Destination file.
        path: PathBuf,
        /// Encoder message.
        msg: String,
    },
    /// Writing the file failed (the message names it; nothing is left behind).
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Number of entries of the colour lookup table (one per 8-bit level).
const LUT_LEN: usize = 256;

/// The Turbo colour map sampled at `LUT_LEN` evenly spaced points of `[0, 1]`.
fn turbo_lut() -> Vec<[u8; 3]> {
    (0..LUT_LEN)
        .map(|i| {
            let c = colorous::TURBO.eval_continuous(i as f64 / (LUT_LEN - 1) as f64);
            [c.r, c.g, c.b]
        })
        .collect()
}

/// Turbo colour of `t` in `[0, 1]` (values outside are clamped, NaN counts as 0), quantised to
/// 256 levels: `t = 0` is near black, `0.1..0.25` blue, `0.5` green-yellow, `1` dark red.
pub fn turbo(t: f64) -> [u8; 3] {
    let c = colorous::TURBO.eval_continuous(lut_index(t) as f64 / (LUT_LEN - 1) as f64);
    [c.r, c.g, c.b]
}

fn lut_index(t: f64) -> usize {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    (t * (LUT_LEN - 1) as f64).round() as usize
}

/// The map values shown at the two ends of the colour map.
///
/// With a decision threshold `t > 0`: `(0, 2 t)`, so the threshold sits in the middle of the
/// colour map (green-yellow) and the colours of different images are comparable. Without one
/// (or with `t <= 0`): the map's own `(min, max)` over its finite values, i.e. each picture is
/// stretched to the full colour range and only shows where the map is highest *within* that
/// image. An empty or all-NaN map gives `(0, 0)`.
pub fn heatmap_range(map: &[f32], threshold: Option<f64>) -> (f32, f32) {
    match threshold {
        Some(t) if t > 0.0 && t.is_finite() => (0.0, (2.0 * t) as f32),
        _ => {
            let (lo, hi) = map
                .iter()
                .filter(|v| v.is_finite())
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                    (lo.min(v), hi.max(v))
                });
            if lo.is_finite() {
                (lo, hi)
            } else {
                (0.0, 0.0)
            }
        }
    }
}

fn check_map(map: &[f32], width: u32, height: u32) -> Result<(), OverlayError> {
    if map.len() as u64 != width as u64 * height as u64 {
        return Err(OverlayError::MapSize {
            got: map.len(),
            width,
            height,
        });
    }
    Ok(())
}

/// Heatmap overlay: each pixel of `image` becomes
/// `round((1 - alpha) * image + alpha * turbo((map - lo) / (hi - lo)))` per channel.
///
/// `map`: `[H, W]` for the `W x H` image; `range = (lo, hi)` from [`heatmap_range`] (a range
/// with `hi <= lo` paints every pixel with the colour of 0); `alpha` in `[0, 1]` (0 returns the
/// image unchanged, 1 the bare colour map). Returns an 8-bit RGB image of the image's size.
///
/// # Errors
/// [`OverlayError::MapSize`] if `map` does not have `W * H` values, [`OverlayError::Alpha`] if
/// `alpha` is outside `[0, 1]`.
pub fn overlay(
    image: &RgbImage,
    map: &[f32],
    range: (f32, f32),
    alpha: f32,
) -> Result<RgbImage, OverlayError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(OverlayError::Alpha(alpha));
    }
    check_map(map, image.width(), image.height())?;
    let lut = turbo_lut();
    let (lo, hi) = (f64::from(range.0), f64::from(range.1));
    let span = hi - lo;
    let a = f64::from(alpha);
    let mut out = image.clone();
    for (px, &v) in out.pixels_mut().zip(map) {
        let t = if span > 0.0 {
            (f64::from(v) - lo) / span
        } else {
            0.0
        };
        let colour = lut[lut_index(t)];
        for (c, col) in px.0.iter_mut().zip(colour) {
            *c = ((1.0 - a) * f64::from(*c) + a * f64::from(col))
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    Ok(out)
}

/// Binary mask of a `width x height` image: 255 where `map >= threshold`, 0 elsewhere (NaN
/// counts as below). `map`: `[H, W]`, same units as the threshold (the image score's).
///
/// # Errors
/// [`OverlayError::MapSize`] if `map` does not have `width * height` values.
pub fn binary_mask(
    map: &[f32],
    width: u32,
    height: u32,
    threshold: f64,
) -> Result<GrayImage, OverlayError> {
    check_map(map, width, height)?;
    let pixels: Vec<u8> = map
        .iter()
        .map(|&v| if f64::from(v) >= threshold { 255 } else { 0 })
        .collect();
    GrayImage::from_raw(width, height, pixels).ok_or(OverlayError::MapSize {
        got: map.len(),
        width,
        height,
    })
}

/// Encodes 8-bit pixels (`Rgb8` or `L8`, row-major, `width x height`) as PNG with the `image`
/// crate's encoder and writes them to `path` atomically (temporary file in the same folder,
/// fsync, rename): `path` is either the complete new file or untouched.
///
/// # Errors
/// [`OverlayError::Encode`] or [`OverlayError::Write`], naming `path`.
fn write_png(
    path: &Path,
    raw: &[u8],
    width: u32,
    height: u32,
    colour: ExtendedColorType,
) -> Result<(), OverlayError> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(raw, width, height, colour)
        .map_err(|e| OverlayError::Encode {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

/// Writes an RGB image as PNG atomically (see the module docs).
///
/// # Errors
/// [`OverlayError::Encode`] or [`OverlayError::Write`], naming `path`.
pub fn write_rgb_png(path: &Path, image: &RgbImage) -> Result<(), OverlayError> {
    write_png(
        path,
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::Rgb8,
    )
}

/// Writes a grayscale image (e.g. a [`binary_mask`]) as PNG atomically.
///
/// # Errors
/// [`OverlayError::Encode`] or [`OverlayError::Write`], naming `path`.
pub fn write_gray_png(path: &Path, image: &GrayImage) -> Result<(), OverlayError> {
    write_png(
        path,
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::L8,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turbo_ends_and_middle() {
        let lo = turbo(0.0);
        let hi = turbo(1.0);
        let mid = turbo(0.5);
        // Turbo starts near black, turns blue, is green in the middle and ends dark red.
        assert!(lo.iter().all(|&c| c < 60), "{lo:?}");
        let blue = turbo(0.15);
        assert!(blue[2] > blue[0] && blue[2] > blue[1], "{blue:?}");
        assert!(hi[0] > hi[1] && hi[0] > hi[2], "{hi:?}");
        assert!(mid[1] > mid[0] && mid[1] > mid[2], "{mid:?}");
        assert_eq!(turbo(-3.0), lo);
        assert_eq!(turbo(f64::NAN), lo);
        assert_eq!(turbo(7.0), hi);
    }

    #[test]
    fn range_with_and_without_threshold() {
        let map = [0.2f32, f32::NAN, 0.7, 0.4];
        assert_eq!(heatmap_range(&map, Some(0.25)), (0.0, 0.5));
        assert_eq!(heatmap_range(&map, None), (0.2, 0.7));
        assert_eq!(heatmap_range(&map, Some(0.0)), (0.2, 0.7));
        assert_eq!(heatmap_range(&[], None), (0.0, 0.0));
    }

    #[test]
    fn overlay_blends_exactly() {
        let img = RgbImage::from_raw(2, 1, vec![100, 50, 200, 0, 0, 0]).unwrap();
        let map = [0.0f32, 1.0];
        let same = overlay(&img, &map, (0.0, 1.0), 0.0).unwrap();
        assert_eq!(same, img);
        let half = overlay(&img, &map, (0.0, 1.0), 0.5).unwrap();
        let (c0, c1) = (turbo(0.0), turbo(1.0));
        let blend = |a: u8, b: u8| ((a as f64 + b as f64) / 2.0).round() as u8;
        assert_eq!(
            half.get_pixel(0, 0).0,
            [blend(100, c0[0]), blend(50, c0[1]), blend(200, c0[2])]
        );
        assert_eq!(
            half.get_pixel(1, 0).0,
            [blend(0, c1[0]), blend(0, c1[1]), blend(0, c1[2])]
        );
        let full = overlay(&img, &map, (0.0, 1.0), 1.0).unwrap();
        assert_eq!(full.get_pixel(1, 0).0, c1);
    }

    #[test]
    fn overlay_rejects_bad_input() {
        let img = RgbImage::new(3, 2);
        assert!(matches!(
            overlay(&img, &[0.0; 5], (0.0, 1.0), 0.5),
            Err(OverlayError::MapSize { got: 5, .. })
        ));
        assert!(matches!(
            overlay(&img, &[0.0; 6], (0.0, 1.0), 1.5),
            Err(OverlayError::Alpha(_))
        ));
        assert!(matches!(
            overlay(&img, &[0.0; 6], (0.0, 1.0), f32::NAN),
            Err(OverlayError::Alpha(_))
        ));
    }

    #[test]
    fn mask_thresholds_inclusively() {
        let m = binary_mask(&[0.1, 0.5, 0.9, f32::NAN], 2, 2, 0.5).unwrap();
        assert_eq!(m.as_raw(), &vec![0, 255, 255, 0]);
        assert!(binary_mask(&[0.1; 3], 2, 2, 0.5).is_err());
    }

    #[test]
    fn png_round_trip_and_no_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.png");
        let m = binary_mask(&[0.1, 0.5, 0.9, 0.0, 1.0, 0.2], 3, 2, 0.5).unwrap();
        write_gray_png(&p, &m).unwrap();
        let back = image::open(&p).unwrap().to_luma8();
        assert_eq!(back, m);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A destination inside a missing folder is an error naming it.
        let bad = dir.path().join("missing").join("x.png");
        let err = write_gray_png(&bad, &m).unwrap_err().to_string();
        assert!(err.contains("x.png"), "{err}");
    }
}
