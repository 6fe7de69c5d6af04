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

thread_local! {
    /// Depth of [`libtorch`] calls on this thread: while positive, the panic hook installed by
    /// [`install_panic_hook`] stays silent (the panic becomes an error).
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, a computation whose tensor sizes the user's input decides (a forward or backward
/// pass), turning a libtorch failure into an error instead of a panic. tch's infallible tensor
/// methods panic on a libtorch error (out of memory, a shape libtorch refuses); the panic is
/// caught here and its message reduced to libtorch's first line, e.g. "`what`: libtorch failed:
/// DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes".
///
/// # Errors
/// The failure, prefixed with `what`.
pub fn libtorch<T>(what: &str, f: impl FnOnce() -> T) -> anyhow::Result<T> {
    GUARDED.with(|g| g.set(g.get() + 1));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    r.map_err(|payload| {
        let raw = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        anyhow::anyhow!("{what}: libtorch failed: {}", libtorch_message(raw))
    })
}

/// The useful line of a tch panic message: the libtorch text inside `Torch("...")`, without the
/// C++ backtrace and the "[enforce fail at ...]" prefix.
fn libtorch_message(raw: &str) -> String {
    let inner = raw
        .split_once("Torch(\"")
        .map_or(raw, |(_, rest)| rest.trim_end_matches("\")"));
    let first = inner
        .split("\\n")
        .flat_map(|l| l.lines())
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or(inner);
    match first.split_once("] ") {
        Some((head, rest)) if head.starts_with("[enforce fail") => rest.to_string(),
        _ => first.to_string(),
    }
}

/// Installs a panic hook that prints nothing for panics inside [`libtorch`] (they become
/// errors) and defers to the previous hook otherwise. Call once, at program start.
pub fn install_panic_hook() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if GUARDED.with(|g| g.get()) == 0 {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod guard_tests {
    use super::*;

    #[test]
    fn libtorch_failures_become_errors() {
        install_panic_hook();
        // A shape libtorch refuses: matmul of [2, 3] and [4, 5].
        let a = tch::Tensor::zeros([2, 3], (tch::Kind::Float, Device::Cpu));
        let b = tch::Tensor::zeros([4, 5], (tch::Kind::Float, Device::Cpu));
        let err = libtorch("test step", || a.matmul(&b))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test step: libtorch failed: "), "{err}");
        assert!(err.contains("cannot be multiplied"), "{err}");
        assert!(!err.contains("Torch(\""), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let ok = libtorch("sum", || a.sum(tch::Kind::Float).double_value(&[])).expect("ok");
        assert_eq!(ok, 0.0);
    }

    #[test]
    fn message_of_an_allocation_failure() {
        let raw = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes.\\nException raised from ...\")";
        assert_eq!(
            libtorch_message(raw),
            "data. DefaultCPUAllocator: not enough memory: you tried to allocate 1073741824 bytes."
        );
    }
}
