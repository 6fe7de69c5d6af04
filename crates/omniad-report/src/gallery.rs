//! Per-class galleries: which images to show (worst false negatives, worst false positives, a
//! few true positives) and their thumbnails (image | ground truth | anomaly map | predicted
//! mask) as `data:` URIs.
use std::io::Cursor;
use std::path::Path;

use base64::Engine as _;
use image::imageops::FilterType;
use image::{DynamicImage, GrayImage, ImageFormat, RgbImage};
use serde::Serialize;

/// Why an image is in the gallery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Anomalous image scored below the threshold (missed), lowest score first.
    FalseNegative,
    /// Normal image scored at or above the threshold (false alarm), highest score first.
    FalsePositive,
    /// Anomalous image scored at or above the threshold, highest score first.
    TruePositive,
}

impl Kind {
    /// Short label shown in the gallery.
    pub fn label(self) -> &'static str {
        match self {
            Kind::FalseNegative => "false negative (missed)",
            Kind::FalsePositive => "false positive (false alarm)",
            Kind::TruePositive => "true positive",
        }
    }
}

/// Picks at most `budget` images of one class from `(score, anomalous)` pairs (indices into
/// it are returned), taking in turn the next worst false negative (lowest score), the next worst
/// false positive (highest score) and the next true positive (highest score), so that a kind
/// with fewer images leaves its share to the others. Predicted anomalous = `score >= threshold`.
pub fn select(items: &[(f32, bool)], threshold: f64, budget: usize) -> Vec<(usize, Kind)> {
    let flagged = |s: f32| s as f64 >= threshold;
    let mut fneg: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].1 && !flagged(items[i].0))
        .collect();
    fneg.sort_by(|&a, &b| items[a].0.total_cmp(&items[b].0));
    let mut fpos: Vec<usize> = (0..items.len())
        .filter(|&i| !items[i].1 && flagged(items[i].0))
        .collect();
    fpos.sort_by(|&a, &b| items[b].0.total_cmp(&items[a].0));
    let mut tpos: Vec<usize> = (0..items.len())
        .filter(|&i| items[i].1 && flagged(items[i].0))
        .collect();
    tpos.sort_by(|&a, &b| items[b].0.total_cmp(&items[a].0));
    let mut queues = [
        (fneg.into_iter(), Kind::FalseNegative),
        (fpos.into_iter(), Kind::FalsePositive),
        (tpos.into_iter(), Kind::TruePositive),
    ];
    let mut picked = Vec::new();
    while picked.len() < budget {
        let mut any = false;
        for (q, kind) in queues.iter_mut() {
            if picked.len() == budget {
                break;
            }
            if let Some(i) = q.next() {
                picked.push((i, *kind));
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    // grouped by kind for display, each kind in its own order
    picked.sort_by_key(|&(_, k)| k as u8);
    picked
}

fn data_uri(img: DynamicImage, format: ImageFormat) -> Result<String, String> {
    let mut bytes = Vec::new();
    let mime = match format {
        ImageFormat::Jpeg => "image/jpeg",
        _ => "image/png",
    };
    let img = match format {
        // JPEG has no alpha or 16-bit samples
        ImageFormat::Jpeg => DynamicImage::ImageRgb8(img.to_rgb8()),
        _ => img,
    };
    img.write_to(&mut Cursor::new(&mut bytes), format)
        .map_err(|e| format!("{mime} of {}x{} pixels: {e}", img.width(), img.height()))?;
    Ok(format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// The input image as a `size x size` JPEG `data:` URI.
///
/// # Errors
/// The file cannot be read or decoded (the message names it).
pub fn image_thumbnail(path: &Path, size: u32) -> Result<String, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let img = img.resize_exact(size, size, FilterType::Triangle);
    data_uri(img, ImageFormat::Jpeg).map_err(|e| format!("{}: {e}", path.display()))
}

/// A 0/1 mask (`h x w`) as a `size x size` black/white PNG `data:` URI (nearest neighbour).
///
/// # Errors
/// The PNG encoder's message (e.g. for a size of 0).
pub fn mask_thumbnail(mask: &[u8], h: usize, w: usize, size: u32) -> Result<String, String> {
    let g = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        image::Luma([if mask[y as usize * w + x as usize] != 0 {
            255
        } else {
            0
        }])
    });
    let g = image::imageops::resize(&g, size, size, FilterType::Nearest);
    data_uri(DynamicImage::ImageLuma8(g), ImageFormat::Png)
}

/// The predicted mask `map >= threshold` as a PNG `data:` URI.
///
/// # Errors
/// As [`mask_thumbnail`].
pub fn predicted_mask_thumbnail(
    map: &[f32],
    h: usize,
    w: usize,
    threshold: f64,
    size: u32,
) -> Result<String, String> {
    let m: Vec<u8> = map.iter().map(|&v| (v as f64 >= threshold) as u8).collect();
    mask_thumbnail(&m, h, w, size)
}

/// The anomaly map in the Turbo colour map over `[0, 2 * threshold]` (the threshold is the
/// middle colour, as in `omniad predict`'s overlays), as a JPEG `data:` URI.
///
/// # Errors
/// The JPEG encoder's message (e.g. for a size of 0).
pub fn map_thumbnail(
    map: &[f32],
    h: usize,
    w: usize,
    threshold: f64,
    size: u32,
) -> Result<String, String> {
    let hi = (2.0 * threshold).max(f64::MIN_POSITIVE);
    let img = RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = map[y as usize * w + x as usize] as f64;
        let c = colorous::TURBO.eval_continuous((v / hi).clamp(0.0, 1.0));
        image::Rgb([c.r, c.g, c.b])
    });
    let img = image::imageops::resize(&img, size, size, FilterType::Triangle);
    data_uri(DynamicImage::ImageRgb8(img), ImageFormat::Jpeg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_takes_kinds_in_turn_and_respects_the_budget() {
        // threshold 0.5: FN = 0.1 (idx0), 0.3 (idx1); FP = 0.9 (idx2), 0.6 (idx3);
        // TP = 0.8 (idx4), 0.7 (idx5), 0.95 (idx6); TN = 0.2 (idx7)
        let items = [
            (0.1, true),
            (0.3, true),
            (0.9, false),
            (0.6, false),
            (0.8, true),
            (0.7, true),
            (0.95, true),
            (0.2, false),
        ];
        let s = select(&items, 0.5, 4);
        assert_eq!(
            s,
            vec![
                (0, Kind::FalseNegative),
                (1, Kind::FalseNegative),
                (2, Kind::FalsePositive),
                (6, Kind::TruePositive)
            ]
        );
        let all = select(&items, 0.5, 100);
        assert_eq!(all.len(), 7, "every FN, FP and TP, never a TN");
        assert!(select(&items, 0.5, 0).is_empty());
        // no errors at all: true positives fill the budget
        let s = select(&[(0.9, true), (0.8, true), (0.1, false)], 0.5, 2);
        assert_eq!(s, vec![(0, Kind::TruePositive), (1, Kind::TruePositive)]);
    }

    #[test]
    fn thumbnails_have_the_fixed_size() {
        use base64::Engine as _;
        let decode = |uri: &str| {
            let b64 = uri.split_once(";base64,").unwrap().1;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            image::load_from_memory(&bytes).unwrap()
        };
        let mask = [0u8, 1, 1, 0, 0, 0];
        let m = decode(&mask_thumbnail(&mask, 2, 3, 48).unwrap());
        assert_eq!((m.width(), m.height()), (48, 48));
        let map = [0.0f32, 0.2, 0.4, 0.6, 0.8, 1.0];
        let uri = map_thumbnail(&map, 2, 3, 0.5, 40).unwrap();
        assert!(uri.starts_with("data:image/jpeg;base64,"));
        assert_eq!(decode(&uri).width(), 40);
        let p = decode(&predicted_mask_thumbnail(&map, 2, 3, 0.5, 30).unwrap()).to_luma8();
        assert_eq!(p.get_pixel(0, 0)[0], 0);
        assert_eq!(p.get_pixel(29, 29)[0], 255);
        let e = image_thumbnail(Path::new("no/such.png"), 32).unwrap_err();
        assert!(e.contains("no/such.png"), "{e}");
    }
}
