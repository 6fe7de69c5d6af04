//! Model-input preprocessing: the torchvision pipeline
//! `Resize((H, W), BILINEAR)` (Pillow, antialiased) -> `ToTensor` -> `Normalize(mean, std)`
//! used by the Omni-AD reference code (and by most MUAD methods, e.g. ADer's
//! `data/utils.py` transforms), and ground-truth mask loading.

use std::path::{Path, PathBuf};

use image::{DynamicImage, RgbImage};

use crate::decode::{decode_oriented, to_rgb8, DecodeLimits};
use crate::error::DataError;
use crate::resize::resize_bilinear_u8;

/// Model-input preprocessing parameters.
///
/// The output of [`preprocess_rgb`] / [`load_image`] is `[3, H, W]` with
/// `x = (v / 255 - mean[c]) / std[c]`, `v` the resized 8-bit value.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Preprocess {
    /// Output size `(H, W)` in pixels, both non-zero.
    pub size: (u32, u32),
    /// Per-channel mean (R, G, B) subtracted after scaling to `[0, 1]`.
    pub mean: [f32; 3],
    /// Per-channel standard deviation (R, G, B) dividing after the mean; non-zero.
    pub std: [f32; 3],
}

impl Preprocess {
    /// Preprocessing to `size = (H, W)` with the per-channel `(mean, std)` of a teacher (the
    /// teacher defines it: `omniad_model::TeacherArch::input_mean_std`).
    pub fn new(size: (u32, u32), (mean, std): ([f32; 3], [f32; 3])) -> Self {
        Preprocess { size, mean, std }
    }

    /// Checks that the size and the standard deviations are non-zero.
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`].
    pub fn validate(&self) -> Result<(), DataError> {
        if self.size.0 == 0 || self.size.1 == 0 {
            return Err(DataError::InvalidArgument(format!(
                "preprocess size must be non-zero, got (H, W) = {:?}",
                self.size
            )));
        }
        if self.std.iter().any(|s| *s == 0.0 || !s.is_finite())
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(DataError::InvalidArgument(format!(
                "preprocess mean/std must be finite and std non-zero, got mean {:?} std {:?}",
                self.mean, self.std
            )));
        }
        Ok(())
    }

    /// Number of `f32` values of one preprocessed image, `3 * H * W`.
    pub fn tensor_len(&self) -> usize {
        3 * self.size.0 as usize * self.size.1 as usize
    }
}

/// Resizes an RGB image to `pp.size` with Pillow's antialiased bilinear filter
/// (Pillow's `ImagingResample`, bit-exact for 8-bit data) and normalises it.
///
/// Returns `[3, H, W]` (channel-major, R G B), values `(v / 255 - mean) / std`.
/// The arithmetic is `f32` in the order of torchvision's `ToTensor` and
/// `Normalize`, so results match the reference up to decoder differences.
/// `pp` should be valid ([`Preprocess::validate`]); a zero size yields an empty vector.
pub fn preprocess_rgb(img: &RgbImage, pp: &Preprocess) -> Vec<f32> {
    let (h, w) = (pp.size.0 as usize, pp.size.1 as usize);
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if h == 0 || w == 0 || iw == 0 || ih == 0 {
        return Vec::new();
    }
    let resized = resize_bilinear_u8(img.as_raw(), iw, ih, 3, w, h);
    let plane = h * w;
    let mut out = vec![0.0f32; 3 * plane];
    for c in 0..3 {
        let (m, s) = (pp.mean[c], pp.std[c]);
        let dst = &mut out[c * plane..(c + 1) * plane];
        for (d, px) in dst.iter_mut().zip(resized.chunks_exact(3)) {
            *d = (f32::from(px[c]) / 255.0 - m) / s;
        }
    }
    out
}

/// Decodes and preprocesses one image for the model: `[3, H, W]` normalised `f32`.
///
/// Decoding: [`load_rgb`](crate::load_rgb) rules (EXIF orientation, L/LA/RGBA/16-bit
/// to RGB), then [`preprocess_rgb`]. Uses the process-wide [`DecodeLimits::global`].
///
/// # Errors
/// Those of [`load_rgb`](crate::load_rgb), plus [`DataError::InvalidArgument`] for an invalid `pp`.
pub fn load_image(path: &Path, pp: &Preprocess) -> Result<Vec<f32>, DataError> {
    load_image_sized(path, pp, &DecodeLimits::global()).map(|(v, _)| v)
}

/// [`load_image`] with explicit limits; also returns the native size `(W, H)`
/// (after EXIF orientation), e.g. to check masks against.
///
/// # Errors
/// As [`load_image`].
pub fn load_image_sized(
    path: &Path,
    pp: &Preprocess,
    limits: &DecodeLimits,
) -> Result<(Vec<f32>, (u32, u32)), DataError> {
    pp.validate()?;
    let rgb = to_rgb8(decode_oriented(path, limits, "an image file")?);
    let dims = rgb.dimensions();
    Ok((preprocess_rgb(&rgb, pp), dims))
}

/// Binarises a decoded mask at native size: a pixel is anomalous when any
/// colour channel is non-zero (alpha ignored). Returns `[H, W]` of 0/1.
fn binarise(img: &DynamicImage) -> Vec<u8> {
    fn any_nonzero<T: PartialEq + Default + Copy>(px: &[T], colour: usize) -> u8 {
        u8::from(px[..colour].iter().any(|v| *v != T::default()))
    }
    match img {
        DynamicImage::ImageLuma8(b) => b.as_raw().iter().map(|v| u8::from(*v != 0)).collect(),
        DynamicImage::ImageLumaA8(b) => b
            .as_raw()
            .chunks_exact(2)
            .map(|p| any_nonzero(p, 1))
            .collect(),
        DynamicImage::ImageRgb8(b) => b
            .as_raw()
            .chunks_exact(3)
            .map(|p| any_nonzero(p, 3))
            .collect(),
        DynamicImage::ImageRgba8(b) => b
            .as_raw()
            .chunks_exact(4)
            .map(|p| any_nonzero(p, 3))
            .collect(),
        DynamicImage::ImageLuma16(b) => b.as_raw().iter().map(|v| u8::from(*v != 0)).collect(),
        DynamicImage::ImageLumaA16(b) => b
            .as_raw()
            .chunks_exact(2)
            .map(|p| any_nonzero(p, 1))
            .collect(),
        DynamicImage::ImageRgb16(b) => b
            .as_raw()
            .chunks_exact(3)
            .map(|p| any_nonzero(p, 3))
            .collect(),
        DynamicImage::ImageRgba16(b) => b
            .as_raw()
            .chunks_exact(4)
            .map(|p| any_nonzero(p, 3))
            .collect(),
        other => other
            .to_rgb32f()
            .as_raw()
            .chunks_exact(3)
            .map(|p| u8::from(p.iter().any(|v| *v > 0.0)))
            .collect(),
    }
}

/// Loads the ground-truth mask of one image: `[H, W]` of 0/1, `size = (H, W)`.
///
/// Rule (the reference pipeline's, see the preprocess fixture's `meta.json`):
/// 1. every file in `paths` is decoded (EXIF orientation applied) and binarised
///    at native size: a pixel is anomalous when its value is non-zero (any colour
///    channel; alpha ignored). This covers 0/255 masks, 0/1 masks and masks with
///    stray values (VisA, MVTec LOCO);
/// 2. several files (MVTec LOCO) are united (pixel-wise OR);
/// 3. the 0/255 union is resized to `size` with Pillow's antialiased bilinear
///    filter and re-binarised with `v / 255 > 0.5` (i.e. `v >= 128`).
///
/// An empty `paths` means "no anomaly": all zeros.
///
/// `expected_size` is the native image size `(W, H)` (note the order, that of
/// [`image::GenericImageView::dimensions`]); every mask must match it, and
/// several masks must match each other.
///
/// # Errors
/// [`DataError::MaskSizeMismatch`], [`DataError::InvalidArgument`] (zero `size`),
/// and the decoding errors of [`load_rgb`](crate::load_rgb) for each file.
pub fn load_mask(
    paths: &[PathBuf],
    expected_size: Option<(u32, u32)>,
    size: (u32, u32),
) -> Result<Vec<u8>, DataError> {
    load_mask_with_limits(paths, expected_size, size, &DecodeLimits::global())
}

/// [`load_mask`] with explicit decode limits.
///
/// # Errors
/// As [`load_mask`].
pub fn load_mask_with_limits(
    paths: &[PathBuf],
    expected_size: Option<(u32, u32)>,
    size: (u32, u32),
    limits: &DecodeLimits,
) -> Result<Vec<u8>, DataError> {
    load_mask_counted(paths, expected_size, size, limits).map(|(mask, _)| mask)
}

/// [`load_mask_with_limits`], also returning the number of anomalous pixels of the mask (the
/// union) at native size, before the resize (0 for an all-zero mask or no mask file).
pub(crate) fn load_mask_counted(
    paths: &[PathBuf],
    expected_size: Option<(u32, u32)>,
    size: (u32, u32),
    limits: &DecodeLimits,
) -> Result<(Vec<u8>, u64), DataError> {
    let (h, w) = (size.0 as usize, size.1 as usize);
    if h == 0 || w == 0 {
        return Err(DataError::InvalidArgument(format!(
            "mask output size must be non-zero, got (H, W) = {size:?}"
        )));
    }
    if paths.is_empty() {
        return Ok((vec![0u8; h * w], 0));
    }
    let mut union: Option<(Vec<u8>, (u32, u32))> = None;
    for path in paths {
        let img = decode_oriented(path, limits, "a mask image file")?;
        let dims = (img.width(), img.height());
        let reference = expected_size.or(union.as_ref().map(|u| u.1));
        if let Some((ew, eh)) = reference {
            if dims != (ew, eh) {
                return Err(DataError::MaskSizeMismatch {
                    mask: path.clone(),
                    mask_width: dims.0,
                    mask_height: dims.1,
                    image_width: ew,
                    image_height: eh,
                });
            }
        }
        let bin = binarise(&img);
        match union.as_mut() {
            None => union = Some((bin, dims)),
            Some((acc, _)) => acc.iter_mut().zip(bin).for_each(|(a, b)| *a |= b),
        }
    }
    let Some((bin, (nw, nh))) = union else {
        return Ok((vec![0u8; h * w], 0));
    };
    let native_pixels = bin.iter().map(|&v| u64::from(v)).sum();
    let as255: Vec<u8> = bin.iter().map(|v| v * 255).collect();
    let resized = resize_bilinear_u8(&as255, nw as usize, nh as usize, 1, w, h);
    Ok((
        resized.into_iter().map(|v| u8::from(v >= 128)).collect(),
        native_pixels,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_matches_torchvision_formula() {
        let img = RgbImage::from_raw(1, 1, vec![0, 128, 255]).unwrap();
        // torchvision's ImageNet statistics.
        let pp = Preprocess::new((1, 1), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]));
        let out = preprocess_rgb(&img, &pp);
        let expect = [
            (0.0 - 0.485) / 0.229,
            (128.0 / 255.0 - 0.456) / 0.224,
            (1.0 - 0.406) / 0.225,
        ];
        for (o, e) in out.iter().zip(expect) {
            assert!((o - e).abs() < 1e-6, "{o} vs {e}");
        }
    }

    #[test]
    fn output_is_channel_major() {
        // 2x1 image: left pixel red, right pixel blue; no resize.
        let img = RgbImage::from_raw(2, 1, vec![255, 0, 0, 0, 0, 255]).unwrap();
        let pp = Preprocess {
            size: (1, 2),
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        assert_eq!(
            preprocess_rgb(&img, &pp),
            vec![1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
        );
    }

    #[test]
    fn binarise_any_channel() {
        let img = DynamicImage::ImageRgb8(
            RgbImage::from_raw(3, 1, vec![0, 0, 0, 0, 0, 1, 9, 0, 0]).unwrap(),
        );
        assert_eq!(binarise(&img), vec![0, 1, 1]);
        let l16 =
            DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(2, 1, vec![0u16, 1]).unwrap());
        assert_eq!(binarise(&l16), vec![0, 1]);
    }

    #[test]
    fn invalid_preprocess_is_refused() {
        let mut pp = Preprocess::new((4, 4), ([0.5; 3], [0.25; 3]));
        pp.std[1] = 0.0;
        assert!(matches!(pp.validate(), Err(DataError::InvalidArgument(_))));
        let pp = Preprocess::new((0, 4), ([0.5; 3], [0.25; 3]));
        assert!(matches!(pp.validate(), Err(DataError::InvalidArgument(_))));
    }
}
