//! Small file-system helpers shared by the layout readers.

use std::path::{Path, PathBuf};

use crate::decode::{has_image_extension, IMAGE_EXTENSIONS};
use crate::error::DataError;

/// Names that are never data: dot-files and dot-folders (`.DS_Store`,
/// `.ipynb_checkpoints`, `.git`), macOS archive debris and Windows thumbnails.
pub(crate) fn is_hidden(name: &str) -> bool {
    name.starts_with('.')
        || name == "__MACOSX"
        || name.eq_ignore_ascii_case("Thumbs.db")
        || name.eq_ignore_ascii_case("desktop.ini")
}

/// One non-hidden entry of a folder.
pub(crate) struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub is_dir: bool,
}

/// Lists the non-hidden entries of `dir`, sorted by name (byte order).
///
/// Symbolic links are followed. A name that is not valid UTF-8 is an error
/// (it could not be reported or matched by stem reliably).
pub(crate) fn list_dir(dir: &Path) -> Result<Vec<Entry>, DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut out = Vec::new();
    for item in rd {
        let item = item.map_err(|e| DataError::io(dir, e))?;
        let path = item.path();
        let Some(name) = item.file_name().to_str().map(str::to_string) else {
            return Err(DataError::Layout {
                path,
                kind: "dataset".to_string(),
                message: "file name is not valid UTF-8".to_string(),
            });
        };
        if is_hidden(&name) {
            continue;
        }
        let meta = std::fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        out.push(Entry {
            name,
            path,
            is_dir: meta.is_dir(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Lists the image files of `dir`, sorted by name.
///
/// A sub-folder or a file with an unsupported extension is an error naming it
/// (never silently skipped); hidden entries are ignored.
pub(crate) fn list_images(dir: &Path, kind: &str) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    for e in list_dir(dir)? {
        if e.is_dir {
            return Err(DataError::IsDirectory {
                path: e.path,
                what: "an image file (no sub-folders are expected here)".to_string(),
            });
        }
        if !has_image_extension(&e.path) {
            return Err(DataError::layout(
                &e.path,
                kind,
                format!(
                    "unexpected file: not a supported image (extensions: {}); \
                     remove it or move it out of the dataset",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            ));
        }
        out.push(e.path);
    }
    Ok(out)
}

/// The file stem of `path` as UTF-8 (`""` when absent).
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Checks that `path` exists and is a file (not a folder); used for files named by
/// metadata (CSV/JSON) rather than found by listing.
pub(crate) fn require_file(path: &Path, what: &str) -> Result<(), DataError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err(DataError::IsDirectory {
            path: path.to_path_buf(),
            what: what.to_string(),
        }),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(DataError::NotFound {
            path: path.to_path_buf(),
            what: what.to_string(),
        }),
        Err(e) => Err(DataError::io(path, e)),
    }
}

/// Joins a metadata-relative path (always `/`-separated in the files) onto `base`.
pub(crate) fn join_rel(base: &Path, rel: &str) -> PathBuf {
    let mut p = base.to_path_buf();
    for part in rel
        .split(['/', '\\'])
        .filter(|s| !s.is_empty() && *s != ".")
    {
        p.push(part);
    }
    p
}
