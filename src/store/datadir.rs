//! The data directory: its manifest (format, shard count, routing seed), its lock, and
//! `owner_shard`, the single rule that says which shard stores an author's events.

use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::segment;
use super::shard::{io_error, StoreError};
use super::ShardId;
use crate::limits::SHARD_COUNT_MAX;

const MANIFEST_FILE: &str = "ringrelay.manifest";
const LOCK_FILE: &str = "LOCK";
const MANIFEST_FORMAT: u32 = 1;
/// How long a held lock is tried again before the directory counts as in use.
const LOCK_WAIT: Duration = Duration::from_millis(500);

/// How a process holds the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Writers (serve, import, compact): alone.
    Exclusive,
    /// Readers (verify, export): alongside other readers, never beside a writer.
    Shared,
}

pub struct DataDir {
    pub path: PathBuf,
    pub shard_count: u16,
    router: Router,
    lock: Option<fs::File>,
}

/// The data directory's lock, let go of when dropped (or by [`HeldLock::release`]), as soon
/// as the holder's shards are closed: a relay handing over lets the next one in before it
/// has finished closing its connections.
#[derive(Clone, Default)]
pub struct HeldLock(std::sync::Arc<std::sync::Mutex<Option<fs::File>>>);

impl HeldLock {
    pub fn release(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
    }
}

/// `owner_shard` alone, cheap to copy to every core.
#[derive(Clone, Debug)]
pub struct Router {
    shard_count: u16,
    seed: [u8; 32],
}

impl Router {
    /// The shard that stores every event of `pubkey`. Keyed by the directory's secret seed, so
    /// nobody can pick keys that pile onto one shard.
    pub fn owner_shard(&self, pubkey: &[u8; 32]) -> ShardId {
        if self.shard_count == 1 {
            return ShardId(0);
        }
        let hash = blake3::keyed_hash(&self.seed, pubkey);
        let value = u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"));
        ShardId((value % u64::from(self.shard_count)) as u16)
    }

    pub fn shard_count(&self) -> u16 {
        self.shard_count
    }
}

impl DataDir {
    /// Open a data directory, creating it with `shard_count` shards if it has no manifest.
    pub fn open_or_create(path: &Path, shard_count: u16) -> Result<DataDir, StoreError> {
        DataDir::open_or_create_waiting(path, shard_count, LOCK_WAIT, &AtomicBool::new(false))
    }

    /// [`DataDir::open_or_create`], waiting up to `wait` for another process's lock (a relay
    /// that is handing over to this one), or until `cancel` is set.
    pub fn open_or_create_waiting(
        path: &Path,
        shard_count: u16,
        wait: Duration,
        cancel: &AtomicBool,
    ) -> Result<DataDir, StoreError> {
        assert!(shard_count >= 1 && usize::from(shard_count) <= SHARD_COUNT_MAX);
        fs::create_dir_all(path).map_err(io_error(path))?;
        let lock = lock(path, Access::Exclusive, wait, cancel)?;
        let manifest = path.join(MANIFEST_FILE);
        if !manifest.exists() {
            let mut seed = [0u8; 32];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut seed))
                .map_err(io_error(Path::new("/dev/urandom")))?;
            let text = format!("format {MANIFEST_FORMAT}\nshards {shard_count}\nseed {}\n", crate::hex::encode(&seed));
            segment::write_durably(&manifest, text.as_bytes()).map_err(io_error(&manifest))?;
        }
        DataDir::read(path, lock)
    }

    /// Open an existing data directory.
    pub fn open(path: &Path, access: Access) -> Result<DataDir, StoreError> {
        if !path.join(MANIFEST_FILE).exists() {
            return Err(StoreError::DataDir(format!(
                "{} is not a ringrelay data directory (no {MANIFEST_FILE})",
                path.display()
            )));
        }
        let lock = lock(path, access, LOCK_WAIT, &AtomicBool::new(false))?;
        DataDir::read(path, lock)
    }

    fn read(path: &Path, lock: fs::File) -> Result<DataDir, StoreError> {
        let manifest = path.join(MANIFEST_FILE);
        let text = fs::read_to_string(&manifest).map_err(io_error(&manifest))?;
        let (shard_count, seed) =
            parse_manifest(&text).map_err(|what| StoreError::DataDir(format!("{}: {what}", manifest.display())))?;
        Ok(DataDir { path: path.to_owned(), shard_count, router: Router { shard_count, seed }, lock: Some(lock) })
    }

    /// The shard directories of the data directory at `path`, read from its manifest
    /// without taking the lock (a relay preparing to take over from the one holding it);
    /// `None` when it has no manifest that reads.
    pub fn peek_shard_dirs(path: &Path) -> Option<Vec<(ShardId, PathBuf)>> {
        let text = fs::read_to_string(path.join(MANIFEST_FILE)).ok()?;
        let (shard_count, _) = parse_manifest(&text).ok()?;
        Some(ShardId::all(shard_count).map(|shard| (shard, path.join(format!("shard-{shard:03}")))).collect())
    }

    /// The lock, to be let go of by whoever closes the store last (the directory stays
    /// usable for paths; nothing must write to it once the lock is released).
    pub fn take_lock(&mut self) -> HeldLock {
        HeldLock(std::sync::Arc::new(std::sync::Mutex::new(self.lock.take())))
    }

    pub fn shard_dir(&self, shard: ShardId) -> PathBuf {
        self.path.join(format!("shard-{shard:03}"))
    }

    pub fn owner_shard(&self, pubkey: &[u8; 32]) -> ShardId {
        self.router.owner_shard(pubkey)
    }

    pub fn router(&self) -> Router {
        self.router.clone()
    }
}

/// The shard count and routing seed a manifest's text holds, or what is wrong with it.
pub fn parse_manifest(text: &str) -> Result<(u16, [u8; 32]), String> {
    let mut format = None;
    let mut shard_count = None;
    let mut seed = None;
    for line in text.lines() {
        match line.split_once(' ') {
            Some(("format", value)) => format = value.parse::<u32>().ok(),
            Some(("shards", value)) => shard_count = value.parse::<u16>().ok(),
            Some(("seed", value)) => seed = crate::hex::decode_lower::<32>(value.as_bytes()),
            _ => {}
        }
    }
    match format {
        Some(MANIFEST_FORMAT) => {}
        Some(other) => return Err(format!("unsupported manifest format {other}")),
        None => return Err("missing `format`".to_owned()),
    }
    let shard_count = shard_count
        .filter(|&n| n >= 1 && usize::from(n) <= SHARD_COUNT_MAX)
        .ok_or_else(|| "missing or invalid `shards`".to_owned())?;
    let seed = seed.ok_or_else(|| "missing or invalid `seed`".to_owned())?;
    Ok((shard_count, seed))
}

/// The process id the lock holder wrote into the lock file, while the lock is held. A pid
/// left by a relay that crashed (its lock went with it) is never returned: that process id
/// may belong to another program by now.
pub fn lock_holder(path: &Path) -> Option<i32> {
    let lock_path = path.join(LOCK_FILE);
    let file = fs::File::open(&lock_path).ok()?;
    // SAFETY: flock on a descriptor we own; a lock taken here is released at once.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return None;
    }
    let pid: i32 = fs::read_to_string(&lock_path).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (pid > 0 && unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

fn lock(path: &Path, access: Access, wait: Duration, cancel: &AtomicBool) -> Result<fs::File, StoreError> {
    let lock_path = path.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(io_error(&lock_path))?;
    let operation = match access {
        Access::Exclusive => libc::LOCK_EX,
        Access::Shared => libc::LOCK_SH,
    } | libc::LOCK_NB;
    // A lock can outlive its holder for a moment: a process that forks shares the lock with
    // the child until the child execs (or exits). So a held lock is tried again for a
    // short while before it counts as another process's.
    let deadline = std::time::Instant::now() + wait.max(LOCK_WAIT);
    // SAFETY: flock on a descriptor we own.
    while unsafe { libc::flock(file.as_raw_fd(), operation) } != 0 {
        if std::time::Instant::now() < deadline && !cancel.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        return Err(StoreError::DataDir(format!(
            "{} is in use by another ringrelay process (could not lock {})",
            path.display(),
            lock_path.display()
        )));
    }
    if access == Access::Exclusive {
        let _ = file.set_len(0).and_then(|()| writeln!(file, "{}", std::process::id()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid in the lock file names the holder only while the lock is held: a crashed
    /// relay's pid may belong to another program by now, which SIGUSR1 would kill.
    #[test]
    fn the_lock_holder_is_named_only_while_the_lock_is_held() {
        let dir = std::env::temp_dir().join(format!("ringrelay-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let data = DataDir::open_or_create(&dir, 1).unwrap();
        assert_eq!(lock_holder(&dir), Some(std::process::id() as i32));
        drop(data);
        assert!(fs::read_to_string(dir.join(LOCK_FILE)).unwrap().contains(&std::process::id().to_string()));
        assert_eq!(lock_holder(&dir), None, "the pid is still in the file, but nobody holds the lock");
        fs::remove_dir_all(&dir).unwrap();
    }
}
