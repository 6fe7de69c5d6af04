//! Helpers building small fake datasets in temporary folders.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, Rgb, RgbImage};

/// torchvision's ImageNet `(mean, std)`, which the reference preprocessing fixture used (see
/// its `meta.json`).
pub const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

/// ImageNet preprocessing to `size`.
pub fn imagenet(size: (u32, u32)) -> omniad_data::Preprocess {
    omniad_data::Preprocess::new(size, IMAGENET)
}

/// Creates the parent folders of `path`.
pub fn mkdirs(path: &Path) {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).expect("create folders");
    }
}

/// Writes a `w` x `h` RGB image filled with `value` (format from the extension).
pub fn write_rgb(path: &Path, w: u32, h: u32, value: [u8; 3]) -> PathBuf {
    mkdirs(path);
    let img = RgbImage::from_pixel(w, h, Rgb(value));
    img.save(path).expect("write image");
    path.to_path_buf()
}

/// Writes a JPEG explicitly (for upper-case `.JPG` names the format is not guessed from the extension).
pub fn write_jpeg(path: &Path, w: u32, h: u32, value: [u8; 3]) -> PathBuf {
    mkdirs(path);
    let img = RgbImage::from_pixel(w, h, Rgb(value));
    img.save_with_format(path, image::ImageFormat::Jpeg)
        .expect("write jpeg");
    path.to_path_buf()
}

/// Writes an 8-bit gray mask: `value` inside the rectangle `[x0, x1) x [y0, y1)`, 0 elsewhere.
pub fn write_mask(path: &Path, w: u32, h: u32, rect: (u32, u32, u32, u32), value: u8) -> PathBuf {
    mkdirs(path);
    let (x0, y0, x1, y1) = rect;
    let img = GrayImage::from_fn(w, h, |x, y| {
        if x >= x0 && x < x1 && y >= y0 && y < y1 {
            Luma([value])
        } else {
            Luma([0])
        }
    });
    img.save_with_format(path, image::ImageFormat::Png)
        .expect("write mask");
    path.to_path_buf()
}

/// Writes raw bytes.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> PathBuf {
    mkdirs(path);
    std::fs::write(path, bytes).expect("write bytes");
    path.to_path_buf()
}

/// A minimal MVTec-AD class: 3 train images, test/good (2), test/crack (2 with masks).
/// Images are 32x24 (W x H). Returns the class folder.
pub fn mvtec_class(root: &Path, class: &str) -> PathBuf {
    let c = root.join(class);
    for i in 0..3 {
        write_rgb(
            &c.join(format!("train/good/{i:03}.png")),
            32,
            24,
            [10 * i as u8, 0, 0],
        );
    }
    for i in 0..2 {
        write_rgb(&c.join(format!("test/good/{i:03}.png")), 32, 24, [0, 50, 0]);
    }
    for i in 0..2 {
        write_rgb(
            &c.join(format!("test/crack/{i:03}.png")),
            32,
            24,
            [0, 0, 90],
        );
        write_mask(
            &c.join(format!("ground_truth/crack/{i:03}_mask.png")),
            32,
            24,
            (0, 0, 8, 8),
            255,
        );
    }
    c
}

/// CRC-32 (IEEE) used to build PNG chunks by hand.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose valid header announces `w` x `h` pixels but whose pixel data is a
/// few bytes only (decoding it fully would need `w * h * 3` bytes).
pub fn png_huge_header(w: u32, h: u32) -> Vec<u8> {
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(b"IHDR");
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB
    out.extend_from_slice(&13u32.to_be_bytes());
    out.extend_from_slice(&ihdr);
    out.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    for (kind, data) in [
        (&b"IDAT"[..], &[0x78u8, 0x9C, 0x63, 0x00, 0x00][..]),
        (&b"IEND"[..], &[][..]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

/// Strings of an error's `Display`, for message assertions.
pub fn msg<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}
