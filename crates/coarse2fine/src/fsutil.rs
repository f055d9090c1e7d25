//! Crash-safe file and folder writes.
//!
//! Everything the tool writes goes to a temporary name in the destination's folder and is
//! renamed into place only when complete, so an interrupted run never leaves a half-written
//! file where a good one (or none) was expected.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its parents. When a path component is a file, the error names it
/// instead of the operating system's bare "File exists" or "Not a directory".
pub fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| {
        let blocker = dir
            .ancestors()
            .find(|a| a.exists() && !a.is_dir() && !a.as_os_str().is_empty());
        match blocker {
            Some(b) => Error::format(b, "is a file, so no folder can be created inside it"),
            None => Error::io(dir, e),
        }
    })
}

/// Removes a file or a folder with everything in it; nothing there is not an error.
pub fn remove_path(path: &Path) -> Result<()> {
    let r = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    r.map_err(|e| Error::io(path, e))
}

/// Writes a file atomically: `fill` writes into a temporary file beside `path`, which is
/// synced and renamed over `path` only if `fill` succeeds.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<()> {
    let dir = parent_of(path);
    let prefix = format!(".c2f-tmp-{}-", std::process::id());
    let tmp = tempfile::Builder::new()
        .prefix(&prefix)
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, e))?;
    {
        let mut w = BufWriter::new(tmp.as_file());
        fill(&mut w).map_err(|e| Error::io(path, e))?;
        w.flush().map_err(|e| Error::io(path, e))?;
    }
    // Temporary files are created private (0600); the result is an ordinary file.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |w| w.write_all(bytes))
}

/// Serialises `value` as pretty JSON to `path` atomically.
pub fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
    write_bytes_atomic(path, format!("{text}\n").as_bytes())
}

/// Writes `items` to `path` atomically as JSON Lines, one object per line.
pub fn write_jsonl_atomic<T: serde::Serialize>(path: &Path, items: &[T]) -> Result<()> {
    let mut text = String::new();
    for item in items {
        text += &serde_json::to_string(item)
            .map_err(|e| Error::format(path, format!("cannot serialise: {e}")))?;
        text.push('\n');
    }
    write_bytes_atomic(path, text.as_bytes())
}

/// Reads a JSON Lines file (blank lines skipped), naming the file and line in any error.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_jsonl(path, text.lines())
}

fn parse_jsonl<'a, T: serde::de::DeserializeOwned>(
    path: &Path,
    lines: impl Iterator<Item = &'a str>,
) -> Result<Vec<T>> {
    lines
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::format(path, format!("line {}: {e}", i + 1)))
        })
        .collect()
}

/// Like [`read_jsonl`], but an unterminated last line that does not parse is dropped: it is
/// what a crash in the middle of appending a line leaves, and the caller is about to
/// rewrite the file anyway.
pub fn read_jsonl_recovering<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut lines: Vec<&str> = text.lines().collect();
    if !text.is_empty()
        && !text.ends_with('\n')
        && lines
            .last()
            .is_some_and(|l| serde_json::from_str::<T>(l).is_err())
    {
        lines.pop();
    }
    parse_jsonl(path, lines.into_iter())
}

/// Reads and parses a JSON file, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, e.to_string()))
}

/// Whether process `pid` (another one than this) may still be writing. Only Linux answers
/// cheaply; elsewhere every other process counts as alive, so leftovers are kept rather than
/// ever removed from under a writer.
fn other_process_alive(pid: &str) -> bool {
    let Ok(pid) = pid.parse::<u32>() else {
        return true;
    };
    if pid == std::process::id() {
        return false;
    }
    !cfg!(target_os = "linux") || Path::new("/proc").join(pid.to_string()).exists()
}

/// The process id in a temporary name this module made, and whether it is a moved-aside
/// old folder: `.c2f-tmp-PID-…` (files), `.NAME.c2f-tmp-PID` and `.NAME.c2f-old-PID`
/// (folders).
fn staged_name(name: &str) -> Option<(String, &str, bool)> {
    if let Some(rest) = name.strip_prefix(".c2f-tmp-") {
        return Some((String::new(), rest.split('-').next()?, false));
    }
    let rest = name.strip_prefix('.')?;
    for (marker, old) in [(".c2f-tmp-", false), (".c2f-old-", true)] {
        if let Some(at) = rest.rfind(marker) {
            return Some((rest[..at].to_string(), &rest[at + marker.len()..], old));
        }
    }
    None
}

/// Repairs what a process killed while writing into `dir` left there: a folder it had moved
/// aside to replace (`.NAME.c2f-old-PID`) goes back to `NAME` if `NAME` is missing — the
/// kill fell between the two renames of [`StagedDir::commit`] — and every other leftover of
/// a process that no longer runs is deleted. Leftovers of live processes are not touched.
pub fn clean_stale(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some((name, pid, old)) = staged_name(&file_name) else {
            continue;
        };
        if other_process_alive(pid) {
            continue;
        }
        let p = e.path();
        let dest = dir.join(&name);
        if old && !name.is_empty() && !dest.exists() {
            fs::rename(&p, &dest).map_err(|err| Error::io(&p, err))?;
        } else if p.is_dir() {
            fs::remove_dir_all(&p).map_err(|err| Error::io(&p, err))?;
        } else {
            fs::remove_file(&p).map_err(|err| Error::io(&p, err))?;
        }
    }
    Ok(())
}

/// A folder being built under a temporary name; [`StagedDir::commit`] renames it to its
/// final name, replacing any previous folder there only at that moment. Dropped without
/// commit, the temporary folder is removed.
#[derive(Debug)]
pub struct StagedDir {
    tmp: Option<PathBuf>,
    dest: PathBuf,
}

impl StagedDir {
    /// Starts staging a folder that will become `dest`.
    pub fn new(dest: &Path) -> Result<Self> {
        let dir = parent_of(dest);
        create_dir_all(dir)?;
        clean_stale(dir)?;
        let name = dest
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{}: not a folder name", dest.display())))?;
        let tmp = dir.join(format!(
            ".{}.c2f-tmp-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp: Some(tmp),
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary folder to write into.
    pub fn path(&self) -> &Path {
        self.tmp.as_deref().unwrap_or(&self.dest)
    }

    /// Moves the staged folder to its destination. A previous folder at the destination is
    /// moved aside first and deleted only after the new one is in place.
    pub fn commit(mut self) -> Result<PathBuf> {
        let Some(tmp) = self.tmp.take() else {
            return Ok(self.dest.clone());
        };
        if self.dest.exists() && !self.dest.is_dir() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::format(
                &self.dest,
                "is a file, not a folder; it was left as it is",
            ));
        }
        let old = self.dest.with_file_name(format!(
            ".{}.c2f-old-{}",
            self.dest
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            std::process::id()
        ));
        let had_old = self.dest.exists();
        if had_old {
            fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
        }
        if let Err(e) = fs::rename(&tmp, &self.dest) {
            if had_old {
                let _ = fs::rename(&old, &self.dest);
            }
            return Err(Error::io(&self.dest, e));
        }
        if had_old {
            fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(self.dest.clone())
    }
}

impl Drop for StagedDir {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = fs::remove_dir_all(tmp);
        }
    }
}

/// Files written into one folder as a set: each goes to a temporary name there, and
/// [`StagedFiles::commit`] renames them all into place only once every one is complete, so
/// a write that fails (a full disk) changes none of the folder's files. Dropped without
/// commit, the temporaries are removed.
#[derive(Debug)]
pub struct StagedFiles {
    dir: PathBuf,
    files: Vec<(tempfile::TempPath, PathBuf)>,
}

impl StagedFiles {
    /// Starts a set of files for `dir`, which must exist.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        }
    }

    /// A new empty temporary file that will become `dir/name`, for writers that want a path
    /// (an image encoder, which picks its format by the extension the temporary keeps); it
    /// belongs to the set from now on.
    pub fn path_for(&mut self, name: &str) -> Result<PathBuf> {
        let prefix = format!(".c2f-tmp-{}-", std::process::id());
        let suffix = Path::new(name)
            .extension()
            .map_or(String::new(), |e| format!(".{}", e.to_string_lossy()));
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(&suffix)
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .into_temp_path();
        let path = tmp.to_path_buf();
        self.files.push((tmp, self.dir.join(name)));
        Ok(path)
    }

    /// Stages `dir/name` with `bytes`.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let dest = self.dir.join(name);
        let tmp = self.path_for(name)?;
        fs::write(&tmp, bytes).map_err(|e| Error::io(&dest, e))
    }

    /// Syncs every staged file, then renames each over its destination.
    pub fn commit(self) -> Result<()> {
        for (tmp, dest) in &self.files {
            let file = fs::File::open(tmp).map_err(|e| Error::io(dest, e))?;
            file.sync_all().map_err(|e| Error::io(dest, e))?;
            // Temporary files are created private (0600); the results are ordinary files.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(tmp, fs::Permissions::from_mode(0o644))
                    .map_err(|e| Error::io(dest, e))?;
            }
        }
        for (tmp, dest) in self.files {
            tmp.persist(&dest).map_err(|e| Error::io(&dest, e.error))?;
        }
        Ok(())
    }
}

/// How to recognise an output folder that c2f made, so that it may be replaced or written
/// into again, while any other folder is left alone.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    /// What such a folder is, for messages ("prepared data folder").
    pub what: &'static str,
    /// Whether a folder carries c2f's mark (e.g. a manifest with c2f's `format`).
    pub marked: fn(&Path) -> bool,
    /// Whether a name inside the folder is one c2f writes there. `None`: any name may stand
    /// beside c2f's files, because writing into the folder only replaces c2f's own names.
    pub entry: Option<fn(&str) -> bool>,
}

/// Whether `path` is a JSON file whose `format` field is `format`.
pub fn has_format(path: &Path, format: &str) -> bool {
    read_json::<serde_json::Value>(path)
        .is_ok_and(|v| v.get("format").and_then(|f| f.as_str()) == Some(format))
}

/// What [`check_output`] found at an output path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputState {
    /// Nothing there yet.
    Absent,
    /// An empty folder.
    Empty,
    /// A folder c2f made, of the expected kind.
    Ours,
}

/// `path` made absolute with every existing part resolved (symbolic links, `..`), so two
/// spellings of one place compare equal even when its tail does not exist yet.
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut head = abs.as_path();
    let mut tail = Vec::new();
    loop {
        if let Ok(real) = head.canonicalize() {
            return tail.iter().rev().fold(real, |p: PathBuf, t| p.join(t));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                tail.push(name.to_os_string());
                head = parent;
            }
            _ => return abs,
        }
    }
}

/// Checks an output folder before anything is written: it must not be a file, must not be
/// or contain any of `inputs` (the files and folders the command reads), and if it exists
/// and is not empty it must be a folder of kind `own` that c2f made. Errors name the path
/// and say why; nothing is touched.
pub fn check_output(out: &Path, own: &Ownership, inputs: &[&Path]) -> Result<OutputState> {
    if let Some(blocker) = out
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir())
    {
        let msg = if blocker == out {
            format!(
                "is a file, not a folder; choose another output folder for the {}",
                own.what
            )
        } else {
            "is a file, so no folder can be created inside it".to_string()
        };
        return Err(Error::format(blocker, msg));
    }
    let real_out = resolved(out);
    for input in inputs {
        let real_in = resolved(input);
        if real_in.starts_with(&real_out) {
            let how = if real_in == real_out {
                "is"
            } else {
                "contains"
            };
            return Err(Error::format(
                out,
                format!(
                    "{how} {}, which this command reads; c2f never writes over its input: choose another output folder",
                    input.display()
                ),
            ));
        }
    }
    if !out.exists() {
        return Ok(OutputState::Absent);
    }
    let names: Vec<String> = fs::read_dir(out)
        .map_err(|e| Error::io(out, e))?
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(|err| Error::io(out, err))
        })
        .collect::<Result<_>>()?;
    if names.is_empty() {
        return Ok(OutputState::Empty);
    }
    if !(own.marked)(out) {
        return Err(Error::format(
            out,
            format!(
                "exists and is not a {} made by c2f; c2f only ever replaces its own folders: choose another output folder",
                own.what
            ),
        ));
    }
    if let Some(entry) = own.entry
        && let Some(foreign) = names
            .iter()
            .find(|n| !entry(n) && staged_name(n).is_none() && !n.ends_with(LOCK_SUFFIX))
    {
        return Err(Error::format(
            out,
            format!(
                "holds {foreign:?}, which c2f did not write, so it will not replace this {}; move that away or choose another output folder",
                own.what
            ),
        ));
    }
    Ok(OutputState::Ours)
}

const LOCK_SUFFIX: &str = ".c2f-lock";

/// An exclusive lock on an output path, held until dropped: the lock file
/// `PARENT/.NAME.c2f-lock` (holding the process id) is locked with the operating system's
/// advisory lock, which a killed process releases by itself. A second c2f process that
/// wants to write the same output fails at once with the holder's process id.
#[derive(Debug)]
pub struct OutputLock {
    file: fs::File,
    path: PathBuf,
}

impl OutputLock {
    /// Locks `out` (a file or folder that may not exist yet; its parent is created).
    pub fn acquire(out: &Path) -> Result<Self> {
        let real = resolved(out);
        let dir = parent_of(&real).to_path_buf();
        let name = real.file_name().ok_or_else(|| {
            Error::invalid(format!("{}: not a usable output name", out.display()))
        })?;
        create_dir_all(&dir)?;
        let path = dir.join(format!(".{}{LOCK_SUFFIX}", name.to_string_lossy()));
        loop {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                // Named by the output: the lock file is c2f's business, the folder the user's.
                .map_err(|e| Error::io(out, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    let holder = fs::read_to_string(&path).unwrap_or_default();
                    let holder = holder.trim();
                    return Err(Error::invalid(format!(
                        "{}: another c2f process ({}) is writing it; wait for it to finish or stop it",
                        out.display(),
                        if holder.is_empty() {
                            "process id not yet recorded".to_string()
                        } else {
                            format!("pid {holder}")
                        }
                    )));
                }
                Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // The previous holder removes the file as it lets go; a lock taken on a file
            // that is no longer at `path` protects nothing, so take it again.
            if same_file(&file, &path) {
                let lock = Self { file, path };
                lock.record_pid()?;
                return Ok(lock);
            }
        }
    }

    fn record_pid(&self) -> Result<()> {
        use std::io::{Seek, SeekFrom};
        let mut f = &self.file;
        f.set_len(0).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(0))
            .map_err(|e| Error::io(&self.path, e))?;
        writeln!(f, "{}", std::process::id()).map_err(|e| Error::io(&self.path, e))
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        // Removed while still locked, so no other process can be holding this file.
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

#[cfg(unix)]
fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_file: &fs::File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_dir_replaces_only_on_commit() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let dest = root.path().join("out");
        fs::create_dir(&dest).map_err(|e| Error::io(&dest, e))?;
        fs::write(dest.join("old.txt"), "old").map_err(|e| Error::io(&dest, e))?;

        let staged = StagedDir::new(&dest)?;
        fs::write(staged.path().join("new.txt"), "new").map_err(|e| Error::io(&dest, e))?;
        drop(staged);
        assert!(
            dest.join("old.txt").exists(),
            "an abandoned stage must not touch the old folder"
        );

        let staged = StagedDir::new(&dest)?;
        fs::write(staged.path().join("new.txt"), "new").map_err(|e| Error::io(&dest, e))?;
        staged.commit()?;
        assert!(dest.join("new.txt").exists());
        assert!(!dest.join("old.txt").exists());
        let leftovers: Vec<_> = fs::read_dir(root.path())
            .map_err(|e| Error::io(root.path(), e))?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains("c2f-"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary folders left behind: {leftovers:?}"
        );
        Ok(())
    }

    #[test]
    fn recovering_reader_drops_only_an_unterminated_broken_line() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = root.path().join("m.jsonl");
        fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").map_err(|e| Error::io(&path, e))?;
        let v: Vec<serde_json::Value> = read_jsonl_recovering(&path)?;
        assert_eq!(v.len(), 2);
        assert!(read_jsonl::<serde_json::Value>(&path).is_err());
        // A broken line in the middle is damage, not an interrupted append.
        fs::write(&path, "{\"a\":1}\n{\"a\n{\"a\":3}\n").map_err(|e| Error::io(&path, e))?;
        let err = read_jsonl_recovering::<serde_json::Value>(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("m.jsonl") && err.contains("line 2"), "{err}");
        Ok(())
    }

    #[test]
    fn clean_stale_restores_a_folder_caught_between_renames() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let io = |e| Error::io("fixture", e);
        // A process that no longer exists (pid 0 is never a user process) moved
        // `checkpoint` aside and died before its new one was renamed in.
        fs::create_dir(root.path().join(".checkpoint.c2f-old-0")).map_err(io)?;
        fs::write(root.path().join(".checkpoint.c2f-old-0/meta.json"), "{}").map_err(io)?;
        fs::create_dir(root.path().join(".checkpoint.c2f-tmp-0")).map_err(io)?;
        fs::write(root.path().join(".c2f-tmp-0-abc"), "partial").map_err(io)?;
        // Our own live sibling (this pid, but a name that is not staged) stays.
        fs::write(root.path().join("metrics.jsonl"), "").map_err(io)?;
        clean_stale(root.path())?;
        let mut names: Vec<String> = fs::read_dir(root.path())
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        assert_eq!(names, vec!["checkpoint", "metrics.jsonl"]);
        assert!(root.path().join("checkpoint/meta.json").is_file());
        Ok(())
    }

    #[test]
    fn failed_write_keeps_previous_file() -> Result<()> {
        let root = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = root.path().join("f.txt");
        write_bytes_atomic(&path, b"first")?;
        let res = write_atomic(&path, |w| {
            w.write_all(b"partial")?;
            Err(std::io::Error::other("simulated failure"))
        });
        assert!(res.is_err());
        assert_eq!(fs::read(&path).map_err(|e| Error::io(&path, e))?, b"first");
        Ok(())
    }
}
