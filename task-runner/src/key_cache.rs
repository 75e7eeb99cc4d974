//! Proving keys of SP1's fixed recursion programs, kept on disk between runner processes.
//!
//! Starting an SP1 worker compiles the recursion programs (compose arity 1–4, deferred, shrink;
//! under a second each) and then runs `setup` on each: ~20 s per program on two cores, ~1.1 GB of
//! preprocessed data each. That setup is a pure function of the program and the SP1 version, so we
//! keep its result on disk and hand SP1 a key that loads on first use. SP1 gets our
//! [`CachedAirProver`] through its public `SP1ProverComponents` trait (see `components.rs`); no
//! SP1 code is patched.
//!
//! Trust: an entry is used only when its sidecar's checksum, format, SP1 version and program
//! digest all match and its key file's BLAKE3 matches the sidecar. Anything else is a miss: the
//! key is computed again and the entry rewritten. Writing is best-effort: a read-only or full disk
//! costs time, never a proof.

use std::{
    collections::BTreeMap,
    fs,
    io::{BufWriter, Read, Write},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use anyhow::{bail, Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sp1_hypercube::{
    prover::{AirProver, PcsProof, PreprocessedData, Program, ProverPermit, ProverSemaphore, ProvingKey, Record},
    Machine, MachineVerifyingKey, ShardProof,
};
use sp1_primitives::{SP1Field, SP1GlobalContext};
use sp1_prover::{CompressAir, RecursionSC};
use tokio::sync::OnceCell;

/// The SP1 release whose keys this build computes; a unit test holds it equal to Cargo.lock.
pub const SP1_VERSION: &str = "6.10.0";
/// Bumped whenever the on-disk layout below changes.
const FORMAT: u32 = 1;
const SIDECAR_MAGIC: &[u8; 8] = b"PJKEYS01";

type Ctx = SP1GlobalContext;
type Key<P> = ProvingKey<Ctx, RecursionSC, P>;

/// Where one prover's keys live: `<root>/sp1-<version>/<label>/<program digest>.{vk,pk}`.
#[derive(Debug, Clone)]
pub struct KeyStore {
    dir: PathBuf,
}

impl KeyStore {
    pub fn new(root: &Path, label: &str) -> KeyStore {
        KeyStore { dir: root.join(format!("sp1-{SP1_VERSION}")).join(label) }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, digest: &blake3::Hash) -> Entry {
        let name = digest.to_hex();
        Entry { digest: *digest.as_bytes(), vk_path: self.dir.join(format!("{name}.vk")), pk_path: self.dir.join(format!("{name}.pk")) }
    }
}

/// Counters a runner logs at start and tests assert on.
#[derive(Debug, Default)]
pub struct CacheStats {
    /// Keys set up through the cache (each is then a hit, a miss or a refused entry).
    pub keys: AtomicUsize,
    /// Keys whose sidecar was accepted at setup time.
    pub hits: AtomicUsize,
    /// Keys computed because no entry existed.
    pub misses: AtomicUsize,
    /// Entries refused (corrupt, other SP1 version, other program, unreadable) and recomputed.
    pub rejected: AtomicUsize,
    /// Key files loaded from disk after their checksum matched.
    pub loaded: AtomicUsize,
    /// Entries written.
    pub written: AtomicUsize,
}

impl CacheStats {
    /// [hits, misses, rejected, loaded, written]
    pub fn snapshot(&self) -> [usize; 5] {
        [&self.hits, &self.misses, &self.rejected, &self.loaded, &self.written].map(|c| c.load(Ordering::Relaxed))
    }

    /// Whether every key set up through the cache is now on disk and sound: each was either
    /// loaded after its checksum matched, or computed and written.
    pub fn all_cached(&self) -> bool {
        let keys = self.keys.load(Ordering::Relaxed);
        keys > 0 && self.loaded.load(Ordering::Relaxed) + self.written.load(Ordering::Relaxed) == keys
    }
}

/// What the sidecar `.vk` file records about a key file.
#[derive(Clone, Serialize, Deserialize)]
struct Sidecar {
    format: u32,
    sp1_version: String,
    program: [u8; 32],
    vk: Vec<u8>,
    heights: BTreeMap<String, usize>,
    pk_len: u64,
    pk_blake3: [u8; 32],
}

#[derive(Debug, Clone)]
struct Entry {
    digest: [u8; 32],
    vk_path: PathBuf,
    pk_path: PathBuf,
}

enum Lookup {
    Missing,
    Rejected(String),
    Found(Sidecar),
}

impl Entry {
    fn lookup(&self) -> Lookup {
        let bytes = match fs::read(&self.vk_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Lookup::Missing,
            Err(e) => return Lookup::Rejected(format!("unreadable: {e}")),
        };
        match decode_sidecar(&bytes) {
            Ok(sidecar) if sidecar.format != FORMAT => Lookup::Rejected(format!("format {} (this build reads {FORMAT})", sidecar.format)),
            Ok(sidecar) if sidecar.sp1_version != SP1_VERSION => {
                Lookup::Rejected(format!("made by SP1 {} (this runner is SP1 {SP1_VERSION})", sidecar.sp1_version))
            }
            Ok(sidecar) if sidecar.program != self.digest => Lookup::Rejected("made for another program".into()),
            Ok(sidecar) => Lookup::Found(sidecar),
            Err(e) => Lookup::Rejected(format!("{e:#}")),
        }
    }

    /// Reads the key file and checks it against the sidecar before anything is deserialized.
    fn load<D: DeserializeOwned>(&self, sidecar: &Sidecar) -> Result<D> {
        let mut file = fs::File::open(&self.pk_path).context("opening the key file")?;
        let len = file.metadata()?.len();
        if len != sidecar.pk_len {
            bail!("key file is {len} bytes, the sidecar says {}", sidecar.pk_len);
        }
        let mut bytes = Vec::with_capacity(len as usize);
        file.read_to_end(&mut bytes)?;
        if blake3::Hasher::new().update_rayon(&bytes).finalize().as_bytes() != &sidecar.pk_blake3 {
            bail!("key file checksum does not match its sidecar");
        }
        Ok(bincode::deserialize(&bytes)?)
    }

    /// Key file first, sidecar last, each renamed into place: a sidecar names a complete key file.
    fn write<D: Serialize>(&self, data: &D, vk: &[u8], heights: &BTreeMap<String, usize>) -> Result<()> {
        let dir = self.pk_path.parent().expect("entry paths have a parent");
        fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        let mut writer = HashingWriter { inner: BufWriter::with_capacity(8 << 20, tmp), hasher: blake3::Hasher::new(), len: 0 };
        bincode::serialize_into(&mut writer, data)?;
        writer.inner.flush()?;
        let HashingWriter { inner, hasher, len } = writer;
        let file = inner.into_inner().map_err(|e| e.into_error())?;
        file.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
        file.persist(&self.pk_path)?;
        let sidecar = Sidecar {
            format: FORMAT,
            sp1_version: SP1_VERSION.to_string(),
            program: self.digest,
            vk: vk.to_vec(),
            heights: heights.clone(),
            pk_len: len,
            pk_blake3: *hasher.finalize().as_bytes(),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        tmp.write_all(&encode_sidecar(&sidecar)?)?;
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
        tmp.persist(&self.vk_path)?;
        Ok(())
    }

    fn remove(&self) {
        let _ = fs::remove_file(&self.vk_path);
        let _ = fs::remove_file(&self.pk_path);
    }
}

fn encode_sidecar(sidecar: &Sidecar) -> Result<Vec<u8>> {
    let body = bincode::serialize(sidecar)?;
    let mut bytes = Vec::with_capacity(body.len() + 40);
    bytes.extend_from_slice(SIDECAR_MAGIC);
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(blake3::hash(&body).as_bytes());
    Ok(bytes)
}

fn decode_sidecar(bytes: &[u8]) -> Result<Sidecar> {
    if bytes.len() < 40 || &bytes[..8] != SIDECAR_MAGIC {
        bail!("not a proofjobs key sidecar");
    }
    let (body, sum) = bytes[8..].split_at(bytes.len() - 40);
    if blake3::hash(body).as_bytes() != sum {
        bail!("sidecar checksum mismatch");
    }
    Ok(bincode::deserialize(body)?)
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The digest that names a program's entry: BLAKE3 of its bincode form.
fn program_digest<T: Serialize>(program: &T) -> Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    bincode::serialize_into(&mut hasher, program)?;
    Ok(hasher.finalize())
}

/// A recursion-program prover whose `setup` results come from, and go to, a [`KeyStore`].
pub struct CachedAirProver<P: AirProver<Ctx, RecursionSC>> {
    inner: Arc<P>,
    store: Option<KeyStore>,
    stats: Arc<CacheStats>,
    /// Every key handed out, so a runner can load the ones its stage will use before it claims work.
    handed_out: Mutex<Vec<Arc<KeySlot<P>>>>,
    /// Entries being written in the background; the runner waits for them before it exits.
    writing: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl<P: AirProver<Ctx, RecursionSC>> CachedAirProver<P>
where
    P::PreprocessedData: Serialize + DeserializeOwned,
{
    /// `store: None` passes every call through (the cache is switched off).
    pub fn new(inner: P, store: Option<KeyStore>) -> Self {
        CachedAirProver { inner: Arc::new(inner), store, stats: Arc::default(), handed_out: Mutex::default(), writing: Mutex::default() }
    }

    pub fn stats(&self) -> &Arc<CacheStats> {
        &self.stats
    }

    /// Loads every key this prover has handed out (from disk, or recomputed if its entry is bad).
    /// One at a time: loading reads, hashes and decodes 1.1 GB per key, and in parallel that only
    /// doubles the peak memory without finishing sooner.
    pub async fn load_all(&self) {
        let slots = self.handed_out.lock().expect("key list").clone();
        for slot in slots {
            slot.get().await;
        }
    }

    /// Waits for the cache entries still being written.
    pub async fn finish_writes(&self) {
        let writing = std::mem::take(&mut *self.writing.lock().expect("write list"));
        for write in writing {
            let _ = write.await;
        }
    }

    async fn setup_and_store(
        &self,
        program: Arc<Program<Ctx, RecursionSC>>,
        entry: Entry,
        permits: ProverSemaphore,
    ) -> (PreprocessedData<Key<Self>>, MachineVerifyingKey<Ctx>) {
        let (PreprocessedData { pk, permit }, vk) = self.inner.setup(program, permits).await;
        let slot = KeySlot::computed(self, entry, pk).await;
        (PreprocessedData { pk: self.hand_out(slot, vk.clone()), permit }, vk)
    }

    fn hand_out(&self, slot: Arc<KeySlot<P>>, vk: MachineVerifyingKey<Ctx>) -> Arc<Key<Self>> {
        self.handed_out.lock().expect("key list").push(slot.clone());
        Arc::new(ProvingKey { vk, preprocessed_data: CachedKey(slot) })
    }
}

/// The proving key SP1 holds: a handle that loads the real key on first use.
pub struct CachedKey<P: AirProver<Ctx, RecursionSC>>(Arc<KeySlot<P>>);

struct KeySlot<P: AirProver<Ctx, RecursionSC>> {
    key: OnceCell<Arc<Key<P>>>,
    vk: MachineVerifyingKey<Ctx>,
    heights: BTreeMap<String, usize>,
    /// How to load the key, or to compute it again when its entry turns out bad.
    source: Option<KeySource<P>>,
}

struct KeySource<P: AirProver<Ctx, RecursionSC>> {
    inner: Arc<P>,
    program: Arc<Program<Ctx, RecursionSC>>,
    entry: Entry,
    sidecar: Sidecar,
    stats: Arc<CacheStats>,
}

impl<P: AirProver<Ctx, RecursionSC>> KeySlot<P>
where
    P::PreprocessedData: Serialize + DeserializeOwned,
{
    /// A key just computed: it is in memory already; its entry is written in the background.
    async fn computed(owner: &CachedAirProver<P>, entry: Entry, pk: Arc<Key<P>>) -> Arc<Self> {
        let heights = P::preprocessed_table_heights(pk.clone()).await;
        let write = write_entry(entry, pk.clone(), heights.clone(), owner.stats.clone());
        owner.writing.lock().expect("write list").push(write);
        let vk = pk.vk.clone();
        Arc::new(KeySlot { key: OnceCell::new_with(Some(pk)), vk, heights, source: None })
    }

    async fn get(&self) -> Arc<Key<P>> {
        self.key
            .get_or_init(|| async {
                let source = self.source.as_ref().expect("a key without a source is computed in memory");
                source.load_or_recompute(&self.vk).await
            })
            .await
            .clone()
    }
}

impl<P: AirProver<Ctx, RecursionSC>> KeySource<P>
where
    P::PreprocessedData: Serialize + DeserializeOwned,
{
    async fn load_or_recompute(&self, vk: &MachineVerifyingKey<Ctx>) -> Arc<Key<P>> {
        let (entry, sidecar_vk) = (self.entry.clone(), vk.clone());
        let sidecar = self.sidecar.clone();
        let loaded = tokio::task::spawn_blocking(move || entry.load::<P::PreprocessedData>(&sidecar)).await;
        match loaded {
            Ok(Ok(preprocessed_data)) => {
                self.stats.loaded.fetch_add(1, Ordering::Relaxed);
                return Arc::new(ProvingKey { vk: sidecar_vk, preprocessed_data });
            }
            Ok(Err(e)) => {
                tracing::warn!(entry = %self.entry.pk_path.display(), "recursion key cache entry refused ({e:#}); computing the key again")
            }
            Err(e) => tracing::warn!("loading a recursion key: {e}; computing it again"),
        }
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
        self.entry.remove();
        let (PreprocessedData { pk, permit }, recomputed_vk) = self.inner.setup(self.program.clone(), ProverSemaphore::new(1)).await;
        drop(permit);
        // The verifying key went to SP1 at start-up; a recomputed key must agree with it.
        assert!(recomputed_vk == *vk, "a recursion key recomputed from its program differs from its cached verifying key");
        let write = write_entry(self.entry.clone(), pk.clone(), self.sidecar.heights.clone(), self.stats.clone());
        let _ = write.await;
        pk
    }
}

fn write_entry<P: AirProver<Ctx, RecursionSC>>(
    entry: Entry,
    pk: Arc<Key<P>>,
    heights: BTreeMap<String, usize>,
    stats: Arc<CacheStats>,
) -> tokio::task::JoinHandle<()>
where
    P::PreprocessedData: Serialize,
{
    tokio::task::spawn_blocking(move || {
        let written =
            bincode::serialize(&pk.vk).map_err(anyhow::Error::from).and_then(|vk| entry.write(&pk.preprocessed_data, &vk, &heights));
        match written {
            Ok(()) => {
                stats.written.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(entry = %entry.pk_path.display(), "could not write a recursion key to the cache: {e:#}"),
        }
    })
}

impl<P: AirProver<Ctx, RecursionSC>> AirProver<Ctx, RecursionSC> for CachedAirProver<P>
where
    P::PreprocessedData: Serialize + DeserializeOwned,
{
    type PreprocessedData = CachedKey<P>;

    fn machine(&self) -> &Machine<SP1Field, CompressAir<SP1Field>> {
        self.inner.machine()
    }

    async fn setup_from_vk(
        &self,
        program: Arc<Program<Ctx, RecursionSC>>,
        vk: Option<MachineVerifyingKey<Ctx>>,
        permits: ProverSemaphore,
    ) -> (PreprocessedData<Key<Self>>, MachineVerifyingKey<Ctx>) {
        // Only plain setups are keyed by program alone; a caller-supplied vk changes the result.
        let store = match (&self.store, &vk) {
            (Some(store), None) => store.clone(),
            _ => {
                let (PreprocessedData { pk, permit }, vk) = self.inner.setup_from_vk(program, vk, permits).await;
                let heights = P::preprocessed_table_heights(pk.clone()).await;
                let slot = Arc::new(KeySlot { key: OnceCell::new_with(Some(pk)), vk: vk.clone(), heights, source: None });
                return (PreprocessedData { pk: self.hand_out(slot, vk.clone()), permit }, vk);
            }
        };
        self.stats.keys.fetch_add(1, Ordering::Relaxed);
        let hashed = program.clone();
        let found = tokio::task::spawn_blocking(move || {
            let digest = program_digest(&*hashed)?;
            let entry = store.entry(&digest);
            let lookup = entry.lookup();
            anyhow::Ok((entry, lookup))
        })
        .await;
        let (entry, lookup) = match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => panic!("hashing a recursion program: {e:#}"),
            Err(e) => panic!("hashing a recursion program: {e}"),
        };
        match lookup {
            Lookup::Found(sidecar) => match bincode::deserialize::<MachineVerifyingKey<Ctx>>(&sidecar.vk) {
                Ok(vk) => {
                    self.stats.hits.fetch_add(1, Ordering::Relaxed);
                    let permit = permits.acquire().await.expect("prover semaphore closed");
                    let source = KeySource { inner: self.inner.clone(), program, entry, sidecar, stats: self.stats.clone() };
                    let heights = source.sidecar.heights.clone();
                    let slot = Arc::new(KeySlot { key: OnceCell::new(), vk: vk.clone(), heights, source: Some(source) });
                    return (PreprocessedData { pk: self.hand_out(slot, vk.clone()), permit }, vk);
                }
                Err(e) => {
                    tracing::warn!(entry = %entry.vk_path.display(), "recursion key cache entry refused (verifying key unreadable: {e}); computing it again");
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
            },
            Lookup::Rejected(reason) => {
                tracing::warn!(entry = %entry.vk_path.display(), "recursion key cache entry refused ({reason}); computing it again");
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            }
            Lookup::Missing => {
                self.stats.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.setup_and_store(program, entry, permits).await
    }

    async fn setup_and_prove_shard(
        &self,
        program: Arc<Program<Ctx, RecursionSC>>,
        record: Record<Ctx, RecursionSC>,
        vk: Option<MachineVerifyingKey<Ctx>>,
        permits: ProverSemaphore,
    ) -> (MachineVerifyingKey<Ctx>, ShardProof<Ctx, PcsProof<Ctx, RecursionSC>>, ProverPermit) {
        self.inner.setup_and_prove_shard(program, record, vk, permits).await
    }

    async fn prove_shard_with_pk(
        &self,
        pk: Arc<Key<Self>>,
        record: Record<Ctx, RecursionSC>,
        permits: ProverSemaphore,
    ) -> (ShardProof<Ctx, PcsProof<Ctx, RecursionSC>>, ProverPermit) {
        let key = pk.preprocessed_data.0.get().await;
        self.inner.prove_shard_with_pk(key, record, permits).await
    }

    async fn preprocessed_table_heights(pk: Arc<Key<Self>>) -> BTreeMap<String, usize> {
        pk.preprocessed_data.0.heights.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sp1_hypercube::prover::CpuShardProver;
    use sp1_prover::{
        recursion::{recursive_verifier, shrink_program_from_input, RecursionVks},
        worker::SP1WorkerConfig,
        SP1ProverComponents,
    };
    use sp1_recursion_compiler::config::InnerConfig;

    use super::*;
    use crate::components::{CachedCpuComponents, CpuRecursionProver};

    /// SP1's shrink program, built as its shrink prover builds it: the smallest real recursion key.
    fn shrink_program() -> Arc<Program<Ctx, RecursionSC>> {
        let machine = sp1_core_machine::riscv::RiscvAir::machine();
        let config = SP1WorkerConfig::new(machine).prover_config.recursion_prover_config;
        let vks = RecursionVks::new(None, config.max_compose_arity, true);
        let verifier = CachedCpuComponents::compress_verifier();
        let chips = verifier.shard_verifier().machine().chips().iter().cloned().collect::<BTreeSet<_>>();
        let input = config.reduce_shape.dummy_input(
            1,
            vks.height(),
            chips,
            verifier.max_log_row_count(),
            *verifier.fri_config(),
            verifier.log_stacking_height() as usize,
        );
        let recursive = recursive_verifier::<Ctx, _, InnerConfig>(verifier.shard_verifier());
        Arc::new(shrink_program_from_input(&recursive, true, &input))
    }

    fn shrink_prover() -> CpuRecursionProver {
        CpuShardProver::new(CachedCpuComponents::shrink_verifier().shard_verifier().clone())
    }

    fn cached(root: &Path) -> CachedAirProver<CpuRecursionProver> {
        CachedAirProver::new(shrink_prover(), Some(KeyStore::new(root, "shrink")))
    }

    /// [hits, misses, rejected, loaded, written]
    fn counts(prover: &CachedAirProver<CpuRecursionProver>) -> [usize; 5] {
        prover.stats().snapshot()
    }

    async fn key_bytes(pk: &Key<CachedAirProver<CpuRecursionProver>>) -> Vec<u8> {
        let key = pk.preprocessed_data.0.get().await;
        bincode::serialize(&key.preprocessed_data).unwrap()
    }

    fn only_file(dir: &Path, extension: &str) -> PathBuf {
        let mut files: Vec<PathBuf> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == extension)).collect();
        assert_eq!(files.len(), 1, "one .{extension} file in {}", dir.display());
        files.pop().unwrap()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cached_keys_equal_fresh_ones_and_bad_entries_are_recomputed() {
        let root = tempfile::tempdir().unwrap();
        let entry_dir = KeyStore::new(root.path(), "shrink").dir().to_path_buf();
        let program = shrink_program();

        // The reference: SP1's own prover, no cache involved.
        let (fresh, fresh_vk) = shrink_prover().setup(program.clone(), ProverSemaphore::new(1)).await;
        let fresh = unsafe { fresh.into_inner() };
        let fresh_bytes = bincode::serialize(&fresh.preprocessed_data).unwrap();
        let fresh_heights = CpuRecursionProver::preprocessed_table_heights(fresh.clone()).await;
        drop(fresh);

        // Empty cache: computed and written.
        let cold = cached(root.path());
        let (pk, vk) = cold.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(vk, fresh_vk);
        cold.finish_writes().await;
        assert_eq!(counts(&cold), [0, 1, 0, 0, 1]);
        assert_eq!(key_bytes(&pk.pk).await, fresh_bytes);
        drop(pk);

        // Filled cache: the vk and table heights come from the sidecar; the key loads on first use,
        // byte for byte the key SP1 computes.
        let warm = cached(root.path());
        let (pk, vk) = warm.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(vk, fresh_vk);
        assert_eq!(counts(&warm), [1, 0, 0, 0, 0]);
        assert_eq!(CachedAirProver::<CpuRecursionProver>::preprocessed_table_heights(pk.pk.clone()).await, fresh_heights);
        assert_eq!(key_bytes(&pk.pk).await, fresh_bytes);
        assert_eq!(counts(&warm), [1, 0, 0, 1, 0]);
        drop(pk);

        // One flipped bit in the key file: refused at load, recomputed, entry rewritten.
        let pk_path = only_file(&entry_dir, "pk");
        let mut bytes = fs::read(&pk_path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        fs::write(&pk_path, &bytes).unwrap();
        drop(bytes);
        let corrupt = cached(root.path());
        let (pk, vk) = corrupt.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(vk, fresh_vk);
        assert_eq!(key_bytes(&pk.pk).await, fresh_bytes);
        assert_eq!(counts(&corrupt), [1, 0, 1, 0, 1]);
        drop(pk);
        let repaired = cached(root.path());
        let (pk, _) = repaired.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(key_bytes(&pk.pk).await, fresh_bytes);
        assert_eq!(counts(&repaired), [1, 0, 0, 1, 0]);
        drop(pk);

        // A damaged sidecar: refused at setup, recomputed.
        let vk_path = only_file(&entry_dir, "vk");
        let mut sidecar = fs::read(&vk_path).unwrap();
        sidecar[12] ^= 0x01;
        fs::write(&vk_path, &sidecar).unwrap();
        let damaged = cached(root.path());
        let (pk, vk) = damaged.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(vk, fresh_vk);
        damaged.finish_writes().await;
        assert_eq!(counts(&damaged), [0, 0, 1, 0, 1]);
        drop(pk);

        // An entry made by another SP1 release, intact and otherwise identical, is not used.
        let mut other = decode_sidecar(&fs::read(&vk_path).unwrap()).unwrap();
        other.sp1_version = "6.9.0".into();
        fs::write(&vk_path, encode_sidecar(&other).unwrap()).unwrap();
        let upgraded = cached(root.path());
        let (pk, vk) = upgraded.setup(program.clone(), ProverSemaphore::new(1)).await;
        assert_eq!(vk, fresh_vk);
        upgraded.finish_writes().await;
        assert_eq!(counts(&upgraded), [0, 0, 1, 0, 1]);
        assert_eq!(key_bytes(&pk.pk).await, fresh_bytes);
        assert_eq!(decode_sidecar(&fs::read(&vk_path).unwrap()).unwrap().sp1_version, SP1_VERSION);
    }

    #[test]
    fn entries_live_under_their_sp1_version() {
        let store = KeyStore::new(Path::new("/cache"), "compress");
        assert_eq!(store.dir(), Path::new(&format!("/cache/sp1-{SP1_VERSION}/compress")));
    }

    #[test]
    fn the_version_tag_is_the_sp1_release_we_build_against() {
        // Compiled in, so the check does not depend on where the test binary was built.
        let lock = include_str!("../../Cargo.lock");
        let locked = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"sp1-prover\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"').to_string())
            .expect("sp1-prover in Cargo.lock");
        assert_eq!(locked, SP1_VERSION);
    }

    #[test]
    fn sidecars_reject_truncation_and_foreign_files() {
        let sidecar = Sidecar {
            format: FORMAT,
            sp1_version: SP1_VERSION.into(),
            program: [7; 32],
            vk: vec![1, 2, 3],
            heights: BTreeMap::new(),
            pk_len: 3,
            pk_blake3: [0; 32],
        };
        let bytes = encode_sidecar(&sidecar).unwrap();
        assert!(decode_sidecar(&bytes).is_ok());
        assert!(decode_sidecar(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_sidecar(b"not a sidecar at all, just some bytes here").is_err());
    }
}
