//! Running a container as a local process.
//!
//! Each container becomes one child in its own process group (so a SIGTERM reaches everything
//! it forked, as a container's PID namespace would), with an empty environment except what the
//! spec lists, and stdout+stderr appended to one log file. Exit statuses are mapped the way a
//! container runtime reports them (signal N → 128+N).

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};

use k8s_openapi::jiff::Timestamp;
use tokio::process::{Child, Command};

use crate::pod::ProcessSpec;

/// A started container process.
#[derive(Debug)]
pub struct Running {
    pub pid: u32,
    pub started_at: Timestamp,
    child: Child,
}

/// How a container process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// What Kubernetes reports as `state.terminated.exitCode`.
    pub code: i32,
    /// The signal that killed it, if any.
    pub signal: Option<i32>,
}

impl Exit {
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => Exit { code, signal: None },
            (None, Some(sig)) => Exit { code: 128 + sig, signal: Some(sig) },
            (None, None) => Exit { code: 255, signal: None },
        }
    }
}

/// The exit code to report when the process could not even be started.
pub fn spawn_error_code(err: &io::Error) -> i32 {
    match err.kind() {
        io::ErrorKind::NotFound => 127,
        io::ErrorKind::PermissionDenied => 126,
        _ => 128,
    }
}

/// Start the process described by `spec`: creates the working directory and a fresh log file.
pub fn spawn(spec: &ProcessSpec) -> io::Result<Running> {
    fs::create_dir_all(&spec.working_dir)?;
    if let Some(dir) = spec.log_path.parent() {
        fs::create_dir_all(dir)?;
    }
    // Truncate any previous log, then reopen in append mode so stdout and stderr interleave
    // without overwriting each other.
    fs::File::create(&spec.log_path)?;
    let log = OpenOptions::new().append(true).open(&spec.log_path)?;
    let log_err = log.try_clone()?;

    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&spec.working_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .process_group(0)
        .kill_on_drop(true);
    if !spec.mounts.is_empty() {
        private_mounts(&mut cmd, &spec.mounts)?;
    }
    let child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("child exited before its pid was read"))?;
    Ok(Running { pid, started_at: Timestamp::now(), child })
}

/// Gives the child its own mount namespace with `mounts` bound (read-only) at their targets, so
/// a pod sees its ServiceAccount token at the standard path and no other pod sees it. Needs root
/// (CAP_SYS_ADMIN), as the agent runs in the test environment. Target directories are created
/// on the host beforehand (empty; the bind mount covers them only inside the namespace).
fn private_mounts(cmd: &mut Command, mounts: &[crate::volumes::FileMount]) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut pairs = Vec::new();
    for m in mounts {
        fs::create_dir_all(&m.target)?;
        let c = |p: &std::path::Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
        pairs.push((c(&m.source)?, c(&m.target)?));
    }
    // SAFETY: between fork and exec only async-signal-safe system calls are made (unshare,
    // mount); every string was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep our mounts from propagating back to the host's namespace.
            let root = c"/";
            if libc::mount(std::ptr::null(), root.as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) != 0 {
                return Err(io::Error::last_os_error());
            }
            for (source, target) in &pairs {
                if libc::mount(source.as_ptr(), target.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
                if libc::mount(std::ptr::null(), target.as_ptr(), std::ptr::null(), flags, std::ptr::null()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(())
}

impl Running {
    /// Wait for the process to exit. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<Exit> {
        let status = self.child.wait().await?;
        Ok(Exit::from_status(status))
    }

    /// Send `signal` to the whole process group.
    pub fn signal_group(&self, signal: i32) {
        signal_group(self.pid, signal);
    }
}

/// Send `signal` to process group `pgid`; a group that is already gone is fine.
pub fn signal_group(pgid: u32, signal: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; it has no memory effects.
    let rc = unsafe { libc::kill(-(pgid as libc::pid_t), signal) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ESRCH) {
            tracing::warn!(pgid, signal, %err, "kill process group failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::Duration;

    fn sh(dir: &std::path::Path, script: &str, env: &[(&str, &str)]) -> ProcessSpec {
        ProcessSpec {
            container: "c".into(),
            image: "sh".into(),
            program: PathBuf::from("/bin/sh"),
            args: vec!["-c".into(), script.into()],
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            working_dir: dir.join("wd"),
            log_path: dir.join("logs").join("ns_p_c.log"),
            mounts: Vec::new(),
        }
    }

    #[tokio::test]
    async fn file_volumes_are_seen_only_by_the_pods_process() {
        // SAFETY: geteuid has no side effects.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED file_volumes_are_seen_only_by_the_pods_process: bind mounts in a private mount namespace need root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("files");
        fs::create_dir_all(&source).unwrap();
        fs::write(source.join("token"), "secret-token").unwrap();
        let target = dir.path().join("var/run/secrets");
        let mut spec = sh(dir.path(), &format!("cat {}/token", target.display()), &[]);
        spec.mounts = vec![crate::volumes::FileMount { source, target: target.clone() }];
        let mut running = spawn(&spec).unwrap();
        assert_eq!(running.wait().await.unwrap(), Exit { code: 0, signal: None });
        assert_eq!(fs::read_to_string(&spec.log_path).unwrap(), "secret-token");
        assert!(target.is_dir() && !target.join("token").exists(), "the mount leaked into the host's namespace");
    }

    #[test]
    fn exit_status_mapping() {
        assert_eq!(Exit::from_status(ExitStatus::from_raw(0)), Exit { code: 0, signal: None });
        assert_eq!(Exit::from_status(ExitStatus::from_raw(3 << 8)), Exit { code: 3, signal: None });
        assert_eq!(Exit::from_status(ExitStatus::from_raw(libc::SIGKILL)), Exit { code: 137, signal: Some(9) });
        assert_eq!(Exit::from_status(ExitStatus::from_raw(libc::SIGTERM)), Exit { code: 143, signal: Some(15) });
        assert_eq!(spawn_error_code(&io::Error::from(io::ErrorKind::NotFound)), 127);
        assert_eq!(spawn_error_code(&io::Error::from(io::ErrorKind::PermissionDenied)), 126);
    }

    #[tokio::test]
    async fn runs_with_clean_env_and_logs_both_streams() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = sh(tmp.path(), "echo out-$FOO; echo err-$HOME >&2; pwd; env | sort; exit 3", &[("FOO", "bar")]);
        let mut run = spawn(&spec).unwrap();
        let exit = run.wait().await.unwrap();
        assert_eq!(exit, Exit { code: 3, signal: None });
        let log = std::fs::read_to_string(&spec.log_path).unwrap();
        assert!(log.contains("out-bar"), "{log}");
        assert!(log.contains("err-\n"), "HOME must not leak from the agent: {log}");
        assert!(log.contains(&spec.working_dir.display().to_string()), "{log}");
        // Only FOO plus what sh itself sets (PWD, SHLVL, ...): nothing from the test's env.
        assert!(!log.contains("CARGO"), "{log}");
    }

    #[tokio::test]
    async fn signals_reach_the_process_group() {
        let tmp = tempfile::tempdir().unwrap();
        // The shell forks a grandchild; TERM on the group must end both.
        let spec = sh(tmp.path(), "sleep 30 & echo started; wait", &[]);
        let mut run = spawn(&spec).unwrap();
        // Own group: pgid == pid.
        let pgid = unsafe { libc::getpgid(run.pid as libc::pid_t) };
        assert_eq!(pgid as u32, run.pid);
        tokio::time::sleep(Duration::from_millis(200)).await;
        run.signal_group(libc::SIGTERM);
        let exit = tokio::time::timeout(Duration::from_secs(5), run.wait()).await.unwrap().unwrap();
        assert_eq!(exit.code, 143);
        assert_eq!(exit.signal, Some(libc::SIGTERM));
    }

    #[tokio::test]
    async fn missing_program_is_a_spawn_error() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = sh(tmp.path(), "", &[]);
        spec.program = tmp.path().join("does-not-exist");
        let err = spawn(&spec).unwrap_err();
        assert_eq!(spawn_error_code(&err), 127);
    }
}
