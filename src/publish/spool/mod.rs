//! The durable on-disk bite spool: where a completed bite waits while NATS is down or does not ack.
//!
//! The product promises that no completed bite is lost (SPEC §5), so a bite that cannot be published
//! is written here, one file per bite, and published later in order, by its worker or, if that worker
//! died, by front ([`crate::publish::publisher::replay_dir`]).
//!
//! Durability: [`Spool::put`] writes a temp file (`.tmp-…`, hidden from [`Spool::pending`]) in the
//! same directory, fsyncs it, renames it to its final name and fsyncs the directory. Only when all
//! of that succeeded does the bite count as handed off. A crash before the rename leaves a temp file,
//! which the next [`Spool::open`] deletes with a warning: that bite was never reported as spooled.
//! Removal after an ack is not fsynced: a file that reappears after a power cut is published again
//! with the same `Nats-Msg-Id`, which JetStream de-duplicates; an fsync per ack would halve replay.
//!
//! Order: file names are `<start ms, 20 digits>-<sequence, 20 digits>.bite`, so they sort by the
//! bite's start (unique and increasing per conversation), and the per-spool sequence makes a name
//! unique even if one start were spooled twice.
//!
//! File format (version 1, little endian), all of it covered by a trailing CRC-32 (IEEE):
//! `"BSPL" | version u8 | key len u16 | key | user len u16 | user | client len u16 | client |
//!  start u64 | duration_ms u64 | data len u32 | data | crc32 u32`.
//! A file that is truncated, has a bad checksum or does not match its name is moved to `corrupt/`
//! with a warning, so one bad file never blocks the files behind it.
//!
//! Locking: the spool holds an exclusive `flock` on the spool directory itself for its whole life
//! (std's `File::try_lock`, stable since Rust 1.89, which is `flock(LOCK_EX|LOCK_NB)` on Linux). The
//! kernel drops it when the holder dies, so front can replay a dead worker's spool, while a live
//! worker and a replaying front (or two fronts) never publish the same file at once. `flock` rather
//! than `fcntl` record locks because those are per process (a second open in the same process would
//! silently share them) and are dropped when *any* descriptor of the file is closed. Locking the
//! directory rather than a lock file leaves nothing to clean up; after taking the lock, `open`
//! checks that the path still names the locked directory, in case a replayer removed it meanwhile
//! ([`Spool::remove_if_empty`]).

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Suffix of a spooled bite's file name.
const SUFFIX: &str = ".bite";
/// Prefix of a file being written; never listed as pending, deleted if found at open.
const TEMP_PREFIX: &str = ".tmp-";
/// Where unreadable files are moved, inside the spool directory.
pub const CORRUPT_DIR: &str = "corrupt";
/// Where bites NATS can never accept (e.g. larger than the server's max payload) are moved.
pub const REJECTED_DIR: &str = "rejected";

const MAGIC: &[u8; 4] = b"BSPL";
const VERSION: u8 = 1;

/// A completed bite as the worker hands it over: everything both NATS messages and headers need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BiteRecord {
    /// Conversation id.
    pub key: String,
    pub user: String,
    pub client: String,
    /// Unix ms of the first sample; unique and increasing within the conversation.
    pub start: u64,
    pub duration_ms: u64,
    /// The complete Ogg Opus file.
    pub data: Bytes,
}

/// One spooled bite, as listed by [`Spool::pending`]; pass it back to `load` and `remove`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SpoolEntry {
    /// The bite's start (first part of the file name), then the spool's sequence number.
    pub start: u64,
    pub seq: u64,
    /// File size in bytes, as counted against the cap.
    pub size: u64,
}

impl SpoolEntry {
    /// The entry's file name inside the spool directory.
    pub fn file_name(&self) -> String {
        file_name(self.start, self.seq)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {op}: {source}")]
    Io {
        dir: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("spool {dir} is locked by another live process (its worker or a replayer)")]
    Locked { dir: PathBuf },
    #[error("spool {dir} is not a plain directory (a symlink or another kind of file)")]
    NotADirectory { dir: PathBuf },
    #[error(
        "spool full: adding {needed} bytes would exceed the cap of {max} bytes ({used} in use)"
    )]
    Full { needed: u64, used: u64, max: u64 },
    #[error("bite cannot be spooled: {0}")]
    Invalid(&'static str),
}

/// Why a spool file could not be decoded. Internal: a corrupt file is moved aside, not reported up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
enum RecordError {
    #[error("truncated")]
    Truncated,
    #[error("not a spool record (bad magic)")]
    BadMagic,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("checksum mismatch")]
    Checksum,
    #[error("field is not UTF-8")]
    Utf8,
    #[error("trailing bytes after the record")]
    Trailing,
}

/// The durable spool of one conversation (one directory, exclusively locked while open).
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// The directory, opened without following a symlink; holds the flock and is fsynced after renames.
    dir_handle: File,
    max_bytes: u64,
    entries: BTreeMap<(u64, u64), u64>,
    bytes: u64,
    next_seq: u64,
    moved_aside: u64,
}

impl Spool {
    /// Opens (creating it 0700 if missing) and locks the spool directory, and indexes the bites already
    /// in it, e.g. left by a worker that died. Fails with [`SpoolError::Locked`] at once if another
    /// live process holds it; see [`Spool::open_wait`] to wait instead.
    pub fn open(dir: impl AsRef<Path>, max_bytes: u64) -> Result<Spool, SpoolError> {
        let dir = dir.as_ref().to_path_buf();
        // A replayer may remove the directory between our open and our lock; three tries is plenty.
        for _ in 0..3 {
            if let Some(spool) = Self::try_open_once(&dir, max_bytes)? {
                return Ok(spool);
            }
        }
        Err(io_err(
            &dir,
            "open",
            io::Error::other("directory kept being replaced"),
        ))
    }

    /// [`Spool::open`], but waits up to `timeout` for another holder (e.g. front replaying the
    /// previous worker's leftovers) to let go. Blocking: call it from a blocking context.
    pub fn open_wait(
        dir: impl AsRef<Path>,
        max_bytes: u64,
        timeout: Duration,
    ) -> Result<Spool, SpoolError> {
        let deadline = Instant::now() + timeout;
        loop {
            match Self::open(dir.as_ref(), max_bytes) {
                Err(SpoolError::Locked { .. }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn try_open_once(dir: &Path, max_bytes: u64) -> Result<Option<Spool>, SpoolError> {
        // mkdir never follows a symlink at the last component: an existing symlink is EEXIST, and
        // the O_NOFOLLOW open below refuses it. Missing parents are created 0700 as well.
        match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(dir, "create directory", e)),
        }
        let dir_handle = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| match e.raw_os_error() {
                Some(nix::libc::ELOOP) | Some(nix::libc::ENOTDIR) => SpoolError::NotADirectory {
                    dir: dir.to_path_buf(),
                },
                _ => io_err(dir, "open directory", e),
            })?;
        match dir_handle.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(dir, "lock directory", e)),
        }
        // The lock is on an inode: make sure the path still leads to it (a replayer that emptied
        // the spool may have removed the directory while we waited).
        let held = dir_handle
            .metadata()
            .map_err(|e| io_err(dir, "stat directory", e))?;
        match fs::symlink_metadata(dir) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(dir, "stat directory", e)),
        }
        if held.mode() & 0o077 != 0 {
            // Bites are private audio: tighten a directory someone created too open.
            tracing::warn!(dir = %dir.display(), mode = format!("{:o}", held.mode() & 0o777), "spool directory was accessible to others; setting 0700");
            dir_handle
                .set_permissions(Permissions::from_mode(0o700))
                .map_err(|e| io_err(dir, "chmod directory", e))?;
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            dir_handle,
            max_bytes,
            entries: BTreeMap::new(),
            bytes: 0,
            next_seq: 0,
            moved_aside: 0,
        };
        spool.scan()?;
        Ok(Some(spool))
    }

    /// Indexes what is on disk: bites to publish, leftover temp files (deleted), stray names (moved aside).
    fn scan(&mut self) -> Result<(), SpoolError> {
        let read = fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, "list directory", e))?;
        for item in read {
            let item = item.map_err(|e| io_err(&self.dir, "list directory", e))?;
            let name = item.file_name();
            let Some(name) = name.to_str() else {
                tracing::warn!(dir = %self.dir.display(), name = ?item.file_name(), "ignoring a non-UTF-8 file name in the spool");
                continue;
            };
            if name.starts_with(TEMP_PREFIX) {
                // A put that never completed (its writer died): that bite was never reported as spooled.
                tracing::warn!(dir = %self.dir.display(), name, "deleting an incomplete spool file left by a crash");
                if let Err(e) = fs::remove_file(item.path()) {
                    tracing::warn!(dir = %self.dir.display(), name, error = %e, "could not delete an incomplete spool file");
                }
                continue;
            }
            let file_type = item
                .file_type()
                .map_err(|e| io_err(&self.dir, "stat spool file", e))?;
            if file_type.is_dir() {
                continue; // corrupt/, rejected/
            }
            match parse_name(name) {
                Some((start, seq)) if file_type.is_file() => {
                    let size = item
                        .metadata()
                        .map_err(|e| io_err(&self.dir, "stat spool file", e))?
                        .len();
                    self.entries.insert((start, seq), size);
                    self.bytes += size;
                    self.next_seq = self.next_seq.max(seq.saturating_add(1));
                }
                _ if name.ends_with(SUFFIX) => {
                    self.move_aside(name, CORRUPT_DIR, "unexpected spool file name or type");
                }
                _ => {
                    tracing::warn!(dir = %self.dir.display(), name, "ignoring a foreign file in the spool directory");
                }
            }
        }
        Ok(())
    }

    /// Spools one bite durably (see the module doc). Returns [`SpoolError::Full`], having written
    /// nothing, when it would take the spool over its cap.
    pub fn put(&mut self, record: &BiteRecord) -> Result<SpoolEntry, SpoolError> {
        let encoded = encode(record)?;
        let needed = encoded.len() as u64;
        if self.bytes.saturating_add(needed) > self.max_bytes {
            return Err(SpoolError::Full {
                needed,
                used: self.bytes,
                max: self.max_bytes,
            });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let name = file_name(record.start, seq);
        let temp = self.dir.join(format!("{TEMP_PREFIX}{name}"));
        let path = self.dir.join(&name);
        if let Err(e) = write_synced(&temp, &encoded) {
            let _ = fs::remove_file(&temp);
            return Err(io_err(&self.dir, "write spool file", e));
        }
        if let Err(e) = fs::rename(&temp, &path) {
            let _ = fs::remove_file(&temp);
            return Err(io_err(&self.dir, "rename spool file", e));
        }
        if let Err(e) = self.dir_handle.sync_all() {
            // Not durable, so not handed off: take it back so the caller's "failed" is the truth.
            let _ = fs::remove_file(&path);
            return Err(io_err(&self.dir, "fsync directory", e));
        }
        self.entries.insert((record.start, seq), needed);
        self.bytes += needed;
        Ok(SpoolEntry {
            start: record.start,
            seq,
            size: needed,
        })
    }

    /// The spooled bites, oldest (smallest start) first.
    pub fn pending(&self) -> Vec<SpoolEntry> {
        self.entries
            .iter()
            .map(|(&(start, seq), &size)| SpoolEntry { start, seq, size })
            .collect()
    }

    /// The next bite to publish, if any.
    pub fn oldest(&self) -> Option<SpoolEntry> {
        self.entries
            .first_key_value()
            .map(|(&(start, seq), &size)| SpoolEntry { start, seq, size })
    }

    /// Reads one spooled bite back. `Ok(None)` means the file was unusable (truncated, bad checksum,
    /// gone) and has been moved aside with a warning: skip it and go on with the next one.
    pub fn load(&mut self, entry: &SpoolEntry) -> Result<Option<BiteRecord>, SpoolError> {
        let name = entry.file_name();
        let path = self.dir.join(&name);
        let mut buf = Vec::with_capacity(usize::try_from(entry.size).unwrap_or(0));
        let read = OpenOptions::new()
            .read(true)
            .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
            .open(&path)
            .and_then(|mut f| f.read_to_end(&mut buf));
        match read {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(dir = %self.dir.display(), name, "spooled bite vanished from disk");
                self.forget(entry);
                return Ok(None);
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => {
                self.move_aside(&name, CORRUPT_DIR, "spool entry is a symlink");
                return Ok(None);
            }
            Err(e) => return Err(io_err(&self.dir, "read spool file", e)),
        }
        match decode(&buf) {
            Ok(record) if record.start == entry.start => Ok(Some(record)),
            Ok(_) => {
                self.move_aside(
                    &name,
                    CORRUPT_DIR,
                    "record start does not match its file name",
                );
                Ok(None)
            }
            Err(e) => {
                self.move_aside(&name, CORRUPT_DIR, &e.to_string());
                Ok(None)
            }
        }
    }

    /// Deletes a bite once NATS acked it. A file already gone is not an error.
    pub fn remove(&mut self, entry: &SpoolEntry) -> Result<(), SpoolError> {
        match fs::remove_file(self.dir.join(entry.file_name())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&self.dir, "delete spool file", e)),
        }
        self.forget(entry);
        Ok(())
    }

    /// Moves a bite that NATS will never accept into `rejected/`, so it stops blocking the queue
    /// but an operator can still recover it.
    pub fn reject(&mut self, entry: &SpoolEntry, reason: &str) {
        self.move_aside(&entry.file_name(), REJECTED_DIR, reason);
    }

    /// Removes the spool directory if nothing is left in it (no bites, nothing moved aside), so a
    /// host does not collect one empty directory per conversation ever spooled. Returns whether it did.
    pub fn remove_if_empty(self) -> Result<bool, SpoolError> {
        if !self.entries.is_empty() {
            return Ok(false);
        }
        for sub in [CORRUPT_DIR, REJECTED_DIR] {
            match fs::remove_dir(self.dir.join(sub)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Not empty: keep everything for the operator.
                Err(_) => return Ok(false),
            }
        }
        // Still holding the lock: an opener that raced us notices the inode change and retries.
        match fs::remove_dir(&self.dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
            // A foreign file is in it: leave it.
            Err(e) if e.raw_os_error() == Some(nix::libc::ENOTEMPTY) => Ok(false),
            Err(e) => Err(io_err(&self.dir, "remove directory", e)),
        }
    }

    /// Bytes of spooled bites (what the cap limits).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Number of spooled bites.
    pub fn files(&self) -> u64 {
        self.entries.len() as u64
    }

    /// Files moved to `corrupt/` or `rejected/` since this spool was opened.
    pub fn moved_aside(&self) -> u64 {
        self.moved_aside
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn forget(&mut self, entry: &SpoolEntry) {
        if let Some(size) = self.entries.remove(&(entry.start, entry.seq)) {
            self.bytes -= size;
        }
    }

    /// Moves a file into a subfolder (deleting it if that fails) and drops it from the index.
    /// Never fails: a bad file must not stop the ones behind it.
    fn move_aside(&mut self, name: &str, sub: &str, reason: &str) {
        if let Some((start, seq)) = parse_name(name) {
            self.forget(&SpoolEntry {
                start,
                seq,
                size: 0,
            });
        }
        self.moved_aside += 1;
        let from = self.dir.join(name);
        let to_dir = self.dir.join(sub);
        let moved = match DirBuilder::new().mode(0o700).create(&to_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
        .and_then(|()| fs::rename(&from, to_dir.join(name)));
        match moved {
            Ok(()) => {
                tracing::warn!(dir = %self.dir.display(), name, reason, to = sub, "moved a spool file aside")
            }
            Err(e) => {
                let deleted = fs::remove_file(&from);
                tracing::warn!(dir = %self.dir.display(), name, reason, error = %e, deleted = deleted.is_ok(), "could not move a spool file aside; deleted it");
            }
        }
    }
}

fn io_err(dir: &Path, op: &'static str, source: io::Error) -> SpoolError {
    SpoolError::Io {
        dir: dir.to_path_buf(),
        op,
        source,
    }
}

fn file_name(start: u64, seq: u64) -> String {
    format!("{start:020}-{seq:020}{SUFFIX}")
}

/// Parses a canonical bite file name; anything else (other widths, signs) is not ours.
fn parse_name(name: &str) -> Option<(u64, u64)> {
    let stem = name.strip_suffix(SUFFIX)?;
    let (start, seq) = stem.split_once('-')?;
    if start.len() != 20 || seq.len() != 20 {
        return None;
    }
    if !start.bytes().chain(seq.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((start.parse().ok()?, seq.parse().ok()?))
}

fn write_synced(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_CLOEXEC)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Encodes a record in the version-1 spool format (see the module doc).
fn encode(r: &BiteRecord) -> Result<Vec<u8>, SpoolError> {
    let data_len =
        u32::try_from(r.data.len()).map_err(|_| SpoolError::Invalid("audio larger than 4 GiB"))?;
    let mut out = Vec::with_capacity(
        4 + 1 + 6 + r.key.len() + r.user.len() + r.client.len() + 16 + 4 + r.data.len() + 4,
    );
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    for s in [&r.key, &r.user, &r.client] {
        let len =
            u16::try_from(s.len()).map_err(|_| SpoolError::Invalid("id longer than 64 KiB"))?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&r.start.to_le_bytes());
    out.extend_from_slice(&r.duration_ms.to_le_bytes());
    out.extend_from_slice(&data_len.to_le_bytes());
    out.extend_from_slice(&r.data);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes a version-1 record, checking length, checksum and UTF-8; never panics on any input.
fn decode(buf: &[u8]) -> Result<BiteRecord, RecordError> {
    if buf.len() < 4 + 1 + 4 {
        return Err(RecordError::Truncated);
    }
    if &buf[..4] != MAGIC {
        return Err(RecordError::BadMagic);
    }
    if buf[4] != VERSION {
        return Err(RecordError::Version(buf[4]));
    }
    let (body, crc) = buf.split_at(buf.len() - 4);
    let mut r = Reader { buf: &body[5..] };
    // Checksum first would reject a truncated file as "checksum"; parse first for a precise warning.
    let key = r.string()?;
    let user = r.string()?;
    let client = r.string()?;
    let start = r.u64()?;
    let duration_ms = r.u64()?;
    let len = r.u32()? as usize;
    let data = r.take(len)?;
    if !r.buf.is_empty() {
        return Err(RecordError::Trailing);
    }
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(body) != stored {
        return Err(RecordError::Checksum);
    }
    Ok(BiteRecord {
        key,
        user,
        client,
        start,
        duration_ms,
        data: Bytes::copy_from_slice(data),
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        if self.buf.len() < n {
            return Err(RecordError::Truncated);
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], RecordError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, RecordError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, RecordError> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| RecordError::Utf8)
    }
}

/// CRC-32 (IEEE 802.3, as in zlib and Ogg's sibling formats), table driven. Own code rather than a
/// crate: it is a few lines, and the spool's throughput is bounded by fsync, not by this.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests;
