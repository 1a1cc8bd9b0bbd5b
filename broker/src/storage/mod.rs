//! Storage: one RocksDB per broker data dir.
//!
//! Column families:
//! - `log`: `[partition uid][base offset]` → record batch bytes, as produced (stamped);
//! - `index`: `[partition uid][segment base offset]` → segment summary (see [`SegmentMeta`]);
//! - `meta`: topics, partition state, producer state and counters.
//!
//! Every write goes through one writer thread that merges whatever is queued into a
//! single `WriteBatch` (group commit): one WAL sync covers every write that asked for it.

mod keys;
mod writer;

pub use keys::{log_key, offset_of as offset_of_key, partition_bounds, SegmentMeta};
pub use writer::Mutation;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions, DB};
use tokio::sync::oneshot;

/// Column family holding record batches.
pub const CF_LOG: &str = "log";
/// Column family holding segment summaries.
pub const CF_INDEX: &str = "index";
/// Column family holding metadata.
pub const CF_META: &str = "meta";
/// Column family holding the metadata quorum's Raft log, vote and state machine.
pub const CF_RAFT: &str = "raft";

/// Storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A previous write failed; the store refuses further writes.
    #[error("storage is offline after an earlier write failure")]
    Offline,
    /// The data directory could not be prepared.
    #[error("data dir: {0}")]
    Io(#[from] std::io::Error),
    /// Stored bytes could not be decoded.
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
}

/// A stored key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Callback run on the writer thread once a write is durable (or failed), in submission order.
pub type Completion = Box<dyn FnOnce(Result<(), Arc<StorageError>>) + Send>;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Memtable memory of the log: four buffers of a quarter each (one filling, up to
    /// three being flushed).
    pub log_memtable_bytes: usize,
    /// Write flushed and compacted SST files with O_DIRECT where the filesystem allows it.
    pub direct_io: bool,
    /// Obsolete WAL files kept for reuse.
    pub wal_recycle_files: usize,
    /// Smallest record batch kept in a blob file, apart from its key (0: none).
    pub blob_min_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            log_memtable_bytes: Store::DEFAULT_LOG_MEMTABLE_BYTES,
            direct_io: true,
            wal_recycle_files: 4,
            blob_min_bytes: 4096,
        }
    }
}

/// Handle to the broker's RocksDB.
pub struct Store {
    db: Arc<DB>,
    writer: writer::Writer,
    offline: Arc<AtomicBool>,
    /// Write groups synced to the WAL so far.
    syncs: Arc<AtomicU64>,
}

impl Store {
    /// Memtable memory of the log when the caller does not choose: 4 × 32 MiB. Against
    /// 4 × 128 MiB in `bench/bench.py`: RSS 413 → 250 MiB, produce throughput −5 to −19 %,
    /// p99.9 at 20 MB/s after the throughput runs 28.5 → 7.9 ms (fewer bytes behind each
    /// flush).
    pub const DEFAULT_LOG_MEMTABLE_BYTES: usize = 128 << 20;

    /// Opens (or creates) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Store, StorageError> {
        Store::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Store, StorageError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        // Past the log's memtable budget the WAL only holds the small column families'
        // updates alive; flushing them then bounds recovery time and disk use.
        opts.set_max_total_wal_size(options.log_memtable_bytes as u64);
        // Write SST files back in small steps so flushes do not stall WAL syncs.
        opts.set_bytes_per_sync(1 << 20);
        if options.direct_io {
            if direct_io_supported(dir) {
                // Flushes and compactions then write SST files past the page cache: their
                // writeback no longer queues behind (or in front of) WAL syncs in the
                // filesystem journal, which was the cause of produce latency spikes of
                // 10-25 ms (p99.9) at every memtable flush.
                opts.set_use_direct_io_for_flush_and_compaction(true);
            } else {
                tracing::warn!(
                    dir = %dir.display(),
                    "the data directory's filesystem refuses O_DIRECT; flushes and compactions use buffered writes"
                );
            }
        }
        // Obsolete WAL files are reused instead of deleted: unlinking a few hundred MiB
        // of WAL at once (after a flush) held every WAL sync behind the filesystem
        // journal for 100-300 ms, and a recycled file's blocks are already allocated, so
        // an fdatasync need not update its inode. Recovery stays point-in-time (RocksDB
        // tells recycled records from new ones by their log number).
        opts.set_recycle_log_file_num(options.wal_recycle_files);
        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size((options.log_memtable_bytes / 4).max(1 << 20));
        log_opts.set_max_write_buffer_number(4);
        log_opts.set_target_file_size_base(128 << 20);
        log_opts.set_level_compaction_dynamic_level_bytes(true);
        // Batches arrive compressed by producers (or not at all); compressing again wastes CPU.
        log_opts.set_compression_type(rocksdb::DBCompressionType::None);
        if options.blob_min_bytes > 0 {
            // Batches go to blob files at flush and SST files keep their keys, so
            // compactions rewrite keys only: disk writes per byte produced 3.5-3.9 ->
            // 2.5-2.8 in `bench/bench.py`, and less compaction I/O behind WAL syncs.
            log_opts.set_enable_blob_files(true);
            log_opts.set_min_blob_size(options.blob_min_bytes);
            log_opts.set_blob_compression_type(rocksdb::DBCompressionType::None);
            // Live batches in the oldest quarter of blob files move on when compactions
            // meet them, so a file that also holds deleted batches is freed.
            log_opts.set_enable_blob_gc(true);
            // Blob files are read one batch at a time; RocksDB's default advice of random
            // access turns the kernel's readahead off, which halved consume throughput
            // of small batches.
            opts.set_advise_random_on_open(false);
        }
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_INDEX, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
            ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?);
        let offline = Arc::new(AtomicBool::new(false));
        let syncs = Arc::new(AtomicU64::new(0));
        let writer = writer::Writer::start(db.clone(), offline.clone(), syncs.clone());
        Ok(Store {
            db,
            writer,
            offline,
            syncs,
        })
    }

    /// Queues mutations for the writer thread; `done` runs once they are written
    /// (and synced to the WAL when `sync`).
    pub fn submit(&self, mutations: Vec<Mutation>, sync: bool, done: Completion) {
        if self.offline.load(Ordering::Acquire) {
            done(Err(Arc::new(StorageError::Offline)));
            return;
        }
        self.writer.submit(mutations, sync, done);
    }

    /// Writes mutations and waits for them to be durable.
    pub async fn write(
        &self,
        mutations: Vec<Mutation>,
        sync: bool,
    ) -> Result<(), Arc<StorageError>> {
        self.queue(mutations, sync).await
    }

    /// Queues mutations now (so callers holding a lock keep their write order) and
    /// returns a future that resolves once they are durable.
    pub fn queue(
        &self,
        mutations: Vec<Mutation>,
        sync: bool,
    ) -> impl std::future::Future<Output = Result<(), Arc<StorageError>>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.submit(
            mutations,
            sync,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        async move {
            rx.await
                .unwrap_or_else(|_| Err(Arc::new(StorageError::Offline)))
        }
    }

    /// Write groups synced to the WAL since the store opened.
    pub fn wal_syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Whether an earlier write failure took the store offline.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Acquire)
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // The three families are created at open, so the handle always exists.
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    /// Reads one metadata value.
    pub fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_META), key)?)
    }

    /// Reads one value of a column family.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// All `(key, value)` pairs of a column family with `from <= key < to`.
    pub fn scan_range(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Vec<KeyValue>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek(from);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The last `(key, value)` of a column family with `from <= key < to`.
    pub fn last_in_range(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<KeyValue>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek_to_last();
        let out = match (it.key(), it.value()) {
            (Some(k), Some(v)) => Some((k.to_vec(), v.to_vec())),
            _ => None,
        };
        it.status()?;
        Ok(out)
    }

    /// All `(key, value)` pairs of a column family whose key starts with `prefix`.
    pub fn scan_prefix(&self, cf: &str, prefix: &[u8]) -> Result<Vec<KeyValue>, StorageError> {
        let mut out = Vec::new();
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(prefix);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Most bytes a read reserves ahead (a read without a byte limit grows past it).
    const READ_RESERVE_MAX: usize = 64 << 20;

    /// Reads whole batches of partition `uid` starting with the one holding `offset`,
    /// stopping before `end_offset` and once `max_bytes` is reached (the first batch is
    /// always returned whole, whatever its size), back to back in one buffer: what a
    /// fetch sends, copied once out of RocksDB.
    pub fn read_records(
        &self,
        uid: u64,
        offset: i64,
        end_offset: i64,
        max_bytes: usize,
    ) -> Result<Bytes, StorageError> {
        let (lower, upper) = partition_bounds(uid);
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower);
        ro.set_iterate_upper_bound(upper);
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_LOG), ro);
        it.seek_for_prev(log_key(uid, offset));
        if !it.valid() {
            it.seek(log_key(uid, offset));
        }
        let mut out = BytesMut::new();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let base = offset_of_key(k);
            if base >= end_offset {
                break;
            }
            let header = crate::protocol::batch::parse_header(v)
                .map_err(|e| StorageError::Corrupt(e.to_string()))?;
            if header.size != v.len() {
                return Err(StorageError::Corrupt(format!(
                    "batch at offset {base} is {} bytes, its header says {}",
                    v.len(),
                    header.size
                )));
            }
            if header.last_offset() >= offset {
                if !out.is_empty() && out.len() + v.len() > max_bytes {
                    break;
                }
                // Sized for one batch, then for the whole budget at the second: growing
                // by doubling would copy what was read again (a fifth of a consumer's
                // fetch CPU with 1 MiB batches).
                let want = if out.is_empty() {
                    v.len()
                } else {
                    (max_bytes - out.len()).min(Self::READ_RESERVE_MAX)
                };
                out.reserve(want.max(v.len()));
                out.extend_from_slice(v);
                if out.len() >= max_bytes {
                    break;
                }
            }
            it.next();
        }
        it.status()?;
        Ok(out.freeze())
    }

    /// [`Store::read_records`], one view per batch.
    pub fn read_batches(
        &self,
        uid: u64,
        offset: i64,
        end_offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<Bytes>, StorageError> {
        let records = self.read_records(uid, offset, end_offset, max_bytes)?;
        Ok(crate::protocol::batch::split(&records)
            .map(|(_, b)| b)
            .collect())
    }

    /// Reads the batch with exactly this base offset.
    pub fn get_batch(&self, uid: u64, base_offset: i64) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(CF_LOG), log_key(uid, base_offset))?)
    }

    /// Estimated bytes of live data per column family (for metrics): SST and blob
    /// files, and memtables.
    pub fn live_bytes(&self) -> Vec<(&'static str, u64)> {
        const PROPERTIES: [&str; 3] = [
            "rocksdb.total-sst-files-size",
            "rocksdb.total-blob-file-size",
            "rocksdb.cur-size-all-mem-tables",
        ];
        [CF_LOG, CF_INDEX, CF_META, CF_RAFT]
            .into_iter()
            .map(|cf| {
                let bytes = PROPERTIES
                    .iter()
                    .filter_map(|p| self.db.property_int_value_cf(self.cf(cf), *p).ok()?)
                    .sum();
                (cf, bytes)
            })
            .collect()
    }

    /// Compacts the log of partition `uid` below `offset`, after its batches there were
    /// deleted: the blob files holding only deleted batches are freed now, not when
    /// some later compaction happens to meet them (none may come once writes stop).
    /// Blocks until done.
    pub fn compact_log_below(&self, uid: u64, offset: i64) {
        let (lower, _) = partition_bounds(uid);
        let mut co = rocksdb::CompactOptions::default();
        co.set_bottommost_level_compaction(rocksdb::BottommostLevelCompaction::Force);
        // Automatic compactions go on meanwhile, so produce never waits behind this one.
        co.set_exclusive_manual_compaction(false);
        self.db.compact_range_cf_opt(
            self.cf(CF_LOG),
            Some(lower),
            Some(log_key(uid, offset)),
            &co,
        );
    }

    /// Syncs the WAL, flushes memtables and stops background work; used on clean
    /// shutdown, after which the process may exit without RocksDB threads still running.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.writer.drain();
        self.db.flush_wal(true)?;
        for cf in [CF_LOG, CF_INDEX, CF_META, CF_RAFT] {
            self.db.flush_cf(self.cf(cf))?;
        }
        self.db.cancel_all_background_work(true);
        Ok(())
    }
}

/// Whether `dir`'s filesystem takes an aligned O_DIRECT write (some refuse it, e.g.
/// tmpfs before Linux 6.6; RocksDB would then fail its first flush and stop all writes).
fn direct_io_supported(dir: &Path) -> bool {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    const BLOCK: usize = 4096;
    let path = dir.join(".direct-io-probe");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .and_then(|mut file| {
            let buf = vec![0u8; 2 * BLOCK];
            let start = buf.as_ptr().align_offset(BLOCK);
            file.write_all(&buf[start..start + BLOCK])
        });
    let _ = std::fs::remove_file(&path);
    written.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flushes write SST files with O_DIRECT on the filesystems at hand (ext4, and tmpfs
    /// since Linux 6.6); where the probe write fails the store keeps buffered writes.
    #[tokio::test]
    async fn flushes_write_with_direct_io_where_the_filesystem_takes_it() {
        let dirs = [
            tempfile::tempdir().expect("tempdir"),
            tempfile::tempdir_in("/dev/shm").expect("tempdir in /dev/shm"),
        ];
        assert!(!direct_io_supported(&dirs[0].path().join("missing")));
        for dir in &dirs {
            assert!(direct_io_supported(dir.path()), "{}", dir.path().display());
            let store = Store::open(dir.path()).expect("open");
            let batch = Mutation::Put {
                cf: CF_LOG,
                key: b"k".to_vec(),
                value: vec![7u8; 64 << 10],
            };
            store.write(vec![batch], true).await.expect("write");
            store.flush().expect("flush");
            assert_eq!(
                store.get(CF_LOG, b"k").expect("get").map(|v| v.len()),
                Some(64 << 10)
            );
            let ssts = std::fs::read_dir(dir.path())
                .expect("read_dir")
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
                .count();
            assert!(ssts > 0, "the flush wrote an SST file");
        }
    }
}
