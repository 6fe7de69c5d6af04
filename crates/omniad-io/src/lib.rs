//! Crash-safe file writing, the one implementation every omniad crate uses for results a user
//! keeps (checkpoints, metrics, PNGs, CSVs, the synthetic dataset).
//!
//! [`write_atomic`] writes a uniquely named temporary file in the target's folder, flushes it to
//! disk (`fsync`), renames it over the target and flushes the folder, so that a reader, a crash
//! or a full disk sees either the old file or the complete new one, never a partial file; on
//! failure the temporary file is removed.
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed write, naming the file and what the operating system said (e.g. "No space left on
/// device (os error 28)").
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}: {source}", path.display())]
pub struct WriteError {
    /// The file that was being written.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Flushes a folder's entries to disk (after a rename into it). Not all platforms or file
/// systems can open a folder for this; that is not an error.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Writes `bytes` to `path` atomically: temporary file `.<name>.<random>.tmp` in the same
/// folder, `fsync`, rename over `path`, `fsync` of the folder.
///
/// # Errors
/// [`WriteError`] naming `path` (the folder is missing or read-only, the disk is full, ...);
/// the temporary file is removed and an existing `path` is left as it was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`] with the content produced by `fill` (e.g. an encoder writing into the
/// file); `fill` should not flush to disk itself.
///
/// # Errors
/// As [`write_atomic`]; an error returned by `fill` too.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    let err = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    // as a plain create would: 0666 less the umask (tempfile's default is 0600, which would
    // hide results from the other users of a shared machine or a web server)
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    let mut tmp = builder.tempfile_in(dir).map_err(err)?;
    fill(tmp.as_file_mut()).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Whether `name` is a temporary file left by an interrupted [`write_atomic`] (`.<name>.<x>.tmp`).
pub fn is_leftover_temp(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.json");
        write_atomic(&p, b"first version, longer").unwrap();
        write_atomic(&p, b"second").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"second");
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["a.json".to_string()]);
    }

    /// Written files get the permissions a plain create gives them (0666 less the umask), not
    /// tempfile's private 0600.
    #[cfg(unix)]
    #[test]
    fn files_get_the_usual_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let p = dir.path().join("atomic");
        write_atomic(&p, b"x").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&p), mode(&plain), "same as std::fs::write");
    }

    #[test]
    fn failure_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keep.txt");
        write_atomic(&p, b"old").unwrap();
        let e =
            write_atomic_with(&p, |_| Err(std::io::Error::other("encoder failed"))).unwrap_err();
        assert!(e.to_string().contains("keep.txt") && e.to_string().contains("encoder failed"));
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("no/such/folder/x.bin");
        let e = write_atomic(&missing, b"x").unwrap_err();
        assert!(e.to_string().contains("no/such/folder/x.bin"), "{e}");
        assert!(is_leftover_temp(".model.safetensors.Ab12.tmp"));
        assert!(!is_leftover_temp("model.safetensors"));
    }
}
