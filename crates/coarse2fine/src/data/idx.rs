//! IDX files, the format of MNIST and Fashion-MNIST (optionally gzip-compressed).
//!
//! Layout: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions,
//! then each dimension as a big-endian u32, then the data.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::{ImageSet, Splits};
use crate::error::{Error, Result};

/// Class names of Fashion-MNIST, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A decoded IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Row-major data.
    pub data: Vec<u8>,
}

fn read_error(path: &Path, e: std::io::Error) -> Error {
    if path.extension().is_some_and(|x| x == "gz") {
        Error::format(path, format!("not a valid gzip file: {e}"))
    } else {
        Error::io(path, e)
    }
}

fn open_idx(path: &Path) -> Result<Box<dyn Read>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    })
}

/// Reads an IDX file of unsigned bytes; a name ending in `.gz` is decompressed.
///
/// The header is read first: a broken header is reported from it alone, a file that
/// declares more data than memory can hold is refused before anything is allocated, and
/// reading stops one byte past the declared length, so a compressed file cannot expand
/// without bound.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let mut head = Vec::new();
    open_idx(path)?
        .take(4 + 4 * 255)
        .read_to_end(&mut head)
        .map_err(|e| read_error(path, e))?;
    let (header, _, count) = parse_header(&head).map_err(|msg| Error::format(path, msg))?;
    crate::resources::MemoryEstimate {
        parts: vec![
            ("the file's data".into(), count as u64),
            ("its decoded copy".into(), count as u64),
        ],
    }
    .check(&format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    let mut reader = open_idx(path)?;
    (&mut reader)
        .take((header + count) as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(path, e))?;
    // What follows the declared data is counted without being kept (up to 1 GiB, so a
    // compressed file cannot make this run for ever).
    const COUNTED: u64 = 1 << 30;
    let extra = std::io::copy(&mut reader.take(COUNTED), &mut std::io::sink())
        .map_err(|e| read_error(path, e))?;
    if extra > 0 {
        let (_, dims, _) = parse_header(&bytes).map_err(|msg| Error::format(path, msg))?;
        return Err(Error::format(
            path,
            format!(
                "{}{extra} trailing byte{} after the {count} declared by dimensions {dims:?}",
                if extra == COUNTED { "at least " } else { "" },
                if extra == 1 { "" } else { "s" }
            ),
        ));
    }
    parse_idx(&bytes).map_err(|msg| Error::format(path, msg))
}

/// Parses an IDX header at the start of `bytes`: its length, the dimensions and the number
/// of data bytes they declare.
fn parse_header(bytes: &[u8]) -> std::result::Result<(usize, Vec<usize>, usize), String> {
    if bytes.len() < 4 {
        return Err(format!(
            "truncated: {} bytes, too short for an IDX header",
            bytes.len()
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(format!(
            "not an IDX file: magic starts {:02x} {:02x}, expected 00 00",
            bytes[0], bytes[1]
        ));
    }
    if bytes[2] != 0x08 {
        return Err(format!(
            "IDX type code 0x{:02x} is not supported (only 0x08, unsigned byte)",
            bytes[2]
        ));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 {
        return Err("IDX file declares zero dimensions".into());
    }
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(format!(
            "truncated: header needs {header} bytes, file has {}",
            bytes.len()
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| format!("dimensions {dims:?} overflow"))?;
    Ok((header, dims, count))
}

/// Parses IDX bytes; the error says what is wrong.
pub fn parse_idx(bytes: &[u8]) -> std::result::Result<IdxArray, String> {
    let (header, dims, count) = parse_header(bytes)?;
    let have = bytes.len() - header;
    if have < count {
        return Err(format!(
            "truncated: dimensions {dims:?} need {count} data bytes, file has {have}"
        ));
    }
    if have > count {
        let extra = have - count;
        return Err(format!(
            "{extra} trailing byte{} after the {count} declared by dimensions {dims:?}",
            if extra == 1 { "" } else { "s" }
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an images file (`N × H × W`) and its labels file (`N`) into an [`ImageSet`].
pub fn read_idx_pair(images: &Path, labels: &Path, classes: &[String]) -> Result<ImageSet> {
    let img = read_idx(images)?;
    let lab = read_idx(labels)?;
    if img.dims.len() != 3 {
        return Err(Error::format(
            images,
            format!("expected 3 dimensions (N × H × W), found {:?}", img.dims),
        ));
    }
    if lab.dims.len() != 1 {
        return Err(Error::format(
            labels,
            format!("expected 1 dimension (N), found {:?}", lab.dims),
        ));
    }
    if img.dims[0] != lab.dims[0] {
        return Err(Error::format(
            labels,
            format!(
                "{} labels but {} has {} images",
                lab.dims[0],
                images.display(),
                img.dims[0]
            ),
        ));
    }
    let labels_u32: Vec<u32> = lab.data.iter().map(|&l| u32::from(l)).collect();
    if let Some((i, l)) = labels_u32
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes.len())
    {
        return Err(Error::format(
            labels,
            format!(
                "label {l} of item {i} is out of range for {} classes",
                classes.len()
            ),
        ));
    }
    Ok(ImageSet {
        channels: 1,
        height: img.dims[1],
        width: img.dims[2],
        pixels: img.data,
        labels: labels_u32,
        classes: classes.to_vec(),
    })
}

fn find_file(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// True if `dir` holds an MNIST-style IDX train/test set.
pub fn looks_like_idx_dir(dir: &Path) -> bool {
    find_file(dir, "train-images-idx3-ubyte").is_some()
}

/// Reads the MNIST-layout files in `dir`: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
/// `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each optionally `.gz`.
///
/// Class names come from `classes` if given; otherwise a folder whose path mentions
/// "fashion" gets Fashion-MNIST's names, and anything else the digits `0`–`9`.
pub fn read_idx_dir(dir: &Path, classes: Option<Vec<String>>) -> Result<Splits> {
    let need = |stem: &str| {
        find_file(dir, stem)
            .ok_or_else(|| Error::format(dir, format!("missing IDX file {stem} (or {stem}.gz)")))
    };
    let classes = classes.unwrap_or_else(|| {
        if dir.to_string_lossy().to_lowercase().contains("fashion") {
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        } else {
            (0..10).map(|d| d.to_string()).collect()
        }
    });
    let train = read_idx_pair(
        &need("train-images-idx3-ubyte")?,
        &need("train-labels-idx1-ubyte")?,
        &classes,
    )?;
    let test = read_idx_pair(
        &need("t10k-images-idx3-ubyte")?,
        &need("t10k-labels-idx1-ubyte")?,
        &classes,
    )?;
    if (train.height, train.width) != (test.height, test.width) {
        return Err(Error::format(
            dir,
            format!(
                "train images are {}×{} but test images are {}×{}",
                train.height, train.width, test.height, test.width
            ),
        ));
    }
    Ok(Splits { train, test })
}

/// Encodes an IDX file of unsigned bytes (used by tests and fixtures).
pub fn encode_idx(dims: &[usize], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        out.extend_from_slice(&(d as u32).to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let data: Vec<u8> = (0..24).collect();
        let arr = parse_idx(&encode_idx(&[2, 3, 4], &data)).expect("valid idx");
        assert_eq!(arr.dims, vec![2, 3, 4]);
        assert_eq!(arr.data, data);
    }

    #[test]
    fn rejects_bad_magic_and_truncation() {
        let mut bytes = encode_idx(&[2, 2], &[1, 2, 3, 4]);
        bytes[0] = 7;
        assert!(parse_idx(&bytes).unwrap_err().contains("not an IDX file"));
        let bytes = encode_idx(&[2, 2], &[1, 2, 3]);
        assert!(parse_idx(&bytes).unwrap_err().contains("truncated"));
        assert!(parse_idx(&[0, 0]).unwrap_err().contains("truncated"));
        let mut bytes = encode_idx(&[2], &[1, 2]);
        bytes[2] = 0x0d;
        assert!(parse_idx(&bytes).unwrap_err().contains("type code"));
    }

    #[test]
    fn reads_gzipped_pair_and_checks_counts() -> Result<()> {
        use std::io::Write;
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let imgs = dir.path().join("imgs.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&encode_idx(&[3, 2, 2], &[0; 12]))
            .map_err(|e| Error::io(&imgs, e))?;
        std::fs::write(&imgs, gz.finish().map_err(|e| Error::io(&imgs, e))?)
            .map_err(|e| Error::io(&imgs, e))?;
        let labs = dir.path().join("labs");
        std::fs::write(&labs, encode_idx(&[3], &[0, 1, 1])).map_err(|e| Error::io(&labs, e))?;
        let classes: Vec<String> = vec!["a".into(), "b".into()];
        let set = read_idx_pair(&imgs, &labs, &classes)?;
        assert_eq!((set.len(), set.height, set.width), (3, 2, 2));
        assert_eq!(set.labels, vec![0, 1, 1]);

        std::fs::write(&labs, encode_idx(&[2], &[0, 1])).map_err(|e| Error::io(&labs, e))?;
        let err = read_idx_pair(&imgs, &labs, &classes)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 labels but") && err.contains("3 images"),
            "{err}"
        );
        Ok(())
    }
}
