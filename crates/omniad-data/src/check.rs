//! A fast check of a sample list from file headers only: every image's header is readable and
//! each ground-truth mask has its image's size, as the [`Loader`](crate::Loader) will require
//! when it decodes them (e.g. `omniad train` checks the test split before training, so that a
//! bad file stops it in seconds instead of at `omniad eval`, hours later).

use rayon::prelude::*;

use crate::dataset::Sample;
use crate::decode::{checked_image_size, DecodeLimits};
use crate::error::DataError;

/// Problems listed in the error of [`check_headers`] (the rest are counted).
const MAX_REPORTED: usize = 5;

/// Checks `samples` from the file headers only, in parallel (rayon), without decoding any pixel:
/// each image's header must be readable and its size within [`DecodeLimits::global`], and each
/// ground-truth mask's header too, with the same size `(W, H)` as its image.
///
/// Sizes are compared after EXIF orientation (the orientation tag is read, nothing else), the
/// way the loader compares the decoded image with the decoded mask ([`crate::load_mask`]), so a
/// dataset that passes this check does not fail the loader on a mask size, and one that fails
/// it would fail the loader on the same file. Returns the number of files checked (images and
/// masks); an empty list checks nothing and is fine.
///
/// # Errors
/// The problem itself when there is one ([`DataError::MaskSizeMismatch`],
/// [`DataError::Decode`], [`DataError::UnsupportedFormat`], [`DataError::NotFound`],
/// [`DataError::EmptyFile`], [`DataError::TooLarge`], ..., each naming the file); with several,
/// [`DataError::Several`] listing the first 5 in sample order.
pub fn check_headers(samples: &[Sample]) -> Result<usize, DataError> {
    let limits = DecodeLimits::global();
    let mut problems: Vec<DataError> = samples
        .par_iter()
        .filter_map(|s| check_sample(s, &limits).err())
        .collect();
    match problems.len() {
        0 => Ok(samples.iter().map(|s| 1 + s.masks.len()).sum()),
        1 => Err(problems.remove(0)),
        count => {
            problems.truncate(MAX_REPORTED);
            Err(DataError::Several {
                count,
                checked: samples.len(),
                first: problems,
            })
        }
    }
}

/// The header checks of one sample (its image, then its masks); the first problem.
fn check_sample(s: &Sample, limits: &DecodeLimits) -> Result<(), DataError> {
    let (w, h) = checked_image_size(&s.image, limits, "an image file")?;
    for mask in &s.masks {
        let (mw, mh) = checked_image_size(mask, limits, "a mask image file")?;
        if (mw, mh) != (w, h) {
            return Err(DataError::MaskSizeMismatch {
                mask: mask.clone(),
                mask_width: mw,
                mask_height: mh,
                image_width: w,
                image_height: h,
            });
        }
    }
    Ok(())
}
