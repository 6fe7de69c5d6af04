//! The compute device, parsed once from `--device cpu|cuda|cuda:N` (or a config file) into a
//! [`ComputeDevice`]; whether it is usable on this machine is checked when it is opened.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tch::Device;

/// A device name that cannot be parsed or used; the message names it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DeviceError(pub String);

/// Where tensors live: the CPU or CUDA GPU `N`. Written and read as `cpu` / `cuda:N`
/// (`cuda` = `cuda:0`), case-insensitively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ComputeDevice {
    /// The CPU (libtorch's intra-op threads; `--threads`).
    #[default]
    Cpu,
    /// CUDA GPU with this index.
    Cuda(usize),
}

impl FromStr for ComputeDevice {
    type Err = DeviceError;

    /// Parses the name only (no CUDA check: a run trained on a GPU can be read anywhere).
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let name = s.trim().to_ascii_lowercase();
        if name == "cpu" {
            return Ok(Self::Cpu);
        }
        if name == "cuda" {
            return Ok(Self::Cuda(0));
        }
        match name.strip_prefix("cuda:") {
            Some(n) => n.parse::<usize>().map(Self::Cuda).map_err(|_| {
                DeviceError(format!("device {s:?}: expected cuda:N with N a GPU index"))
            }),
            None => Err(DeviceError(format!(
                "unknown device {s:?}: use cpu, cuda or cuda:N"
            ))),
        }
    }
}

impl fmt::Display for ComputeDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Serialize for ComputeDevice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ComputeDevice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ComputeDevice {
    /// The libtorch device, checked to exist on this machine.
    ///
    /// # Errors
    /// A CUDA device when this build has no CUDA support (built without the `cuda` feature),
    /// no GPU is visible, or the index is out of range.
    pub fn open(self) -> Result<Device, DeviceError> {
        let Self::Cuda(index) = self else {
            return Ok(Device::Cpu);
        };
        if !tch::Cuda::is_available() {
            return Err(DeviceError(format!(
                "device {self}: CUDA is not available (build with `--features cuda` and run scripts/setup.sh with OMNIAD_CUDA=1 on a machine with an NVIDIA GPU)"
            )));
        }
        let count = tch::Cuda::device_count() as usize;
        if index >= count {
            return Err(DeviceError(format!(
                "device {self}: only {count} CUDA device(s) visible"
            )));
        }
        Ok(Device::Cuda(index))
    }
}

/// Display name of a libtorch device (`cpu`, `cuda:N`).
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
    fn parses_names_and_rejects_garbage() {
        assert_eq!("cpu".parse(), Ok(ComputeDevice::Cpu));
        assert_eq!(" CPU ".parse(), Ok(ComputeDevice::Cpu));
        assert_eq!("cuda".parse(), Ok(ComputeDevice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(ComputeDevice::Cuda(3)));
        let e = "tpu".parse::<ComputeDevice>().unwrap_err();
        assert!(e.0.contains("unknown device"), "{e}");
        let e = "cuda:x".parse::<ComputeDevice>().unwrap_err();
        assert!(e.0.contains("GPU index"), "{e}");
        assert_eq!(ComputeDevice::Cuda(2).to_string(), "cuda:2");
        assert_eq!(ComputeDevice::Cpu.open(), Ok(Device::Cpu));
    }
}
