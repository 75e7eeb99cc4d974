//! Reading the files users already have: a raw ELF and a bincode SP1Stdin, either of them zstd
//! compressed (`.zst`), as sp1-cluster's tooling ships them.

use std::path::Path;

use anyhow::{Context, Result};

pub fn read_maybe_zst(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "zst") {
        zstd::decode_all(bytes.as_slice()).with_context(|| format!("decompressing {}", path.display()))
    } else {
        Ok(bytes)
    }
}

/// Program bytes and stdin bytes (an empty SP1Stdin when no file is given).
pub fn load(elf: &Path, stdin: Option<&Path>) -> Result<(Vec<u8>, Vec<u8>)> {
    let program = read_maybe_zst(elf)?;
    let stdin = match stdin {
        Some(path) => read_maybe_zst(path)?,
        None => bincode::serialize(&sp1_sdk::SP1Stdin::new())?,
    };
    Ok((program, stdin))
}
