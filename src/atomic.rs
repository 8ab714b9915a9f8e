//! Atomic file replacement, shared by heads ([`crate::export`]) and state files
//! ([`crate::snapshot`]).
//!
//! [`write()`] puts the bytes in a new file with a random name in the target's folder, fsyncs
//! it, renames it over the target and fsyncs the folder: a crash leaves either the old file or
//! the new one, never a mix. The new file gets the permissions an ordinary file would get:
//! those of the file it replaces, or, for a new file, `0666` less the process's umask.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The folder `path` lives in (`.` for a bare file name).
fn folder_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A temporary file that is removed unless [`Temp::keep`] is called.
struct Temp {
    path: PathBuf,
    file: Option<File>,
}

impl Temp {
    /// Creates a new file with a random name in `dir`; `mode` (Unix permission bits) is
    /// filtered by the umask as for any new file.
    fn create_in(dir: &Path, target: &Path) -> io::Result<Temp> {
        let stem = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut last = None;
        for _ in 0..16 {
            let name = format!(".{stem}.{:016x}.tmp", rand::random::<u64>());
            let path = dir.join(name);
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o666);
            match options.open(&path) {
                Ok(file) => {
                    return Ok(Temp {
                        path,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary file name")))
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until kept")
    }

    fn keep(mut self) {
        self.file = None;
        self.path = PathBuf::new();
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        self.file = None;
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Checks, before any long work, that `path` can be written: its folder exists, is a folder
/// and accepts new files, and `path` itself is not a folder. The error says which (the
/// caller adds the path or option name).
///
/// # Errors
/// An [`io::Error`] whose message says what is wrong.
pub fn check_writable(path: &Path) -> io::Result<()> {
    let dir = folder_of(path);
    match std::fs::metadata(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the folder {} does not exist", dir.display()),
            ));
        }
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{} is not a folder", dir.display()),
            ));
        }
        Ok(_) => {}
    }
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a folder; name a file to write",
        ));
    }
    // The only reliable test of permission (ACLs, read-only mounts, root) is to try.
    Temp::create_in(&dir, path)
        .map(drop)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create files in {}: {e}", dir.display())))
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename, fsync of the folder).
/// On any error no temporary file is left and an existing file at `path` is unchanged.
///
/// The file's permissions are those of the file it replaces, or those of any new file
/// (`0666` less the umask).
///
/// # Errors
/// The file system's error (the caller names the path).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = folder_of(path);
    if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "is a folder; name a file to write",
        ));
    }
    let existing = std::fs::metadata(path).ok().map(|m| m.permissions());
    let mut tmp = Temp::create_in(&dir, path)?;
    if let Some(permissions) = existing {
        tmp.file().set_permissions(permissions)?;
    }
    tmp.file().write_all(bytes)?;
    tmp.file().sync_all()?;
    std::fs::rename(&tmp.path, path)?;
    tmp.keep();
    if let Ok(d) = File::open(&dir) {
        // Makes the rename durable; some file systems refuse fsync on folders, which is harmless.
        let _ = d.sync_all();
    }
    Ok(())
}
