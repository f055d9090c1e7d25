//! Tinyfied data: readers for common labelled image formats, area downscaling to a ladder
//! of resolutions, compact memory-mapped shards, and a prefetching batch loader.

pub mod augment;
pub mod cifar;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod prepare;
pub mod resize;
pub mod shard;
pub mod synthetic;

/// A labelled image set held in memory as planar `u8` pixels (`N × C × H × W`).
///
/// IDX and CIFAR sets are small enough to load whole; class-folder trees are instead
/// streamed by [`prepare`] without ever being held in memory at full size.
#[derive(Debug, Clone)]
pub struct ImageSet {
    /// Channels per image (1 for grey, 3 for RGB).
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Planar pixels, image after image, each `C × H × W`.
    pub pixels: Vec<u8>,
    /// One label per image, each `< classes.len()`.
    pub labels: Vec<u32>,
    /// Class names, indexed by label.
    pub classes: Vec<String>,
}

impl ImageSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when the set holds no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The planar pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Train and held-out splits of one data set.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training images.
    pub train: ImageSet,
    /// Held-out images (the official test or validation split).
    pub test: ImageSet,
}
