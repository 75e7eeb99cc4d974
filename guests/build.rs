//! Compiles the C guests in `c/` to SP1 v6 (rv64im) ELFs in `OUT_DIR`.
//!
//! Why: the cluster needs a few guest programs with known cost for tests and
//! benchmarks, and building them must not require the SP1 Rust toolchain
//! (`cargo prove`) - only Debian's `clang` and `lld` packages.
//!
//! Tools are looked up as `clang`/`clang-14` and `ld.lld`/`ld.lld-14` on
//! PATH, unless `PROOFJOBS_GUESTS_CLANG` / `PROOFJOBS_GUESTS_LD_LLD` name
//! them explicitly.  The output is reproducible: no debug info, source paths
//! are relative to `c/` (and remapped), and the linker writes no build id.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// Guest programs: each is `c/<name>.c` linked with the shared runtime.
const GUESTS: &[&str] = &["fibonacci", "memtraffic"];
/// Shared runtime linked into every guest.
const RUNTIME: &str = "sp1_guest";
/// Files whose change must trigger a rebuild.
const SOURCES: &[&str] = &["sp1_guest.h", "sp1_guest.c", "fibonacci.c", "memtraffic.c"];

const CFLAGS: &[&str] = &[
    "--target=riscv64-unknown-none-elf",
    "-march=rv64im",
    "-mabi=lp64",
    "-mcmodel=medany",
    "-mno-relax",
    "-ffreestanding",
    "-fno-builtin",
    "-fno-stack-protector",
    "-nostdlibinc",
    "-fno-pic",
    "-fno-common",
    "-fno-asynchronous-unwind-tables",
    "-fno-unwind-tables",
    "-O2",
    "-g0",
    "-Wall",
    "-Wextra",
];

const LDFLAGS: &[&str] = &[
    "-static",
    // SP1 v6: every segment at or above STACK_TOP = 0x78000000.
    "--image-base=0x78000000",
    "-e",
    "_start",
    "--no-relax",
    "--build-id=none",
];

const INSTALL_HINT: &str = "install them with `apt-get install clang lld` \
     (or point PROOFJOBS_GUESTS_CLANG / PROOFJOBS_GUESTS_LD_LLD at them)";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let c_dir = manifest_dir.join("c");

    println!("cargo:rerun-if-changed=build.rs");
    for src in SOURCES {
        println!("cargo:rerun-if-changed=c/{src}");
    }
    println!("cargo:rerun-if-env-changed=PROOFJOBS_GUESTS_CLANG");
    println!("cargo:rerun-if-env-changed=PROOFJOBS_GUESTS_LD_LLD");

    let clang = find_tool("PROOFJOBS_GUESTS_CLANG", &["clang", "clang-14"]);
    let lld = find_tool("PROOFJOBS_GUESTS_LD_LLD", &["ld.lld", "ld.lld-14"]);

    let runtime_obj = compile(&clang, &c_dir, &out_dir, RUNTIME);
    for guest in GUESTS {
        let obj = compile(&clang, &c_dir, &out_dir, guest);
        let elf = out_dir.join(format!("{guest}.elf"));
        run(Command::new(&lld).args(LDFLAGS).arg(&obj).arg(&runtime_obj).arg("-o").arg(&elf));
    }
}

/// `c/<name>.c` -> `OUT_DIR/<name>.o`.  clang runs inside `c/` with a relative
/// source path, so no absolute path can reach the object file.
fn compile(clang: &str, c_dir: &Path, out_dir: &Path, name: &str) -> PathBuf {
    let obj = out_dir.join(format!("{name}.o"));
    run(Command::new(clang)
        .current_dir(c_dir)
        .args(CFLAGS)
        .arg(format!("-ffile-prefix-map={}=guests/c", c_dir.display()))
        .arg("-c")
        .arg(format!("{name}.c"))
        .arg("-o")
        .arg(&obj));
    obj
}

/// First of `candidates` (or the override in `env_var`) that runs `--version`.
fn find_tool(env_var: &str, candidates: &[&str]) -> String {
    let names: Vec<String> = match env::var(env_var) {
        Ok(v) if !v.is_empty() => vec![v],
        _ => candidates.iter().map(|s| s.to_string()).collect(),
    };
    for name in &names {
        let ok =
            Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
        if ok {
            return name.clone();
        }
    }
    panic!("proofjobs-guests: none of {names:?} found on PATH; the C guests need clang and ld.lld: {INSTALL_HINT}");
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("proofjobs-guests: failed to start {cmd:?}: {e}; {INSTALL_HINT}"));
    if !status.success() {
        panic!("proofjobs-guests: {cmd:?} failed with {status}");
    }
}
