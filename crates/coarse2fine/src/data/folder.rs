//! Class-folder image trees in the ImageNet/Places layout: `root/<class>/<image>.jpg|png`.
//!
//! If `root/train` exists, it is the training tree and `root/val` (or `root/test`) the
//! held-out tree; otherwise `root` itself holds the classes and a seeded fraction of each
//! class is held out.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;

use crate::error::{Error, Result};

/// File extensions read as images (case-insensitive).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];

/// The files of a class-folder data set, split and labelled.
#[derive(Debug, Clone)]
pub struct FolderListing {
    /// Class names: the sorted sub-folder names of the training tree.
    pub classes: Vec<String>,
    /// Training files and labels.
    pub train: Vec<(PathBuf, u32)>,
    /// Held-out files and labels.
    pub test: Vec<(PathBuf, u32)>,
    /// Entries of class folders that are not images c2f reads (other file types, symbolic
    /// links to nothing, nested folders), each with the reason. Hidden files (names
    /// starting with `.`) are not listed.
    pub ignored: Vec<String>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<_>>()?;
    v.sort();
    Ok(v)
}

fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for p in sorted_entries(root)? {
        if p.is_dir() {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or_else(|| Error::format(&p, "class folder name is not valid UTF-8"))?
                .to_string();
            out.push((name, p));
        }
    }
    if out.is_empty() {
        return Err(Error::format(root, "no class sub-folders found"));
    }
    Ok(out)
}

/// Why an entry of a class folder is not read, or `None` for an image.
fn not_an_image(p: &Path) -> Option<&'static str> {
    if p.is_dir() {
        Some("a folder inside a class folder (classes are not nested)")
    } else if !p.exists() {
        Some("a symbolic link to nothing")
    } else if !is_image(p) {
        Some("not a .jpg, .jpeg or .png file")
    } else {
        None
    }
}

/// The images of a class folder; other entries are added to `ignored`.
fn images_in(dir: &Path, ignored: &mut Vec<String>) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in sorted_entries(dir)? {
        let hidden = p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        match not_an_image(&p) {
            None => files.push(p),
            Some(_) if hidden => {}
            Some(why) => ignored.push(format!("{}: {why}", p.display())),
        }
    }
    if files.is_empty() {
        return Err(Error::format(
            dir,
            "empty class folder: no .jpg/.jpeg/.png files",
        ));
    }
    Ok(files)
}

/// Lists a class-folder tree. `val_fraction` is used only when there is no separate
/// held-out tree; the split is drawn per class with `seed`.
pub fn list_folder(root: &Path, val_fraction: f64, seed: u64) -> Result<FolderListing> {
    let train_root = root.join("train");
    let held_out = ["val", "test"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| p.is_dir());
    let mut ignored = Vec::new();
    if train_root.is_dir() {
        let classes = class_dirs(&train_root)?;
        let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
        let mut train = Vec::new();
        for (label, (_, dir)) in classes.iter().enumerate() {
            let images = images_in(dir, &mut ignored)?;
            train.extend(images.into_iter().map(|p| (p, label as u32)));
        }
        let held = held_out.ok_or_else(|| {
            Error::format(
                root,
                "has a train/ folder but no val/ or test/ folder beside it",
            )
        })?;
        let mut test = Vec::new();
        for (name, dir) in class_dirs(&held)? {
            let label = names.iter().position(|n| *n == name).ok_or_else(|| {
                Error::format(
                    &dir,
                    format!("class {name:?} does not exist in the training tree"),
                )
            })?;
            let images = images_in(&dir, &mut ignored)?;
            test.extend(images.into_iter().map(|p| (p, label as u32)));
        }
        return Ok(FolderListing {
            classes: names,
            train,
            test,
            ignored,
        });
    }
    if !(val_fraction > 0.0 && val_fraction < 1.0) {
        return Err(Error::invalid(format!(
            "--val-fraction {val_fraction}: {} has no val/ or test/ folder, so a fraction of each class between 0 and 1 (exclusive) is held out for testing",
            root.display()
        )));
    }
    let classes = class_dirs(root)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (label, (_, dir)) in classes.iter().enumerate() {
        let mut files = images_in(dir, &mut ignored)?;
        files.shuffle(&mut rng);
        let n_val = ((files.len() as f64) * val_fraction).round() as usize;
        for (i, p) in files.into_iter().enumerate() {
            if i < n_val { &mut test } else { &mut train }.push((p, label as u32));
        }
    }
    train.sort();
    test.sort();
    Ok(FolderListing {
        classes: classes.into_iter().map(|(n, _)| n).collect(),
        train,
        test,
        ignored,
    })
}

/// Decodes an image file to interleaved `H × W × C` pixels (`channels` 1 = grey, 3 = RGB;
/// grey, palette, 16-bit and CMYK sources are converted).
pub fn decode_image(path: &Path, channels: usize) -> Result<(Vec<u8>, usize, usize)> {
    let img = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::format(path, format!("cannot decode image: {e}")))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(Error::format(path, "image has zero width or height"));
    }
    let px = match channels {
        1 => img.into_luma8().into_raw(),
        3 => img.into_rgb8().into_raw(),
        c => {
            return Err(Error::invalid(format!(
                "{c} channels: only 1 or 3 are supported"
            )));
        }
    };
    Ok((px, h, w))
}

/// Decodes an image file like [`decode_image`], refusing one whose shorter side is below
/// `side`: it would have to be upscaled, which invents detail (IDX sources refuse sizes
/// larger than their images for the same reason).
pub fn decode_at_least(
    path: &Path,
    channels: usize,
    side: usize,
) -> Result<(Vec<u8>, usize, usize)> {
    let (px, h, w) = decode_image(path, channels)?;
    if h.min(w) < side {
        return Err(Error::format(
            path,
            format!(
                "the image is {w}×{h} pixels, smaller than the {side}×{side} it would be scaled to (c2f never upscales)"
            ),
        ));
    }
    Ok((px, h, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, rgb: [u8; 3]) {
        let img = image::RgbImage::from_pixel(6, 4, image::Rgb(rgb));
        img.save(path).expect("write fixture png");
    }

    #[test]
    fn lists_train_val_tree() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        for split in ["train", "val"] {
            for class in ["b_dog", "a_cat"] {
                let d = root.path().join(split).join(class);
                std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
                write_png(&d.join("x.png"), [1, 2, 3]);
                std::fs::write(d.join("notes.txt"), "ignored").map_err(|e| Error::io(&d, e))?;
            }
        }
        let l = list_folder(root.path(), 0.1, 0)?;
        assert_eq!(l.classes, vec!["a_cat", "b_dog"]);
        assert_eq!(l.train.len(), 2);
        assert_eq!(
            l.test.iter().map(|(_, y)| *y).collect::<Vec<_>>(),
            vec![0, 1]
        );
        let (px, h, w) = decode_image(&l.train[0].0, 3)?;
        assert_eq!((h, w, px.len()), (4, 6, 72));
        assert_eq!(&px[..3], &[1, 2, 3]);
        Ok(())
    }

    #[test]
    fn splits_flat_tree_and_rejects_empty_class() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let d = root.path().join("only");
        std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        for i in 0..10 {
            write_png(&d.join(format!("{i}.png")), [i, i, i]);
        }
        let l = list_folder(root.path(), 0.2, 7)?;
        assert_eq!((l.train.len(), l.test.len()), (8, 2));
        let again = list_folder(root.path(), 0.2, 7)?;
        assert_eq!(l.test, again.test, "the split must depend only on the seed");

        let empty = root.path().join("empty");
        std::fs::create_dir_all(&empty).map_err(|e| Error::io(&empty, e))?;
        let err = list_folder(root.path(), 0.2, 7).unwrap_err().to_string();
        assert!(
            err.contains("empty") && err.contains("empty class folder"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn corrupt_image_names_the_file() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let p = root.path().join("bad.jpg");
        std::fs::write(&p, b"not a jpeg").map_err(|e| Error::io(&p, e))?;
        let err = decode_image(&p, 3).unwrap_err().to_string();
        assert!(err.contains("bad.jpg"), "{err}");
        Ok(())
    }
}
