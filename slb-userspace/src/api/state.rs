//! The API's model of every resource, its records in the [`Store`], and the listener
//! transitions that the data plane completes.
//!
//! An action runs on a copy of the [`Model`]; the records that differ afterwards are committed
//! in one transaction and only then does the copy become the state. So a failed action (bad
//! input or a failed commit) leaves nothing behind.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::store::{Change, Store, StoreError};
use crate::config::{
    self, export, Acl, Agent, Certificates, Config, LoadBalancer, ServerCertificate,
};

/// API-only attributes of an instance (the data plane needs none of them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LbMeta {
    pub address_type: String,
    pub internet_charge_type: String,
    pub bandwidth: u32,
    pub spec: String,
    pub pay_type: String,
    pub network_type: String,
    pub vpc_id: String,
    pub vswitch_id: String,
    pub master_zone_id: String,
    pub slave_zone_id: String,
    pub resource_group_id: String,
    /// Milliseconds since the epoch.
    pub create_time_ms: i64,
    pub tags: Vec<(String, String)>,
}

/// A `ClientToken` already used: the parameters it came with and what it created (B2.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub params: Vec<(String, String)>,
    pub load_balancer_id: String,
}

/// An uploaded server or CA certificate. The key (server certificates only) never leaves the
/// store except towards the TLS listeners (B10.5).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRecord {
    pub name: String,
    pub fingerprint: String,
    pub common_name: String,
    pub subject_alternative_names: Vec<String>,
    pub expire_time: String,
    pub expire_timestamp_ms: i64,
    pub resource_group_id: String,
    pub create_time_ms: i64,
    pub chain_pem: String,
    pub key_pem: Option<String>,
}

impl CertRecord {
    pub fn new(
        name: String,
        info: super::cert::CertInfo,
        chain_pem: String,
        key_pem: Option<String>,
        resource_group_id: String,
        create_time_ms: i64,
    ) -> CertRecord {
        CertRecord {
            name,
            fingerprint: info.fingerprint,
            common_name: info.common_name,
            subject_alternative_names: info.subject_alternative_names,
            expire_time: info.expire_time,
            expire_timestamp_ms: info.expire_timestamp_ms,
            resource_group_id,
            create_time_ms,
            chain_pem,
            key_pem,
        }
    }
}

impl std::fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertRecord")
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Every resource the API manages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub servers: BTreeMap<String, IpAddr>,
    pub acls: Vec<Acl>,
    pub lbs: BTreeMap<String, LoadBalancer>,
    pub meta: BTreeMap<String, LbMeta>,
    pub tokens: BTreeMap<String, TokenRecord>,
    pub certs: BTreeMap<String, CertRecord>,
    pub ca_certs: BTreeMap<String, CertRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state store record {key}: {message}")]
    Record { key: String, message: String },
    #[error("state store holds an invalid configuration: {source}")]
    Invalid { source: config::ConfigError },
}

fn toml_of_lb(lb: &LoadBalancer) -> Vec<u8> {
    export::to_toml(&BTreeMap::new(), &[], std::slice::from_ref(lb)).into_bytes()
}

fn toml_of_acl(acl: &Acl) -> Vec<u8> {
    export::to_toml(&BTreeMap::new(), std::slice::from_ref(acl), &[]).into_bytes()
}

fn toml_of_server(id: &str, addr: IpAddr) -> Vec<u8> {
    let one = BTreeMap::from([(id.to_string(), addr)]);
    export::to_toml(&one, &[], &[]).into_bytes()
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Plain data structs: serialisation cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Puts and deletes that turn `old` into `new` under `prefix/<key>`.
fn diff<T: PartialEq>(
    prefix: &str,
    old: &BTreeMap<String, T>,
    new: &BTreeMap<String, T>,
    encode: impl Fn(&str, &T) -> Vec<u8>,
    out: &mut Vec<Change>,
) {
    for (k, v) in new {
        if old.get(k) != Some(v) {
            out.push(Change::Put(format!("{prefix}/{k}"), encode(k, v)));
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        out.push(Change::Delete(format!("{prefix}/{k}")));
    }
}

impl Model {
    /// The records that turn `self` into `new`.
    pub fn changes_to(&self, new: &Model) -> Vec<Change> {
        let mut out = Vec::new();
        diff(
            "server",
            &self.servers,
            &new.servers,
            |k, a| toml_of_server(k, *a),
            &mut out,
        );
        let by_id = |acls: &[Acl]| -> BTreeMap<String, Acl> {
            acls.iter().map(|a| (a.acl_id.clone(), a.clone())).collect()
        };
        diff(
            "acl",
            &by_id(&self.acls),
            &by_id(&new.acls),
            |_, a| toml_of_acl(a),
            &mut out,
        );
        diff("lb", &self.lbs, &new.lbs, |_, l| toml_of_lb(l), &mut out);
        diff("meta", &self.meta, &new.meta, |_, m| json(m), &mut out);
        diff("token", &self.tokens, &new.tokens, |_, t| json(t), &mut out);
        diff("cert", &self.certs, &new.certs, |_, c| json(c), &mut out);
        diff(
            "ca",
            &self.ca_certs,
            &new.ca_certs,
            |_, c| json(c),
            &mut out,
        );
        out
    }

    /// Rebuilds the model from the store's records. The resources go through the same
    /// validation as a configuration file.
    pub fn from_records(records: &[(String, Vec<u8>)]) -> Result<Model, StateError> {
        let mut toml = String::new();
        let mut model = Model::default();
        for (key, bytes) in records {
            let bad = |message: String| StateError::Record {
                key: key.clone(),
                message,
            };
            let (kind, id) = key.split_once('/').unwrap_or((key.as_str(), ""));
            match kind {
                "server" | "acl" | "lb" => {
                    let text = std::str::from_utf8(bytes).map_err(|e| bad(e.to_string()))?;
                    toml.push_str(text);
                    toml.push('\n');
                }
                "meta" => {
                    let m = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                    model.meta.insert(id.to_string(), m);
                }
                "token" => {
                    let t = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                    model.tokens.insert(id.to_string(), t);
                }
                "cert" | "ca" => {
                    let c = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
                    let map = if kind == "cert" {
                        &mut model.certs
                    } else {
                        &mut model.ca_certs
                    };
                    map.insert(id.to_string(), c);
                }
                _ => return Err(bad("unknown record kind".to_string())),
            }
        }
        let cfg =
            config::parse(&toml, "state store").map_err(|source| StateError::Invalid { source })?;
        model.servers = cfg.servers;
        model.acls = cfg.acls;
        model.lbs = cfg
            .load_balancers
            .into_iter()
            .map(|l| (l.load_balancer_id.clone(), l))
            .collect();
        Ok(model)
    }

    /// What the data plane is programmed from.
    pub fn config(&self, agent: &Agent) -> Config {
        Config {
            agent: agent.clone(),
            servers: self.servers.clone(),
            acls: self.acls.clone(),
            load_balancers: self.lbs.values().cloned().collect(),
            certificates: Certificates {
                server: self
                    .certs
                    .iter()
                    .filter_map(|(id, c)| {
                        let key_pem = c.key_pem.clone()?;
                        let chain_pem = c.chain_pem.clone();
                        Some((id.clone(), ServerCertificate { chain_pem, key_pem }))
                    })
                    .collect(),
                ca: self
                    .ca_certs
                    .iter()
                    .map(|(id, c)| (id.clone(), c.chain_pem.clone()))
                    .collect(),
            },
        }
    }

    /// Loads and seeds from a configuration file's resources (used when the store is new).
    pub fn from_config(cfg: &Config) -> Model {
        use super::cert;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // The file's certificates passed the same validation when it was read.
        let certs = cfg.certificates.server.iter().filter_map(|(id, c)| {
            let v = cert::validate_server_certificate(&c.chain_pem, &c.key_pem).ok()?;
            let key = Some(v.key_pem);
            let rec = CertRecord::new(id.clone(), v.info, v.chain_pem, key, String::new(), now);
            Some((id.clone(), rec))
        });
        let ca_certs = cfg.certificates.ca.iter().filter_map(|(id, pem)| {
            let info = cert::validate_ca_certificate(pem).ok()?;
            let rec = CertRecord::new(id.clone(), info, pem.clone(), None, String::new(), now);
            Some((id.clone(), rec))
        });
        Model {
            certs: certs.collect(),
            ca_certs: ca_certs.collect(),
            servers: cfg.servers.clone(),
            acls: cfg.acls.clone(),
            lbs: cfg
                .load_balancers
                .iter()
                .map(|l| (l.load_balancer_id.clone(), l.clone()))
                .collect(),
            ..Model::default()
        }
    }
}

/// A listener change the data plane has not applied yet (B3.3–B3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Starting,
    Configuring,
    Stopping,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Starting => "starting",
            Transition::Configuring => "configuring",
            Transition::Stopping => "stopping",
        }
    }
}

/// The model, its store, and the generation bookkeeping with the data plane.
pub struct State {
    pub model: Model,
    store: Store,
    /// Incremented by every committed change.
    pub generation: u64,
    /// (LoadBalancerId, ListenerPort) → transition and the generation that completes it.
    pub pending: BTreeMap<(String, u16), (Transition, u64)>,
}

impl State {
    pub fn open(store: Store, seed: Option<&Config>) -> Result<State, StateError> {
        let records = store.load()?;
        let model = if records.is_empty() {
            let model = seed.map(Model::from_config).unwrap_or_default();
            store.commit(&Model::default().changes_to(&model))?;
            model
        } else {
            Model::from_records(&records)?
        };
        Ok(State {
            model,
            store,
            generation: 0,
            pending: BTreeMap::new(),
        })
    }

    /// Makes `new` the state: its differing records are committed durably first.
    pub fn commit(&mut self, new: Model) -> Result<bool, StoreError> {
        let changes = self.model.changes_to(&new);
        if changes.is_empty() {
            return Ok(false);
        }
        self.store.commit(&changes)?;
        self.model = new;
        self.generation += 1;
        Ok(true)
    }

    /// Forgets transitions the data plane has completed.
    pub fn settle(&mut self, applied: u64) {
        self.pending.retain(|_, (_, gen)| *gen > applied);
    }

    pub fn store_size(&self) -> u64 {
        self.store.size_bytes()
    }
}
