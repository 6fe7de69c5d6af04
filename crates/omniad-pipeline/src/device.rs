//! `--device cpu|cuda|cuda:N` parsing.
use tch::Device;

/// Parses a device name: `cpu`, `cuda` (= `cuda:0`) or `cuda:N`.
///
/// # Errors
/// An unknown name, or a CUDA device when this build has no CUDA support (built without the
/// `cuda` feature) or no such GPU is visible.
pub fn parse_device(name: &str) -> Result<Device, String> {
    let name = name.trim().to_ascii_lowercase();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = if name == "cuda" {
        0
    } else if let Some(n) = name.strip_prefix("cuda:") {
        n.parse::<usize>()
            .map_err(|_| format!("device {name:?}: expected cuda:N with N a GPU index"))?
    } else {
        return Err(format!("unknown device {name:?}: use cpu, cuda or cuda:N"));
    };
    if !tch::Cuda::is_available() {
        return Err(format!(
            "device {name:?}: CUDA is not available (build with `--features cuda` and run scripts/setup.sh with OMNIAD_CUDA=1 on a machine with an NVIDIA GPU)"
        ));
    }
    let count = tch::Cuda::device_count() as usize;
    if index >= count {
        return Err(format!(
            "device {name:?}: only {count} CUDA device(s) visible"
        ));
    }
    Ok(Device::Cuda(index))
}

/// Display name of a device (`cpu`, `cuda:N`).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_rejects_garbage() {
        assert_eq!(parse_device("cpu"), Ok(Device::Cpu));
        assert_eq!(parse_device(" CPU "), Ok(Device::Cpu));
        assert!(parse_device("tpu").unwrap_err().contains("unknown device"));
        assert!(parse_device("cuda:x").unwrap_err().contains("GPU index"));
    }
}
