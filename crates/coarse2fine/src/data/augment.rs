//! Training-time augmentation of the prepared `u8` images: the standard CIFAR/ImageNet
//! recipe's random crop of a zero-padded image and horizontal flip.
//!
//! Each image's draw is seeded by the run's seed and the image's position in the training
//! stream, so a batch is the same whenever it is rebuilt: a resumed run sees exactly the
//! crops and flips the uninterrupted one would have, and the same seed gives the same
//! numbers at any thread count.

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest crop padding accepted, in pixels on each side.
pub const MAX_PAD: usize = 64;

/// What is done to each training image. Evaluation never augments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Augment {
    /// Zero-pad the image by this many pixels on every side, then crop a window of the
    /// original size at a uniformly drawn offset (0: no crop).
    pub crop_pad: usize,
    /// Mirror left–right with probability ½.
    pub flip: bool,
}

impl Augment {
    /// No augmentation.
    pub fn is_none(&self) -> bool {
        *self == Augment::default()
    }

    /// Writes the augmented `C × H × W` image `src` into `out`; `key` seeds its draw.
    pub fn apply(&self, src: &[u8], (c, h, w): (usize, usize, usize), key: u64, out: &mut [u8]) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(key);
        let p = self.crop_pad as i64;
        let (dy, dx) = if p > 0 {
            (
                rng.random_range(-p..=p) as isize,
                rng.random_range(-p..=p) as isize,
            )
        } else {
            (0, 0)
        };
        let flip = self.flip && rng.random::<bool>();
        for ch in 0..c {
            let plane = &src[ch * h * w..(ch + 1) * h * w];
            let dst = &mut out[ch * h * w..(ch + 1) * h * w];
            for y in 0..h {
                let sy = y as isize + dy;
                for x in 0..w {
                    let xx = if flip { w - 1 - x } else { x };
                    let sx = xx as isize + dx;
                    let inside = (0..h as isize).contains(&sy) && (0..w as isize).contains(&sx);
                    dst[y * w + x] = if inside {
                        plane[sy as usize * w + sx as usize]
                    } else {
                        0
                    };
                }
            }
        }
    }

    /// Checks that the crop fits images of side `side`: padding at least the side would
    /// leave some crops without a single pixel of the image.
    pub fn fits(&self, side: usize) -> Result<()> {
        if self.crop_pad >= side {
            return Err(Error::invalid(format!(
                "augment {self}: crop padding {} must be below the image side {side}",
                self.crop_pad
            )));
        }
        Ok(())
    }

    /// The draw key of the image at training-stream position `pos` of a run seeded `seed`
    /// (a different mix from the shuffle's, so the two draws are unrelated).
    pub fn key(seed: u64, pos: u64) -> u64 {
        (seed ^ 0xA5A5_5A5A_C3C3_3C3C).wrapping_add(pos.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }
}

impl std::str::FromStr for Augment {
    type Err = Error;
    /// `none`, or a comma list of `crop:PAD` and `flip` (e.g. `crop:4,flip`).
    fn from_str(s: &str) -> Result<Self> {
        let mut a = Augment::default();
        if s.trim() == "none" {
            return Ok(a);
        }
        let parts: Vec<&str> = s.split(',').map(str::trim).collect();
        for (i, part) in parts.iter().enumerate() {
            let kind = part.split(':').next();
            if parts[..i].iter().any(|p| p.split(':').next() == kind) {
                return Err(Error::invalid(format!(
                    "augment {s:?}: {part:?} is given twice"
                )));
            }
            match part.strip_prefix("crop:") {
                _ if *part == "flip" => a.flip = true,
                Some(n) => match n.parse::<usize>() {
                    Ok(pad @ 1..=MAX_PAD) => a.crop_pad = pad,
                    _ => {
                        return Err(Error::invalid(format!(
                            "augment {s:?}: crop padding {n:?} must be 1 to {MAX_PAD} pixels"
                        )));
                    }
                },
                None => {
                    return Err(Error::invalid(format!(
                        "augment {s:?}: {part:?} is not crop:PAD or flip (or give none)"
                    )));
                }
            }
        }
        Ok(a)
    }
}

impl std::fmt::Display for Augment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.crop_pad > 0 {
            parts.push(format!("crop:{}", self.crop_pad));
        }
        if self.flip {
            parts.push("flip".to_string());
        }
        if parts.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", parts.join(","))
        }
    }
}

impl TryFrom<String> for Augment {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<Augment> for String {
    fn from(a: Augment) -> String {
        a.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1×3×4 image with distinct pixels 1..=12.
    fn image() -> Vec<u8> {
        (1..=12).collect()
    }

    #[test]
    fn parses_and_prints_specs_and_refuses_bad_ones() {
        for (s, want) in [
            ("none", "none"),
            ("flip", "flip"),
            ("crop:4", "crop:4"),
            ("flip, crop:2", "crop:2,flip"),
        ] {
            assert_eq!(s.parse::<Augment>().expect(s).to_string(), want);
        }
        for bad in [
            "crop:0",
            "crop:65",
            "crop:x",
            "rotate",
            "",
            "crop:2,crop:4",
            "flip,flip",
        ] {
            let e = bad.parse::<Augment>().expect_err(bad).to_string();
            assert!(e.contains("augment"), "{e}");
        }
    }

    #[test]
    fn none_copies_and_crops_shift_in_zeros_and_flips_mirror() {
        let src = image();
        let mut out = vec![0u8; 12];
        Augment::default().apply(&src, (1, 3, 4), 7, &mut out);
        assert_eq!(out, src);
        // Over many draws a crop:1 produces every shift in −1..=1, each a shifted copy
        // with zeros coming in, and a flip produces the mirror image.
        let crop = Augment {
            crop_pad: 1,
            flip: false,
        };
        let mut seen = std::collections::BTreeSet::new();
        for key in 0..200 {
            crop.apply(&src, (1, 3, 4), key, &mut out);
            let shift = (-1..=1)
                .flat_map(|dy| (-1..=1).map(move |dx| (dy, dx)))
                .find(|&(dy, dx)| {
                    (0..12).all(|i| {
                        let (y, x) = ((i / 4) as isize + dy, (i % 4) as isize + dx);
                        let want = if (0..3).contains(&y) && (0..4).contains(&x) {
                            src[(y * 4 + x) as usize]
                        } else {
                            0
                        };
                        out[i] == want
                    })
                })
                .expect("every crop is a shift");
            seen.insert(shift);
        }
        assert_eq!(seen.len(), 9);
        let flip = Augment {
            crop_pad: 0,
            flip: true,
        };
        let mut flips = 0;
        for key in 0..100 {
            flip.apply(&src, (1, 3, 4), key, &mut out);
            let mirrored: Vec<u8> = src
                .chunks(4)
                .flat_map(|r| r.iter().rev().copied())
                .collect();
            assert!(out == src || out == mirrored);
            flips += usize::from(out == mirrored);
        }
        assert!((30..=70).contains(&flips), "{flips} flips in 100");
    }

    #[test]
    fn a_crop_must_be_smaller_than_the_image() {
        let a: Augment = "crop:4".parse().expect("spec");
        assert!(a.fits(5).is_ok());
        let e = a.fits(4).expect_err("pad 4 on a 4×4 image").to_string();
        assert!(e.contains("below the image side 4"), "{e}");
        assert!(Augment::default().fits(1).is_ok());
    }

    #[test]
    fn the_draw_depends_only_on_the_key() {
        let a: Augment = "crop:2,flip".parse().expect("spec");
        let src: Vec<u8> = (0..48).collect();
        let (mut x, mut y) = (vec![0; 48], vec![0; 48]);
        a.apply(&src, (3, 4, 4), Augment::key(5, 9), &mut x);
        a.apply(&src, (3, 4, 4), Augment::key(5, 9), &mut y);
        assert_eq!(x, y);
        let differs = (0..20).any(|p| {
            a.apply(&src, (3, 4, 4), Augment::key(5, p), &mut y);
            x != y
        });
        assert!(differs);
    }
}
