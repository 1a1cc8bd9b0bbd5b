//! Transaction state in the offsets partitions: a transactional id's state lives in the
//! offsets partition its id hashes to (as a group's offsets do), and offsets committed in
//! a transaction are appended there as the producer's transactional records, applied
//! when the commit marker reaches that partition. They share the partition's
//! replication, loading and failover with the groups.

use kafka_protocol::error::ResponseError;

use super::offsets::{self, offsets_partition, OffsetRecord};
use super::{apply_commit, Committed, Coordinator, Entry};
use crate::txn::TxnMeta;

impl Coordinator {
    /// A transactional id's state, and the coordinator epoch (its offsets partition's
    /// leader epoch), when this broker coordinates it.
    pub fn txn_get(&self, id: &str) -> Result<(Option<TxnMeta>, i32), i16> {
        let st = self.lock();
        let lead = self.lead(&st, id)?;
        Ok((st.txns.get(id).cloned(), lead.epoch))
    }

    /// Stores a transactional id's state once the in-sync replicas have it.
    pub async fn txn_put(&self, id: &str, meta: TxnMeta) -> Result<(), i16> {
        let (pending, epoch) = {
            let st = self.lock();
            let lead = self.lead(&st, id)?;
            let value =
                serde_json::to_vec(&meta).map_err(|_| ResponseError::UnknownServerError.code())?;
            let record: OffsetRecord = (offsets::txn_key(id), Some(value));
            (self.append(&lead, &[record], None)?, lead.epoch)
        };
        pending.await?;
        let mut st = self.lock();
        if st.loaded.get(&offsets_partition(id)) != Some(&epoch) {
            // Leadership moved: the next coordinator replays the record instead.
            return Err(ResponseError::NotCoordinator.code());
        }
        st.txns.insert(id.to_string(), meta);
        Ok(())
    }

    /// Every transactional id coordinated here.
    pub fn txn_list(&self) -> Vec<(String, TxnMeta)> {
        let st = self.lock();
        st.txns
            .iter()
            .map(|(id, m)| (id.clone(), m.clone()))
            .collect()
    }

    /// TxnOffsetCommit: offsets committed in a producer's transaction, appended as its
    /// transactional records and applied when the commit marker is written. A request
    /// naming a generation (KIP-447) is checked against the group like a commit.
    pub async fn txn_commit_offsets(
        &self,
        group_id: &str,
        producer: (i64, i16),
        member: Option<(&str, Option<&str>, i32)>,
        commits: Vec<(String, i32, Committed)>,
    ) -> Result<(), i16> {
        let Some((pending, epoch)) =
            self.append_commits(&mut self.lock(), group_id, member, &commits, Some(producer))?
        else {
            return Ok(());
        };
        let base = pending.await?;
        let mut st = self.lock();
        if st.loaded.get(&offsets_partition(group_id)) == Some(&epoch) {
            let list = st.pending.entry(producer.0).or_default();
            for (i, (t, p, c)) in commits.into_iter().enumerate() {
                list.push((group_id.to_string(), t, p, base + i as i64, c));
            }
        }
        Ok(())
    }

    /// A marker was written to offsets partition `partition`: the producer's offsets
    /// committed there apply (commit) or are dropped (abort).
    pub fn complete_txn(&self, partition: u32, producer_id: i64, commit: bool) {
        let mut st = self.lock();
        let Some(all) = st.pending.remove(&producer_id) else {
            return;
        };
        let (here, rest): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|c| offsets_partition(&c.0) == partition);
        if !rest.is_empty() {
            st.pending.insert(producer_id, rest);
        }
        if commit {
            for (group, topic, p, offset, c) in here {
                let entry = st
                    .groups
                    .entry(group.clone())
                    .or_insert_with(|| Entry::new(&group));
                apply_commit(&mut entry.offsets, topic, p, offset, c);
            }
        }
    }

    /// Whether a transaction still holds an offset of this group's partition (KIP-447:
    /// consumers asking for stable offsets wait).
    pub fn unstable(&self, group_id: &str, topic: &str, partition: i32) -> bool {
        let st = self.lock();
        st.pending
            .values()
            .flatten()
            .any(|(g, t, p, _, _)| g == group_id && t == topic && *p == partition)
    }
}
