//! Batches from shards: seeded shuffling, per-channel normalisation, and a background
//! thread that assembles the next batches while the current one trains.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use rand::SeedableRng;
use rand::seq::SliceRandom;

use super::augment::Augment;
use super::prepare::ChannelStats;
use super::shard::ShardSet;

/// A batch of normalised images, `N × C × H × W` row-major, and their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Normalised pixels.
    pub images: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
}

impl Batch {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

/// Maps `u8` pixels to `(x / 255 − mean) / std` per channel.
#[derive(Debug, Clone)]
pub struct Normalizer {
    lut: Vec<[f32; 256]>,
}

impl Normalizer {
    /// From training-set statistics.
    pub fn new(stats: &ChannelStats) -> Self {
        let lut = stats
            .mean
            .iter()
            .zip(&stats.std)
            .map(|(&m, &s)| std::array::from_fn(|v| (v as f32 / 255.0 - m) / s))
            .collect();
        Self { lut }
    }

    /// Channels this normaliser expects.
    pub fn channels(&self) -> usize {
        self.lut.len()
    }

    /// Normalises one planar image into `out`.
    pub fn apply(&self, planar: &[u8], out: &mut [f32]) {
        let plane = planar.len() / self.lut.len();
        for (c, lut) in self.lut.iter().enumerate() {
            let src = &planar[c * plane..(c + 1) * plane];
            for (o, &v) in out[c * plane..(c + 1) * plane].iter_mut().zip(src) {
                *o = lut[v as usize];
            }
        }
    }
}

/// Assembles the images at `indices` into a batch.
pub fn make_batch(set: &ShardSet, norm: &Normalizer, indices: &[usize]) -> Batch {
    make_augmented_batch(set, norm, indices, None)
}

/// [`make_batch`], each image first augmented by `aug`, drawn with the key of its stream
/// position (`first` for the first image, seeded by `seed`), when given.
pub fn make_augmented_batch(
    set: &ShardSet,
    norm: &Normalizer,
    indices: &[usize],
    aug: Option<(Augment, u64, u64)>,
) -> Batch {
    let (c, h, w) = set.shape();
    let len = c * h * w;
    let mut images = vec![0f32; indices.len() * len];
    let mut labels = Vec::with_capacity(indices.len());
    // Allocated only when an image is augmented.
    let mut scratch = Vec::new();
    for (k, &i) in indices.iter().enumerate() {
        let (px, label) = set.get(i);
        let px = match aug {
            Some((a, seed, first)) if !a.is_none() => {
                scratch.resize(len, 0);
                a.apply(
                    px,
                    (c, h, w),
                    Augment::key(seed, first + k as u64),
                    &mut scratch,
                );
                &scratch[..]
            }
            _ => px,
        };
        norm.apply(px, &mut images[k * len..(k + 1) * len]);
        labels.push(label);
    }
    Batch {
        images,
        labels,
        shape: [indices.len(), c, h, w],
    }
}

/// The order in which training visits images: an endless stream made of one seeded
/// permutation per epoch. Batch `t` is stream positions `t·B … (t+1)·B − 1`, so any
/// iteration's batch can be rebuilt without replaying earlier ones (used on resume).
#[derive(Debug, Clone)]
pub struct EpochStream {
    n: usize,
    seed: u64,
    epoch: Option<(u64, Vec<usize>)>,
}

impl EpochStream {
    /// A stream over `n` images.
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            epoch: None,
        }
    }

    fn perm(&mut self, epoch: u64) -> &[usize] {
        if self.epoch.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let mut p: Vec<usize> = (0..self.n).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            p.shuffle(&mut rng);
            self.epoch = Some((epoch, p));
        }
        self.epoch
            .as_ref()
            .map(|(_, p)| p.as_slice())
            .unwrap_or(&[])
    }

    /// Image indices of training batch `iteration` of size `batch`.
    pub fn batch_indices(&mut self, iteration: u64, batch: usize) -> Vec<usize> {
        let n = self.n as u64;
        (0..batch as u64)
            .map(|k| {
                let pos = iteration * batch as u64 + k;
                let i = (pos % n) as usize;
                self.perm(pos / n)[i]
            })
            .collect()
    }
}

/// Batches produced on a background thread, `depth` ahead of the consumer.
#[derive(Debug)]
pub struct Prefetcher {
    rx: Option<Receiver<Batch>>,
    handle: Option<JoinHandle<()>>,
}

impl Prefetcher {
    /// Starts producing the batches whose indices `plan` yields, in order.
    pub fn spawn<I>(set: Arc<ShardSet>, norm: Normalizer, plan: I, depth: usize) -> Self
    where
        I: Iterator<Item = Vec<usize>> + Send + 'static,
    {
        Self::spawn_with(plan, move |idx| make_batch(&set, &norm, &idx), depth)
    }

    /// Starts producing `make(item)` for each item of `plan`, in order.
    fn spawn_with<I, F>(plan: I, mut make: F, depth: usize) -> Self
    where
        I: Iterator + Send + 'static,
        F: FnMut(I::Item) -> Batch + Send + 'static,
    {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(depth.max(1));
        let handle = std::thread::Builder::new()
            .name("c2f-prefetch".into())
            .spawn(move || {
                for item in plan {
                    if tx.send(make(item)).is_err() {
                        break;
                    }
                }
            })
            .ok();
        Self {
            rx: Some(rx),
            handle,
        }
    }

    /// Training batches for iterations `start..end`, augmented by `aug`.
    pub fn training(
        set: Arc<ShardSet>,
        norm: Normalizer,
        (seed, batch): (u64, usize),
        (start, end): (u64, u64),
        aug: Augment,
    ) -> Self {
        let mut stream = EpochStream::new(set.len(), seed);
        let plan = (start..end).map(move |t| (t, stream.batch_indices(t, batch)));
        let make = move |(t, idx): (u64, Vec<usize>)| {
            let first = t * batch as u64;
            make_augmented_batch(&set, &norm, &idx, Some((aug, seed, first)))
        };
        Self::spawn_with(plan, make, 4)
    }

    /// One pass over all images in order (evaluation), the last batch possibly smaller.
    pub fn sequential(set: Arc<ShardSet>, norm: Normalizer, batch: usize) -> Self {
        let n = set.len();
        let b = batch.max(1);
        let plan = (0..n)
            .step_by(b)
            .map(move |s| (s..(s + b).min(n)).collect());
        Self::spawn(set, norm, plan, 2)
    }
}

impl Iterator for Prefetcher {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.rx.as_ref()?.recv().ok()
    }
}

impl Drop for Prefetcher {
    fn drop(&mut self) {
        // Closing the channel first makes a blocked producer see the error and exit.
        self.rx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_visits_every_image_once_per_epoch() {
        let mut s = EpochStream::new(10, 3);
        let mut seen: Vec<usize> = (0..5).flat_map(|t| s.batch_indices(t, 2)).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        // Batches straddling an epoch boundary take the rest of one epoch then the next.
        let mut fresh = EpochStream::new(10, 3);
        let b = fresh.batch_indices(3, 4);
        let mut again = EpochStream::new(10, 3);
        assert_eq!(
            b,
            again.batch_indices(3, 4),
            "a batch depends only on seed and iteration"
        );
        let mut other = EpochStream::new(10, 4);
        assert_ne!(
            (0..5)
                .flat_map(|t| other.batch_indices(t, 2))
                .collect::<Vec<_>>(),
            (0..5)
                .flat_map(|t| again.batch_indices(t, 2))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn normalizer_applies_channel_stats() {
        let n = Normalizer::new(&ChannelStats {
            mean: vec![0.5, 0.0],
            std: vec![0.5, 1.0],
        });
        let mut out = [0f32; 4];
        n.apply(&[0, 255, 0, 255], &mut out);
        assert_eq!(out, [-1.0, 1.0, 0.0, 1.0]);
    }
}
