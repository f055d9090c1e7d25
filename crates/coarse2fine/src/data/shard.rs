//! Compact image shards: `u8` pixels and `u32` labels behind a small header, read back
//! through memory maps so a training run touches only the pages it uses.
//!
//! Layout (little-endian):
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `C2FSHARD` |
//! | 8 | version `u32` (= 1) |
//! | 12 | channels, height, width: `u32` each |
//! | 24 | image count `u64` |
//! | 32 | class count `u32` |
//! | 36 | byte length `L` of the class-name block `u32` |
//! | 40 | class names, UTF-8, separated by `\n` |
//! | 40+L, rounded up to 64 | pixels, image after image, each planar `C × H × W` |
//! | after pixels | labels, `u32` each |

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

/// First eight bytes of every shard.
pub const SHARD_MAGIC: &[u8; 8] = b"C2FSHARD";
/// Shard format version written by this build.
pub const SHARD_VERSION: u32 = 1;
/// File extension of shards.
pub const SHARD_EXT: &str = "c2fs";

const FIXED_HEADER: usize = 40;
const ALIGN: usize = 64;

fn data_offset(names_len: usize) -> usize {
    (FIXED_HEADER + names_len).div_ceil(ALIGN) * ALIGN
}

/// Streams images into one shard file. The image count is patched into the header by
/// [`ShardWriter::finish`]; callers write shards inside a staged folder, so an unfinished
/// shard is never visible under its final name.
#[derive(Debug)]
pub struct ShardWriter {
    path: PathBuf,
    out: BufWriter<File>,
    image_len: usize,
    num_classes: u32,
    labels: Vec<u32>,
}

impl ShardWriter {
    /// Creates `path` for images of `channels × side × side` and the given class names.
    pub fn create(path: &Path, channels: usize, side: usize, classes: &[String]) -> Result<Self> {
        if let Some(bad) = classes.iter().find(|c| c.contains('\n')) {
            return Err(Error::invalid(format!(
                "class name {bad:?} contains a newline"
            )));
        }
        let names = classes.join("\n");
        let file = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let mut header = Vec::with_capacity(data_offset(names.len()));
        header.extend_from_slice(SHARD_MAGIC);
        header.extend_from_slice(&SHARD_VERSION.to_le_bytes());
        for v in [channels, side, side] {
            header.extend_from_slice(&(v as u32).to_le_bytes());
        }
        header.extend_from_slice(&0u64.to_le_bytes());
        header.extend_from_slice(&(classes.len() as u32).to_le_bytes());
        header.extend_from_slice(&(names.len() as u32).to_le_bytes());
        header.extend_from_slice(names.as_bytes());
        header.resize(data_offset(names.len()), 0);
        out.write_all(&header).map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            out,
            image_len: channels * side * side,
            num_classes: classes.len() as u32,
            labels: Vec::new(),
        })
    }

    /// Appends one planar image with its label.
    pub fn push(&mut self, pixels: &[u8], label: u32) -> Result<()> {
        if pixels.len() != self.image_len {
            return Err(Error::invalid(format!(
                "{}: image of {} bytes, shard holds {}-byte images",
                self.path.display(),
                pixels.len(),
                self.image_len
            )));
        }
        if label >= self.num_classes {
            return Err(Error::invalid(format!(
                "{}: label {label} out of range for {} classes",
                self.path.display(),
                self.num_classes
            )));
        }
        self.out
            .write_all(pixels)
            .map_err(|e| Error::io(&self.path, e))?;
        self.labels.push(label);
        Ok(())
    }

    /// Images written so far.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True before the first image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Writes the labels, patches the count and syncs the file.
    pub fn finish(mut self) -> Result<usize> {
        let io = |e| Error::io(&self.path, e);
        let mut block = Vec::with_capacity(self.labels.len() * 4);
        for l in &self.labels {
            block.extend_from_slice(&l.to_le_bytes());
        }
        self.out.write_all(&block).map_err(io)?;
        self.out.seek(SeekFrom::Start(24)).map_err(io)?;
        self.out
            .write_all(&(self.labels.len() as u64).to_le_bytes())
            .map_err(io)?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.path, e))?;
        Ok(self.labels.len())
    }
}

/// A read-only, memory-mapped shard.
#[derive(Debug)]
pub struct Shard {
    path: PathBuf,
    map: Mmap,
    /// Channels per image.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Number of images.
    pub len: usize,
    /// Class names.
    pub classes: Vec<String>,
    pixels_at: usize,
    labels_at: usize,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Where a shard's parts lie, read from its header and checked against its length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardLayout {
    /// Channels per image.
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// Number of images.
    pub len: usize,
    /// Class names.
    pub classes: Vec<String>,
    /// Byte offset of the first image.
    pub pixels_at: usize,
    /// Byte offset of the first label.
    pub labels_at: usize,
}

impl ShardLayout {
    /// Validates a whole shard held in `b`: magic, version, sizes, class names and every
    /// label, so reads through the layout cannot go out of bounds. The error says what is
    /// wrong (the caller adds the file name).
    pub fn parse(b: &[u8]) -> std::result::Result<Self, String> {
        if b.len() < FIXED_HEADER {
            return Err(format!(
                "truncated: {} bytes, shorter than a shard header",
                b.len()
            ));
        }
        if &b[..8] != SHARD_MAGIC {
            return Err("not a coarse2fine shard (bad magic)".into());
        }
        let version = u32_at(b, 8);
        if version != SHARD_VERSION {
            return Err(format!(
                "shard format version {version}, this build reads version {SHARD_VERSION}"
            ));
        }
        let (channels, height, width) = (
            u32_at(b, 12) as usize,
            u32_at(b, 16) as usize,
            u32_at(b, 20) as usize,
        );
        let len = u64::from_le_bytes([b[24], b[25], b[26], b[27], b[28], b[29], b[30], b[31]]);
        let num_classes = u32_at(b, 32) as usize;
        let names_len = u32_at(b, 36) as usize;
        let pixels_at = data_offset(names_len);
        let image_len = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .ok_or("image dimensions overflow")?;
        let expected = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(image_len.checked_add(4)?))
            .and_then(|v| v.checked_add(pixels_at))
            .ok_or_else(|| format!("image count {len} overflows"))?;
        if b.len() != expected {
            return Err(format!(
                "truncated or padded: header promises {len} images ({expected} bytes), file has {} bytes",
                b.len()
            ));
        }
        let names = std::str::from_utf8(&b[FIXED_HEADER..FIXED_HEADER + names_len])
            .map_err(|_| "class names are not UTF-8".to_string())?;
        let classes: Vec<String> = if names.is_empty() {
            Vec::new()
        } else {
            names.split('\n').map(String::from).collect()
        };
        if classes.len() != num_classes {
            return Err(format!(
                "header says {num_classes} classes but lists {} names",
                classes.len()
            ));
        }
        let len = len as usize;
        let labels_at = pixels_at + len * image_len;
        if let Some(i) = (0..len).find(|&i| u32_at(b, labels_at + 4 * i) as usize >= num_classes) {
            return Err(format!(
                "image {i} has label {}, out of range",
                u32_at(b, labels_at + 4 * i)
            ));
        }
        Ok(Self {
            channels,
            height,
            width,
            len,
            classes,
            pixels_at,
            labels_at,
        })
    }
}

impl Shard {
    /// Opens and validates a shard: magic, version, sizes and label range are checked so
    /// later reads cannot go out of bounds.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and shards are never modified after being renamed
        // into place; a concurrent truncation by another program is outside our contract.
        #[allow(unsafe_code)]
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let layout = ShardLayout::parse(&map).map_err(|msg| Error::format(path, msg))?;
        Ok(Self {
            path: path.to_path_buf(),
            map,
            channels: layout.channels,
            height: layout.height,
            width: layout.width,
            len: layout.len,
            classes: layout.classes,
            pixels_at: layout.pixels_at,
            labels_at: layout.labels_at,
        })
    }

    /// The file this shard was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// CRC-32C of the whole file, as hex.
    pub fn crc32c(&self) -> String {
        format!("{:08x}", crc32c::crc32c(&self.map))
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Planar pixels of image `i` (`i < len`).
    pub fn pixels(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.map[self.pixels_at + i * n..][..n]
    }

    /// Label of image `i` (`i < len`).
    pub fn label(&self, i: usize) -> u32 {
        u32_at(&self.map, self.labels_at + 4 * i)
    }
}

/// Shard file name for part `part` of `split`.
pub fn shard_name(split: &str, part: usize) -> String {
    format!("{split}-{part:05}.{SHARD_EXT}")
}

/// All shards of one split in one resolution folder, as a single indexable set.
#[derive(Debug)]
pub struct ShardSet {
    shards: Vec<Shard>,
    starts: Vec<usize>,
    len: usize,
}

impl ShardSet {
    /// Opens `dir/<split>-*.c2fs` in order and checks that they agree on shape and classes.
    pub fn open(dir: &Path, split: &str) -> Result<Self> {
        let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        let prefix = format!("{split}-");
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().is_some_and(|e| e == SHARD_EXT)
                    && p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
            })
            .collect();
        paths.sort();
        if paths.is_empty() {
            return Err(Error::format(
                dir,
                format!("no {split}-*.{SHARD_EXT} shards"),
            ));
        }
        let shards = paths
            .iter()
            .map(|p| Shard::open(p))
            .collect::<Result<Vec<_>>>()?;
        let first = &shards[0];
        for s in &shards[1..] {
            if (s.channels, s.height, s.width) != (first.channels, first.height, first.width)
                || s.classes != first.classes
            {
                return Err(Error::format(
                    s.path(),
                    format!("shape or classes differ from {}", first.path().display()),
                ));
            }
        }
        let mut starts = Vec::with_capacity(shards.len());
        let mut len = 0;
        for s in &shards {
            starts.push(len);
            len += s.len;
        }
        Ok(Self {
            shards,
            starts,
            len,
        })
    }

    /// Total images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if no images.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `(channels, height, width)` of every image.
    pub fn shape(&self) -> (usize, usize, usize) {
        let s = &self.shards[0];
        (s.channels, s.height, s.width)
    }

    /// Class names.
    /// The shard files, in order.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    pub fn classes(&self) -> &[String] {
        &self.shards[0].classes
    }

    fn locate(&self, i: usize) -> (&Shard, usize) {
        let k = self.starts.partition_point(|&s| s <= i) - 1;
        (&self.shards[k], i - self.starts[k])
    }

    /// Pixels and label of image `i` (`i < len`).
    pub fn get(&self, i: usize) -> (&[u8], u32) {
        let (s, j) = self.locate(i);
        (s.pixels(j), s.label(j))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_then_read_gives_same_pixels() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let classes: Vec<String> = vec!["cat".into(), "dog".into(), "bird".into()];
        for (part, n) in [(0usize, 3usize), (1, 2)] {
            let p = dir.path().join(shard_name("train", part));
            let mut w = ShardWriter::create(&p, 3, 2, &classes)?;
            for i in 0..n {
                let px: Vec<u8> = (0..12).map(|v| (v + 10 * (part * 3 + i)) as u8).collect();
                w.push(&px, ((part * 3 + i) % 3) as u32)?;
            }
            assert_eq!(w.finish()?, n);
        }
        let set = ShardSet::open(dir.path(), "train")?;
        assert_eq!(set.len(), 5);
        assert_eq!(set.shape(), (3, 2, 2));
        assert_eq!(set.classes(), &classes[..]);
        for i in 0..5 {
            let (px, l) = set.get(i);
            let want: Vec<u8> = (0..12).map(|v| (v + 10 * i) as u8).collect();
            assert_eq!(px, &want[..]);
            assert_eq!(l, (i % 3) as u32);
        }
        Ok(())
    }

    #[test]
    fn rejects_truncated_and_wrong_version() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = dir.path().join(shard_name("test", 0));
        let mut w = ShardWriter::create(&p, 1, 2, &["a".to_string()])?;
        w.push(&[1, 2, 3, 4], 0)?;
        w.finish()?;
        let good = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;

        std::fs::write(&p, &good[..good.len() - 1]).map_err(|e| Error::io(&p, e))?;
        let e = Shard::open(&p).unwrap_err().to_string();
        assert!(
            e.contains("truncated") && e.contains("test-00000.c2fs"),
            "{e}"
        );

        let mut bad = good.clone();
        bad[8] = 9;
        std::fs::write(&p, &bad).map_err(|e| Error::io(&p, e))?;
        assert!(
            Shard::open(&p)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );

        let mut bad = good;
        bad[0] = b'X';
        std::fs::write(&p, &bad).map_err(|e| Error::io(&p, e))?;
        assert!(
            Shard::open(&p)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        Ok(())
    }
}
