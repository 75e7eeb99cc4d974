//! Where proofjobs keeps what is worth keeping between runs on one machine (SP1's recursion keys,
//! embedded mode's database template): one directory, so operators find and clear it in one place.

use std::path::{Path, PathBuf};

/// `$XDG_CACHE_HOME/proofjobs`, else `$HOME/.cache/proofjobs`; None when neither is set.
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?;
    Some(base.join("proofjobs"))
}
