//! Consumer group coordinator: classic group membership and committed offsets.
//!
//! Committed offsets are records of the internal offsets topic, replicated like any other
//! partition. The leader of a group's offsets partition coordinates the group: on becoming
//! leader it replays the partition into memory, and every commit is appended there and
//! answered once the in-sync replicas have it, so offsets survive the loss of the
//! coordinator's broker. Membership itself is not persisted: members rejoin the new
//! coordinator, as with Kafka.

pub mod offsets;
pub mod state;
mod transactions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kafka_protocol::error::ResponseError;

use crate::log::{now_ms, LogError, Partition, Role};
use crate::metadata::{Catalog, Topic};
use crate::protocol::batch;
use crate::storage::{Mutation, Store, CF_META};
use offsets::{offsets_partition, OffsetRecord};
pub use offsets::{Committed, OFFSETS_PARTITIONS, OFFSETS_TOPIC};
use state::Group;
pub use state::{GroupState, GroupTimings, JoinParams, JoinReply, Outcome, SyncReply};

/// A committed offset and the offset of the record that holds it (later records win, even
/// when their appends complete out of order).
type Stored = (i64, Committed);

/// A group and its committed offsets.
struct Entry {
    group: Group,
    offsets: BTreeMap<(String, i32), Stored>,
}

impl Entry {
    fn new(id: &str) -> Entry {
        Entry {
            group: Group::new(id),
            offsets: BTreeMap::new(),
        }
    }
}

/// An offset committed in a transaction, applied when its commit marker is written:
/// (group, topic, partition, offset of the record holding it, the commit).
type PendingCommit = (String, String, i32, i64, Committed);

/// Groups and transactional ids of the offsets partitions this broker leads.
#[derive(Default)]
struct State {
    groups: HashMap<String, Entry>,
    /// Transactional ids' states.
    txns: HashMap<String, crate::txn::TxnMeta>,
    /// Offsets committed in open transactions, by producer id.
    pending: HashMap<i64, Vec<PendingCommit>>,
    /// Offsets partitions in `groups`, with the leader epoch they were loaded at.
    loaded: HashMap<u32, i32>,
    /// Offsets partitions being replayed.
    loading: HashSet<u32>,
}

impl State {
    /// Forgets the groups of an offsets partition no longer led here; true if it was loaded.
    fn unload(&mut self, partition: u32) -> bool {
        let was = self.loaded.remove(&partition).is_some();
        if was {
            self.groups.retain(|g, _| offsets_partition(g) != partition);
            self.txns.retain(|t, _| offsets_partition(t) != partition);
            for commits in self.pending.values_mut() {
                commits.retain(|c| offsets_partition(&c.0) != partition);
            }
            self.pending.retain(|_, c| !c.is_empty());
        }
        was
    }
}

/// Snapshot of a group for DescribeGroups.
pub struct GroupDescription {
    /// Error code (NOT_COORDINATOR and the like), 0 when described.
    pub error: i16,
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

/// How long a commit waits for the in-sync replicas (Kafka's `offsets.commit.timeout.ms`).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bytes read per step when replaying an offsets partition.
const REPLAY_CHUNK: usize = 1 << 20;

/// What replaying an offsets partition rebuilds.
#[derive(Default)]
struct Replayed {
    groups: HashMap<String, BTreeMap<(String, i32), Stored>>,
    txns: HashMap<String, crate::txn::TxnMeta>,
    pending: HashMap<i64, Vec<PendingCommit>>,
}

/// Records a commit at log `offset` unless a later record already holds one.
fn apply_commit(
    offsets: &mut BTreeMap<(String, i32), Stored>,
    topic: String,
    partition: i32,
    offset: i64,
    c: Committed,
) {
    let slot = offsets
        .entry((topic, partition))
        .or_insert((offset, c.clone()));
    if slot.0 <= offset {
        *slot = (offset, c);
    }
}

/// The offsets partition leading a group here.
struct Lead {
    topic: Arc<Topic>,
    part: Arc<Partition>,
    epoch: i32,
}

/// The coordinator of the groups whose offsets partitions this broker leads.
pub struct Coordinator {
    state: Mutex<State>,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    timings: GroupTimings,
    offsets_retention_ms: i64,
    /// Whether commits wait for a WAL sync (per the broker's fsync policy).
    sync: bool,
    /// When committed offsets were last checked for expiry.
    last_expiry: Mutex<Instant>,
}

/// Kafka's mapping of append errors to OffsetCommit errors.
fn commit_error(e: &LogError) -> i16 {
    match e {
        LogError::NotLeader | LogError::FencedEpoch | LogError::Storage(_) => {
            ResponseError::NotCoordinator.code()
        }
        _ => ResponseError::CoordinatorNotAvailable.code(),
    }
}

impl Coordinator {
    /// A coordinator that serves the offsets partitions `catalog` says this broker leads.
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<Store>,
        timings: GroupTimings,
        offsets_retention_ms: i64,
        sync: bool,
    ) -> Coordinator {
        Coordinator {
            state: Mutex::default(),
            catalog,
            store,
            timings,
            offsets_retention_ms,
            sync,
            last_expiry: Mutex::new(Instant::now()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The offsets partition of `group` if this broker leads it and has loaded it, else
    /// the error that sends the client elsewhere (or makes it retry).
    fn lead(&self, st: &State, group: &str) -> Result<Lead, i16> {
        self.lead_partition(st, offsets_partition(group))
    }

    fn lead_partition(&self, st: &State, p: u32) -> Result<Lead, i16> {
        let topic = self
            .catalog
            .get(OFFSETS_TOPIC)
            .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
        let part = topic
            .partition(p as i32)
            .ok_or(ResponseError::CoordinatorNotAvailable.code())?;
        if part.role() != Role::Leader {
            return Err(ResponseError::NotCoordinator.code());
        }
        let epoch = part.leader_epoch();
        if st.loaded.get(&p) != Some(&epoch) {
            return Err(ResponseError::CoordinatorLoadInProgress.code());
        }
        Ok(Lead { topic, part, epoch })
    }

    /// Loads the offsets partitions this broker now leads and drops those it no longer
    /// leads. Called after every metadata change and on the timer.
    pub fn sync_leadership(self: &Arc<Self>) {
        let topic = self.catalog.get(OFFSETS_TOPIC);
        let mut st = self.lock();
        let mut unloaded = Vec::new();
        for p in 0..OFFSETS_PARTITIONS {
            let led = topic
                .as_ref()
                .and_then(|t| t.partition(p as i32))
                .filter(|part| part.role() == Role::Leader);
            match led {
                Some(part) => {
                    let epoch = part.leader_epoch();
                    if st.loaded.get(&p) != Some(&epoch) && st.loading.insert(p) {
                        tokio::spawn(self.clone().load(p, part, epoch));
                    }
                }
                None => {
                    if st.unload(p) {
                        unloaded.push(p);
                    }
                }
            }
        }
        if !unloaded.is_empty() {
            tracing::info!(
                partitions = ?unloaded,
                "no longer coordinating the groups of these offsets partitions"
            );
        }
    }

    /// Replays offsets partition `p` (led at `epoch`) into memory.
    async fn load(self: Arc<Self>, p: u32, part: Arc<Partition>, epoch: i32) {
        let started = Instant::now();
        let result = self.replay(p, &part, epoch).await;
        let mut st = self.lock();
        st.loading.remove(&p);
        let replayed = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(partition = p, error = %e, "loading offsets partition failed; will retry");
                return;
            }
        };
        if part.role() != Role::Leader || part.leader_epoch() != epoch {
            return;
        }
        st.unload(p);
        let count = replayed.groups.len();
        st.txns.extend(replayed.txns);
        for (pid, commits) in replayed.pending {
            st.pending.entry(pid).or_default().extend(commits);
        }
        for (id, offsets) in replayed.groups {
            let mut e = Entry::new(&id);
            e.offsets = offsets;
            st.groups.insert(id, e);
        }
        st.loaded.insert(p, epoch);
        tracing::debug!(
            partition = p,
            epoch,
            groups = count,
            ms = started.elapsed().as_millis() as u64,
            "coordinating the groups of offsets partition"
        );
    }

    /// Moves commits stored before the offsets topic existed into partition `p`, then
    /// reads the whole partition (to its log end: on a new leader records above the high
    /// watermark are still the partition's history).
    async fn replay(&self, p: u32, part: &Arc<Partition>, epoch: i32) -> Result<Replayed, String> {
        let mut prefix = b"o/".to_vec();
        prefix.extend_from_slice(&p.to_be_bytes());
        let legacy = self
            .store
            .scan_prefix(CF_META, &prefix)
            .map_err(|e| e.to_string())?;
        if !legacy.is_empty() {
            let records: Vec<OffsetRecord> =
                legacy.into_iter().map(|(k, v)| (k, Some(v))).collect();
            let topic = self
                .catalog
                .get(OFFSETS_TOPIC)
                .ok_or("offsets topic deleted")?;
            let lead = Lead {
                topic,
                part: part.clone(),
                epoch,
            };
            let pending = self
                .append(&lead, &records, None)
                .map_err(|c| format!("error {c}"))?;
            pending.await.map_err(|c| format!("error {c}"))?;
            let mut end = prefix.clone();
            end.push(0xff);
            self.store
                .write(
                    vec![Mutation::DeleteRange {
                        cf: CF_META,
                        from: prefix,
                        to: end,
                    }],
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                partition = p,
                commits = records.len(),
                "moved stored commits into the offsets topic"
            );
        }
        let part = part.clone();
        tokio::task::spawn_blocking(move || {
            let mut r = Replayed::default();
            let mut next = part.offsets().log_start;
            loop {
                let records = part
                    .read_for_replica(next, REPLAY_CHUNK)
                    .map_err(|e| e.to_string())?;
                if records.is_empty() {
                    r.groups.retain(|_, o| !o.is_empty());
                    return Ok(r);
                }
                for (h, raw) in batch::split(&records) {
                    next = h.last_offset() + 1;
                    if h.is_control() {
                        if let Ok(Some(m)) = crate::protocol::marker::read_marker(&raw) {
                            let done = r.pending.remove(&h.producer_id).unwrap_or_default();
                            for (group, topic, partition, offset, c) in
                                done.into_iter().filter(|_| m.commit)
                            {
                                apply_commit(
                                    r.groups.entry(group).or_default(),
                                    topic,
                                    partition,
                                    offset,
                                    c,
                                );
                            }
                        }
                        continue;
                    }
                    for (offset, key, value) in offsets::decode_batch(raw)? {
                        if let Some(id) = offsets::parse_txn_key(&key) {
                            match value {
                                Some(v) => {
                                    let meta = serde_json::from_slice(&v)
                                        .map_err(|e| format!("bad transaction state: {e}"))?;
                                    r.txns.insert(id, meta);
                                }
                                None => {
                                    r.txns.remove(&id);
                                }
                            }
                            continue;
                        }
                        let (group, topic, partition) =
                            offsets::parse_key(&key).ok_or("bad offsets record key")?;
                        let commit = match value.as_deref().map(Committed::decode) {
                            Some(Some(c)) => Some(c),
                            Some(None) => return Err("bad offsets record value".into()),
                            None => None,
                        };
                        match commit {
                            Some(c) if h.is_transactional() => {
                                r.pending
                                    .entry(h.producer_id)
                                    .or_default()
                                    .push((group, topic, partition, offset, c));
                            }
                            Some(c) => apply_commit(
                                r.groups.entry(group).or_default(),
                                topic,
                                partition,
                                offset,
                                c,
                            ),
                            None => {
                                r.groups
                                    .entry(group)
                                    .or_default()
                                    .remove(&(topic, partition));
                            }
                        }
                    }
                }
            }
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Appends records to a led offsets partition now (so the log keeps the order of the
    /// caller's lock) and returns a future that resolves with the first record's offset
    /// once the in-sync replicas have them.
    fn append(
        &self,
        lead: &Lead,
        records: &[OffsetRecord],
        producer: Option<(i64, i16)>,
    ) -> Result<impl std::future::Future<Output = Result<i64, i16>> + Send + 'static, i16> {
        let raw = offsets::encode_batch(records, producer, now_ms())
            .map_err(|_| ResponseError::UnknownServerError.code())?;
        let header =
            batch::validate_produced(&raw).map_err(|_| ResponseError::UnknownServerError.code())?;
        let cfg = lead.topic.config();
        let min_isr = cfg.min_insync_replicas.max(1) as usize;
        if lead.part.isr_len() < min_isr {
            return Err(ResponseError::CoordinatorNotAvailable.code());
        }
        let outcome = lead.part.append(&raw, &header, &cfg, self.sync);
        let (part, epoch, delta) = (lead.part.clone(), lead.epoch, header.last_offset_delta);
        Ok(async move {
            let deadline = tokio::time::Instant::now() + COMMIT_TIMEOUT;
            part.settle_append(outcome, delta, epoch, Some(min_isr), deadline)
                .await
                .map(|a| a.base_offset)
                .map_err(|e| commit_error(&e))
        })
    }

    /// Appends tombstones for `(group, topic, partition)` keys to their offsets
    /// partitions (under the caller's lock); the futures resolve once replicated.
    fn tombstones(
        &self,
        st: &State,
        keys: Vec<(String, String, i32)>,
    ) -> Result<Vec<impl std::future::Future<Output = Result<i64, i16>> + Send + 'static>, i16>
    {
        let mut by_partition: BTreeMap<u32, Vec<OffsetRecord>> = BTreeMap::new();
        for (g, t, p) in keys {
            by_partition
                .entry(offsets_partition(&g))
                .or_default()
                .push((offsets::key(&g, &t, p), None));
        }
        by_partition
            .into_iter()
            .map(|(p, records)| self.append(&self.lead_partition(st, p)?, &records, None))
            .collect()
    }

    /// Handles JoinGroup.
    pub fn join(&self, group_id: &str, params: JoinParams) -> Outcome<JoinReply> {
        let mut st = self.lock();
        if let Err(error) = self.lead(&st, group_id) {
            return Outcome::Now(JoinReply {
                error,
                generation: -1,
                protocol_type: None,
                protocol_name: None,
                leader: String::new(),
                member_id: params.member_id,
                members: vec![],
                skip_assignment: false,
            });
        }
        let entry = st
            .groups
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
        let mut st = self.lock();
        let error = match self.lead(&st, group_id) {
            Err(code) => code,
            Ok(_) => match st.groups.get_mut(group_id) {
                Some(e) => {
                    return e.group.sync(
                        member_id,
                        instance_id,
                        generation,
                        assignments,
                        Instant::now(),
                    )
                }
                None => ResponseError::UnknownMemberId.code(),
            },
        };
        Outcome::Now(SyncReply {
            error,
            protocol_type: None,
            protocol_name: None,
            assignment: bytes::Bytes::new(),
        })
    }

    /// Handles Heartbeat.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        let mut st = self.lock();
        if let Err(code) = self.lead(&st, group_id) {
            return code;
        }
        match st.groups.get_mut(group_id) {
            Some(e) => e
                .group
                .heartbeat(member_id, instance_id, generation, Instant::now()),
            None => ResponseError::UnknownMemberId.code(),
        }
    }

    /// Handles LeaveGroup for each (member id, instance id).
    pub fn leave(&self, group_id: &str, members: &[(String, Option<String>)]) -> Vec<i16> {
        let mut st = self.lock();
        let error = match self.lead(&st, group_id) {
            Err(code) => code,
            Ok(_) => match st.groups.get_mut(group_id) {
                Some(e) => {
                    return members
                        .iter()
                        .map(|(m, i)| {
                            e.group
                                .leave(m, i.as_deref(), Instant::now(), &self.timings)
                        })
                        .collect()
                }
                None => ResponseError::UnknownMemberId.code(),
            },
        };
        vec![error; members.len()]
    }

    /// Validates commits, appends them to the group's offsets partition and returns once
    /// the in-sync replicas have them; returns the group-level error, if any.
    pub async fn commit(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), i16> {
        let member = Some((member_id, instance_id, generation));
        let Some((pending, epoch)) =
            self.append_commits(&mut self.lock(), group_id, member, &commits, None)?
        else {
            return Ok(());
        };
        let base = pending.await?;
        let mut st = self.lock();
        let p = offsets_partition(group_id);
        // Leadership moved meanwhile: the next leader replays the log instead.
        if st.loaded.get(&p) == Some(&epoch) {
            let entry = st
                .groups
                .entry(group_id.to_string())
                .or_insert_with(|| Entry::new(group_id));
            for (i, (t, p, c)) in commits.into_iter().enumerate() {
                apply_commit(&mut entry.offsets, t, p, base + i as i64, c);
            }
        }
        Ok(())
    }

    /// Checks commits against the group (when a member is named) and appends them to its
    /// offsets partition under the caller's lock (`producer`: as that producer's
    /// transactional records); the future resolves once replicated. `None`: nothing to
    /// write.
    #[allow(clippy::type_complexity)]
    fn append_commits(
        &self,
        st: &mut State,
        group_id: &str,
        member: Option<(&str, Option<&str>, i32)>,
        commits: &[(String, i32, Committed)],
        producer: Option<(i64, i16)>,
    ) -> Result<
        Option<(
            impl std::future::Future<Output = Result<i64, i16>> + Send + 'static,
            i32,
        )>,
        i16,
    > {
        let lead = self.lead(st, group_id)?;
        if let Some((member_id, instance_id, generation)) = member {
            st.groups
                .entry(group_id.to_string())
                .or_insert_with(|| Entry::new(group_id))
                .group
                .check_commit(member_id, instance_id, generation)
                .map_err(|e| e.code())?;
        }
        if commits.is_empty() {
            return Ok(None);
        }
        let records: Vec<OffsetRecord> = commits
            .iter()
            .map(|(t, p, c)| (offsets::key(group_id, t, *p), Some(c.encode())))
            .collect();
        Ok(Some((self.append(&lead, &records, producer)?, lead.epoch)))
    }

    /// Committed offsets of a group: the given partitions, or all of them.
    pub fn committed(
        &self,
        group_id: &str,
        only: Option<&[(String, Vec<i32>)]>,
    ) -> Result<Vec<(String, i32, Option<Committed>)>, i16> {
        let st = self.lock();
        self.lead(&st, group_id)?;
        let offsets = st.groups.get(group_id).map(|e| &e.offsets);
        Ok(match only {
            Some(wanted) => wanted
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .map(|(t, p)| {
                    let c = offsets.and_then(|o| o.get(&(t.clone(), p)).map(|s| s.1.clone()));
                    (t, p, c)
                })
                .collect(),
            None => offsets
                .map(|o| {
                    o.iter()
                        .map(|((t, p), (_, c))| (t.clone(), *p, Some(c.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    /// Describes a group (Dead if unknown).
    pub fn describe(&self, group_id: &str) -> GroupDescription {
        let st = self.lock();
        let dead = |error| GroupDescription {
            error,
            state: GroupState::Dead.name(),
            protocol_type: String::new(),
            protocol: String::new(),
            members: vec![],
        };
        if let Err(code) = self.lead(&st, group_id) {
            return dead(code);
        }
        let Some(e) = st.groups.get(group_id) else {
            return dead(0);
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
            error: 0,
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

    /// Every group this broker coordinates: (id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, &'static str)> {
        let mut v: Vec<_> = self
            .lock()
            .groups
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
        let pending = {
            let mut st = self.lock();
            if let Err(code) = self.lead(&st, group_id) {
                return code;
            }
            let keys = match st.groups.get(group_id) {
                None => return ResponseError::GroupIdNotFound.code(),
                Some(e) if !e.group.members.is_empty() => {
                    return ResponseError::NonEmptyGroup.code()
                }
                Some(e) => e
                    .offsets
                    .keys()
                    .map(|(t, p)| (group_id.to_string(), t.clone(), *p))
                    .collect(),
            };
            match self.tombstones(&st, keys) {
                Ok(p) => {
                    st.groups.remove(group_id);
                    p
                }
                Err(code) => return code,
            }
        };
        for p in pending {
            if let Err(code) = p.await {
                return code;
            }
        }
        0
    }

    /// Deletes committed offsets; `subscribed` says whether an active member still consumes
    /// a topic (those are refused with GROUP_SUBSCRIBED_TO_TOPIC).
    pub async fn delete_offsets(
        &self,
        group_id: &str,
        partitions: &[(String, i32)],
        subscribed: impl Fn(&str, &[bytes::Bytes]) -> bool,
    ) -> Result<Vec<i16>, i16> {
        let (codes, pending) = {
            let mut st = self.lock();
            self.lead(&st, group_id)?;
            let Some(e) = st.groups.get(group_id) else {
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
            let mut keys = Vec::new();
            let codes = partitions
                .iter()
                .map(|(t, p)| {
                    if consumer && subscribed(t, &metas) {
                        return ResponseError::GroupSubscribedToTopic.code();
                    }
                    if e.offsets.contains_key(&(t.clone(), *p)) {
                        keys.push((group_id.to_string(), t.clone(), *p));
                    }
                    0
                })
                .collect();
            let pending = self.tombstones(&st, keys.clone())?;
            if let Some(e) = st.groups.get_mut(group_id) {
                for (_, t, p) in keys {
                    e.offsets.remove(&(t, p));
                }
            }
            (codes, pending)
        };
        for p in pending {
            p.await?;
        }
        Ok(codes)
    }

    /// Drops every group's committed offsets for a deleted topic.
    pub async fn forget_topic(&self, topic: &str) -> Result<(), i16> {
        let pending = {
            let mut st = self.lock();
            let mut keys = Vec::new();
            for e in st.groups.values_mut() {
                let group_id = e.group.id.clone();
                e.offsets.retain(|(t, p), _| {
                    if t == topic {
                        keys.push((group_id.clone(), t.clone(), *p));
                    }
                    t != topic
                });
            }
            self.tombstones(&st, keys)?
        };
        for p in pending {
            p.await?;
        }
        Ok(())
    }

    /// Runs timeouts, follows offsets-partition leadership and expires offsets of
    /// long-empty groups.
    pub async fn tick(self: &Arc<Self>) {
        self.sync_leadership();
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
        let pending = {
            let mut st = self.lock();
            let mut expired = Vec::new();
            for e in st.groups.values_mut() {
                e.group.tick(now, &self.timings);
                if expire && e.group.state == GroupState::Empty {
                    let group_id = e.group.id.clone();
                    e.offsets.retain(|(t, p), (_, c)| {
                        let keep = now_wall - c.commit_ms <= self.offsets_retention_ms;
                        if !keep {
                            expired.push((group_id.clone(), t.clone(), *p));
                        }
                        keep
                    });
                }
            }
            st.groups.retain(|_, e| {
                !(e.group.state == GroupState::Empty
                    && e.offsets.is_empty()
                    && e.group.members.is_empty())
            });
            self.tombstones(&st, expired)
        };
        // Expiry needs no answer: the tombstones are written in the background.
        if let Ok(pending) = pending {
            for p in pending {
                tokio::spawn(p);
            }
        }
    }

    /// State of every group this broker coordinates, for metrics.
    pub fn snapshot(&self) -> Vec<GroupSnapshot> {
        self.lock()
            .groups
            .values()
            .map(|e| GroupSnapshot {
                id: e.group.id.clone(),
                state: e.group.state.name(),
                rebalances: e.group.rebalances,
                committed: e
                    .offsets
                    .iter()
                    .map(|((t, p), (_, c))| (t.clone(), *p, c.offset))
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
