//! CIFAR-10 and CIFAR-100 binary batches.
//!
//! A CIFAR-10 record is one label byte followed by a 32×32 image as three planes (R, G, B);
//! a CIFAR-100 record has two label bytes (coarse, fine) before the planes. We use the fine
//! labels of CIFAR-100.

use std::path::{Path, PathBuf};

use super::{ImageSet, Splits};
use crate::error::{Error, Result};

const SIDE: usize = 32;
const PLANES: usize = 3 * SIDE * SIDE;

/// Which CIFAR variant a folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CifarKind {
    /// 10 classes, `data_batch_{1..5}.bin` and `test_batch.bin`.
    Cifar10,
    /// 100 fine classes, `train.bin` and `test.bin`.
    Cifar100,
}

impl CifarKind {
    fn label_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1,
            CifarKind::Cifar100 => 2,
        }
    }
    fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100 => 100,
        }
    }
}

/// Detects a CIFAR binary folder.
pub fn detect_cifar(dir: &Path) -> Option<CifarKind> {
    if dir.join("data_batch_1.bin").is_file() {
        Some(CifarKind::Cifar10)
    } else if dir.join("train.bin").is_file() && dir.join("test.bin").is_file() {
        Some(CifarKind::Cifar100)
    } else {
        None
    }
}

/// Parses the records of one batch file, appending to `pixels` and `labels`.
pub fn read_batch(
    path: &Path,
    kind: CifarKind,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let rec = kind.label_bytes() + PLANES;
    if bytes.is_empty() || bytes.len() % rec != 0 {
        return Err(Error::format(
            path,
            format!(
                "{} bytes is not a whole number of {rec}-byte CIFAR records",
                bytes.len()
            ),
        ));
    }
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1] as usize;
        if label >= kind.num_classes() {
            return Err(Error::format(
                path,
                format!(
                    "record {i} has label {label}, out of range for {} classes",
                    kind.num_classes()
                ),
            ));
        }
        labels.push(label as u32);
        pixels.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(())
}

fn class_names(dir: &Path, kind: CifarKind) -> Vec<String> {
    let file = match kind {
        CifarKind::Cifar10 => "batches.meta.txt",
        CifarKind::Cifar100 => "fine_label_names.txt",
    };
    let names: Vec<String> = std::fs::read_to_string(dir.join(file))
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if names.len() == kind.num_classes() {
        names
    } else {
        (0..kind.num_classes()).map(|i| i.to_string()).collect()
    }
}

/// Reads a CIFAR-10 or CIFAR-100 binary folder.
pub fn read_cifar_dir(dir: &Path, kind: CifarKind) -> Result<Splits> {
    let (train_files, test_file): (Vec<PathBuf>, PathBuf) = match kind {
        CifarKind::Cifar10 => (
            (1..=5)
                .map(|i| dir.join(format!("data_batch_{i}.bin")))
                .collect(),
            dir.join("test_batch.bin"),
        ),
        CifarKind::Cifar100 => (vec![dir.join("train.bin")], dir.join("test.bin")),
    };
    let classes = class_names(dir, kind);
    let load = |files: &[PathBuf]| -> Result<ImageSet> {
        let (mut pixels, mut labels) = (Vec::new(), Vec::new());
        for f in files {
            read_batch(f, kind, &mut pixels, &mut labels)?;
        }
        Ok(ImageSet {
            channels: 3,
            height: SIDE,
            width: SIDE,
            pixels,
            labels,
            classes: classes.clone(),
        })
    };
    Ok(Splits {
        train: load(&train_files)?,
        test: load(&[test_file])?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(label: u8, fill: u8) -> Vec<u8> {
        let mut r = vec![label];
        r.extend(std::iter::repeat_n(fill, PLANES));
        r
    }

    #[test]
    fn reads_cifar10_folder() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        for i in 1..=5u8 {
            let mut b = record(i, i * 10);
            b.extend(record(0, 1));
            std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), b)
                .map_err(|e| Error::io("fixture", e))?;
        }
        std::fs::write(dir.path().join("test_batch.bin"), record(9, 200))
            .map_err(|e| Error::io("fixture", e))?;
        assert_eq!(detect_cifar(dir.path()), Some(CifarKind::Cifar10));
        let s = read_cifar_dir(dir.path(), CifarKind::Cifar10)?;
        assert_eq!(s.train.len(), 10);
        assert_eq!(s.train.labels[..4], [1, 0, 2, 0]);
        assert_eq!(s.train.image(2)[0], 20);
        assert_eq!(s.test.labels, vec![9]);
        assert_eq!(s.test.image(0).len(), PLANES);
        Ok(())
    }

    #[test]
    fn rejects_partial_record() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = dir.path().join("test.bin");
        let mut b = record(1, 0);
        b.pop();
        std::fs::write(&p, b).map_err(|e| Error::io(&p, e))?;
        let err = read_batch(&p, CifarKind::Cifar10, &mut Vec::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("test.bin") && err.contains("whole number"),
            "{err}"
        );
        Ok(())
    }
}
