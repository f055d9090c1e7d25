//! Area-averaging downscale and padding of `u8` images.
//!
//! The paper builds each resolution of its ladder by resizing the original images, so every
//! rung is computed from the source, never from the rung above. A box filter over the source
//! pixels that fall into each destination pixel (area averaging) avoids the aliasing that
//! nearest or bilinear sampling shows at factors like 256→8.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::error::{Error, Result};

/// How a non-square source image is made square before downscaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fit {
    /// Crop the largest centred square, keeping the aspect ratio.
    #[default]
    CenterCrop,
    /// Stretch the whole image to a square.
    Squash,
}

/// Downscales one interleaved (`H × W × C`, C ∈ {1, 3}) image to `side × side` by area
/// averaging and returns it planar (`C × side × side`).
pub fn downscale_to_planar(
    resizer: &mut Resizer,
    hwc: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    side: usize,
    fit: Fit,
) -> Result<Vec<u8>> {
    let pixel_type = match channels {
        1 => PixelType::U8,
        3 => PixelType::U8x3,
        c => {
            return Err(Error::invalid(format!(
                "{c} channels: only 1 or 3 are supported"
            )));
        }
    };
    let plane = side * side;
    if height == side && width == side {
        return Ok(interleaved_to_planar(hwc, channels, plane));
    }
    let src = ImageRef::new(width as u32, height as u32, hwc, pixel_type)
        .map_err(|e| Error::invalid(format!("image buffer: {e}")))?;
    let mut dst = Image::new(side as u32, side as u32, pixel_type);
    let mut opts = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Box));
    if fit == Fit::CenterCrop && height != width {
        let s = height.min(width) as f64;
        opts = opts.crop((width as f64 - s) / 2.0, (height as f64 - s) / 2.0, s, s);
    }
    resizer
        .resize(&src, &mut dst, &opts)
        .map_err(|e| Error::invalid(format!("resize {width}×{height} → {side}×{side}: {e}")))?;
    Ok(interleaved_to_planar(dst.buffer(), channels, plane))
}

/// `H × W × C` → `C × H × W`.
pub fn interleaved_to_planar(hwc: &[u8], channels: usize, plane: usize) -> Vec<u8> {
    if channels == 1 {
        return hwc[..plane].to_vec();
    }
    let mut out = vec![0u8; channels * plane];
    for (p, px) in hwc.chunks_exact(channels).take(plane).enumerate() {
        for (c, &v) in px.iter().enumerate() {
            out[c * plane + p] = v;
        }
    }
    out
}

/// `C × H × W` → `H × W × C`.
pub fn planar_to_interleaved(chw: &[u8], channels: usize, plane: usize) -> Vec<u8> {
    if channels == 1 {
        return chw[..plane].to_vec();
    }
    let mut out = vec![0u8; channels * plane];
    for c in 0..channels {
        for p in 0..plane {
            out[p * channels + c] = chw[c * plane + p];
        }
    }
    out
}

/// Pads a planar image with zeros, centred, to `side × side` (`side ≥ height, width`).
pub fn pad_planar(
    chw: &[u8],
    channels: usize,
    height: usize,
    width: usize,
    side: usize,
) -> Vec<u8> {
    let top = (side - height) / 2;
    let left = (side - width) / 2;
    let mut out = vec![0u8; channels * side * side];
    for c in 0..channels {
        for y in 0..height {
            let src = &chw[c * height * width + y * width..][..width];
            out[c * side * side + (y + top) * side + left..][..width].copy_from_slice(src);
        }
    }
    out
}

/// The smallest power of two ≥ `n`.
pub fn next_pow2(n: usize) -> usize {
    n.next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halving_is_the_mean_of_each_2x2_block() -> Result<()> {
        // 4×4 grey image; each 2×2 block has a known mean (rounded half up by the resizer).
        #[rustfmt::skip]
        let img: Vec<u8> = vec![
            0,   4,   100, 102,
            8,   12,  104, 106,
            200, 200, 10,  20,
            200, 200, 30,  40,
        ];
        let mut r = Resizer::new();
        let out = downscale_to_planar(&mut r, &img, 1, 4, 4, 2, Fit::Squash)?;
        assert_eq!(out, vec![6, 103, 200, 25]);
        Ok(())
    }

    #[test]
    fn rgb_downscale_is_per_channel_and_planar() -> Result<()> {
        // 2×2 RGB image → 1×1: each channel averaged separately.
        let img: Vec<u8> = vec![10, 0, 255, 20, 0, 255, 30, 0, 255, 40, 0, 255];
        let out = downscale_to_planar(&mut Resizer::new(), &img, 3, 2, 2, 1, Fit::Squash)?;
        assert_eq!(out, vec![25, 0, 255]);
        Ok(())
    }

    #[test]
    fn center_crop_uses_middle_square() -> Result<()> {
        // 1×3 grey strip, crop keeps the middle pixel.
        let img: Vec<u8> = vec![0, 90, 255];
        let out = downscale_to_planar(&mut Resizer::new(), &img, 1, 1, 3, 1, Fit::CenterCrop)?;
        assert_eq!(out, vec![90]);
        Ok(())
    }

    #[test]
    fn padding_centres_the_image() {
        let out = pad_planar(&[1, 2, 3, 4], 1, 2, 2, 4);
        assert_eq!(out, vec![0, 0, 0, 0, 0, 1, 2, 0, 0, 3, 4, 0, 0, 0, 0, 0]);
        assert_eq!(next_pow2(28), 32);
    }

    #[test]
    fn planar_interleaved_round_trip() {
        let chw: Vec<u8> = (0..12).collect();
        assert_eq!(
            interleaved_to_planar(&planar_to_interleaved(&chw, 3, 4), 3, 4),
            chw
        );
    }
}
