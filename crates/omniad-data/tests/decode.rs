//! Decoding rules: colour conversions to RGB and EXIF orientation.

mod common;

use std::path::Path;

use common::*;
use image::{ImageBuffer, ImageEncoder, Luma, LumaA, Rgb, RgbImage};
use omniad_data::{
    check_headers, image_size, load_mask, load_rgb, DataError, Label, Sample, Split,
};

/// A little-endian TIFF/EXIF block holding only `Orientation = value`.
fn exif_orientation(value: u16) -> Vec<u8> {
    let mut v = b"II*\0".to_vec();
    v.extend_from_slice(&8u32.to_le_bytes()); // offset of IFD0
    v.extend_from_slice(&1u16.to_le_bytes()); // one entry
    v.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    v.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    v.extend_from_slice(&1u32.to_le_bytes()); // count
    v.extend_from_slice(&value.to_le_bytes());
    v.extend_from_slice(&[0, 0]);
    v.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
    v
}

/// 8 wide x 4 tall: left half red, right half blue.
fn halves() -> RgbImage {
    RgbImage::from_fn(8, 4, |x, _| {
        if x < 4 {
            Rgb([255, 0, 0])
        } else {
            Rgb([0, 0, 255])
        }
    })
}

fn write_with_exif(path: &Path, jpeg: bool) {
    let img = halves();
    let mut buf = Vec::new();
    if jpeg {
        let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut buf, 95);
        enc.set_exif_metadata(exif_orientation(6)).expect("exif");
        enc.write_image(img.as_raw(), 8, 4, image::ExtendedColorType::Rgb8)
            .expect("encode");
    } else {
        let mut enc = image::codecs::png::PngEncoder::new(&mut buf);
        enc.set_exif_metadata(exif_orientation(6)).expect("exif");
        enc.write_image(img.as_raw(), 8, 4, image::ExtendedColorType::Rgb8)
            .expect("encode");
    }
    write_bytes(path, &buf);
}

#[test]
fn exif_orientation_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    for (name, jpeg) in [("o.jpg", true), ("o.png", false)] {
        let p = dir.path().join(name);
        write_with_exif(&p, jpeg);
        // Orientation 6: rotate 90 degrees clockwise; the left half becomes the top half.
        assert_eq!(image_size(&p).unwrap(), (4, 8), "{name}");
        let rgb = load_rgb(&p).unwrap();
        assert_eq!(rgb.dimensions(), (4, 8), "{name}");
        let top = rgb.get_pixel(1, 1);
        let bottom = rgb.get_pixel(1, 6);
        assert!(
            top[0] > 200 && top[2] < 60,
            "{name}: top {top:?} should be red"
        );
        assert!(
            bottom[2] > 200 && bottom[0] < 60,
            "{name}: bottom {bottom:?} should be blue"
        );
    }
}

#[test]
fn gray_alpha_and_16_bit_convert_like_pil() {
    let dir = tempfile::tempdir().unwrap();
    // 16-bit gray: scaled (65535 -> 255, 25700 -> 100), not clipped.
    let p16 = dir.path().join("g16.png");
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(2, 1, |x, _| {
        Luma([if x == 0 { 65535 } else { 25700 }])
    })
    .save(&p16)
    .unwrap();
    let rgb = load_rgb(&p16).unwrap();
    assert_eq!(rgb.as_raw(), &vec![255, 255, 255, 100, 100, 100]);

    // Gray + alpha: gray replicated, alpha dropped (not composited).
    let pla = dir.path().join("la.png");
    ImageBuffer::<LumaA<u8>, Vec<u8>>::from_fn(2, 1, |x, _| {
        LumaA([if x == 0 { 40 } else { 200 }, 0])
    })
    .save(&pla)
    .unwrap();
    let rgb = load_rgb(&pla).unwrap();
    assert_eq!(rgb.as_raw(), &vec![40, 40, 40, 200, 200, 200]);

    // RGBA: alpha dropped.
    let prgba = dir.path().join("rgba.png");
    image::RgbaImage::from_pixel(1, 1, image::Rgba([9, 8, 7, 0]))
        .save(&prgba)
        .unwrap();
    assert_eq!(load_rgb(&prgba).unwrap().as_raw(), &vec![9, 8, 7]);
}

#[test]
fn sixteen_bit_masks_binarise_on_raw_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m16.png");
    // Value 1 out of 65535 is still "non-zero" (it would round to 0 in 8 bits).
    ImageBuffer::<Luma<u16>, Vec<u16>>::from_fn(4, 2, |x, _| Luma([if x < 2 { 1 } else { 0 }]))
        .save(&p)
        .unwrap();
    let m = load_mask(&[p], Some((4, 2)), (2, 4)).unwrap();
    assert_eq!(m, vec![1, 1, 0, 0, 1, 1, 0, 0]);
}

#[test]
fn empty_mask_list_is_all_zero() {
    let m = load_mask(&[], Some((10, 10)), (3, 5)).unwrap();
    assert_eq!(m, vec![0u8; 15]);
}

#[test]
fn bytes_decode_like_files() {
    use omniad_data::{
        load_rgb_from_bytes, load_rgb_from_bytes_with_limits, DataError, DecodeLimits,
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, jpeg) in [("o.jpg", true), ("o.png", false)] {
        let p = dir.path().join(name);
        write_with_exif(&p, jpeg);
        let bytes = std::fs::read(&p).unwrap();
        let from_file = load_rgb(&p).unwrap();
        // No extension: the format comes from the content alone.
        let from_bytes = load_rgb_from_bytes(Path::new("upload"), &bytes).unwrap();
        assert_eq!(from_bytes.dimensions(), (4, 8), "{name}: EXIF applied");
        assert_eq!(from_bytes.as_raw(), from_file.as_raw(), "{name}");
    }
    let err = load_rgb_from_bytes(Path::new("u.png"), b"").unwrap_err();
    assert!(matches!(err, DataError::EmptyFile { .. }), "{err}");
    let err = load_rgb_from_bytes(Path::new("u.bin"), b"not an image at all").unwrap_err();
    assert!(matches!(err, DataError::UnsupportedFormat { .. }), "{err}");
    assert!(err.to_string().starts_with("u.bin: "), "{err}");
    let png = std::fs::read(dir.path().join("o.png")).unwrap();
    let err = load_rgb_from_bytes(Path::new("cut.png"), &png[..png.len() / 2]).unwrap_err();
    assert!(matches!(err, DataError::Decode { .. }), "{err}");
    let small = DecodeLimits {
        max_width: 4,
        max_height: 4,
    };
    let err = load_rgb_from_bytes_with_limits(Path::new("big.png"), &png, &small).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::TooLarge {
                width: 8,
                height: 4,
                ..
            }
        ),
        "{err}"
    );
}

/// An anomalous test sample of class `c` with its masks.
fn anomalous(image: &Path, masks: &[&Path]) -> Sample {
    Sample::labelled(
        "c",
        Split::Test,
        image.to_path_buf(),
        Label::Anomaly,
        "crack",
        masks.iter().map(|m| m.to_path_buf()).collect(),
    )
}

#[test]
fn header_check_compares_sizes_as_the_loader_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Stored 8x4 with EXIF orientation 6: the image is 4x8 once oriented, as decoded.
    let (jpg, png) = (d.join("o.jpg"), d.join("o.png"));
    write_with_exif(&jpg, true);
    write_with_exif(&png, false);
    let tall = write_mask(&d.join("tall_mask.png"), 4, 8, (0, 0, 2, 2), 255);
    let wide = write_mask(&d.join("wide_mask.png"), 8, 4, (0, 0, 2, 2), 255);
    let good = write_rgb(&d.join("good.png"), 6, 5, [1, 2, 3]);
    let good_mask = write_mask(&d.join("good_mask.png"), 6, 5, (0, 0, 1, 1), 255);
    let fine = vec![
        anomalous(&jpg, &[&tall]),
        anomalous(&png, &[&tall, &tall]),
        Sample::normal("c", Split::Test, good.clone()),
        anomalous(&good, &[&good_mask]),
    ];
    // images + masks checked
    assert_eq!(check_headers(&fine).unwrap(), 4 + 4);
    assert_eq!(check_headers(&[]).unwrap(), 0);
    // The loader agrees: the oriented size is the one masks must have.
    for img in [&jpg, &png] {
        let size = load_rgb(img).unwrap().dimensions();
        assert!(load_mask(std::slice::from_ref(&tall), Some(size), (4, 4)).is_ok());
        assert!(load_mask(std::slice::from_ref(&wide), Some(size), (4, 4)).is_err());
    }

    // One problem: that error itself, naming the mask and both sizes.
    let err = check_headers(&[fine[2].clone(), anomalous(&png, &[&tall, &wide])]).unwrap_err();
    assert!(matches!(err, DataError::MaskSizeMismatch { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("wide_mask.png") && text.contains("8x4") && text.contains("4x8"),
        "{text}"
    );

    // Several: counted, the first ones listed in sample order, each naming its file.
    let corrupt = write_bytes(&d.join("corrupt.png"), b"\x89PNG\r\n\x1a\n not a header");
    let missing = d.join("missing_mask.png");
    let bad = vec![
        fine[0].clone(),
        anomalous(&jpg, &[&wide]),
        anomalous(&corrupt, &[]),
        fine[1].clone(),
        anomalous(&good, &[&missing]),
    ];
    let err = check_headers(&bad).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("3 of 5 samples have a problem"), "{text}");
    let (a, b, c) = (
        text.find("wide_mask.png").expect("mask named"),
        text.find("corrupt.png").expect("image named"),
        text.find("missing_mask.png").expect("missing mask named"),
    );
    assert!(a < b && b < c, "sample order: {text}");
    match err {
        DataError::Several {
            count,
            checked,
            first,
        } => {
            assert_eq!((count, checked, first.len()), (3, 5, 3));
            assert!(
                matches!(first[2], DataError::NotFound { .. }),
                "{}",
                first[2]
            );
        }
        other => panic!("expected Several, got {other}"),
    }
    // More than five: five listed, the rest counted.
    let many: Vec<Sample> = (0..7).map(|_| anomalous(&corrupt, &[])).collect();
    let text = check_headers(&many).unwrap_err().to_string();
    assert!(text.starts_with("7 of 7 samples"), "{text}");
    assert_eq!(text.matches("corrupt.png").count(), 5, "{text}");
    assert!(text.ends_with("(and 2 more)"), "{text}");
}
