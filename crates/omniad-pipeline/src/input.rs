//! Input preparation shared by training, evaluation and prediction: the preprocessing a model's
//! teacher expects and the batch tensor built from the data loader's buffer.
use omniad_data::Preprocess;
use tch::{Device, Tensor};

/// The preprocessing the teacher of `model_cfg` expects: antialiased bilinear resize to the
/// model's input size, then the teacher's input normalisation (mean/std per channel).
pub fn preprocess_for(model_cfg: &omniad_model::OmniAdConfig) -> Preprocess {
    let (mean, std) = model_cfg.teacher.input_mean_std();
    Preprocess {
        size: model_cfg.image_size,
        mean,
        std,
    }
}

/// `[B, 3, H, W]` float tensor on `device` from the loader's flat CHW buffer of `b` images of
/// `pp.size`.
pub fn images_tensor(images: &[f32], b: usize, pp: &Preprocess, device: Device) -> Tensor {
    Tensor::from_slice(images)
        .reshape([b as i64, 3, pp.size.0 as i64, pp.size.1 as i64])
        .to_device(device)
}
