//! The classic consumer-group state machine (one group), without I/O.
//!
//! Empty → PreparingRebalance → CompletingRebalance → Stable, back to PreparingRebalance on
//! any membership change. JoinGroup and SyncGroup calls that must wait are parked as
//! one-shot senders inside the member and answered when the rebalance moves on.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use tokio::sync::oneshot;

/// Group state as Kafka names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupState {
    /// No members (may still hold committed offsets).
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Assignment handed out.
    Stable,
    /// Removed.
    Dead,
}

impl GroupState {
    /// Kafka's name of the state.
    pub fn name(&self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Timing rules for groups.
#[derive(Debug, Clone, Copy)]
pub struct GroupTimings {
    /// Wait for more members when the first one joins an empty group.
    pub initial_rebalance_delay: Duration,
    /// Smallest session timeout accepted.
    pub min_session_timeout_ms: i32,
    /// Largest session timeout accepted.
    pub max_session_timeout_ms: i32,
}

/// What JoinGroup answers.
#[derive(Debug, Clone, PartialEq)]
pub struct JoinReply {
    /// Kafka error code.
    pub error: i16,
    /// Generation the member joined.
    pub generation: i32,
    /// Group protocol type (e.g. "consumer").
    pub protocol_type: Option<String>,
    /// Chosen assignor.
    pub protocol_name: Option<String>,
    /// Leader's member id.
    pub leader: String,
    /// The joining member's id.
    pub member_id: String,
    /// Members and their metadata (leader only).
    pub members: Vec<(String, Option<String>, Bytes)>,
    /// The leader may keep the current assignment (a static leader rejoining).
    pub skip_assignment: bool,
}

impl JoinReply {
    fn error(error: ResponseError, member_id: &str) -> JoinReply {
        JoinReply {
            error: error.code(),
            generation: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

/// What SyncGroup answers.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncReply {
    /// Kafka error code.
    pub error: i16,
    /// Group protocol type.
    pub protocol_type: Option<String>,
    /// Chosen assignor.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Bytes,
}

/// Either an answer now or one to wait for.
pub enum Outcome<T> {
    /// Answer at once.
    Now(T),
    /// Answer once the rebalance moves on.
    Wait(oneshot::Receiver<T>),
}

/// One JoinGroup call.
#[derive(Debug, Clone)]
pub struct JoinParams {
    /// Member id sent ("" for a new member).
    pub member_id: String,
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id from the request header.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: i32,
    /// Rebalance timeout.
    pub rebalance_timeout_ms: i32,
    /// Protocol type.
    pub protocol_type: String,
    /// Protocols in preference order with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: new dynamic members first get MEMBER_ID_REQUIRED.
    pub require_known_member: bool,
    /// JoinGroup v9+: the response can tell a leader to skip assignment.
    pub skip_assignment_supported: bool,
}

/// A group member.
#[derive(Debug)]
pub struct Member {
    /// Static membership id.
    pub instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    /// Protocols with metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// Current assignment.
    pub assignment: Bytes,
    last_heartbeat: Instant,
    join_waiter: Option<oneshot::Sender<JoinReply>>,
    sync_waiter: Option<oneshot::Sender<SyncReply>>,
}

impl Member {
    /// Takes the protocols and timeouts of a new JoinGroup; true if the protocols are unchanged.
    fn rejoined(&mut self, p: JoinParams, now: Instant) -> bool {
        let same_protocols = self.protocols == p.protocols;
        self.protocols = p.protocols;
        self.session_timeout = Duration::from_millis(p.session_timeout_ms as u64);
        self.rebalance_timeout = Duration::from_millis(p.rebalance_timeout_ms.max(0) as u64);
        self.last_heartbeat = now;
        same_protocols
    }
}

/// One consumer group.
pub struct Group {
    /// Group id.
    pub id: String,
    /// Current state.
    pub state: GroupState,
    /// Generation id.
    pub generation: i32,
    /// Protocol type of the members.
    pub protocol_type: Option<String>,
    /// Chosen protocol.
    pub protocol_name: Option<String>,
    /// Leader member id.
    pub leader: Option<String>,
    /// Members by id, in join order.
    pub members: BTreeMap<String, Member>,
    join_order: Vec<String>,
    pending: HashMap<String, Instant>,
    static_members: HashMap<String, String>,
    join_deadline: Option<Instant>,
    delay_deadline: Option<Instant>,
    rebalance_started: Option<Instant>,
    /// Rebalances started so far.
    pub rebalances: u64,
    next_member: u64,
}

fn common_protocols<'a>(members: impl Iterator<Item = &'a Member>) -> Option<Vec<String>> {
    let mut common: Option<Vec<String>> = None;
    for m in members {
        let names: Vec<String> = m.protocols.iter().map(|(n, _)| n.clone()).collect();
        common = Some(match common {
            None => names,
            Some(c) => c.into_iter().filter(|n| names.contains(n)).collect(),
        });
    }
    common
}

impl Group {
    /// A new, empty group.
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            join_order: Vec::new(),
            pending: HashMap::new(),
            static_members: HashMap::new(),
            join_deadline: None,
            delay_deadline: None,
            rebalance_started: None,
            rebalances: 0,
            next_member: 0,
        }
    }

    fn new_member_id(&mut self, prefix: &str) -> String {
        self.next_member += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        format!("{prefix}-{:08x}-{}", nanos, self.next_member)
    }

    /// Checks member id, static instance id and generation of a group call.
    fn check_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: Option<i32>,
    ) -> Result<(), ResponseError> {
        if let Some(iid) = instance_id {
            if let Some(owner) = self.static_members.get(iid) {
                if owner != member_id {
                    return Err(ResponseError::FencedInstanceId);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(ResponseError::UnknownMemberId);
        }
        if let Some(g) = generation {
            if g != self.generation {
                return Err(ResponseError::IllegalGeneration);
            }
        }
        Ok(())
    }

    fn current_join_reply(&self, member_id: &str) -> JoinReply {
        let is_leader = self.leader.as_deref() == Some(member_id);
        let members = if is_leader {
            let proto = self.protocol_name.clone().unwrap_or_default();
            self.join_order
                .iter()
                .filter_map(|id| self.members.get(id).map(|m| (id, m)))
                .map(|(id, m)| {
                    let meta = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == proto)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default();
                    (id.clone(), m.instance_id.clone(), meta)
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinReply {
            error: 0,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members,
            skip_assignment: false,
        }
    }

    /// Handles JoinGroup.
    pub fn join(&mut self, p: JoinParams, now: Instant, t: &GroupTimings) -> Outcome<JoinReply> {
        if p.session_timeout_ms < t.min_session_timeout_ms
            || p.session_timeout_ms > t.max_session_timeout_ms
        {
            return Outcome::Now(JoinReply::error(
                ResponseError::InvalidSessionTimeout,
                &p.member_id,
            ));
        }
        if p.protocol_type.is_empty() || p.protocols.is_empty() {
            return Outcome::Now(JoinReply::error(
                ResponseError::InconsistentGroupProtocol,
                &p.member_id,
            ));
        }
        // Everyone else must share a protocol type and at least one protocol with the joiner.
        if !self.members.is_empty() {
            let others = self
                .members
                .iter()
                .filter(|(id, _)| **id != p.member_id)
                .map(|(_, m)| m);
            let compatible = self.protocol_type.as_deref() == Some(p.protocol_type.as_str())
                && match common_protocols(others) {
                    None => true,
                    Some(c) => p.protocols.iter().any(|(n, _)| c.contains(n)),
                };
            if !compatible {
                return Outcome::Now(JoinReply::error(
                    ResponseError::InconsistentGroupProtocol,
                    &p.member_id,
                ));
            }
        }
        let (tx, rx) = oneshot::channel();
        if p.member_id.is_empty() {
            if let Some(iid) = p.instance_id.clone() {
                if let Some(old_id) = self.static_members.get(&iid).cloned() {
                    return self.rejoin_static(old_id, iid, p, now, t, (tx, rx));
                }
            }
            let member_id = self.new_member_id(p.instance_id.as_deref().unwrap_or(&p.client_id));
            if p.require_known_member && p.instance_id.is_none() {
                self.pending.insert(
                    member_id.clone(),
                    now + Duration::from_millis(p.session_timeout_ms as u64),
                );
                return Outcome::Now(JoinReply::error(
                    ResponseError::MemberIdRequired,
                    &member_id,
                ));
            }
            self.add_member(member_id, p, now, tx);
            self.prepare_rebalance(now, t, "new member joined");
            self.maybe_complete_join(now);
            return Outcome::Wait(rx);
        }
        if self.pending.remove(&p.member_id).is_some() {
            let id = p.member_id.clone();
            self.add_member(id, p, now, tx);
            self.prepare_rebalance(now, t, "new member joined");
            self.maybe_complete_join(now);
            return Outcome::Wait(rx);
        }
        if let Err(e) = self.check_member(&p.member_id, p.instance_id.as_deref(), None) {
            return Outcome::Now(JoinReply::error(e, &p.member_id));
        }
        let id = p.member_id.clone();
        let is_leader = self.leader.as_deref() == Some(id.as_str());
        let Some(m) = self.members.get_mut(&id) else {
            return Outcome::Now(JoinReply::error(ResponseError::UnknownMemberId, &id));
        };
        let same_protocols = m.rejoined(p, now);
        match self.state {
            GroupState::CompletingRebalance if same_protocols => {
                Outcome::Now(self.current_join_reply(&id))
            }
            GroupState::Stable if same_protocols && !is_leader => {
                Outcome::Now(self.current_join_reply(&id))
            }
            _ => {
                if let Some(m) = self.members.get_mut(&id) {
                    m.join_waiter = Some(tx);
                }
                self.prepare_rebalance(now, t, "member rejoined (leader or new metadata)");
                self.maybe_complete_join(now);
                Outcome::Wait(rx)
            }
        }
    }

    /// A static member rejoining with a new member id: it takes over the old identity.
    fn rejoin_static(
        &mut self,
        old_id: String,
        iid: String,
        p: JoinParams,
        now: Instant,
        t: &GroupTimings,
        (tx, rx): (oneshot::Sender<JoinReply>, oneshot::Receiver<JoinReply>),
    ) -> Outcome<JoinReply> {
        let new_id = self.new_member_id(&iid);
        let Some(mut old) = self.members.remove(&old_id) else {
            self.static_members.remove(&iid);
            return Outcome::Now(JoinReply::error(ResponseError::UnknownMemberId, ""));
        };
        if let Some(w) = old.join_waiter.take() {
            let _ = w.send(JoinReply::error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = old.sync_waiter.take() {
            let _ = w.send(SyncReply {
                error: ResponseError::FencedInstanceId.code(),
                protocol_type: None,
                protocol_name: None,
                assignment: Bytes::new(),
            });
        }
        old.client_id = p.client_id.clone();
        old.client_host = p.client_host.clone();
        let skip_assignment_supported = p.skip_assignment_supported;
        let same_protocols = old.rejoined(p, now);
        self.members.insert(new_id.clone(), old);
        for id in self.join_order.iter_mut() {
            if *id == old_id {
                *id = new_id.clone();
            }
        }
        self.static_members.insert(iid, new_id.clone());
        let was_leader = self.leader.as_deref() == Some(old_id.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        // A known static member coming back to a stable group gets its old assignment
        // without a rebalance (the point of static membership). A returning leader gets the
        // member list but need not assign again (KIP-814: skip_assignment).
        if self.state == GroupState::Stable && same_protocols {
            let mut reply = self.current_join_reply(&new_id);
            if was_leader && !skip_assignment_supported {
                // Older clients cannot be told to skip assigning: name the previous member
                // id as leader so the returning member simply syncs, as Kafka does.
                reply.leader = old_id;
                reply.members.clear();
            } else {
                reply.skip_assignment = was_leader;
            }
            return Outcome::Now(reply);
        }
        if let Some(m) = self.members.get_mut(&new_id) {
            m.join_waiter = Some(tx);
        }
        self.prepare_rebalance(now, t, "static member rejoined with new metadata");
        self.maybe_complete_join(now);
        Outcome::Wait(rx)
    }

    fn add_member(
        &mut self,
        id: String,
        p: JoinParams,
        now: Instant,
        waiter: oneshot::Sender<JoinReply>,
    ) {
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if let Some(iid) = &p.instance_id {
            self.static_members.insert(iid.clone(), id.clone());
        }
        self.join_order.push(id.clone());
        self.members.insert(
            id,
            Member {
                instance_id: p.instance_id,
                client_id: p.client_id,
                client_host: p.client_host,
                session_timeout: Duration::from_millis(p.session_timeout_ms as u64),
                rebalance_timeout: Duration::from_millis(p.rebalance_timeout_ms.max(0) as u64),
                protocols: p.protocols,
                assignment: Bytes::new(),
                last_heartbeat: now,
                join_waiter: Some(waiter),
                sync_waiter: None,
            },
        );
    }

    fn prepare_rebalance(&mut self, now: Instant, t: &GroupTimings, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.sync_waiter.take() {
                    let _ = w.send(SyncReply {
                        error: ResponseError::RebalanceInProgress.code(),
                        protocol_type: None,
                        protocol_name: None,
                        assignment: Bytes::new(),
                    });
                }
            }
        }
        let max_rebalance = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        if self.state != GroupState::PreparingRebalance {
            if self.state == GroupState::Empty && !t.initial_rebalance_delay.is_zero() {
                self.delay_deadline = Some(now + t.initial_rebalance_delay);
            }
            tracing::info!(group = %self.id, generation = self.generation, reason, "preparing rebalance");
            self.rebalance_started = Some(now);
            self.state = GroupState::PreparingRebalance;
            self.rebalances += 1;
        } else if let (Some(d), Some(start)) = (self.delay_deadline, self.rebalance_started) {
            // Each new member during the initial delay extends it, up to the rebalance timeout.
            self.delay_deadline = Some(
                (now + t.initial_rebalance_delay)
                    .min(start + max_rebalance)
                    .max(d),
            );
        }
        let start = self.rebalance_started.unwrap_or(now);
        self.join_deadline = Some(start + max_rebalance);
    }

    fn maybe_complete_join(&mut self, now: Instant) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let all_joined =
            self.members.values().all(|m| m.join_waiter.is_some()) && self.pending.is_empty();
        let delay_over = self.delay_deadline.is_none_or(|d| now >= d);
        if all_joined && delay_over {
            self.complete_join(now);
        }
    }

    fn complete_join(&mut self, now: Instant) {
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| m.join_waiter.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.generation += 1;
        self.join_deadline = None;
        self.delay_deadline = None;
        self.rebalance_started = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            return;
        }
        let candidates = common_protocols(self.members.values()).unwrap_or_default();
        let mut votes: Vec<(usize, usize, String)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let n = self
                    .members
                    .values()
                    .filter(|m| {
                        m.protocols
                            .iter()
                            .find(|(n, _)| candidates.contains(n))
                            .map(|(n, _)| n)
                            == Some(c)
                    })
                    .count();
                (n, usize::MAX - i, c.clone())
            })
            .collect();
        votes.sort();
        self.protocol_name = votes.last().map(|(_, _, c)| c.clone());
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.join_order.first().cloned();
        }
        self.state = GroupState::CompletingRebalance;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let reply = self.current_join_reply(&id);
            if let Some(m) = self.members.get_mut(&id) {
                m.last_heartbeat = now;
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(reply);
                }
            }
        }
    }

    fn remove_member(&mut self, id: &str) {
        if let Some(mut m) = self.members.remove(id) {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(JoinReply::error(ResponseError::UnknownMemberId, id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(SyncReply {
                    error: ResponseError::UnknownMemberId.code(),
                    protocol_type: None,
                    protocol_name: None,
                    assignment: Bytes::new(),
                });
            }
            if let Some(iid) = m.instance_id {
                if self.static_members.get(&iid).map(String::as_str) == Some(id) {
                    self.static_members.remove(&iid);
                }
            }
        }
        self.join_order.retain(|x| x != id);
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    fn sync_reply(&self, error: i16, assignment: Bytes) -> SyncReply {
        SyncReply {
            error,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment,
        }
    }

    /// Handles SyncGroup.
    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
        now: Instant,
    ) -> Outcome<SyncReply> {
        let fail = |e: ResponseError| {
            Outcome::Now(SyncReply {
                error: e.code(),
                protocol_type: None,
                protocol_name: None,
                assignment: Bytes::new(),
            })
        };
        if let Err(e) = self.check_member(member_id, instance_id, Some(generation)) {
            return fail(e);
        }
        match self.state {
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::Stable => {
                let a = self
                    .members
                    .get(member_id)
                    .map(|m| m.assignment.clone())
                    .unwrap_or_default();
                Outcome::Now(self.sync_reply(0, a))
            }
            GroupState::CompletingRebalance => {
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in self.members.iter_mut() {
                        m.assignment = given.remove(id).unwrap_or_default();
                        m.last_heartbeat = now;
                    }
                    self.state = GroupState::Stable;
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for id in ids {
                        let reply = self.sync_reply(
                            0,
                            self.members
                                .get(&id)
                                .map(|m| m.assignment.clone())
                                .unwrap_or_default(),
                        );
                        if let Some(w) =
                            self.members.get_mut(&id).and_then(|m| m.sync_waiter.take())
                        {
                            let _ = w.send(reply);
                        }
                    }
                    let a = self
                        .members
                        .get(member_id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default();
                    Outcome::Now(self.sync_reply(0, a))
                } else {
                    let (tx, rx) = oneshot::channel();
                    if let Some(m) = self.members.get_mut(member_id) {
                        m.sync_waiter = Some(tx);
                        m.last_heartbeat = now;
                    }
                    Outcome::Wait(rx)
                }
            }
            GroupState::Empty | GroupState::Dead => fail(ResponseError::UnknownMemberId),
        }
    }

    /// Handles Heartbeat; returns the error code.
    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now: Instant,
    ) -> i16 {
        if let Err(e) = self.check_member(member_id, instance_id, None) {
            return e.code();
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.last_heartbeat = now;
        }
        if self.state == GroupState::PreparingRebalance {
            return ResponseError::RebalanceInProgress.code();
        }
        if generation != self.generation {
            return ResponseError::IllegalGeneration.code();
        }
        0
    }

    /// Handles one member of LeaveGroup; returns the error code.
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        now: Instant,
        t: &GroupTimings,
    ) -> i16 {
        let id = match instance_id {
            Some(iid) => match self.static_members.get(iid) {
                Some(owner) if member_id.is_empty() || owner == member_id => owner.clone(),
                Some(_) => return ResponseError::FencedInstanceId.code(),
                None => return ResponseError::UnknownMemberId.code(),
            },
            None => member_id.to_string(),
        };
        if !self.members.contains_key(&id) {
            return ResponseError::UnknownMemberId.code();
        }
        self.remove_member(&id);
        self.membership_changed(now, t);
        0
    }

    fn membership_changed(&mut self, now: Instant, t: &GroupTimings) {
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(now, t, "member left or expired");
                self.maybe_complete_join(now);
            }
            GroupState::PreparingRebalance => self.maybe_complete_join(now),
            GroupState::Empty | GroupState::Dead => {}
        }
        if self.members.is_empty() && self.state == GroupState::PreparingRebalance {
            self.complete_join(now);
        }
    }

    /// Time-driven transitions: session expiry, rebalance timeout, end of the initial delay.
    pub fn tick(&mut self, now: Instant, t: &GroupTimings) {
        self.pending.retain(|_, expires| *expires > now);
        let expired: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| {
                m.join_waiter.is_none() && now.duration_since(m.last_heartbeat) > m.session_timeout
            })
            .map(|(id, _)| id.clone())
            .collect();
        if !expired.is_empty() && self.state != GroupState::PreparingRebalance {
            for id in &expired {
                tracing::info!(group = %self.id, member = %id, "session expired");
                self.remove_member(id);
            }
            self.membership_changed(now, t);
        }
        if self.state == GroupState::PreparingRebalance {
            if self.join_deadline.is_some_and(|d| now >= d) {
                self.complete_join(now);
            } else {
                self.maybe_complete_join(now);
            }
        }
    }

    /// Whether a member with this generation may commit offsets now.
    pub fn check_commit(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), ResponseError> {
        if generation < 0 && member_id.is_empty() {
            // Commits from consumers that assign partitions themselves.
            return if self.members.is_empty() {
                Ok(())
            } else {
                Err(ResponseError::UnknownMemberId)
            };
        }
        self.check_member(member_id, instance_id, Some(generation))?;
        if self.state == GroupState::CompletingRebalance {
            return Err(ResponseError::RebalanceInProgress);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: GroupTimings = GroupTimings {
        initial_rebalance_delay: Duration::ZERO,
        min_session_timeout_ms: 1000,
        max_session_timeout_ms: 60_000,
    };

    fn params(member: &str, instance: Option<&str>) -> JoinParams {
        JoinParams {
            member_id: member.into(),
            instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member: true,
            skip_assignment_supported: true,
        }
    }

    fn now_reply<T>(o: Outcome<T>) -> T {
        match o {
            Outcome::Now(r) => r,
            Outcome::Wait(_) => panic!("expected an immediate answer"),
        }
    }

    fn waited<T>(o: Outcome<T>) -> oneshot::Receiver<T> {
        match o {
            Outcome::Wait(rx) => rx,
            Outcome::Now(_) => panic!("expected to wait"),
        }
    }

    /// Joins a new dynamic member through MEMBER_ID_REQUIRED and returns its id and waiter.
    fn join_new(g: &mut Group, now: Instant) -> (String, oneshot::Receiver<JoinReply>) {
        let r = now_reply(g.join(params("", None), now, &T));
        assert_eq!(r.error, ResponseError::MemberIdRequired.code());
        let rx = waited(g.join(params(&r.member_id, None), now, &T));
        (r.member_id, rx)
    }

    #[test]
    fn two_members_rebalance_to_stable() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, mut rx_a) = join_new(&mut g, now);
        let ja = rx_a.try_recv().expect("single member completes at once");
        assert_eq!((ja.generation, ja.leader.as_str()), (1, a.as_str()));
        assert_eq!(ja.members.len(), 1);
        now_reply(g.sync(
            &a,
            None,
            1,
            vec![(a.clone(), Bytes::from_static(b"all"))],
            now,
        ));
        assert_eq!(g.state, GroupState::Stable);

        // A second member triggers a rebalance; the first learns through its heartbeat.
        let (b, mut rx_b) = join_new(&mut g, now);
        assert_eq!(
            g.heartbeat(&a, None, 1, now),
            ResponseError::RebalanceInProgress.code()
        );
        assert!(rx_b.try_recv().is_err());
        let mut rx_a = waited(g.join(params(&a, None), now, &T));
        let (ja, jb) = (rx_a.try_recv().expect("a"), rx_b.try_recv().expect("b"));
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.members.len(), 2, "leader gets every member");
        assert!(jb.members.is_empty());
        let mut rx_sync_b = waited(g.sync(&b, None, 2, vec![], now));
        let sa = now_reply(g.sync(
            &a,
            None,
            2,
            vec![
                (a.clone(), Bytes::from_static(b"p0")),
                (b.clone(), Bytes::from_static(b"p1")),
            ],
            now,
        ));
        assert_eq!(sa.assignment, Bytes::from_static(b"p0"));
        assert_eq!(
            rx_sync_b.try_recv().expect("b assigned").assignment,
            Bytes::from_static(b"p1")
        );
        assert_eq!(
            g.heartbeat(&b, None, 1, now),
            ResponseError::IllegalGeneration.code()
        );
        assert_eq!(
            g.heartbeat("nobody", None, 2, now),
            ResponseError::UnknownMemberId.code()
        );
        assert_eq!(
            g.check_commit(&a, None, 1),
            Err(ResponseError::IllegalGeneration)
        );
        assert_eq!(g.check_commit(&a, None, 2), Ok(()));

        // Leaving moves the group back to rebalancing; the last one out empties it.
        assert_eq!(g.leave(&b, None, now, &T), 0);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(g.leave(&a, None, now, &T), 0);
        assert_eq!(g.state, GroupState::Empty);
    }

    #[test]
    fn expired_sessions_are_removed_and_rebalance_times_out() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let (a, _rx_a) = join_new(&mut g, now);
        now_reply(g.sync(&a, None, 1, vec![], now));
        let (_b, mut rx_b) = join_new(&mut g, now);
        // a never rejoins: after the rebalance timeout the group goes on without it.
        g.tick(now + Duration::from_secs(11), &T);
        let jb = rx_b.try_recv().expect("join completed without a");
        assert_eq!(jb.generation, 2);
        assert!(!g.members.contains_key(&a));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        // b's session runs out too.
        g.tick(now + Duration::from_secs(30), &T);
        assert_eq!(g.state, GroupState::Empty);
    }

    #[test]
    fn static_member_rejoins_without_rebalance_and_fences_old_id() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut rx = waited(g.join(params("", Some("i-1")), now, &T));
        let leader = rx.try_recv().expect("joined").member_id;
        let mut rx2 = waited(g.join(params("", Some("i-2")), now, &T));
        let mut rx1 = waited(g.join(params(&leader, Some("i-1")), now, &T));
        let follower = rx2.try_recv().expect("joined").member_id;
        rx1.try_recv().expect("leader rejoined");
        let gen = g.generation;
        now_reply(g.sync(
            &leader,
            Some("i-1"),
            gen,
            vec![(follower.clone(), Bytes::from_static(b"mine"))],
            now,
        ));
        // The follower restarts with no member id: same generation, same assignment.
        let r = now_reply(g.join(params("", Some("i-2")), now, &T));
        assert_eq!(r.generation, gen);
        assert_eq!(g.state, GroupState::Stable);
        let s = now_reply(g.sync(&r.member_id, Some("i-2"), gen, vec![], now));
        assert_eq!(s.assignment, Bytes::from_static(b"mine"));
        assert_eq!(
            g.heartbeat(&follower, Some("i-2"), gen, now),
            ResponseError::FencedInstanceId.code()
        );
        // The leader restarting is no rebalance either: it may keep the current assignment.
        let r = now_reply(g.join(params("", Some("i-1")), now, &T));
        assert_eq!((r.generation, r.skip_assignment), (gen, true));
        assert_eq!(r.leader, r.member_id);
        assert_eq!(g.state, GroupState::Stable);
        // Before JoinGroup v9 the returning leader is answered as a follower.
        let mut old_client = params("", Some("i-1"));
        old_client.skip_assignment_supported = false;
        let r2 = now_reply(g.join(old_client, now, &T));
        assert_eq!((r2.generation, r2.skip_assignment), (gen, false));
        assert_eq!(r2.leader, r.member_id);
        assert!(r2.members.is_empty());
        assert_eq!(g.state, GroupState::Stable);
    }

    #[test]
    fn bad_joins_are_refused() {
        let now = Instant::now();
        let mut g = Group::new("g");
        let mut p = params("", None);
        p.session_timeout_ms = 10;
        assert_eq!(
            now_reply(g.join(p, now, &T)).error,
            ResponseError::InvalidSessionTimeout.code()
        );
        let (_a, _rx) = join_new(&mut g, now);
        let mut p = params("", None);
        p.require_known_member = false;
        p.protocols = vec![("other".into(), Bytes::new())];
        assert_eq!(
            now_reply(g.join(p, now, &T)).error,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert_eq!(
            now_reply(g.join(params("ghost", None), now, &T)).error,
            ResponseError::UnknownMemberId.code()
        );
    }
}
