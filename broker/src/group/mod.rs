//! Consumer group coordinator: classic group membership and committed offsets.

pub mod offsets;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

use crate::log::now_ms;
use crate::storage::{Mutation, StorageError, Store, CF_META};
pub use offsets::Committed;
use state::Group;
pub use state::{GroupState, GroupTimings, JoinParams, JoinReply, Outcome, SyncReply};

/// A group and its committed offsets.
struct Entry {
    group: Group,
    offsets: BTreeMap<(String, i32), Committed>,
}

impl Entry {
    fn new(id: &str) -> Entry {
        Entry {
            group: Group::new(id),
            offsets: BTreeMap::new(),
        }
    }
}

/// Snapshot of a group for DescribeGroups.
pub struct GroupDescription {
    /// State name.
    pub state: &'static str,
    /// Protocol type.
    pub protocol_type: String,
    /// Chosen protocol.
    pub protocol: String,
    /// (member id, instance id, client id, client host, metadata, assignment).
    pub members: Vec<(
        String,
        Option<String>,
        String,
        String,
        bytes::Bytes,
        bytes::Bytes,
    )>,
}

/// A group's state and committed offsets, for metrics.
pub struct GroupSnapshot {
    /// Group id.
    pub id: String,
    /// State name.
    pub state: &'static str,
    /// Rebalances started since broker start.
    pub rebalances: u64,
    /// (topic, partition, committed offset).
    pub committed: Vec<(String, i32, i64)>,
}

/// Longest interval between checks of committed offsets for expiry.
const EXPIRY_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Largest commit metadata accepted (Kafka's `offset.metadata.max.bytes`).
pub const MAX_METADATA_BYTES: usize = 4096;

/// The coordinator of every group on this broker.
pub struct Coordinator {
    entries: Mutex<HashMap<String, Entry>>,
    store: Arc<Store>,
    timings: GroupTimings,
    offsets_retention_ms: i64,
    /// When committed offsets were last checked for expiry.
    last_expiry: Mutex<Instant>,
}

impl Coordinator {
    /// Loads committed offsets from storage.
    pub fn load(
        store: Arc<Store>,
        timings: GroupTimings,
        offsets_retention_ms: i64,
    ) -> Result<Coordinator, StorageError> {
        let mut entries: HashMap<String, Entry> = HashMap::new();
        for (k, v) in store.scan_prefix(CF_META, b"o/")? {
            let (Some((group, topic, partition)), Some(c)) =
                (offsets::parse_key(&k), Committed::decode(&v))
            else {
                return Err(StorageError::Corrupt("committed offset".into()));
            };
            entries
                .entry(group.clone())
                .or_insert_with(|| Entry::new(&group))
                .offsets
                .insert((topic, partition), c);
        }
        Ok(Coordinator {
            entries: Mutex::new(entries),
            store,
            timings,
            offsets_retention_ms,
            last_expiry: Mutex::new(Instant::now()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Handles JoinGroup.
    pub fn join(&self, group_id: &str, params: JoinParams) -> Outcome<JoinReply> {
        let mut entries = self.lock();
        let entry = entries
            .entry(group_id.to_string())
            .or_insert_with(|| Entry::new(group_id));
        entry.group.join(params, Instant::now(), &self.timings)
    }

    /// Handles SyncGroup.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, bytes::Bytes)>,
    ) -> Outcome<SyncReply> {
        let mut entries = self.lock();
        match entries.get_mut(group_id) {
            Some(e) => e.group.sync(
                member_id,
                instance_id,
                generation,
                assignments,
                Instant::now(),
            ),
            None => Outcome::Now(SyncReply {
                error: ResponseError::UnknownMemberId.code(),
                protocol_type: None,
                protocol_name: None,
                assignment: bytes::Bytes::new(),
            }),
        }
    }

    /// Handles Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        match self.lock().get_mut(group_id) {
            Some(e) => e
                .group
                .heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// Handles LeaveGroup for each (member id, instance id).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let mut entries = self.lock();
        let Some(e) = entries.get_mut(group_id) else {
            return vec![ResponseError::UnknownMemberId.code(); members.len()];
        };
        members
            .iter()
            .map(|(m, i)| {
                e.group
                    .leave(m, i.as_deref(), Instant::now(), &self.timings)
            })
            .collect()
    }

    /// Validates and stores commits; returns the group-level error, if any.
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), i16> {
        let rx = {
            let mut entries = self.lock();
            let entry = entries
                .entry(group_id.to_string())
                .or_insert_with(|| Entry::new(group_id));
            entry
                .group
                .check_commit(member_id, instance_id, generation)
                .map_err(|e| e.code())?;
            if commits.is_empty() {
                return Ok(());
            }
            let mutations = commits
                .iter()
                .map(|(t, p, c)| Mutation::Put {
                    cf: CF_META,
                    key: offsets::key(group_id, t, *p),
                    value: c.encode(),
                })
                .collect();
            for (t, p, c) in commits {
                entry.offsets.insert((t, p), c);
            }
            // Queued under the lock so storage sees commits in the order memory did.
            let (tx, rx) = oneshot::channel();
            self.store.submit(
                mutations,
                true,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx
        };
        match rx.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(ResponseError::KafkaStorageError.code()),
        }
    }

    /// Committed offsets of a group: the given partitions, or all of them.
    pub fn committed(
        &self,
        group_id: &str,
        only: Option<&[(String, Vec<i32>)]>,
    ) -> Vec<(String, i32, Option<Committed>)> {
        let entries = self.lock();
        let offsets = entries.get(group_id).map(|e| &e.offsets);
        match only {
            Some(wanted) => wanted
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .map(|(t, p)| {
                    let c = offsets.and_then(|o| o.get(&(t.clone(), p)).cloned());
                    (t, p, c)
                })
                .collect(),
            None => offsets
                .map(|o| {
                    o.iter()
                        .map(|((t, p), c)| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Describes a group (Dead if unknown).
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let entries = self.lock();
        let Some(e) = entries.get(group_id) else {
            return GroupDescription {
                state: GroupState::Dead.name(),
                protocol_type: String::new(),
                protocol: String::new(),
                members: vec![],
            };
        };
        let g = &e.group;
        let proto = g.protocol_name.clone().unwrap_or_default();
        let members = g
            .members
            .iter()
            .map(|(id, m)| {
                let meta = m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == proto)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                (
                    id.clone(),
                    m.instance_id.clone(),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    meta,
                    m.assignment.clone(),
                )
            })
            .collect();
        GroupDescription {
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if g.state == GroupState::Stable {
                proto
            } else {
                String::new()
            },
            members,
        }
    }

    /// Every group: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<_> = self
            .lock()
            .values()
            .map(|e| {
                (
                    e.group.id.clone(),
                    e.group.protocol_type.clone().unwrap_or_default(),
                    e.group.state.name(),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Deletes an empty group and its offsets.
    pub async fn delete_group(&self, group_id: &str) -> i16 {
        let rx = {
            let mut entries = self.lock();
            match entries.get(group_id) {
                None => return ResponseError::GroupIdNotFound.code(),
                Some(e) if !e.group.members.is_empty() => {
                    return ResponseError::NonEmptyGroup.code()
                }
                Some(_) => {}
            }
            entries.remove(group_id);
            let prefix = offsets::group_prefix(group_id);
            let mut end = prefix.clone();
            end.push(0xff);
            let (tx, rx) = oneshot::channel();
            self.store.submit(
                vec![Mutation::DeleteRange {
                    cf: CF_META,
                    from: prefix,
                    to: end,
                }],
                true,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            rx
        };
        match rx.await {
            Ok(Ok(())) => 0,
            _ => ResponseError::KafkaStorageError.code(),
        }
    }

    /// Deletes committed offsets; `subscribed` says whether an active member still consumes
    /// a topic (those are refused with GROUP_SUBSCRIBED_TO_TOPIC).
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed: impl Fn(&str, &[bytes::Bytes]) -> bool,
    ) -> Result<Vec<i16>, i16> {
        let (codes, rx) = {
            let mut entries = self.lock();
            let Some(e) = entries.get_mut(group_id) else {
                return Err(ResponseError::GroupIdNotFound.code());
            };
            let metas: Vec<bytes::Bytes> = e
                .group
                .members
                .values()
                .flat_map(|m| m.protocols.iter().map(|(_, b)| b.clone()))
                .collect();
            let consumer =
                e.group.protocol_type.as_deref() == Some("consumer") && !e.group.members.is_empty();
            let mut mutations = Vec::new();
            let codes = partitions
                .iter()
                .map(|(t, p)| {
                    if consumer && subscribed(t, &metas) {
                        return ResponseError::GroupSubscribedToTopic.code();
                    }
                    if e.offsets.remove(&(t.clone(), *p)).is_some() {
                        mutations.push(Mutation::Delete {
                            cf: CF_META,
                            key: offsets::key(group_id, t, *p),
                        });
                    }
                    0
                })
                .collect();
            let (tx, rx) = oneshot::channel();
            self.store.submit(
                mutations,
                true,
                Box::new(move |r| {
                    let _ = tx.send(r);
                }),
            );
            (codes, rx)
        };
        match rx.await {
            Ok(Ok(())) => Ok(codes),
            _ => Err(ResponseError::KafkaStorageError.code()),
        }
    }

    /// Drops every group's committed offsets for a deleted topic.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), i16> {
        let mutations: Vec<Mutation> = {
            let mut entries = self.lock();
            let mut m = Vec::new();
            for e in entries.values_mut() {
                let group_id = e.group.id.clone();
                e.offsets.retain(|(t, p), _| {
                    if t == topic {
                        m.push(Mutation::Delete {
                            cf: CF_META,
                            key: offsets::key(&group_id, t, *p),
                        });
                    }
                    t != topic
                });
            }
            m
        };
        if mutations.is_empty() {
            return Ok(());
        }
        self.store
            .write(mutations, true)
            .await
            .map_err(|_| ResponseError::KafkaStorageError.code())
    }

    /// Runs timeouts and expires offsets of long-empty groups.
    pub async fn tick(&self) {
        let now = Instant::now();
        let now_wall = now_ms();
        // Group timers need 100 ms resolution; offset expiry (days) only a coarse one.
        let expire = {
            let mut last = self.last_expiry.lock().unwrap_or_else(|p| p.into_inner());
            // At least twice per retention period, at most once a minute.
            let every = Duration::from_millis((self.offsets_retention_ms / 2).max(0) as u64)
                .clamp(Duration::from_millis(100), EXPIRY_CHECK_EVERY);
            let due = now.duration_since(*last) >= every;
            if due {
                *last = now;
            }
            due && self.offsets_retention_ms >= 0
        };
        let mut mutations = Vec::new();
        {
            let mut entries = self.lock();
            for e in entries.values_mut() {
                e.group.tick(now, &self.timings);
                if expire && e.group.state == GroupState::Empty {
                    let group_id = e.group.id.clone();
                    e.offsets.retain(|(t, p), c| {
                        let keep = now_wall - c.commit_ms <= self.offsets_retention_ms;
                        if !keep {
                            mutations.push(Mutation::Delete {
                                cf: CF_META,
                                key: offsets::key(&group_id, t, *p),
                            });
                        }
                        keep
                    });
                }
            }
            entries.retain(|_, e| {
                !(e.group.state == GroupState::Empty
                    && e.offsets.is_empty()
                    && e.group.members.is_empty())
            });
        }
        if !mutations.is_empty() {
            if let Err(e) = self.store.write(mutations, false).await {
                tracing::error!(error = %e, "expiring committed offsets failed");
            }
        }
    }

    /// State of every group, for metrics.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.lock()
            .values()
            .map(|e| GroupSnapshot {
                id: e.group.id.clone(),
                state: e.group.state.name(),
                rebalances: e.group.rebalances,
                committed: e
                    .offsets
                    .iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.offset))
                    .collect(),
            })
            .collect()
    }
}

/// Runs [`Coordinator::tick`] every 100 ms until shutdown.
pub async fn run_timers(
    coordinator: Arc<Coordinator>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => coordinator.tick().await,
            _ = shutdown.changed() => return,
        }
    }
}
