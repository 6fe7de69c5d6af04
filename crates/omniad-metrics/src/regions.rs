//! Connected ground-truth regions (8-connectivity) of one binary mask.
//!
//! Same regions as `skimage.measure.label(mask)` for a 2-D mask (its default
//! connectivity is the full 3x3 neighbourhood) and as
//! `scipy.ndimage.label(mask, np.ones((3, 3)))` used by the MVTec AD
//! evaluation code.

/// Labels the connected regions of `mask` (`[h, w]`, row-major, non-zero =
/// anomalous) with 8-connectivity.
///
/// On return `labels[i]` is `0` for background and `1..=n` for the region of
/// pixel `i`; `sizes[r - 1]` is the pixel count of region `r`. `labels` and
/// `stack` are scratch buffers reused across calls. Returns `n`.
pub(crate) fn label_regions(
    mask: &[u8],
    h: usize,
    w: usize,
    labels: &mut Vec<u32>,
    stack: &mut Vec<u32>,
    sizes: &mut Vec<u32>,
) -> u32 {
    debug_assert_eq!(mask.len(), h * w);
    labels.clear();
    labels.resize(h * w, 0);
    sizes.clear();
    let mut n = 0u32;
    for start in 0..h * w {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        n += 1;
        let mut size = 0u32;
        labels[start] = n;
        stack.clear();
        stack.push(start as u32);
        while let Some(p) = stack.pop() {
            size += 1;
            let (y, x) = (p as usize / w, p as usize % w);
            let y0 = y.saturating_sub(1);
            let y1 = (y + 1).min(h - 1);
            let x0 = x.saturating_sub(1);
            let x1 = (x + 1).min(w - 1);
            for yy in y0..=y1 {
                let row = yy * w;
                for xx in x0..=x1 {
                    let q = row + xx;
                    if mask[q] != 0 && labels[q] == 0 {
                        labels[q] = n;
                        stack.push(q as u32);
                    }
                }
            }
        }
        sizes.push(size);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(mask: &[u8], h: usize, w: usize) -> (u32, Vec<u32>, Vec<u32>) {
        let (mut l, mut s, mut z) = (Vec::new(), Vec::new(), Vec::new());
        let n = label_regions(mask, h, w, &mut l, &mut s, &mut z);
        (n, l, z)
    }

    #[test]
    fn diagonal_pixels_are_connected() {
        #[rustfmt::skip]
        let m = [
            1, 0, 0, 0,
            0, 1, 0, 1,
            0, 0, 0, 1,
            1, 1, 0, 0,
        ];
        let (n, l, sizes) = run(&m, 4, 4);
        assert_eq!(n, 3);
        assert_eq!(sizes, vec![2, 2, 2]);
        assert_eq!(l[0], l[5]);
        assert_eq!(l[7], l[11]);
        assert_eq!(l[12], l[13]);
        assert_ne!(l[0], l[7]);
        assert_eq!(l[1], 0);
    }

    #[test]
    fn u_shape_is_one_region_and_empty_mask_has_none() {
        #[rustfmt::skip]
        let m = [
            1, 0, 1,
            1, 0, 1,
            1, 1, 1,
        ];
        let (n, _, sizes) = run(&m, 3, 3);
        assert_eq!((n, sizes), (1, vec![7]));
        let (n, l, _) = run(&[0; 6], 2, 3);
        assert_eq!(n, 0);
        assert!(l.iter().all(|&x| x == 0));
        let (n, _, sizes) = run(&[1; 5], 1, 5);
        assert_eq!((n, sizes), (1, vec![5]));
    }
}
