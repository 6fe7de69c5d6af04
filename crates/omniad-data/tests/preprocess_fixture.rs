//! Preprocessing against the reference fixture `preprocess/` (PIL `convert('RGB')`,
//! `resize((256, 256), BILINEAR)`, `ToTensor`, ImageNet `Normalize`; masks
//! binarised > 0, resized, > 0.5). See the fixture's `meta.json`.

use std::path::PathBuf;

use omniad_data::{image_size, load_image, load_mask, load_rgb, preprocess_rgb, Preprocess};
use safetensors::{Dtype, SafeTensors};

/// The fixture's normalisation (`meta.json`: torchvision ImageNet mean and std).
const IMAGENET: ([f32; 3], [f32; 3]) = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]);

fn fixtures_dir() -> PathBuf {
    omniad_testkit::fixture_dir("preprocess", "expected.safetensors")
}

fn load_expected(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("expected.safetensors")).expect("read expected.safetensors")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn images_match_reference() {
    let dir = fixtures_dir();
    let bytes = load_expected(&dir);
    let st = SafeTensors::deserialize(&bytes).expect("parse expected.safetensors");
    let pp = Preprocess::new((256, 256), IMAGENET);
    let cases = [
        ("rgb_700x523.png", false),
        ("rgb_1024.jpg", true),
        ("gray_257x300.png", false),
        ("rgba_320x200.png", false),
    ];
    for (name, jpeg) in cases {
        let t = st
            .tensor(&format!("image.{name}"))
            .unwrap_or_else(|e| panic!("fixture tensor image.{name} missing: {e}"));
        assert_eq!(t.dtype(), Dtype::F32);
        assert_eq!(t.shape(), &[3, 256, 256]);
        let expected = f32s(t.data());
        let got = load_image(&dir.join(name), &pp).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), expected.len(), "{name}: length");
        let diffs: Vec<f32> = got
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .collect();
        let max = diffs.iter().cloned().fold(0.0f32, f32::max);
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("{name}: max |diff| = {max:.6}, mean |diff| = {mean:.7}");
        let tol = if jpeg { 0.1 } else { 0.02 };
        assert!(max <= tol, "{name}: max |diff| {max} > {tol}");
        assert!(mean <= 0.005, "{name}: mean |diff| {mean} > 0.005");
        if !jpeg {
            // PNG decoding is lossless and the resize is Pillow's integer algorithm:
            // the result must be identical up to float rounding.
            assert!(
                max < 1e-5,
                "{name}: PNG path should be exact, max |diff| {max}"
            );
        }
    }
}

#[test]
fn load_rgb_then_preprocess_equals_load_image() {
    let dir = fixtures_dir();
    let pp = Preprocess::new((224, 200), IMAGENET);
    let path = dir.join("rgba_320x200.png");
    let rgb = load_rgb(&path).expect("decode");
    assert_eq!(rgb.dimensions(), (320, 200));
    let a = preprocess_rgb(&rgb, &pp);
    let b = load_image(&path, &pp).expect("load");
    assert_eq!(a.len(), 3 * 224 * 200);
    assert_eq!(a, b);
}

#[test]
fn masks_match_reference() {
    let dir = fixtures_dir();
    let bytes = load_expected(&dir);
    let st = SafeTensors::deserialize(&bytes).expect("parse expected.safetensors");
    for name in ["mask_257x300_0_1.png", "mask_700x523_0_255.png"] {
        let t = st
            .tensor(&format!("mask.{name}"))
            .unwrap_or_else(|e| panic!("fixture tensor mask.{name} missing: {e}"));
        assert_eq!(t.dtype(), Dtype::U8);
        assert_eq!(t.shape(), &[1, 256, 256]);
        let expected = t.data();
        let path = dir.join(name);
        let native = image_size(&path).expect("header");
        let got =
            load_mask(&[path], Some(native), (256, 256)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got.len(), expected.len());
        assert!(
            got.iter().all(|&v| v <= 1),
            "{name}: mask values must be 0/1"
        );
        let differing = got.iter().zip(expected).filter(|(a, b)| a != b).count();
        let frac = differing as f64 / got.len() as f64;
        let positives = got.iter().filter(|&&v| v == 1).count();
        eprintln!(
            "{name}: {differing} differing pixels ({:.4}%), {positives} anomalous pixels",
            frac * 100.0
        );
        assert!(
            positives > 0,
            "{name}: the fixture mask has anomalous pixels"
        );
        assert!(frac <= 0.005, "{name}: {differing} pixels differ ({frac})");
    }
}
