//! The SLB management API (version 2014-05-15): RPC over HTTP, signed requests, JSON or XML
//! responses, every acknowledged change durable in the state store and pushed to the data plane.
//!
//! # Layout
//! - `http`: the HTTP server, request parsing and response rendering
//! - `sign`: signature versions 1.0 and V3, access keys, nonce and timestamp checks
//! - `actions`: what each action does to the model
//! - `client`: the signed client of `slb call`
//! - `cert`: certificate and key validation
//! - `state`: the model, its records, listener transitions
//! - `store`: the redb file
//! - `utc`: calendar arithmetic for timestamps
//! - `error`: error codes and statuses as the client sees them

pub mod actions;
pub mod cert;
pub mod client;
mod error;
pub mod http;
pub mod sign;
pub mod state;
pub mod store;
mod utc;

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{self, ParamMap, Params, Protocol};
pub use actions::Settings;
use actions::{Ctx, Response};
pub use error::ApiError;
use state::State;

/// The API version this server speaks.
pub const VERSION: &str = "2014-05-15";

type Handler = fn(&mut Ctx, &mut ParamMap) -> Result<Response, ApiError>;

macro_rules! per_protocol {
    ($f:path, $p:expr) => {{
        fn h(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
            $f(ctx, p, $p)
        }
        h as Handler
    }};
}

/// The action table: name → (handler, changes state?). §10's RAM-table names are aliases.
fn handler(action: &str) -> Option<(Handler, bool)> {
    use actions as a;
    let h: (Handler, bool) = match action {
        "DescribeRegions" => (a::describe_regions, false),
        "DescribeZones" => (a::describe_zones, false),
        "CreateLoadBalancer" => (a::create_load_balancer, true),
        "DeleteLoadBalancer" => (a::delete_load_balancer, true),
        "SetLoadBalancerStatus" => (a::set_load_balancer_status, true),
        "SetLoadBalancerName" => (a::set_load_balancer_name, true),
        "DescribeLoadBalancers" => (a::describe_load_balancers, false),
        "DescribeLoadBalancerAttribute" => (a::describe_load_balancer_attribute, false),
        "ModifyLoadBalancerInternetSpec" => (a::modify_internet_spec, true),
        "ModifyLoadBalancerInstanceSpec" => (a::modify_instance_spec, true),
        "ModifyLoadBalancerPayType" => (a::modify_pay_type, true),
        "CreateLoadBalancerTCPListener" => (per_protocol!(a::create_listener, Protocol::Tcp), true),
        "CreateLoadBalancerUDPListener" => (per_protocol!(a::create_listener, Protocol::Udp), true),
        "CreateLoadBalancerHTTPListener" => {
            (per_protocol!(a::create_listener, Protocol::Http), true)
        }
        "CreateLoadBalancerHTTPSListener" => {
            (per_protocol!(a::create_listener, Protocol::Https), true)
        }
        "SetLoadBalancerTCPListenerAttribute" => {
            (per_protocol!(a::set_listener, Protocol::Tcp), true)
        }
        "SetLoadBalancerUDPListenerAttribute" => {
            (per_protocol!(a::set_listener, Protocol::Udp), true)
        }
        "SetLoadBalancerHTTPListenerAttribute" => {
            (per_protocol!(a::set_listener, Protocol::Http), true)
        }
        "SetLoadBalancerHTTPSListenerAttribute" => {
            (per_protocol!(a::set_listener, Protocol::Https), true)
        }
        "DescribeLoadBalancerTCPListenerAttribute" => {
            (per_protocol!(a::describe_listener, Protocol::Tcp), false)
        }
        "DescribeLoadBalancerUDPListenerAttribute" => {
            (per_protocol!(a::describe_listener, Protocol::Udp), false)
        }
        "DescribeLoadBalancerHTTPListenerAttribute" => {
            (per_protocol!(a::describe_listener, Protocol::Http), false)
        }
        "DescribeLoadBalancerHTTPSListenerAttribute" => {
            (per_protocol!(a::describe_listener, Protocol::Https), false)
        }
        "StartLoadBalancerListener" => (a::start_listener, true),
        "StopLoadBalancerListener" => (a::stop_listener, true),
        "DeleteLoadBalancerListener" => (a::delete_listener, true),
        "SetListenerAccessControlStatus" => (a::set_access_control_status, true),
        "AddListenerWhiteListItem" => (a::add_white_list_item, true),
        "RemoveListenerWhiteListItem" => (a::remove_white_list_item, true),
        "DescribeListenerAccessControlAttribute" => (a::describe_access_control, false),
        "AddBackendServers" => (a::add_backend_servers, true),
        "RemoveBackendServers" => (a::remove_backend_servers, true),
        "SetBackendServers" => (a::set_backend_servers, true),
        "DescribeHealthStatus" => (a::describe_health_status, false),
        "CreateVServerGroup" => (a::create_vserver_group, true),
        "SetVServerGroupAttribute" => (a::set_vserver_group_attribute, true),
        "AddVServerGroupBackendServers" => (a::add_vserver_group_servers, true),
        "RemoveVServerGroupBackendServers" => (a::remove_vserver_group_servers, true),
        "ModifyVServerGroupBackendServers" => (a::modify_vserver_group_servers, true),
        "DeleteVServerGroup" => (a::delete_vserver_group, true),
        "DescribeVServerGroups" => (a::describe_vserver_groups, false),
        "DescribeVServerGroupAttribute" => (a::describe_vserver_group_attribute, false),
        "CreateMasterSlaveVServerGroup" | "CreateMasterSlaveServerGroup" => {
            (a::create_master_slave_group, true)
        }
        "DeleteMasterSlaveVServerGroup" | "DeleteMasterSlaveServerGroup" => {
            (a::delete_master_slave_group, true)
        }
        "DescribeMasterSlaveVServerGroupAttribute" | "DescribeMasterSlaveServerGroupAttribute" => {
            (a::describe_master_slave_group, false)
        }
        "DescribeMasterSlaveVServerGroups" | "DescribeMasterSlaveServerGroups" => {
            (a::describe_master_slave_groups, false)
        }
        "UploadServerCertificate" => (a::upload_server_certificate, true),
        "DeleteServerCertificate" => (a::delete_server_certificate, true),
        "DescribeServerCertificates" | "DescribeServerCertificate" => {
            (a::describe_server_certificates, false)
        }
        "SetServerCertificateName" => (a::set_server_certificate_name, true),
        "UploadCACertificate" => (a::upload_ca_certificate, true),
        "DeleteCACertificate" => (a::delete_ca_certificate, true),
        "DescribeCACertificates" | "DescribeCACertificate" => (a::describe_ca_certificates, false),
        "SetCACertificateName" => (a::set_ca_certificate_name, true),
        "CreateRules" => (a::create_rules, true),
        "DeleteRules" => (a::delete_rules, true),
        "SetRule" => (a::set_rule, true),
        "DescribeRuleAttribute" => (a::describe_rule_attribute, false),
        "DescribeRules" => (a::describe_rules, false),
        "CreateDomainExtension" => (a::create_domain_extension, true),
        "SetDomainExtensionAttribute" => (a::set_domain_extension_attribute, true),
        "DeleteDomainExtension" => (a::delete_domain_extension, true),
        "DescribeDomainExtensions" => (a::describe_domain_extensions, false),
        "CreateAccessControlList" => (a::create_access_control_list, true),
        "DeleteAccessControlList" => (a::delete_access_control_list, true),
        "SetAccessControlListAttribute" => (a::set_access_control_list_attribute, true),
        "AddAccessControlListEntry" => (a::add_access_control_list_entry, true),
        "RemoveAccessControlListEntry" => (a::remove_access_control_list_entry, true),
        "DescribeAccessControlLists" => (a::describe_access_control_lists, false),
        "DescribeAccessControlListAttribute" => (a::describe_access_control_list_attribute, false),
        "ExportConfiguration" => (a::export_configuration, false),
        "ApplyConfiguration" => (a::apply_configuration, true),
        "AddTags" => (a::add_tags, true),
        "RemoveTags" => (a::remove_tags, true),
        "DescribeTags" => (a::describe_tags, false),
        _ => return None,
    };
    Some(h)
}

/// A configuration generation for the data plane to apply.
#[derive(Clone)]
pub struct Published {
    pub generation: u64,
    pub config: Arc<config::Config>,
}

/// The API service: state behind one lock (actions are serialised, like redb's single
/// writer), the data-plane channel, and the settings.
pub struct Api {
    state: Mutex<State>,
    settings: Settings,
    agent: config::Agent,
    publish: watch::Sender<Published>,
    applied: watch::Receiver<u64>,
    health: Arc<crate::health::Status>,
    requests: Arc<crate::proxy::access::Metrics>,
}

impl Api {
    /// `applied` reports the last generation the data plane has programmed.
    pub fn new(
        state: State,
        settings: Settings,
        agent: config::Agent,
        applied: watch::Receiver<u64>,
        health: Arc<crate::health::Status>,
        requests: Arc<crate::proxy::access::Metrics>,
    ) -> (Api, watch::Receiver<Published>) {
        let first = Published {
            generation: state.generation,
            config: Arc::new(state.model.config(&agent)),
        };
        let (publish, rx) = watch::channel(first);
        (
            Api {
                state: Mutex::new(state),
                settings,
                agent,
                publish,
                applied,
                health,
                requests,
            },
            rx,
        )
    }

    /// `GET /metrics`: health check verdicts and counters, and the HTTP/HTTPS listeners'
    /// request counters, in the Prometheus text format.
    pub fn render_metrics(&self) -> String {
        self.health.render_metrics() + &self.requests.render()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Size of the state store on disk.
    pub fn store_size(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.store_size())
    }

    /// Runs one action with its own parameters (common parameters already removed). The
    /// change is durable when this returns `Ok`.
    pub fn call(&self, action: &str, mut params: ParamMap) -> Result<Response, ApiError> {
        let (h, mutates) = handler(action).ok_or_else(ApiError::unsupported_action)?;
        let mut state = self
            .state
            .lock()
            .map_err(|_| ApiError::internal("state lock poisoned"))?;
        let applied = *self.applied.borrow();
        let st = &mut *state;
        st.settle(applied);
        let pending =
            |lb: &str, port: u16| st.pending.get(&(lb.to_string(), port)).map(|(t, _)| *t);
        let health = |lb: &str, port: u16, ip: std::net::IpAddr, member_port: u16| {
            self.health
                .healthy(lb, port, std::net::SocketAddr::new(ip, member_port))
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        // Reads run on the state itself; changes on a draft that becomes the state only once
        // committed.
        let mut draft = mutates.then(|| st.model.clone());
        let mut ctx = Ctx {
            model: draft.as_mut().unwrap_or(&mut st.model),
            settings: &self.settings,
            now_ms,
            pending: &pending,
            transitions: Vec::new(),
            health: &health,
        };
        let r = h(&mut ctx, &mut params)?;
        let transitions = ctx.transitions;
        unread(&params)?;
        let Some(draft) = draft else {
            return Ok(r);
        };
        let changed = state.commit(draft).map_err(|e| {
            log::error!("{action}: {e}");
            ApiError::new(
                "ServiceUnavailable",
                503,
                "The request has failed due to a temporary failure of the server.",
            )
        })?;
        if changed {
            let generation = state.generation;
            for (lb, port, t) in transitions {
                state.pending.insert((lb, port), (t, generation));
            }
            self.publish.send_replace(Published {
                generation,
                config: Arc::new(state.model.config(&self.agent)),
            });
        }
        Ok(r)
    }

    /// The generation of the last committed change.
    pub fn generation(&self) -> u64 {
        self.state.lock().map_or(0, |s| s.generation)
    }

    /// The last generation the data plane reported applied.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }
}

/// Parameters nobody read are refused rather than silently ignored.
fn unread(p: &ParamMap) -> Result<(), ApiError> {
    match p.unread().first() {
        None => Ok(()),
        Some(name) => Err(ApiError::new(
            "UnsupportedParameter",
            400,
            format!("The input parameter is not unsupported: {name}"),
        )),
    }
}
