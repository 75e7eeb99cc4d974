//! The `--image-map IMAGE=BINARY` table.
//!
//! There is no container runtime: an image stands for a local binary. Pod specs name images
//! with tags or digests (`proofjobs/task-runner:dev`), the map is usually written without, so
//! the lookup tries the exact reference first and then the reference with its tag and digest
//! stripped.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, Default)]
pub struct ImageMap {
    entries: Vec<(String, PathBuf)>,
}

impl ImageMap {
    /// Parses `IMAGE=PATH` entries. Relative paths are made absolute against the current
    /// directory, so pods with their own working directory still find them.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self> {
        let cwd = std::env::current_dir().context("current dir")?;
        let mut entries = Vec::new();
        for item in items {
            let item = item.as_ref();
            let (image, path) = item.split_once('=').with_context(|| format!("--image-map {item:?}: expected IMAGE=PATH"))?;
            if image.is_empty() || path.is_empty() {
                bail!("--image-map {item:?}: expected IMAGE=PATH");
            }
            let path = PathBuf::from(path);
            let path = if path.is_absolute() { path } else { cwd.join(path) };
            entries.push((image.to_string(), path));
        }
        Ok(Self { entries })
    }

    pub fn entries(&self) -> &[(String, PathBuf)] {
        &self.entries
    }

    /// The binary for an image reference: exact match first, then without digest, then
    /// without tag (a map key without a tag matches every tag).
    pub fn lookup(&self, image: &str) -> Option<&Path> {
        let candidates = [image.to_string(), strip_digest(image).to_string(), repository(image).to_string()];
        for candidate in &candidates {
            if let Some((_, path)) = self.entries.iter().find(|(k, _)| k == candidate) {
                return Some(path);
            }
        }
        // Allow the map to name `docker.io/library/x` or `x` interchangeably.
        let short = normalize(repository(image));
        self.entries.iter().find(|(k, _)| normalize(repository(k)) == short && (repository(k) == k.as_str())).map(|(_, p)| p.as_path())
    }
}

fn strip_digest(image: &str) -> &str {
    image.split_once('@').map(|(name, _)| name).unwrap_or(image)
}

/// The reference without digest and tag. A ':' before the last '/' is a registry port.
pub fn repository(image: &str) -> &str {
    let name = strip_digest(image);
    let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
    match name[last_slash..].find(':') {
        Some(colon) => &name[..last_slash + colon],
        None => name,
    }
}

fn normalize(repo: &str) -> &str {
    repo.strip_prefix("docker.io/library/").or_else(|| repo.strip_prefix("docker.io/")).unwrap_or(repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_looks_up() {
        let map = ImageMap::parse(&[
            "proofjobs/task-runner=/bin/task-runner",
            "proofjobs/task-runner:special=/bin/special",
            "busybox=/bin/busybox",
            "localhost:5000/tool=/bin/tool",
        ])
        .unwrap();
        assert_eq!(map.lookup("proofjobs/task-runner"), Some(Path::new("/bin/task-runner")));
        assert_eq!(map.lookup("proofjobs/task-runner:dev"), Some(Path::new("/bin/task-runner")));
        assert_eq!(map.lookup("proofjobs/task-runner:special"), Some(Path::new("/bin/special")));
        assert_eq!(map.lookup("proofjobs/task-runner:dev@sha256:0123abcd"), Some(Path::new("/bin/task-runner")));
        assert_eq!(map.lookup("docker.io/library/busybox:1.36"), Some(Path::new("/bin/busybox")));
        assert_eq!(map.lookup("localhost:5000/tool:v2"), Some(Path::new("/bin/tool")));
        assert_eq!(map.lookup("localhost:5000/tool"), Some(Path::new("/bin/tool")));
        assert_eq!(map.lookup("proofjobs/api:dev"), None);
        assert_eq!(map.lookup("tool"), None);
    }

    #[test]
    fn relative_paths_become_absolute() {
        let map = ImageMap::parse(&["x=target/release/x"]).unwrap();
        assert!(map.entries()[0].1.is_absolute());
    }

    #[test]
    fn rejects_malformed_entries() {
        assert!(ImageMap::parse(&["no-equals"]).is_err());
        assert!(ImageMap::parse(&["=/bin/x"]).is_err());
        assert!(ImageMap::parse(&["x="]).is_err());
    }

    #[test]
    fn repository_strips_tag_and_digest_but_not_port() {
        assert_eq!(repository("a/b:c"), "a/b");
        assert_eq!(repository("a/b@sha256:ff"), "a/b");
        assert_eq!(repository("host:5000/a/b"), "host:5000/a/b");
        assert_eq!(repository("host:5000/a/b:t"), "host:5000/a/b");
    }
}
