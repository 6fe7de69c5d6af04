//! Image file decoding with the `image` crate: format sniffing, a size limit
//! checked on the header before any pixel is decoded, EXIF orientation, and
//! conversion of every supported colour type to 8-bit RGB.

use std::fs::File;
use std::io::{BufRead, BufReader, Cursor, Seek};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, RgbImage};

use crate::error::DataError;

/// Largest image accepted before decoding, read from the file header.
///
/// Images whose header announces more than `max_width` x `max_height` pixels
/// are refused with [`DataError::TooLarge`] instead of being decoded (a
/// 20000x20000 RGB image alone needs 1.2 GB). Both values are pixels and
/// must be non-zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Maximum width, pixels (inclusive).
    pub max_width: u32,
    /// Maximum height, pixels (inclusive).
    pub max_height: u32,
}

impl Default for DecodeLimits {
    /// 20000 x 20000 pixels.
    fn default() -> Self {
        DecodeLimits {
            max_width: 20_000,
            max_height: 20_000,
        }
    }
}

static GLOBAL_MAX_W: AtomicU32 = AtomicU32::new(20_000);
static GLOBAL_MAX_H: AtomicU32 = AtomicU32::new(20_000);

impl DecodeLimits {
    /// The process-wide limits used by [`load_rgb`](crate::load_rgb),
    /// [`load_image`](crate::load_image) and [`load_mask`](crate::load_mask)
    /// (default 20000 x 20000).
    pub fn global() -> DecodeLimits {
        DecodeLimits {
            max_width: GLOBAL_MAX_W.load(Ordering::Relaxed),
            max_height: GLOBAL_MAX_H.load(Ordering::Relaxed),
        }
    }

    /// Sets the process-wide limits (e.g. from a CLI flag).
    ///
    /// # Errors
    /// [`DataError::InvalidArgument`] if a limit is zero.
    pub fn set_global(self) -> Result<(), DataError> {
        self.validate()?;
        GLOBAL_MAX_W.store(self.max_width, Ordering::Relaxed);
        GLOBAL_MAX_H.store(self.max_height, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn validate(&self) -> Result<(), DataError> {
        if self.max_width == 0 || self.max_height == 0 {
            return Err(DataError::InvalidArgument(format!(
                "decode limits must be non-zero, got {}x{}",
                self.max_width, self.max_height
            )));
        }
        Ok(())
    }
}

/// File extensions (lower case) of the formats this crate decodes.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "bmp", "tif", "tiff"];

/// True when `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
pub fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        .unwrap_or(false)
}

/// Checks that `path` is a non-empty regular file.
fn check_file(path: &Path, what: &str) -> Result<(), DataError> {
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::NotFound {
                path: path.to_path_buf(),
                what: what.to_string(),
            }
        } else {
            DataError::io(path, e)
        }
    })?;
    if meta.is_dir() {
        return Err(DataError::IsDirectory {
            path: path.to_path_buf(),
            what: what.to_string(),
        });
    }
    if meta.len() == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn map_image_error(path: &Path, err: ImageError) -> DataError {
    match err {
        ImageError::Unsupported(e) => DataError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!("{e} (supported: {})", IMAGE_EXTENSIONS.join(", ")),
        },
        ImageError::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DataError::Decode {
                path: path.to_path_buf(),
                message: format!("file ends early: {e}"),
            }
        }
        ImageError::IoError(e) => DataError::io(path, e),
        ImageError::Limits(e) => DataError::Decode {
            path: path.to_path_buf(),
            message: format!("decoder limit exceeded: {e}"),
        },
        other => DataError::Decode {
            path: path.to_path_buf(),
            message: other.to_string(),
        },
    }
}

/// Opens a reader with the format sniffed from the content (falling back to the extension).
fn open_reader(path: &Path, what: &str) -> Result<ImageReader<BufReader<File>>, DataError> {
    check_file(path, what)?;
    let file = File::open(path).map_err(|e| DataError::io(path, e))?;
    sniff(path, BufReader::new(file))
}

/// Opens a reader on in-memory bytes, `name` standing for the file in messages.
fn open_bytes<'a>(
    name: &Path,
    bytes: &'a [u8],
) -> Result<ImageReader<Cursor<&'a [u8]>>, DataError> {
    if bytes.is_empty() {
        return Err(DataError::EmptyFile {
            path: name.to_path_buf(),
        });
    }
    sniff(name, Cursor::new(bytes))
}

/// Wraps `inner` in a reader whose format is sniffed from the content (falling back to the
/// extension of `path`); an unrecognised content is [`DataError::UnsupportedFormat`].
fn sniff<R: BufRead + Seek>(path: &Path, inner: R) -> Result<ImageReader<R>, DataError> {
    let mut reader = ImageReader::new(inner);
    if let Ok(fmt) = ImageFormat::from_path(path) {
        reader.set_format(fmt);
    }
    let reader = reader
        .with_guessed_format()
        .map_err(|e| DataError::io(path, e))?;
    if reader.format().is_none() {
        let ext = path
            .extension()
            .map(|e| format!("extension '.{}'", e.to_string_lossy()))
            .unwrap_or_else(|| "no extension".to_string());
        return Err(DataError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!(
                "content not recognised and {ext} unknown (supported: {})",
                IMAGE_EXTENSIONS.join(", ")
            ),
        });
    }
    Ok(reader)
}

fn oriented_dims((w, h): (u32, u32), orientation: image::metadata::Orientation) -> (u32, u32) {
    use image::metadata::Orientation as O;
    match orientation {
        O::Rotate90 | O::Rotate270 | O::Rotate90FlipH | O::Rotate270FlipH => (h, w),
        _ => (w, h),
    }
}

/// Reads the native size `(W, H)` in pixels of an image from its header, after
/// EXIF orientation (a 90-degree rotation swaps the two), without decoding pixels.
///
/// # Errors
/// [`DataError::NotFound`], [`DataError::IsDirectory`], [`DataError::EmptyFile`],
/// [`DataError::UnsupportedFormat`], [`DataError::Decode`] (unreadable header).
pub fn image_size(path: &Path) -> Result<(u32, u32), DataError> {
    header_dims(path, "an image file").map(|(_, oriented)| oriented)
}

/// A size `(W, H)` in pixels.
type Dims = (u32, u32);

/// The size `(W, H)` announced by the header of `path`, as stored and after EXIF orientation,
/// without decoding pixels (the EXIF orientation is read the way decoding reads it: an
/// unreadable one counts as none). `what` says what the file should be, for messages.
fn header_dims(path: &Path, what: &str) -> Result<(Dims, Dims), DataError> {
    let reader = open_reader(path, what)?;
    guard(path, || {
        let mut decoder = reader
            .into_decoder()
            .map_err(|e| map_image_error(path, e))?;
        let dims = decoder.dimensions();
        let orientation = decoder
            .orientation()
            .unwrap_or(image::metadata::Orientation::NoTransforms);
        Ok((dims, oriented_dims(dims, orientation)))
    })
}

/// [`image_size`] plus the checks decoding makes on the header: the stored size within
/// `limits` and not empty ([`DataError::TooLarge`], [`DataError::Decode`]). `what` says what
/// the file should be ("an image file", "a mask image file"), for messages.
pub(crate) fn checked_image_size(
    path: &Path,
    limits: &DecodeLimits,
    what: &str,
) -> Result<(u32, u32), DataError> {
    let (stored, oriented) = header_dims(path, what)?;
    check_limits(path, stored, limits)?;
    Ok(oriented)
}

fn check_limits(path: &Path, (w, h): (u32, u32), limits: &DecodeLimits) -> Result<(), DataError> {
    if w > limits.max_width || h > limits.max_height {
        return Err(DataError::TooLarge {
            path: path.to_path_buf(),
            width: w,
            height: h,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    if w == 0 || h == 0 {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: format!("image header announces an empty {w}x{h} image"),
        });
    }
    Ok(())
}

/// Runs a decoder, turning a panic inside a third-party decoder into an error
/// naming the file (a malformed file must never abort a whole run).
fn guard<T>(path: &Path, f: impl FnOnce() -> Result<T, DataError>) -> Result<T, DataError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(DataError::Decode {
            path: path.to_path_buf(),
            message: "the image decoder failed on this file (malformed data)".to_string(),
        })
    })
}

/// Decodes an image file: header check against `limits`, full decode, EXIF orientation applied.
///
/// The returned image keeps its native colour type (L, LA, RGB, RGBA, 16-bit, float).
/// Baseline/progressive JPEG goes through `jpeg-decoder`, whose fancy chroma
/// upsampling follows libjpeg (what Pillow uses) more closely than the `image`
/// crate's default JPEG decoder; every other format through `image`.
pub(crate) fn decode_oriented(
    path: &Path,
    limits: &DecodeLimits,
    what: &str,
) -> Result<DynamicImage, DataError> {
    limits.validate()?;
    decode_from(path, limits, || open_reader(path, what))
}

/// [`decode_oriented`] on any source: `open` gives a fresh sniffed reader (called a second time
/// for CMYK JPEGs, which `jpeg-decoder` leaves to the `image` crate).
fn decode_from<R: BufRead + Seek>(
    path: &Path,
    limits: &DecodeLimits,
    open: impl Fn() -> Result<ImageReader<R>, DataError>,
) -> Result<DynamicImage, DataError> {
    let mut reader = open()?;
    if reader.format() == Some(ImageFormat::Jpeg) {
        let inner = reader.into_inner();
        if let Some(img) = guard(path, || decode_jpeg(path, inner, limits))? {
            return Ok(img);
        }
        // CMYK/YCCK JPEG: handled by the `image` crate below.
        reader = open()?;
    }
    // Our own header check below refuses oversized images with a clear error;
    // the decoder's allocation cap (512 MiB by default) would refuse legitimate
    // large images inside `limits`, so it is lifted.
    reader.no_limits();
    guard(path, || decode_generic(path, reader, limits))
}

fn decode_generic<R: BufRead + Seek>(
    path: &Path,
    reader: ImageReader<R>,
    limits: &DecodeLimits,
) -> Result<DynamicImage, DataError> {
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(path, e))?;
    check_limits(path, decoder.dimensions(), limits)?;
    // A malformed EXIF block is not fatal: the image is used as stored.
    let orientation = decoder.orientation().unwrap_or_else(|e| {
        tracing::warn!(path = %path.display(), error = %e, "unreadable EXIF orientation ignored");
        image::metadata::Orientation::NoTransforms
    });
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(path, e))?;
    img.apply_orientation(orientation);
    Ok(img)
}

fn map_jpeg_error(path: &Path, err: jpeg_decoder::Error) -> DataError {
    match err {
        jpeg_decoder::Error::Unsupported(f) => DataError::UnsupportedFormat {
            path: path.to_path_buf(),
            message: format!("JPEG feature not supported: {f:?}"),
        },
        jpeg_decoder::Error::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            DataError::Decode {
                path: path.to_path_buf(),
                message: format!("file ends early: {e}"),
            }
        }
        jpeg_decoder::Error::Io(e) => DataError::io(path, e),
        other => DataError::Decode {
            path: path.to_path_buf(),
            message: format!("JPEG: {other}"),
        },
    }
}

/// Decodes a JPEG with `jpeg-decoder`; `Ok(None)` for CMYK files (left to `image`).
fn decode_jpeg<R: std::io::Read>(
    path: &Path,
    inner: R,
    limits: &DecodeLimits,
) -> Result<Option<DynamicImage>, DataError> {
    use jpeg_decoder::PixelFormat;
    let mut dec = jpeg_decoder::Decoder::new(inner);
    dec.read_info().map_err(|e| map_jpeg_error(path, e))?;
    let Some(info) = dec.info() else {
        return Err(DataError::Decode {
            path: path.to_path_buf(),
            message: "JPEG header could not be read".to_string(),
        });
    };
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    check_limits(path, (w, h), limits)?;
    if info.pixel_format == PixelFormat::CMYK32 {
        return Ok(None);
    }
    let pixels = dec.decode().map_err(|e| map_jpeg_error(path, e))?;
    let short = || DataError::Decode {
        path: path.to_path_buf(),
        message: "JPEG decoder returned fewer pixels than the header announces".to_string(),
    };
    let mut img = match info.pixel_format {
        PixelFormat::L8 => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, pixels).ok_or_else(short)?)
        }
        PixelFormat::L16 => {
            let v: Vec<u16> = pixels
                .chunks_exact(2)
                .map(|c| u16::from_ne_bytes([c[0], c[1]]))
                .collect();
            DynamicImage::ImageLuma16(image::ImageBuffer::from_raw(w, h, v).ok_or_else(short)?)
        }
        PixelFormat::RGB24 => {
            DynamicImage::ImageRgb8(RgbImage::from_raw(w, h, pixels).ok_or_else(short)?)
        }
        PixelFormat::CMYK32 => return Ok(None),
    };
    let orientation = dec
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    img.apply_orientation(orientation);
    Ok(Some(img))
}

/// Converts any decoded colour type to 8-bit RGB like Pillow's `convert('RGB')`:
/// gray is replicated, alpha is dropped (not composited), 16-bit values are
/// scaled to 8 bits (`round(v / 257)`), float values in `[0, 1]` are scaled by 255.
pub(crate) fn to_rgb8(img: DynamicImage) -> RgbImage {
    match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// Decodes `path` to an 8-bit RGB image at native size, EXIF orientation applied,
/// using the process-wide [`DecodeLimits::global`].
///
/// Use it for heatmap overlays; for model input use [`load_image`](crate::load_image).
/// Conversion rules: see `convert('RGB')` in Pillow — L/LA replicated, alpha
/// dropped, 16-bit scaled (not clipped) to 8 bits.
///
/// # Errors
/// [`DataError::NotFound`], [`DataError::IsDirectory`], [`DataError::EmptyFile`],
/// [`DataError::UnsupportedFormat`], [`DataError::Decode`] (corrupt or
/// truncated), [`DataError::TooLarge`].
pub fn load_rgb(path: &Path) -> Result<RgbImage, DataError> {
    load_rgb_with_limits(path, &DecodeLimits::global())
}

/// [`load_rgb`] with explicit decode limits.
///
/// # Errors
/// As [`load_rgb`], plus [`DataError::InvalidArgument`] for zero limits.
pub fn load_rgb_with_limits(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, DataError> {
    decode_oriented(path, limits, "an image file").map(to_rgb8)
}

/// [`load_rgb`] on an image held in memory (e.g. an HTTP upload): the same format sniffing,
/// header size check against the process-wide [`DecodeLimits::global`], decoders, EXIF
/// orientation and conversion to 8-bit RGB, so that the same bytes give the same pixels as the
/// file. `name` stands for the file in error messages (e.g. the uploaded file name); its
/// extension, if any, is only a fallback when the content is not recognised.
///
/// # Errors
/// [`DataError::EmptyFile`] (no byte), [`DataError::UnsupportedFormat`], [`DataError::Decode`]
/// (corrupt or truncated), [`DataError::TooLarge`], each naming `name`.
pub fn load_rgb_from_bytes(name: &Path, bytes: &[u8]) -> Result<RgbImage, DataError> {
    load_rgb_from_bytes_with_limits(name, bytes, &DecodeLimits::global())
}

/// [`load_rgb_from_bytes`] with explicit decode limits.
///
/// # Errors
/// As [`load_rgb_from_bytes`], plus [`DataError::InvalidArgument`] for zero limits.
pub fn load_rgb_from_bytes_with_limits(
    name: &Path,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<RgbImage, DataError> {
    limits.validate()?;
    decode_from(name, limits, || open_bytes(name, bytes)).map(to_rgb8)
}
