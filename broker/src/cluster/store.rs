//! The metadata quorum's persistent state in the broker's RocksDB (`raft` column
//! family): the Raft log, the vote, and the state machine (the metadata image).
//!
//! Log entries and the vote are WAL-synced before openraft is told they are written.
//! The applied state is written without a sync: after a crash, openraft re-applies the
//! committed entries after it, and applying is idempotent locally.

// openraft's storage traits fix the (large) error type.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::future::Future;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::pin::Pin;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::image::{CommandReply, Image};
use super::TypeConfig;
use crate::storage::{Mutation, Store, CF_RAFT};

type NodeId = u64;
type Node = openraft::BasicNode;
type SError = StorageError<NodeId>;

fn log_key(index: u64) -> Vec<u8> {
    let mut k = b"l/".to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

const VOTE_KEY: &[u8] = b"m/vote";
const COMMITTED_KEY: &[u8] = b"m/committed";
const PURGED_KEY: &[u8] = b"m/purged";
const APPLIED_KEY: &[u8] = b"m/applied";
const SNAPSHOT_KEY: &[u8] = b"m/snapshot";

fn read_json<T: for<'de> Deserialize<'de>>(
    store: &Store,
    key: &[u8],
) -> Result<Option<T>, StorageIOError<NodeId>> {
    let Some(v) = store
        .get(CF_RAFT, key)
        .map_err(|e| StorageIOError::read(&e))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&v)
        .map(Some)
        .map_err(|e| StorageIOError::read(&e))
}

fn put_json<T: Serialize>(key: &[u8], v: &T) -> Result<Mutation, StorageIOError<NodeId>> {
    Ok(Mutation::Put {
        cf: CF_RAFT,
        key: key.to_vec(),
        value: serde_json::to_vec(v).map_err(|e| StorageIOError::write(&e))?,
    })
}

async fn write(store: &Store, m: Vec<Mutation>, sync: bool) -> Result<(), SError> {
    store
        .write(m, sync)
        .await
        .map_err(|e| StorageIOError::write(&*e).into())
}

/// The Raft log and vote.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
}

impl LogStore {
    /// The log kept in `store`.
    pub fn new(store: Arc<Store>) -> LogStore {
        LogStore { store }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SError> {
        let start = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&x) => log_key(x.saturating_add(1)),
            Bound::Excluded(&x) => log_key(x),
            Bound::Unbounded => b"l0".to_vec(),
        };
        self.store
            .scan_range(CF_RAFT, &log_key(start), &end)
            .map_err(|e| StorageIOError::read_logs(&e))?
            .into_iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v).map_err(|e| StorageIOError::read_logs(&e).into())
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SError> {
        let purged: Option<LogId<NodeId>> = read_json(&self.store, PURGED_KEY)?;
        let last = self
            .store
            .last_in_range(CF_RAFT, b"l/", b"l0")
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|(_, v)| serde_json::from_slice::<Entry<TypeConfig>>(&v))
            .transpose()
            .map_err(|e| StorageIOError::read_logs(&e))?
            .map(|e| e.log_id);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), SError> {
        write(&self.store, vec![put_json(VOTE_KEY, vote)?], true).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, SError> {
        Ok(read_json(&self.store, VOTE_KEY)?)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), SError> {
        write(
            &self.store,
            vec![put_json(COMMITTED_KEY, &committed)?],
            false,
        )
        .await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, SError> {
        Ok(read_json::<Option<LogId<NodeId>>>(&self.store, COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut m = Vec::new();
        for e in entries {
            m.push(put_json(&log_key(e.log_id.index), &e)?);
        }
        self.store.submit(
            m,
            true,
            Box::new(move |r| {
                callback.log_io_completed(r.map_err(|e| std::io::Error::other(e.to_string())))
            }),
        );
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let m = vec![Mutation::DeleteRange {
            cf: CF_RAFT,
            from: log_key(log_id.index),
            to: b"l0".to_vec(),
        }];
        write(&self.store, m, true).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), SError> {
        let m = vec![
            put_json(PURGED_KEY, &log_id)?,
            Mutation::DeleteRange {
                cf: CF_RAFT,
                from: log_key(0),
                to: log_key(log_id.index.saturating_add(1)),
            },
        ];
        write(&self.store, m, true).await
    }
}

/// What the state machine persists: the image and how far the log was applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    /// Last applied log id.
    pub last_applied: Option<LogId<NodeId>>,
    /// Last applied membership.
    pub membership: StoredMembership<NodeId, Node>,
    /// The metadata image.
    pub image: Image,
}

/// Brings the broker's local state in line with a newly applied image.
pub type Applier =
    Arc<dyn Fn(Arc<Image>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// The state machine: the metadata image.
pub struct StateMachine {
    store: Arc<Store>,
    state: Applied,
    applier: Applier,
    published: watch::Sender<Arc<Image>>,
}

/// How long applying metadata locally may take before it is logged as slow.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_secs(5);

impl StateMachine {
    /// Loads the applied state; `applier` runs after every change, then `published` is updated.
    pub fn load(
        store: Arc<Store>,
        applier: Applier,
        published: watch::Sender<Arc<Image>>,
    ) -> Result<StateMachine, SError> {
        let state: Applied = read_json(&store, APPLIED_KEY)?.unwrap_or_default();
        published.send_replace(Arc::new(state.image.clone()));
        Ok(StateMachine {
            store,
            state,
            applier,
            published,
        })
    }

    /// The image as last applied (for bootstrapping before openraft starts).
    pub fn image(&self) -> &Image {
        &self.state.image
    }

    async fn publish(&mut self) -> Result<(), SError> {
        write(
            &self.store,
            vec![put_json(APPLIED_KEY, &self.state)?],
            false,
        )
        .await?;
        let image = Arc::new(self.state.image.clone());
        // Nothing commits while local state is being brought in line: say so if it takes
        // long, as a stuck applier stops the whole metadata quorum on this node.
        let apply = (self.applier)(image.clone());
        tokio::pin!(apply);
        let started = std::time::Instant::now();
        if tokio::time::timeout(SLOW_APPLY, &mut apply).await.is_err() {
            tracing::warn!(index = ?self.state.last_applied.map(|l| l.index),
                "applying metadata locally is taking over {SLOW_APPLY:?}");
            apply.await;
            tracing::warn!(took = ?started.elapsed(), "applied metadata locally");
        }
        self.published.send_replace(image);
        Ok(())
    }
}

/// Builds snapshots from a copy of the applied state.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    state: Applied,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Node>,
    data: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SError> {
        let data = serde_json::to_vec(&self.state)
            .map_err(|e| StorageIOError::write_snapshot(None, &e))?;
        let meta = SnapshotMeta {
            last_log_id: self.state.last_applied,
            last_membership: self.state.membership.clone(),
            snapshot_id: format!(
                "{}-{}",
                self.state.last_applied.map(|l| l.index).unwrap_or(0),
                crate::log::now_ms()
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        write(&self.store, vec![put_json(SNAPSHOT_KEY, &stored)?], false).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), SError> {
        Ok((self.state.last_applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandReply>, SError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for e in entries {
            self.state.last_applied = Some(e.log_id);
            replies.push(match e.payload {
                EntryPayload::Blank => CommandReply::Done,
                EntryPayload::Normal(cmd) => {
                    let r = self.state.image.apply(&cmd);
                    if let CommandReply::Rejected(why) = &r {
                        tracing::debug!(index = e.log_id.index, why, "metadata command rejected");
                    }
                    r
                }
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(e.log_id), m);
                    CommandReply::Done
                }
            });
        }
        self.publish().await?;
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            state: self.state.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SError> {
        let data = snapshot.into_inner();
        let state: Applied = serde_json::from_slice(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        self.state = state;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        write(&self.store, vec![put_json(SNAPSHOT_KEY, &stored)?], false).await?;
        self.publish().await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SError> {
        let stored: Option<StoredSnapshot> = read_json(&self.store, SNAPSHOT_KEY)?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}
