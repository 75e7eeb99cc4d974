//! The throwaway PostgreSQL server of embedded mode, made to start in a fraction of a second: a
//! new database is ~1,000 files, and creating them costs ~1 s on some disks but ~50 ms in memory,
//! so the data lives on tmpfs when there is room; and it starts as a copy of a template that
//! was initialised and migrated once (kept in the user's cache, keyed by the server's version and
//! the migrations), so a run pays neither `initdb` nor the migrations. The server is our child
//! process, stopped with a signal: no `pg_ctl`, no shell.

use std::{
    hash::{Hash, Hasher},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use proofjobs_pipeline::state::{Db, MIGRATOR};

/// tmpfs is used only with this much room left over: the data is small, but a machine whose
/// `/dev/shm` is a container's 64 MiB default must not run out of shared memory.
const TMPFS_MIN_FREE: u64 = 1 << 30;

pub struct Postgres {
    child: Child,
    /// The directory that holds the data and the socket; removed at stop unless kept.
    dir: PathBuf,
    port: u16,
    keep: bool,
}

/// initdb and postgres refuse to run as root; as root they run as the `postgres` user that
/// Debian's package creates.
#[derive(Clone, Copy)]
struct RunAs {
    uid: u32,
    gid: u32,
}

fn run_as() -> Result<Option<RunAs>> {
    // SAFETY: getpwnam returns a pointer into static storage or null; read at once, on one thread
    // of a process that does not call it concurrently.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(None);
        }
        let entry = libc::getpwnam(c"postgres".as_ptr());
        anyhow::ensure!(!entry.is_null(), "running as root, and there is no `postgres` user to run PostgreSQL as");
        Ok(Some(RunAs { uid: (*entry).pw_uid, gid: (*entry).pw_gid }))
    }
}

fn command(program: PathBuf, user: Option<RunAs>) -> Command {
    let mut command = Command::new(program);
    if let Some(user) = user {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

fn chown(path: &Path, user: Option<RunAs>) -> Result<()> {
    if let Some(user) = user {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// The directory of PostgreSQL's server binaries: on PATH, else Debian's newest version.
fn bin_dir() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        candidates.extend(versions.into_iter().rev());
    }
    candidates.into_iter().find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file()).context(
        "PostgreSQL's initdb and postgres not found: embedded mode needs a PostgreSQL server installed (apt-get install postgresql)",
    )
}

/// Where a server's directory goes: tmpfs when it has room, else the run's state directory.
fn data_parent(state_dir: &Path) -> PathBuf {
    let shm = Path::new("/dev/shm");
    let roomy = writable_free_bytes(shm).is_some_and(|free| free >= TMPFS_MIN_FREE);
    if roomy {
        shm.to_path_buf()
    } else {
        state_dir.to_path_buf()
    }
}

/// Bytes free to unprivileged users at `path`; None when it is missing or not writable by us.
fn writable_free_bytes(path: &Path) -> Option<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the struct we own from a NUL-terminated path.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 || unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
        return None;
    }
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// The template's name: the server's version (its binary directory names the major version, which
/// fixes the on-disk format) and every migration's version and checksum.
fn template_key(bin: &Path) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    bin.hash(&mut hasher);
    for migration in MIGRATOR.iter() {
        (migration.version, &migration.checksum[..]).hash(&mut hasher);
    }
    format!("{:016x}", hasher.finish())
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    // `cp -a` keeps owners and modes (PostgreSQL insists on a 0700 data directory it owns).
    let out = Command::new("cp").arg("-a").arg(from).arg(to).output().context("running cp")?;
    anyhow::ensure!(out.status.success(), "copying {} to {}: {}", from.display(), to.display(), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

impl Postgres {
    /// Starts a server with the migrated schema; its log goes to `<state_dir>/postgres.log`.
    /// With `keep`, the data stays in the state directory after the run, for inspection.
    pub async fn start(state_dir: &Path, keep: bool) -> Result<Postgres> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let parent = if keep { state_dir.to_path_buf() } else { data_parent(state_dir) };
        let dir = tempfile::Builder::new().prefix("proofjobs-pg-").tempdir_in(parent)?.keep();
        chown(&dir, user)?;
        let data = dir.join("data");
        let log = state_dir.join("postgres.log");
        let template = proofjobs_pipeline::cache::cache_dir().map(|root| root.join("embedded-pg").join(template_key(&bin)));
        match &template {
            Some(template) if template.is_dir() => copy_tree(template, &data)?,
            _ => {
                initdb(&bin, &data, user)?;
                if let Some(template) = &template {
                    // Migrate once, stop cleanly, and keep a copy for the next run. A failure
                    // here costs only speed.
                    if let Err(e) = save_template(&bin, &dir, &data, &log, user, template).await {
                        tracing::warn!("embedded PostgreSQL: could not save a template in {}: {e:#}", template.display());
                    }
                }
            }
        }
        Self::spawn(&bin, dir, &log, user, keep).await
    }

    async fn spawn(bin: &Path, dir: PathBuf, log: &Path, user: Option<RunAs>, keep: bool) -> Result<Postgres> {
        let data = dir.join("data");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let mut server = command(bin.join("postgres"), user);
        server
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            // Its own process group: a Ctrl-C at the terminal reaches proofctl, which then stops
            // the server after everything that uses it.
            .process_group(0);
        let child = server.spawn().context("starting PostgreSQL")?;
        let mut postgres = Postgres { child, dir, port, keep };
        postgres.wait_ready(log).await?;
        Ok(postgres)
    }

    /// The server is ready when its pid file's status line says so (what `pg_ctl -w` reads),
    /// polled every few milliseconds instead of pg_ctl's tenth of a second.
    async fn wait_ready(&mut self, log: &Path) -> Result<()> {
        let pid_file = self.dir.join("data").join("postmaster.pid");
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("PostgreSQL exited while starting ({status}):\n{}", tail(&log, 20));
            }
            let ready = std::fs::read_to_string(&pid_file).is_ok_and(|text| text.lines().nth(7).is_some_and(|l| l.trim() == "ready"));
            if ready {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("PostgreSQL did not become ready within 60 s (log: {})", log.display());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://proofjobs@127.0.0.1:{}/postgres", self.port)
    }

    /// Immediate shutdown (SIGQUIT): the data is thrown away, so nothing needs to be flushed.
    pub fn stop(mut self) {
        self.signal_and_wait(libc::SIGQUIT);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) {
        // SAFETY: signalling our own child, which has not been reaped (it is waited for just below).
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        let _ = self.child.wait();
    }
}

fn initdb(bin: &Path, data: &Path, user: Option<RunAs>) -> Result<()> {
    let out = command(bin.join("initdb"), user)
        .arg("-D")
        .arg(data)
        .args(["-A", "trust", "-U", "proofjobs", "--no-sync", "--no-instructions"])
        .output()
        .context("running initdb")?;
    anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// Starts the fresh cluster in `dir`, migrates it, stops it cleanly (SIGINT: a checkpoint, so
/// the copy starts without recovery) and copies it into place atomically.
async fn save_template(bin: &Path, dir: &Path, data: &Path, log: &Path, user: Option<RunAs>, template: &Path) -> Result<()> {
    let mut server = Postgres::spawn(bin, dir.to_path_buf(), log, user, false).await?;
    let migrated = async {
        let db = Db::connect(&server.url(), 2).await?;
        let result = db.migrate().await;
        db.close().await;
        result
    }
    .await;
    server.signal_and_wait(libc::SIGINT);
    migrated?;
    let parent = template.parent().context("template path has no parent")?;
    std::fs::create_dir_all(parent)?;
    let staging = tempfile::Builder::new().prefix(".staging-").tempdir_in(parent)?;
    let copy = staging.path().join("data");
    copy_tree(data, &copy)?;
    // Another run may have saved the same template meanwhile; either copy is as good.
    if std::fs::rename(&copy, template).is_err() && !template.is_dir() {
        bail!("could not move the template into {}", template.display());
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_key_follows_the_server_version() {
        assert_eq!(template_key(Path::new("/usr/lib/postgresql/15/bin")), template_key(Path::new("/usr/lib/postgresql/15/bin")));
        assert_ne!(template_key(Path::new("/usr/lib/postgresql/15/bin")), template_key(Path::new("/usr/lib/postgresql/16/bin")));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
