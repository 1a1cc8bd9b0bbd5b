//! The single writer thread: group commit of queued mutations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

use rocksdb::{WriteBatch, WriteOptions, DB};

use super::{Completion, StorageError};

/// One change to the store.
pub enum Mutation {
    /// Insert or overwrite `key` in column family `cf`.
    Put {
        /// Column family name.
        cf: &'static str,
        /// Key bytes.
        key: Vec<u8>,
        /// Value bytes.
        value: Vec<u8>,
    },
    /// Remove `key` from `cf`.
    Delete {
        /// Column family name.
        cf: &'static str,
        /// Key bytes.
        key: Vec<u8>,
    },
    /// Remove every key in `[from, to)` of `cf`.
    DeleteRange {
        /// Column family name.
        cf: &'static str,
        /// First key removed.
        from: Vec<u8>,
        /// First key kept.
        to: Vec<u8>,
    },
}

struct Job {
    mutations: Vec<Mutation>,
    sync: bool,
    done: Completion,
}

enum Msg {
    Job(Job),
    /// Reply once everything queued before it is written.
    Drain(std::sync::mpsc::Sender<()>),
}

/// Handle to the writer thread.
pub struct Writer {
    tx: Option<Sender<Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Upper bound of bytes merged into one WriteBatch, so one group cannot grow without limit.
const MAX_GROUP_BYTES: usize = 32 << 20;

impl Writer {
    pub(super) fn start(db: Arc<DB>, offline: Arc<AtomicBool>, syncs: Arc<AtomicU64>) -> Writer {
        let (tx, rx) = channel();
        let thread = std::thread::Builder::new()
            .name("riffle-writer".into())
            .spawn(move || run(db, rx, offline, syncs))
            .expect("spawn writer thread");
        Writer {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub(super) fn submit(&self, mutations: Vec<Mutation>, sync: bool, done: Completion) {
        let job = Job {
            mutations,
            sync,
            done,
        };
        let sent = match &self.tx {
            Some(tx) => tx.send(Msg::Job(job)).map_err(|e| e.0),
            None => Err(Msg::Job(job)),
        };
        if let Err(Msg::Job(job)) = sent {
            (job.done)(Err(Arc::new(StorageError::Offline)));
        }
    }

    pub(super) fn drain(&self) {
        let (tx, rx) = channel();
        if self
            .tx
            .as_ref()
            .is_some_and(|s| s.send(Msg::Drain(tx)).is_ok())
        {
            let _ = rx.recv();
        }
    }
}

impl Drop for Writer {
    /// Closes the queue and waits for the thread, so it no longer holds the database.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(db: Arc<DB>, rx: Receiver<Msg>, offline: Arc<AtomicBool>, syncs: Arc<AtomicU64>) {
    let mut pending: Option<Msg> = None;
    loop {
        let first = match pending.take() {
            Some(m) => m,
            None => match rx.recv() {
                Ok(m) => m,
                Err(_) => return,
            },
        };
        let mut jobs = Vec::new();
        let mut drains = Vec::new();
        let mut bytes = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Drain(reply) => drains.push(reply),
                Msg::Job(job) => {
                    bytes += job.mutations.iter().map(size_of).sum::<usize>();
                    jobs.push(job);
                }
            }
            if bytes >= MAX_GROUP_BYTES {
                break;
            }
            next = rx.try_recv().ok();
        }
        let result = write_group(&db, &jobs, bytes, &offline, &syncs);
        if let Err(e) = &result {
            tracing::error!(error = %e, "storage write failed; refusing further writes");
            offline.store(true, Ordering::Release);
        }
        for job in jobs {
            (job.done)(result.clone());
        }
        for d in drains {
            let _ = d.send(());
        }
        // Anything left in the channel is picked up by the next loop round.
        pending = rx.try_recv().ok();
    }
}

fn size_of(m: &Mutation) -> usize {
    match m {
        Mutation::Put { key, value, .. } => key.len() + value.len(),
        Mutation::Delete { key, .. } => key.len(),
        Mutation::DeleteRange { from, to, .. } => from.len() + to.len(),
    }
}

/// A write batch's header: sequence number and entry count.
const BATCH_HEADER: usize = 12;
/// Most bytes a write batch adds to each entry's key and value: a tag, a column family
/// id and two lengths, each a varint of up to 5 bytes.
const ENTRY_OVERHEAD: usize = 16;

fn write_group(
    db: &DB,
    jobs: &[Job],
    bytes: usize,
    offline: &AtomicBool,
    syncs: &AtomicU64,
) -> Result<(), Arc<StorageError>> {
    if jobs.is_empty() {
        return Ok(());
    }
    if offline.load(Ordering::Acquire) {
        return Err(Arc::new(StorageError::Offline));
    }
    // Sized up front: growing the batch entry by entry copied it over and over (a few
    // per cent of a busy broker's CPU).
    let entries: usize = jobs.iter().map(|j| j.mutations.len()).sum();
    let mut wb = WriteBatch::with_capacity_bytes(BATCH_HEADER + bytes + entries * ENTRY_OVERHEAD);
    let mut sync = false;
    for job in jobs {
        sync |= job.sync;
        for m in &job.mutations {
            let cf_name = match m {
                Mutation::Put { cf, .. }
                | Mutation::Delete { cf, .. }
                | Mutation::DeleteRange { cf, .. } => cf,
            };
            let Some(cf) = db.cf_handle(cf_name) else {
                return Err(Arc::new(StorageError::Corrupt(format!(
                    "unknown column family {cf_name}"
                ))));
            };
            match m {
                Mutation::Put { key, value, .. } => wb.put_cf(cf, key, value),
                Mutation::Delete { key, .. } => wb.delete_cf(cf, key),
                Mutation::DeleteRange { from, to, .. } => wb.delete_range_cf(cf, from, to),
            }
        }
    }
    let mut wo = WriteOptions::default();
    wo.set_sync(sync);
    db.write_opt(wb, &wo)
        .map_err(|e| Arc::new(StorageError::Rocks(e)))?;
    if sync {
        syncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
