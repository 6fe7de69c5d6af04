//! Loading the teacher's ImageNet weights into a freshly built model.
use std::path::Path;

use anyhow::{bail, Context, Result};
use omniad_model::{OmniAd, TeacherArch};

use crate::config::weights_hint;

/// Loads teacher weights: the given file (timm/torchvision `.safetensors`/`.pth`), or for
/// EfficientNet-Lite0 without a file, the weights shipped inside omniad.
///
/// # Errors
/// No file for a ResNet (says where to get one), or the file does not fit the architecture
/// (each missing/unexpected/mis-shaped tensor is listed, with a hint at the architecture the file
/// seems to hold).
pub fn load_teacher(model: &mut OmniAd, path: Option<&Path>) -> Result<()> {
    let arch = model.cfg.teacher;
    match path {
        Some(p) => {
            if !p.is_file() {
                bail!(
                    "teacher weights {}: file not found ({})",
                    p.display(),
                    weights_hint(arch)
                );
            }
            model
                .teacher()
                .load_weights(&model.teacher_vs, p)
                .with_context(|| format!("cannot load {arch} teacher weights"))?;
        }
        None if arch == TeacherArch::EfficientNetLite0 => {
            model
                .teacher()
                .load_shipped_weights(&model.teacher_vs)
                .context("cannot load the shipped EfficientNet-Lite0 weights")?;
        }
        None => bail!(
            "teacher {arch} needs ImageNet weights: pass --teacher-weights FILE ({})",
            weights_hint(arch)
        ),
    }
    Ok(())
}
