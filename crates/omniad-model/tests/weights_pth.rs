//! Reading PyTorch `torch.save` files and safetensors: values, layouts, and every error path.
//!
//! The `.pth`/`.pt` files under `tests/data/` were written by Python `torch.save` with
//! `tests/data/make_pth_fixtures.py`; their values are simple ramps recomputed here.
use omniad_model::weights::{read_pth_bytes, read_state_dict, WeightsError};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// `arange(numel) * scale + shift`, as `f64`.
fn ramp(numel: usize, scale: f64, shift: f64) -> Vec<f64> {
    (0..numel).map(|i| i as f64 * scale + shift).collect()
}

fn values(t: &Tensor) -> Vec<f64> {
    let flat = t.to_kind(Kind::Double).flatten(0, -1);
    Vec::<f64>::try_from(&flat).unwrap()
}

/// Checks the tensors of `make_pth_fixtures.tiny_state_dict()` (names optionally prefixed).
fn check_tiny(tensors: &[(String, Tensor)], prefix: &str) {
    let expected: [(&str, Kind, Vec<i64>, Vec<f64>); 8] = [
        (
            "conv1.weight",
            Kind::Float,
            vec![4, 3, 3, 3],
            ramp(108, 0.25, -13.5),
        ),
        ("bn1.weight", Kind::Float, vec![4], ramp(4, 0.5, 0.5)),
        ("bn1.bias", Kind::Half, vec![4], ramp(4, 0.25, -0.5)),
        (
            "bn1.running_mean",
            Kind::BFloat16,
            vec![4],
            ramp(4, 0.5, -1.0),
        ),
        ("bn1.running_var", Kind::Double, vec![4], ramp(4, 1.0, 1.0)),
        ("bn1.num_batches_tracked", Kind::Int64, vec![], vec![7.0]),
        (
            "fc.weight",
            Kind::Float,
            vec![2, 4],
            vec![0., 2., 4., 6., 1., 3., 5., 7.],
        ),
        ("fc.bias", Kind::Float, vec![2], vec![3.0, 4.0]),
    ];
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    let want: Vec<String> = expected
        .iter()
        .map(|e| format!("{prefix}{}", e.0))
        .collect();
    assert_eq!(names, want, "names in dict order");
    for ((name, t), (_, kind, shape, vals)) in tensors.iter().zip(expected) {
        assert_eq!(t.kind(), kind, "{name}");
        assert_eq!(t.size(), shape, "{name}");
        assert_eq!(values(t), vals, "{name}");
    }
}

#[test]
fn pth_zip_round_trip_values() {
    let tensors = read_state_dict(&data("tiny_state_dict.pth")).unwrap();
    check_tiny(&tensors, "");
    // The transposed view comes back contiguous with the logical layout.
    assert!(tensors[6].1.is_contiguous());
}

#[test]
fn pth_legacy_round_trip_values() {
    let tensors = read_state_dict(&data("tiny_state_dict_legacy.pth")).unwrap();
    check_tiny(&tensors, "");
}

#[test]
fn pth_wrapped_checkpoint_is_unwrapped() {
    // {"epoch", "arch", "args": argparse.Namespace, "state_dict": {module.*}, "optimizer"}
    let tensors = read_state_dict(&data("tiny_checkpoint_wrapped.pt")).unwrap();
    check_tiny(&tensors, "module.");
}

#[test]
fn bare_tensor_is_not_a_state_dict() {
    let err = read_state_dict(&data("bare_tensor.pt")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, WeightsError::Unsupported { .. }), "{msg}");
    assert!(
        msg.contains("bare_tensor.pt") && msg.contains("instead of a state dict"),
        "{msg}"
    );
}

fn tmp_copy(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn expect_corrupt(path: &Path) -> String {
    let err = read_state_dict(path).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, WeightsError::Corrupt { .. }),
        "not Corrupt: {msg}"
    );
    let file_name = path.file_name().unwrap().to_str().unwrap();
    assert!(
        msg.contains(file_name),
        "message does not name the file: {msg}"
    );
    msg
}

#[test]
fn truncated_pth_files_are_refused() {
    for name in ["tiny_state_dict.pth", "tiny_state_dict_legacy.pth"] {
        let bytes = std::fs::read(data(name)).unwrap();
        for cut in [bytes.len() - 1, bytes.len() / 2, 100, 3] {
            let (_dir, path) = tmp_copy(&format!("cut_{cut}_{name}"), &bytes[..cut]);
            expect_corrupt(&path);
        }
    }
}

#[test]
fn bit_flipped_zip_pth_fails_its_crc() {
    let bytes = std::fs::read(data("tiny_state_dict.pth")).unwrap();
    // The first value of conv1.weight, -13.5f32, inside storage data/0.
    let needle = (-13.5f32).to_le_bytes();
    let at = bytes
        .windows(4)
        .position(|w| w == needle)
        .expect("conv1.weight data in the fixture");
    let mut flipped = bytes.clone();
    flipped[at + 1] ^= 0x10;
    let (_dir, path) = tmp_copy("flipped.pth", &flipped);
    let msg = expect_corrupt(&path);
    assert!(msg.to_lowercase().contains("checksum"), "{msg}");
    // A flip inside the pickle (the name 'conv1.weight') is caught as well.
    let at = bytes
        .windows(12)
        .position(|w| w == b"conv1.weight")
        .expect("pickle text in the fixture");
    let mut flipped = bytes;
    flipped[at] ^= 0x01;
    let (_dir, path) = tmp_copy("flipped_pickle.pth", &flipped);
    expect_corrupt(&path);
}

#[test]
fn garbage_and_plain_pickles_are_refused() {
    let (_dir, path) = tmp_copy("garbage.pth", b"this is not a checkpoint at all");
    let msg = expect_corrupt(&path);
    assert!(msg.contains("not a PyTorch file"), "{msg}");
    // pickle.dumps({'a': 1}, protocol=2): a pickle, but no torch.save magic number.
    let (_dir, path) = tmp_copy(
        "plain.pkl.pt",
        b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01K\x01s.",
    );
    let msg = expect_corrupt(&path);
    assert!(msg.contains("magic number"), "{msg}");
    // An empty file.
    let (_dir, path) = tmp_copy("empty.bin", b"");
    expect_corrupt(&path);
}

#[test]
fn file_system_errors_name_the_file() {
    let missing = Path::new("no/such/dir/resnet34.pth");
    let err = read_state_dict(missing).unwrap_err();
    assert!(matches!(err, WeightsError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("no/such/dir/resnet34.pth"),
        "{err}"
    );

    let err = read_state_dict(&data("make_pth_fixtures.py")).unwrap_err();
    assert!(
        matches!(err, WeightsError::UnsupportedExtension { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("make_pth_fixtures.py"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let as_dir = dir.path().join("weights.safetensors");
    std::fs::create_dir(&as_dir).unwrap();
    let err = read_state_dict(&as_dir).unwrap_err();
    assert!(matches!(err, WeightsError::Io { .. }), "{err}");
    assert!(err.to_string().contains("weights.safetensors"), "{err}");
}

#[test]
fn safetensors_round_trip_and_corruption() {
    let a = Tensor::from_slice(&[1.5f32, -2.0, 3.25, 4.0]).reshape([2, 2]);
    let b = Tensor::from_slice(&[0.5f32, 0.25]).to_kind(Kind::Half);
    let c = Tensor::from_slice(&[9i64]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    Tensor::write_safetensors(&[("b.x", &b), ("a", &a), ("c", &c)], &path).unwrap();
    let read = read_state_dict(&path).unwrap();
    let names: Vec<&str> = read.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a", "b.x", "c"]);
    assert_eq!(values(&read[0].1), [1.5, -2.0, 3.25, 4.0]);
    assert_eq!(read[0].1.size(), [2, 2]);
    assert_eq!(read[1].1.kind(), Kind::Half);
    assert_eq!(values(&read[1].1), [0.5, 0.25]);
    assert_eq!(read[2].1.kind(), Kind::Int64);
    assert_eq!(values(&read[2].1), [9.0]);

    let bytes = std::fs::read(&path).unwrap();
    let (_d1, cut) = tmp_copy("cut.safetensors", &bytes[..bytes.len() - 3]);
    expect_corrupt(&cut);
    let (_d2, cut) = tmp_copy("header_only.safetensors", &bytes[..6]);
    expect_corrupt(&cut);
    // Flip a bit of the JSON header (a '{' or '"' becomes something else).
    let mut flipped = bytes.clone();
    flipped[8] ^= 0x40;
    let (_d3, path) = tmp_copy("flipped.safetensors", &flipped);
    expect_corrupt(&path);
    // A header length pointing past the end of the file.
    let mut huge = bytes;
    huge[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (_d4, path) = tmp_copy("huge.safetensors", &huge);
    expect_corrupt(&path);
}

#[test]
fn in_memory_reader_names_the_source() {
    let err = read_pth_bytes(b"PK\x03\x04 broken", "my-upload").unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("my-upload") && msg.contains("zip"), "{msg}");
}
