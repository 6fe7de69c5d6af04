//! The teacher-feature cache of training and the memory budget that picks where it lives.
//!
//! The teacher is frozen and training uses no augmentation, so the teacher features of a training
//! image are a pure function of the image: computed the first time the image is used (so the
//! first epoch runs exactly like training without a cache: same batches, same teacher calls) and
//! read back in later epochs, which skip the image decoding and the teacher. A resumed run fills
//! it again as it goes; nothing of it is part of a checkpoint.
//!
//! [`FeatureCache::Auto`] (the default) estimates the cache's size before training (images x
//! per-image feature floats x 4 bytes) and keeps it
//! 1. in memory (f32) when it fits the memory budget (`--memory-budget`, default half of the
//!    memory available now: `MemAvailable` of `/proc/meminfo`, or the cgroup's limit minus its
//!    usage when that is lower);
//! 2. else in a memory-mapped f32 file in the run folder (`.feature-cache.f32`, removed when
//!    training ends) when the run folder's file system has room for it (with a margin of 10%);
//! 3. else nowhere: the teacher runs at every step.
//!
//! All three give bit-identical training. The f16 cache (`memory_f16`, half the memory) rounds
//! the features and so trains a slightly different model: it is used only when asked for, never
//! chosen by `auto` behind the user's back.
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use serde::{Deserialize, Serialize};

/// Where teacher features of training images are kept between epochs (see the module
/// documentation).
///
/// The teacher is frozen and training uses no augmentation, so its features are a pure
/// function of the image: computed once and reused every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FeatureCache {
    /// Memory (f32) when the cache fits the memory budget, else a memory-mapped file in the run
    /// folder, else none: decided before training from the estimated size; all three train
    /// bit-identically.
    #[default]
    Auto,
    /// In memory as f32 (bit-identical to recomputing them).
    Memory,
    /// A memory-mapped f32 file in the run folder (bit-identical; for caches larger than memory).
    Disk,
    /// In memory as f16 (half the memory; loss parity within 1e-3).
    MemoryF16,
    /// No cache: images are decoded and the teacher runs at every step (the reference trainer).
    None,
}

/// Name of the disk cache inside the run folder (a leftover of a killed run is removed at the next
/// start, by the run folder recovery of `runs.rs`).
pub const DISK_CACHE_FILE: &str = ".feature-cache.f32";

/// Where the cache of a training lives, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePlan {
    /// The resolved mode (never [`FeatureCache::Auto`]).
    pub mode: FeatureCache,
    /// Size of a full f32 cache, bytes (`images x floats per image x 4`).
    pub f32_bytes: u64,
    /// The memory budget it was compared with, bytes (`None` when no budget applied: an explicit
    /// mode).
    pub budget: Option<u64>,
    /// One line for the start-up summary: the mode and the reason.
    pub reason: String,
}

/// Bytes of memory available to this process now: the lower of the system's `MemAvailable` and
/// the cgroup's limit minus its usage (containers, batch schedulers). `None` where neither can be
/// read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    let read_u64 = |p: &str| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    // cgroup v2, then v1 (a v1 "no limit" is a huge number, harmless in the min).
    let cgroup = match (
        read_u64("/sys/fs/cgroup/memory.max"),
        read_u64("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
        _ => match (
            read_u64("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            read_u64("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ) {
            (Some(max), Some(cur)) => Some(max.saturating_sub(cur)),
            _ => None,
        },
    };
    match (meminfo, cgroup) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Free bytes on the file system holding `dir` (for the unprivileged user), `None` if unknown.
pub fn free_disk_space(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is a valid C string.
    unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        if libc::statvfs(c.as_ptr(), &mut st) != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
}

/// Human-readable bytes (`1.50 GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Decides where the cache of `images` training images with `floats_per_image` teacher-feature
/// floats each lives (see the module documentation). `budget` overrides the default budget (half
/// of [`available_memory`]); `run_dir` is where a disk cache would go.
///
/// # Errors
/// An explicit [`FeatureCache::Disk`] when the run folder's file system has no room for it.
pub fn plan_cache(
    mode: FeatureCache,
    images: usize,
    floats_per_image: u64,
    budget: Option<u64>,
    run_dir: &Path,
) -> Result<CachePlan> {
    let f32_bytes = images as u64 * floats_per_image * 4;
    let size = human_bytes(f32_bytes);
    let disk_room = || free_disk_space(run_dir).map(|free| free / 10 * 9);
    let explicit = |mode, reason: String| {
        Ok(CachePlan {
            mode,
            f32_bytes,
            budget: None,
            reason,
        })
    };
    match mode {
        FeatureCache::None => {
            return explicit(
                mode,
                "none (--feature-cache none): the teacher runs at every step".into(),
            )
        }
        FeatureCache::Memory => {
            return explicit(
                mode,
                format!("memory, f32, {size} (--feature-cache memory)"),
            )
        }
        FeatureCache::MemoryF16 => {
            return explicit(
                mode,
                format!(
                    "memory, f16, {} (--feature-cache memory_f16)",
                    human_bytes(f32_bytes / 2)
                ),
            )
        }
        FeatureCache::Disk => {
            if let Some(room) = disk_room().filter(|&r| r < f32_bytes) {
                bail!(
                    "--feature-cache disk needs {size} in {} but its file system has {} free",
                    run_dir.display(),
                    human_bytes(room)
                );
            }
            return explicit(
                mode,
                format!(
                    "disk, f32, {size} in {} (--feature-cache disk)",
                    run_dir.join(DISK_CACHE_FILE).display()
                ),
            );
        }
        FeatureCache::Auto => {}
    }
    let (budget, whose) = match budget {
        Some(b) => (b, "--memory-budget".to_string()),
        None => match available_memory() {
            Some(avail) => (
                avail / 2,
                format!("half of the {} available", human_bytes(avail)),
            ),
            None => (0, "available memory unknown".to_string()),
        },
    };
    let plan = |mode, reason| CachePlan {
        mode,
        f32_bytes,
        budget: Some(budget),
        reason,
    };
    let b = human_bytes(budget);
    if f32_bytes <= budget {
        return Ok(plan(
            FeatureCache::Memory,
            format!("memory, f32: {size} for {images} images fits the budget of {b} ({whose})"),
        ));
    }
    match disk_room() {
        Some(room) if room >= f32_bytes => Ok(plan(
            FeatureCache::Disk,
            format!(
                "disk, f32: {size} for {images} images exceeds the memory budget of {b} ({whose}); memory-mapped file {}",
                run_dir.join(DISK_CACHE_FILE).display()
            ),
        )),
        room => Ok(plan(
            FeatureCache::None,
            format!(
                "none: {size} for {images} images exceeds the memory budget of {b} ({whose}) and the {} free in {}; the teacher runs at every step",
                room.map_or("unknown space".to_string(), human_bytes),
                run_dir.display()
            ),
        )),
    }
}

/// Storage of the cached features: one `[N, C_i, h_i, w_i]` block per scale.
enum Storage {
    /// CPU tensors (f32 or f16).
    Memory(Vec<Tensor>),
    /// An f32 file mapped into memory; per scale its `[C, h, w]` shape and byte offset.
    Mapped {
        map: memmap2::MmapMut,
        path: PathBuf,
        scales: Vec<([i64; 3], usize)>,
    },
}

/// The cache of one training (see the module documentation).
pub struct FeatureStore {
    mode: FeatureCache,
    /// Where a disk cache goes.
    disk_path: PathBuf,
    /// Allocated at the first fill, from that batch's feature shapes.
    storage: Option<Storage>,
    filled: Vec<bool>,
    /// Seconds spent in the teacher while filling.
    pub teacher_seconds: f64,
}

impl Drop for FeatureStore {
    /// Removes the disk cache file.
    fn drop(&mut self) {
        if let Some(Storage::Mapped { path, .. }) = &self.storage {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FeatureStore {
    /// A cache for `n` images in `mode` (resolved: not `Auto`); `None` for no cache. A disk cache
    /// is created in `run_dir`.
    pub fn new(mode: FeatureCache, n: usize, run_dir: &Path) -> Option<Self> {
        if matches!(mode, FeatureCache::None | FeatureCache::Auto) {
            return None;
        }
        Some(Self {
            mode,
            disk_path: run_dir.join(DISK_CACHE_FILE),
            storage: None,
            filled: vec![false; n],
            teacher_seconds: 0.0,
        })
    }

    /// Whether every image of `idx` is cached.
    pub fn has_all(&self, idx: &[usize]) -> bool {
        idx.iter().all(|&i| self.filled[i])
    }

    /// Cached features `[B, C_i, h_i, w_i]` of images `idx`, as f32 on `device`.
    ///
    /// # Errors
    /// libtorch failures (e.g. out of memory on `device`).
    pub fn get(&self, idx: &[usize], device: Device) -> Result<Vec<Tensor>> {
        match &self.storage {
            None => bail!("feature cache read before it was filled"),
            Some(Storage::Memory(blocks)) => {
                let index = index_tensor(idx);
                blocks
                    .iter()
                    .map(|c| {
                        Ok(c.f_index_select(0, &index)?
                            .f_to_device(device)?
                            .f_to_kind(Kind::Float)?)
                    })
                    .collect()
            }
            Some(Storage::Mapped { map, scales, .. }) => {
                scales
                    .iter()
                    .map(|&(shape, offset)| {
                        let row = (shape[0] * shape[1] * shape[2]) as usize * 4;
                        let mut bytes = Vec::with_capacity(row * idx.len());
                        for &i in idx {
                            let at = offset + i * row;
                            bytes.extend_from_slice(&map[at..at + row]);
                        }
                        let size = [idx.len() as i64, shape[0], shape[1], shape[2]];
                        Ok(Tensor::f_from_data_size(&bytes, &size, Kind::Float)?
                            .f_to_device(device)?)
                    })
                    .collect()
            }
        }
    }

    /// Stores fresh teacher features of images `idx` and returns what training should use: the
    /// stored values (f16-rounded in f16 mode, so that every epoch sees the same features).
    ///
    /// # Errors
    /// The cache cannot be allocated (memory) or its file created (disk), naming the file.
    pub fn put(&mut self, idx: &[usize], feats: Vec<Tensor>) -> Result<Vec<Tensor>> {
        if self.storage.is_none() {
            self.storage = Some(self.allocate(&feats)?);
        }
        let n_images = self.filled.len();
        let mut out = Vec::with_capacity(feats.len());
        match self.storage.as_mut() {
            None => bail!("feature cache not allocated"),
            Some(Storage::Memory(blocks)) => {
                let index = index_tensor(idx);
                for (c, f) in blocks.iter_mut().zip(feats) {
                    let kind = c.kind();
                    let stored = f.f_to_device(Device::Cpu)?.f_to_kind(kind)?;
                    let _ = c.f_index_copy_(0, &index, &stored)?;
                    out.push(if kind == Kind::Float {
                        f
                    } else {
                        stored.f_to_device(f.device())?.f_to_kind(Kind::Float)?
                    });
                }
            }
            Some(Storage::Mapped { map, scales, .. }) => {
                for (&(shape, offset), f) in scales.iter().zip(feats) {
                    let row = (shape[0] * shape[1] * shape[2]) as usize;
                    let cpu = f.f_to_device(Device::Cpu)?.f_contiguous()?;
                    for (b, &i) in idx.iter().enumerate() {
                        debug_assert!(i < n_images);
                        let at = offset + i * row * 4;
                        cpu.f_get(b as i64)?
                            .f_copy_data_u8(&mut map[at..at + row * 4], row)?;
                    }
                    out.push(f);
                }
            }
        }
        for &i in idx {
            self.filled[i] = true;
        }
        Ok(out)
    }

    /// Allocates the storage for features shaped like `feats` (one batch).
    fn allocate(&self, feats: &[Tensor]) -> Result<Storage> {
        let n = self.filled.len() as i64;
        let shapes: Vec<[i64; 3]> = feats
            .iter()
            .map(|f| {
                let s = f.size();
                [s[1], s[2], s[3]]
            })
            .collect();
        if self.mode != FeatureCache::Disk {
            let kind = if self.mode == FeatureCache::MemoryF16 {
                Kind::Half
            } else {
                Kind::Float
            };
            let blocks = shapes
                .iter()
                .map(|s| {
                    Tensor::f_zeros([n, s[0], s[1], s[2]], (kind, Device::Cpu)).with_context(|| {
                        format!("cannot allocate the feature cache ({n} images); use --feature-cache none or a smaller --memory-budget")
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Storage::Memory(blocks));
        }
        let mut scales = Vec::with_capacity(shapes.len());
        let mut total = 0usize;
        for s in &shapes {
            scales.push((*s, total));
            total += n as usize * (s[0] * s[1] * s[2]) as usize * 4;
        }
        let path = self.disk_path.clone();
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("cannot create the disk feature cache {}", path.display()))?;
        file.set_len(total as u64).with_context(|| {
            format!(
                "cannot size the disk feature cache {} to {}",
                path.display(),
                human_bytes(total as u64)
            )
        })?;
        // SAFETY: the file is ours (in the locked run folder) and nothing else maps or truncates it
        // while training runs.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }
            .with_context(|| format!("cannot map the disk feature cache {}", path.display()))?;
        Ok(Storage::Mapped { map, path, scales })
    }
}

fn index_tensor(idx: &[usize]) -> Tensor {
    Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_plan_follows_the_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        // 10 images x 1000 floats x 4 bytes = 40,000 bytes.
        let fits =
            plan_cache(FeatureCache::Auto, 10, 1000, Some(40_000), dir.path()).expect("plan");
        assert_eq!(fits.mode, FeatureCache::Memory, "{}", fits.reason);
        assert_eq!(fits.f32_bytes, 40_000);
        let over =
            plan_cache(FeatureCache::Auto, 10, 1000, Some(39_999), dir.path()).expect("plan");
        assert_eq!(over.mode, FeatureCache::Disk, "{}", over.reason);
        assert!(
            over.reason.contains("exceeds the memory budget"),
            "{}",
            over.reason
        );
        // More than any disk holds: no cache.
        let huge =
            plan_cache(FeatureCache::Auto, 1 << 20, 1 << 40, Some(0), dir.path()).expect("plan");
        assert_eq!(huge.mode, FeatureCache::None, "{}", huge.reason);
        let err = plan_cache(FeatureCache::Disk, 1 << 20, 1 << 40, None, dir.path()).unwrap_err();
        assert!(err.to_string().contains("free"), "{err}");
        // An explicit mode is kept whatever the budget.
        let m = plan_cache(FeatureCache::Memory, 10, 1000, Some(0), dir.path()).expect("plan");
        assert_eq!(m.mode, FeatureCache::Memory);
    }

    #[test]
    fn human_bytes_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
    }

    /// The disk cache returns exactly what the memory cache returns, for every image, in any order.
    #[test]
    fn disk_cache_equals_memory_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        tch::manual_seed(3);
        let n = 5;
        let feats: Vec<Tensor> = [(4, 8, 8), (6, 4, 4), (8, 2, 2)]
            .iter()
            .map(|&(c, h, w)| Tensor::randn([n as i64, c, h, w], (Kind::Float, Device::Cpu)))
            .collect();
        let rows = |idx: &[usize]| -> Vec<Tensor> {
            let index = index_tensor(idx);
            feats.iter().map(|f| f.index_select(0, &index)).collect()
        };
        let mut mem = FeatureStore::new(FeatureCache::Memory, n, dir.path()).expect("memory");
        let mut disk = FeatureStore::new(FeatureCache::Disk, n, dir.path()).expect("disk");
        for batch in [vec![3, 0], vec![4, 1, 2]] {
            assert!(!disk.has_all(&batch));
            let a = mem.put(&batch, rows(&batch)).expect("put");
            let b = disk.put(&batch, rows(&batch)).expect("put");
            for (x, y) in a.iter().zip(&b) {
                assert!(x.equal(y));
            }
        }
        assert!(dir.path().join(DISK_CACHE_FILE).is_file());
        for batch in [vec![0, 1, 2, 3, 4], vec![2], vec![4, 0, 3]] {
            assert!(disk.has_all(&batch));
            let a = mem.get(&batch, Device::Cpu).expect("get");
            let b = disk.get(&batch, Device::Cpu).expect("get");
            let want = rows(&batch);
            for ((x, y), w) in a.iter().zip(&b).zip(&want) {
                assert!(x.equal(w), "memory cache");
                assert!(y.equal(w), "disk cache");
            }
        }
        drop(disk);
        assert!(
            !dir.path().join(DISK_CACHE_FILE).exists(),
            "removed when training ends"
        );
    }
}
