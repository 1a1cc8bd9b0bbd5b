//! The topic catalog.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::cluster::image::Image;
use crate::config::Config;
use crate::configs::BrokerConfigs;
use crate::log::{Partition, TopicConfig};
use crate::storage::{Mutation, StorageError, Store, CF_META};

/// Why a catalog change was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// Topic exists already.
    #[error("topic '{0}' already exists")]
    TopicExists(String),
    /// No such topic.
    #[error("topic '{0}' does not exist")]
    UnknownTopic(String),
    /// Bad topic name.
    #[error("{0}")]
    InvalidTopic(String),
    /// Bad partition count.
    #[error("{0}")]
    InvalidPartitions(String),
    /// Bad config key or value.
    #[error("{0}")]
    InvalidConfig(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] Arc<StorageError>),
}

impl From<StorageError> for CatalogError {
    fn from(e: StorageError) -> Self {
        CatalogError::Storage(Arc::new(e))
    }
}

/// Persisted form of a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicRecord {
    name: String,
    id: Uuid,
    partition_uids: Vec<u64>,
    configs: BTreeMap<String, String>,
}

/// A topic with its partitions and effective config.
pub struct Topic {
    /// Name.
    pub name: Arc<str>,
    /// Topic id (stable for the topic's life).
    pub id: Uuid,
    partitions: RwLock<Vec<Arc<Partition>>>,
    overrides: RwLock<BTreeMap<String, String>>,
    config: RwLock<TopicConfig>,
}

impl Topic {
    /// Partition by index.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        let parts = self.partitions.read().unwrap_or_else(|p| p.into_inner());
        usize::try_from(index)
            .ok()
            .and_then(|i| parts.get(i).cloned())
    }

    /// All partitions in index order.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> i32 {
        self.partitions
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as i32
    }

    /// Effective config.
    pub fn config(&self) -> TopicConfig {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Explicitly set config keys.
    pub fn overrides(&self) -> BTreeMap<String, String> {
        self.overrides
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self) -> TopicRecord {
        TopicRecord {
            name: self.name.to_string(),
            id: self.id,
            partition_uids: self.partitions().iter().map(|p| p.uid).collect(),
            configs: self.overrides(),
        }
    }
}

fn topic_key(name: &str) -> Vec<u8> {
    let mut k = b"t/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

const NEXT_UID_KEY: &[u8] = b"c/next_uid";
const NEXT_PID_KEY: &[u8] = b"c/next_producer_id";
const CLUSTER_ID_KEY: &[u8] = b"c/cluster_id";

/// All topics of the broker.
pub struct Catalog {
    store: Arc<Store>,
    /// Static broker settings with the image's dynamic broker configs.
    broker: RwLock<Arc<BrokerConfigs>>,
    notify: Arc<Notify>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Serialises catalog changes (create/delete/alter) so uids and records stay consistent.
    change: tokio::sync::Mutex<u64>,
    /// Producer ids handed out before this data directory joined a quorum.
    legacy_next_pid: i64,
    /// Cluster id, generated once and persisted.
    pub cluster_id: String,
}

fn read_i64(store: &Store, key: &[u8]) -> Result<Option<i64>, StorageError> {
    store
        .get_meta(key)?
        .map(|v| {
            v.as_slice()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| StorageError::Corrupt(String::from_utf8_lossy(key).into_owned()))
        })
        .transpose()
}

impl Catalog {
    /// Loads every topic and partition from storage.
    pub async fn load(
        store: Arc<Store>,
        broker: Config,
        notify: Arc<Notify>,
    ) -> Result<Catalog, CatalogError> {
        let next_uid = read_i64(&store, NEXT_UID_KEY)?.unwrap_or(1) as u64;
        let next_pid = read_i64(&store, NEXT_PID_KEY)?.unwrap_or(0);
        let cluster_id = match store.get_meta(CLUSTER_ID_KEY)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = Uuid::new_v4().simple().to_string()[..22].to_string();
                store
                    .write(
                        vec![Mutation::Put {
                            cf: CF_META,
                            key: CLUSTER_ID_KEY.to_vec(),
                            value: id.clone().into_bytes(),
                        }],
                        true,
                    )
                    .await?;
                id
            }
        };
        let broker_configs = BrokerConfigs::new(broker);
        let mut topics = HashMap::new();
        for (k, v) in store.scan_prefix(CF_META, b"t/")? {
            if k.len() == 18 && v.len() == 8 {
                // An open transaction stored under this prefix by an earlier version
                // (partition uid + producer id → first offset), not a topic.
                tracing::warn!(key = ?k, "ignoring a stale open-transaction entry");
                continue;
            }
            let rec: TopicRecord = serde_json::from_slice(&v)
                .map_err(|e| StorageError::Corrupt(format!("topic record: {e}")))?;
            let name: Arc<str> = Arc::from(rec.name.as_str());
            let mut parts = Vec::with_capacity(rec.partition_uids.len());
            for (i, uid) in rec.partition_uids.iter().enumerate() {
                parts.push(Arc::new(Partition::load(
                    name.clone(),
                    i as i32,
                    *uid,
                    store.clone(),
                    notify.clone(),
                )?));
            }
            let topic = Topic {
                name,
                id: rec.id,
                partitions: RwLock::new(parts),
                config: RwLock::new(TopicConfig::resolve(&rec.configs, &broker_configs)),
                overrides: RwLock::new(rec.configs),
            };
            topics.insert(rec.name, Arc::new(topic));
        }
        Ok(Catalog {
            store,
            broker: RwLock::new(Arc::new(broker_configs)),
            notify,
            topics: RwLock::new(topics),
            change: tokio::sync::Mutex::new(next_uid),
            legacy_next_pid: next_pid,
            cluster_id,
        })
    }

    /// Broker configs (static and dynamic) the catalog resolves topic defaults from.
    pub fn broker_configs(&self) -> Arc<BrokerConfigs> {
        self.broker
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Takes the image's dynamic broker configs for broker `me`; re-resolves every topic
    /// when they changed, so new defaults apply at once.
    fn apply_broker_configs(&self, image: &Image, me: i32) {
        let current = self.broker_configs();
        let cluster = image.broker_configs.get("").cloned().unwrap_or_default();
        let mine = image
            .broker_configs
            .get(&me.to_string())
            .cloned()
            .unwrap_or_default();
        if current.cluster == cluster && current.mine == mine {
            return;
        }
        let next = Arc::new(BrokerConfigs {
            static_cfg: current.static_cfg.clone(),
            cluster,
            mine,
        });
        *self.broker.write().unwrap_or_else(|p| p.into_inner()) = next.clone();
        for t in self.all() {
            let resolved = TopicConfig::resolve(&t.overrides(), &next);
            *t.config.write().unwrap_or_else(|p| p.into_inner()) = resolved;
        }
        tracing::info!("dynamic broker configs applied");
    }

    /// Looks up a topic.
    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Looks up a topic by id.
    pub fn get_by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .find(|t| t.id == id)
            .cloned()
    }

    /// All topics sorted by name.
    pub fn all(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self
            .topics
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Validates a config override set.
    pub fn validate_configs(configs: &BTreeMap<String, String>) -> Result<(), CatalogError> {
        for (k, v) in configs {
            crate::configs::topic::validate(k, v).map_err(CatalogError::InvalidConfig)?;
        }
        Ok(())
    }

    /// Creates a topic's local partitions (the quorum decided it exists).
    async fn create(
        &self,
        name: &str,
        id: Uuid,
        partitions: i32,
        configs: BTreeMap<String, String>,
    ) -> Result<Arc<Topic>, CatalogError> {
        let mut next_uid = self.change.lock().await;
        if self.get(name).is_some() {
            return Err(CatalogError::TopicExists(name.to_string()));
        }
        let name_arc: Arc<str> = Arc::from(name);
        let first = *next_uid;
        let parts = (0..partitions)
            .map(|i| {
                Partition::load(
                    name_arc.clone(),
                    i,
                    first + i as u64,
                    self.store.clone(),
                    self.notify.clone(),
                )
                .map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let topic = Topic {
            name: name_arc,
            id,
            partitions: RwLock::new(parts),
            config: RwLock::new(TopicConfig::resolve(&configs, &self.broker_configs())),
            overrides: RwLock::new(configs),
        };
        let new_next = first + partitions as u64;
        self.persist(&topic, Some(new_next)).await?;
        *next_uid = new_next;
        let topic = Arc::new(topic);
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), topic.clone());
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    async fn persist(&self, topic: &Topic, next_uid: Option<u64>) -> Result<(), CatalogError> {
        let rec = serde_json::to_vec(&topic.record())
            .map_err(|e| CatalogError::InvalidConfig(e.to_string()))?;
        let mut m = vec![Mutation::Put {
            cf: CF_META,
            key: topic_key(&topic.name),
            value: rec,
        }];
        if let Some(n) = next_uid {
            m.push(Mutation::Put {
                cf: CF_META,
                key: NEXT_UID_KEY.to_vec(),
                value: (n as i64).to_be_bytes().to_vec(),
            });
        }
        self.store.write(m, true).await?;
        Ok(())
    }

    /// Deletes a topic and all its local data.
    async fn delete(&self, name: &str) -> Result<(), CatalogError> {
        let _guard = self.change.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let mut m = vec![Mutation::Delete {
            cf: CF_META,
            key: topic_key(name),
        }];
        for p in topic.partitions() {
            m.extend(p.erase_mutations());
        }
        self.store.write(m, true).await?;
        self.topics
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `count` partitions.
    async fn add_partitions(&self, name: &str, count: i32) -> Result<(), CatalogError> {
        let mut next_uid = self.change.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        let current = topic.partition_count();
        if count <= current {
            return Err(CatalogError::InvalidPartitions(format!(
                "topic currently has {current} partitions, which is higher than or equal to the requested {count}"
            )));
        }
        let first = *next_uid;
        let mut added = Vec::new();
        for i in current..count {
            let uid = first + (i - current) as u64;
            added.push(Arc::new(Partition::load(
                topic.name.clone(),
                i,
                uid,
                self.store.clone(),
                self.notify.clone(),
            )?));
        }
        let new_next = first + (count - current) as u64;
        topic
            .partitions
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(added);
        if let Err(e) = self.persist(&topic, Some(new_next)).await {
            topic
                .partitions
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .truncate(current as usize);
            return Err(e);
        }
        *next_uid = new_next;
        tracing::info!(topic = name, from = current, to = count, "added partitions");
        Ok(())
    }

    /// Replaces a topic's config overrides (already validated).
    async fn set_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), CatalogError> {
        let _guard = self.change.lock().await;
        let topic = self
            .get(name)
            .ok_or_else(|| CatalogError::UnknownTopic(name.to_string()))?;
        Self::validate_configs(&configs)?;
        let old = std::mem::replace(
            &mut *topic.overrides.write().unwrap_or_else(|p| p.into_inner()),
            configs.clone(),
        );
        if let Err(e) = self.persist(&topic, None).await {
            *topic.overrides.write().unwrap_or_else(|p| p.into_inner()) = old;
            return Err(e);
        }
        *topic.config.write().unwrap_or_else(|p| p.into_inner()) =
            TopicConfig::resolve(&configs, &self.broker_configs());
        Ok(())
    }

    /// First producer id not handed out by this data directory before it joined a quorum.
    pub fn legacy_next_producer_id(&self) -> i64 {
        self.legacy_next_pid
    }

    /// Brings the local topics and partitions in line with the metadata image: creates,
    /// grows, reconfigures and deletes topics, and applies each partition's replica state
    /// for broker `me`. Returns the names of deleted topics.
    pub async fn reconcile(&self, image: &Image, me: i32) -> Result<Vec<String>, CatalogError> {
        let mut deleted = Vec::new();
        self.apply_broker_configs(image, me);
        // Until the quorum has been set up, the image is empty: keep what is here.
        if image.cluster_id.is_some() {
            let stale: Vec<String> = self
                .all()
                .iter()
                .filter(|t| image.topics.get(&*t.name).is_none_or(|i| i.id != t.id))
                .map(|t| t.name.to_string())
                .collect();
            for name in stale {
                self.delete(&name).await?;
                deleted.push(name);
            }
        }
        for (name, t) in &image.topics {
            let count = t.partitions.len() as i32;
            let local = match self.get(name) {
                Some(local) => local,
                None => self.create(name, t.id, count, t.configs.clone()).await?,
            };
            if local.partition_count() < count {
                self.add_partitions(name, count).await?;
            }
            if local.overrides() != t.configs {
                self.set_configs(name, t.configs.clone()).await?;
            }
            for (i, p) in t.partitions.iter().enumerate() {
                if let Some(part) = local.partition(i as i32) {
                    let min_isr = local.config().min_insync_replicas.max(1) as usize;
                    part.apply_state(me, p, min_isr);
                    if !p.replicas.contains(&me)
                        && (part.log_end() > 0 || part.offsets().log_start > 0)
                    {
                        // Reassigned away: the copy here is stale from now on; free its space.
                        tracing::info!(topic = %name, partition = i, "removing the replica reassigned away");
                        if let Err(e) = part.reset_to(0).await {
                            tracing::warn!(topic = %name, partition = i, error = %e, "could not remove the replica");
                        }
                    }
                }
            }
        }
        Ok(deleted)
    }
}
