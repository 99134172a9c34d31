//! The actions of slb-api.md: each reads its parameters, changes the draft [`Model`] (or only
//! reads it) and returns the response fields. Persistence, signatures and rendering are the
//! caller's; an action that returns an error leaves the state untouched because the draft is
//! thrown away.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_json::{json, Map, Value};

use super::cert;
use super::error::ApiError;
use super::state::{CertRecord, LbMeta, Model, TokenRecord, Transition};
use crate::config::{
    self, check_backend_server, check_group_server, check_listener, check_listener_count,
    check_listener_set, check_master_slave_server, check_name, dedup_first, export,
    parse_source_items, GroupRef, InstanceStatus, Listener, ListenerContext, ListenerStatus,
    LoadBalancer, MasterSlaveGroup, MemberContext, MemberRole, PValue, ParamMap, Params, Protocol,
    VServerGroup,
};

/// Instance-independent settings of the API (the `[Api]` configuration section).
#[derive(Debug, Clone)]
pub struct Settings {
    pub region_id: String,
    pub zone_ids: Vec<String>,
    /// Where `CreateLoadBalancer` takes VIPs from.
    pub vip_pool: Vec<IpNet>,
}

/// What an action may look at besides the model.
pub struct Ctx<'a> {
    pub model: &'a mut Model,
    pub settings: &'a Settings,
    pub now_ms: i64,
    /// Transition of a listener the data plane has not completed yet.
    pub pending: &'a dyn Fn(&str, u16) -> Option<Transition>,
    /// Transitions this action starts (recorded by the caller once committed).
    pub transitions: Vec<(String, u16, Transition)>,
    /// Health of (listener port, backend) as the checker reports it (`None`: not checked).
    pub health: &'a dyn Fn(&str, u16, IpAddr, u16) -> Option<bool>,
}

/// Max entries of a `BackendServers` list per request (§7).
const MAX_SERVERS_PER_REQUEST: usize = 20;
/// §13: tags per instance and per request.
const MAX_TAGS: usize = 10;

mod acl;
mod apply;
mod rules;

pub use acl::*;
pub use apply::*;
pub use rules::*;

pub type Response = Map<String, Value>;

fn resp(v: Value) -> Response {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `{"<singular>": [items]}`: the list wrapping of §1.5.
fn wrap(singular: &str, items: Vec<Value>) -> Value {
    json!({ singular: items })
}

/// Appends `items` to the list parameter `name` of an exported object.
fn push_list(m: &mut ParamMap, name: &str, items: Vec<ParamMap>) {
    let mut list = match m.remove(name) {
        Some(PValue::List(l)) => l,
        _ => Vec::new(),
    };
    list.extend(items);
    m.set(name, PValue::List(list));
}

fn issue(i: config::Issue) -> ApiError {
    ApiError::from_issues(std::slice::from_ref(&i))
}

fn opt_str(p: &mut ParamMap, name: &str) -> Result<Option<String>, ApiError> {
    p.string(name).map_err(issue)
}

fn req_str(p: &mut ParamMap, name: &str) -> Result<String, ApiError> {
    match opt_str(p, name)?.map(|s| s.trim().to_string()) {
        Some(s) if !s.is_empty() => Ok(s),
        _ => Err(ApiError::missing(name)),
    }
}

fn opt_int(p: &mut ParamMap, name: &str) -> Result<Option<i64>, ApiError> {
    p.integer(name).map_err(issue)
}

/// B3.8: 1..=65535.
fn port(v: i64) -> Result<u16, ApiError> {
    u16::try_from(v)
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| ApiError::invalid("The specified port is not valid."))
}

fn req_port(p: &mut ParamMap, name: &str) -> Result<u16, ApiError> {
    port(opt_int(p, name)?.ok_or_else(|| ApiError::missing(name))?)
}

fn choice<'v>(
    p: &mut ParamMap,
    name: &str,
    values: &[&'v str],
) -> Result<Option<&'v str>, ApiError> {
    match opt_str(p, name)? {
        None => Ok(None),
        Some(s) => values
            .iter()
            .find(|v| v.eq_ignore_ascii_case(s.trim()))
            .map(|v| Some(*v))
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "The specified parameter {name} is not valid: {s:?} is not one of {}",
                    values.join(", ")
                ))
            }),
    }
}

fn lb<'m>(model: &'m Model, id: &str) -> Result<&'m LoadBalancer, ApiError> {
    model.lbs.get(id).ok_or_else(ApiError::lb_not_found)
}

fn lb_mut<'m>(model: &'m mut Model, id: &str) -> Result<&'m mut LoadBalancer, ApiError> {
    model.lbs.get_mut(id).ok_or_else(ApiError::lb_not_found)
}

fn listener_index(lb: &LoadBalancer, port: u16) -> Result<usize, ApiError> {
    lb.listeners
        .iter()
        .position(|l| l.listener_port == port)
        .ok_or_else(ApiError::listener_not_found)
}

fn member_ctx<'m>(model: &'m Model, lb: &LoadBalancer) -> MemberContext<'m> {
    MemberContext {
        servers: &model.servers,
        vip: lb.address,
    }
}

fn new_id(prefix: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}-{}", &hex[..20])
}

/// `CreateTime` as Alibaba returns it: `YYYY-MM-DDThh:mmZ`.
fn create_time(ms: i64) -> String {
    let ((y, m, d), h, mi, _) = super::utc::split(ms.div_euclid(1000));
    format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}Z")
}

fn too_many_servers() -> ApiError {
    ApiError::new(
        "TooManyBackendServers",
        400,
        "The total number of input real servers exceeds max supported number: 20",
    )
}

/// Every member list parameter is bounded per request (§7, §9).
fn server_list(p: &mut ParamMap, name: &str) -> Result<Vec<ParamMap>, ApiError> {
    let list = p
        .objects(name)
        .map_err(issue)?
        .ok_or_else(|| ApiError::missing(name))?;
    if list.len() > MAX_SERVERS_PER_REQUEST {
        return Err(too_many_servers());
    }
    Ok(list)
}

/// `["id", …]` or `[{"ServerId": "id"}, …]` (RemoveBackendServers, §7.2).
fn server_ids(p: &mut ParamMap, name: &str) -> Result<Vec<String>, ApiError> {
    let text = req_str(p, name)?;
    let bad = || {
        ApiError::new(
            "InvalidParameter",
            404,
            "The specified parameter BackendServers is not valid.",
        )
    };
    let value: Value = serde_json::from_str(&text).map_err(|_| bad())?;
    let Value::Array(items) = value else {
        return Err(bad());
    };
    if items.len() > MAX_SERVERS_PER_REQUEST {
        return Err(too_many_servers());
    }
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.trim().to_string()),
            Value::Object(o) => match o.get("ServerId") {
                Some(Value::String(s)) => Ok(s.trim().to_string()),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Regions and zones (§3): the single configured region.

pub fn describe_regions(ctx: &mut Ctx, _p: &mut ParamMap) -> Result<Response, ApiError> {
    let r = &ctx.settings.region_id;
    Ok(resp(json!({
        "Regions": wrap("Region", vec![json!({"RegionId": r, "LocalName": r})])
    })))
}

pub fn describe_zones(ctx: &mut Ctx, _p: &mut ParamMap) -> Result<Response, ApiError> {
    let zones = ctx
        .settings
        .zone_ids
        .iter()
        .map(|z| json!({"ZoneId": z, "LocalName": z, "SlaveZones": wrap("SlaveZone", vec![])}))
        .collect();
    Ok(resp(json!({ "Zones": wrap("Zone", zones) })))
}

// ---------------------------------------------------------------------------------------------
// Instances (§2).

fn allocate_vip(ctx: &Ctx, version: &str) -> Result<IpAddr, ApiError> {
    let used: std::collections::HashSet<IpAddr> =
        ctx.model.lbs.values().map(|l| l.address).collect();
    ctx.settings
        .vip_pool
        .iter()
        .filter(|n| (version == "ipv6") == n.addr().is_ipv6())
        .flat_map(|n| {
            // A single-address "pool" is that address; otherwise skip the network address
            // (for IPv6 the subnet-router anycast address).
            let all: Box<dyn Iterator<Item = IpAddr>> = if n.prefix_len() == n.max_prefix_len() {
                Box::new(std::iter::once(n.addr()))
            } else {
                Box::new(n.hosts().filter(move |a| *a != n.network()))
            };
            all.take(65_536)
        })
        .find(|a| !used.contains(a))
        .ok_or_else(|| {
            ApiError::new(
                "IpNotAvailable",
                400,
                "The specified parameter Address is not valid: the VIP pool has no free address",
            )
        })
}

pub fn create_load_balancer(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let token = opt_str(p, "ClientToken")?;
    if let Some(t) = &token {
        if t.len() > 64 || !t.is_ascii() {
            return Err(ApiError::invalid(
                "The specified parameter ClientToken is not valid: at most 64 ASCII characters",
            ));
        }
    }
    // B2.6: the token's parameters, everything but the token itself.
    let fingerprint: Vec<(String, String)> = {
        let mut v: Vec<(String, String)> = p
            .entries()
            .iter()
            .filter(|(k, _)| k != "ClientToken")
            .map(|(k, v)| (k.clone(), format!("{v:?}")))
            .collect();
        v.sort();
        v
    };
    if let Some(rec) = token.as_ref().and_then(|t| ctx.model.tokens.get(t)) {
        if rec.params != fingerprint {
            return Err(ApiError::new(
                "IdempotentParameterMismatch",
                400,
                "The request uses the same client token as a previous, but non-identical request.",
            ));
        }
        let id = rec.load_balancer_id.clone();
        for (k, _) in p.entries().to_vec() {
            p.skip(&k);
        }
        if let Some(l) = ctx.model.lbs.get(&id) {
            return Ok(created_response(l, ctx.model.meta.get(&id)));
        }
        // The instance was deleted since; the retry still must not create a second one.
        return Err(ApiError::lb_not_found());
    }
    let name = opt_str(p, "LoadBalancerName")?.unwrap_or_default();
    if !name.is_empty() && !check_name(&name, 80) {
        return Err(ApiError::invalid("The Lb Name is Not supported."));
    }
    let address_type = choice(p, "AddressType", &["internet", "intranet"])?.unwrap_or("internet");
    let mut charge = choice(p, "InternetChargeType", &["paybybandwidth", "paybytraffic"])?
        .unwrap_or("paybytraffic");
    if address_type == "intranet" {
        // B2.5: intranet instances are always pay-by-traffic.
        charge = "paybytraffic";
    }
    let bandwidth = match opt_int(p, "Bandwidth")? {
        None => 1,
        Some(b @ 1..=1000) => b as u32,
        Some(_) => return Err(ApiError::invalid("The specified bandwidth is not valid.")),
    };
    let spec = choice(
        p,
        "LoadBalancerSpec",
        &[
            "slb.s1.small",
            "slb.s2.small",
            "slb.s2.medium",
            "slb.s3.small",
            "slb.s3.medium",
            "slb.s3.large",
        ],
    )?
    .unwrap_or("slb.s1.small");
    let zone = |p: &mut ParamMap, name: &str, ctx: &Ctx| -> Result<String, ApiError> {
        match opt_str(p, name)? {
            None => Ok(ctx.settings.zone_ids.first().cloned().unwrap_or_default()),
            Some(z) if ctx.settings.zone_ids.contains(&z) => Ok(z),
            Some(z) => Err(ApiError::invalid(format!(
                "The specified parameter {name} is not valid: unknown zone {z:?}"
            ))),
        }
    };
    let master_zone_id = zone(p, "MasterZoneId", ctx)?;
    let slave_zone_id = zone(p, "SlaveZoneId", ctx)?;
    let vswitch_id = opt_str(p, "VSwitchId")?.unwrap_or_default();
    let resource_group_id = opt_str(p, "ResourceGroupId")?.unwrap_or_default();
    // Not in the 2014 docs (later API versions have both): choose the VIP or its family.
    let version = choice(p, "AddressIPVersion", &["ipv4", "ipv6"])?.unwrap_or("ipv4");
    let address = match opt_str(p, "Address")? {
        Some(a) => {
            let a: IpAddr = a.trim().parse().map_err(|_| {
                ApiError::new(
                    "IpNotAvailable",
                    400,
                    "The specified parameter Address is not valid.",
                )
            })?;
            if ctx.model.lbs.values().any(|l| l.address == a) {
                return Err(ApiError::new(
                    "IpNotAvailable",
                    400,
                    "The specified parameter Address is not valid: the address is in use",
                ));
            }
            a
        }
        None => allocate_vip(ctx, version)?,
    };
    let id = new_id("lb");
    let lb = LoadBalancer {
        load_balancer_id: id.clone(),
        name,
        address,
        status: InstanceStatus::Active, // B2.1
        backend_servers: Vec::new(),
        vserver_groups: Vec::new(),
        master_slave_groups: Vec::new(),
        listeners: Vec::new(),
    };
    let meta = LbMeta {
        address_type: address_type.to_string(),
        internet_charge_type: charge.to_string(),
        bandwidth,
        spec: spec.to_string(),
        pay_type: "PayOnDemand".to_string(),
        network_type: if vswitch_id.is_empty() {
            "classic"
        } else {
            "vpc"
        }
        .to_string(),
        vpc_id: String::new(),
        vswitch_id,
        master_zone_id,
        slave_zone_id,
        resource_group_id,
        create_time_ms: ctx.now_ms,
        tags: Vec::new(),
    };
    let out = created_response(&lb, Some(&meta));
    if let Some(t) = token {
        ctx.model.tokens.insert(
            t,
            TokenRecord {
                params: fingerprint,
                load_balancer_id: id.clone(),
            },
        );
    }
    ctx.model.lbs.insert(id.clone(), lb);
    ctx.model.meta.insert(id, meta);
    Ok(out)
}

fn created_response(lb: &LoadBalancer, meta: Option<&LbMeta>) -> Response {
    let mut r = resp(json!({
        "LoadBalancerId": lb.load_balancer_id,
        "Address": lb.address.to_string(),
        "LoadBalancerName": lb.name,
    }));
    if let Some(m) = meta {
        r.insert("NetworkType".into(), json!(m.network_type));
        r.insert("VpcId".into(), json!(m.vpc_id));
        r.insert("VSwitchId".into(), json!(m.vswitch_id));
        r.insert("MasterZoneId".into(), json!(m.master_zone_id));
        r.insert("SlaveZoneId".into(), json!(m.slave_zone_id));
        r.insert("LoadBalancerSpec".into(), json!(m.spec));
    }
    r
}

pub fn delete_load_balancer(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    // B2.4: listeners, groups and tags go with the instance.
    ctx.model
        .lbs
        .remove(&id)
        .ok_or_else(ApiError::lb_not_found)?;
    ctx.model.meta.remove(&id);
    Ok(Response::new())
}

pub fn set_load_balancer_status(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    // B2.3: `locked` cannot be set through the API.
    let status = choice(p, "LoadBalancerStatus", &["active", "inactive"])?
        .ok_or_else(|| ApiError::missing("LoadBalancerStatus"))?;
    let lb = lb_mut(ctx.model, &id)?;
    if lb.status == InstanceStatus::Locked {
        return Err(ApiError::invalid("The Instance is Not Available."));
    }
    lb.status = if status == "active" {
        InstanceStatus::Active
    } else {
        InstanceStatus::Inactive
    };
    Ok(Response::new())
}

pub fn set_load_balancer_name(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let name = req_str(p, "LoadBalancerName")?;
    if !check_name(&name, 80) {
        return Err(ApiError::invalid("The Lb Name is Not supported."));
    }
    lb_mut(ctx.model, &id)?.name = name;
    Ok(Response::new())
}

fn lb_summary(ctx: &Ctx, lb: &LoadBalancer) -> Map<String, Value> {
    let default_meta;
    let m = match ctx.model.meta.get(&lb.load_balancer_id) {
        Some(m) => m,
        None => {
            default_meta = LbMeta {
                address_type: "intranet".into(),
                internet_charge_type: "paybytraffic".into(),
                bandwidth: 1,
                spec: "slb.s1.small".into(),
                pay_type: "PayOnDemand".into(),
                network_type: "classic".into(),
                vpc_id: String::new(),
                vswitch_id: String::new(),
                master_zone_id: String::new(),
                slave_zone_id: String::new(),
                resource_group_id: String::new(),
                create_time_ms: 0,
                tags: Vec::new(),
            };
            &default_meta
        }
    };
    resp(json!({
        "LoadBalancerId": lb.load_balancer_id,
        "LoadBalancerName": lb.name,
        "LoadBalancerStatus": export::instance_status_name(lb.status),
        "Address": lb.address.to_string(),
        "AddressIPVersion": config::IpVersion::of(lb.address).as_str(),
        "RegionId": ctx.settings.region_id,
        "RegionIdAlias": ctx.settings.region_id,
        "AddressType": m.address_type,
        "InternetChargeType": m.internet_charge_type,
        "Bandwidth": m.bandwidth,
        "LoadBalancerSpec": m.spec,
        "PayType": m.pay_type,
        "NetworkType": m.network_type,
        "VpcId": m.vpc_id,
        "VSwitchId": m.vswitch_id,
        "MasterZoneId": m.master_zone_id,
        "SlaveZoneId": m.slave_zone_id,
        "ResourceGroupId": m.resource_group_id,
        "CreateTime": create_time(m.create_time_ms),
        "CreateTimeStamp": m.create_time_ms,
    }))
}

fn tags_match(meta: Option<&LbMeta>, wanted: &[(String, Option<String>)]) -> bool {
    wanted.iter().all(|(k, v)| {
        meta.is_some_and(|m| {
            m.tags
                .iter()
                .any(|(tk, tv)| tk == k && v.as_ref().is_none_or(|v| v == tv))
        })
    })
}

fn read_tags(p: &mut ParamMap, required: bool) -> Result<Vec<(String, Option<String>)>, ApiError> {
    let Some(list) = p.objects("Tags").map_err(issue)? else {
        return if required {
            Err(ApiError::missing("Tags"))
        } else {
            Ok(Vec::new())
        };
    };
    if list.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "The specified parameter Tags is not valid: at most 10 tags",
        ));
    }
    let mut out = Vec::new();
    for mut t in list {
        let key = req_str(&mut t, "TagKey")?;
        let value = opt_str(&mut t, "TagValue")?;
        // §13: at most 64/128 characters, never starting with "aliyun" (reserved).
        if key.chars().count() > 64 || key.starts_with("aliyun") {
            return Err(ApiError::invalid(
                "The specified parameter TagKey is not valid.",
            ));
        }
        if let Some(v) = &value {
            if v.chars().count() > 128 || v.starts_with("aliyun") {
                return Err(ApiError::invalid(
                    "The specified parameter TagValue is not valid.",
                ));
            }
        }
        out.push((key, value));
    }
    Ok(out)
}

fn id_filter(p: &mut ParamMap, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(text) = opt_str(p, name)? else {
        return Ok(None);
    };
    let ids: Vec<String> = text
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    // B2.7: at most 10 values.
    if ids.len() > 10 {
        return Err(ApiError::invalid(format!(
            "The specified parameter {name} is not valid: at most 10 values"
        )));
    }
    Ok(Some(ids))
}

pub fn describe_load_balancers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let ids = id_filter(p, "LoadBalancerId")?;
    let names = id_filter(p, "LoadBalancerName")?;
    let address = opt_str(p, "Address")?;
    let address_type = opt_str(p, "AddressType")?;
    let network_type = opt_str(p, "NetworkType")?;
    let charge = opt_str(p, "InternetChargeType")?;
    let server_id = opt_str(p, "ServerId")?;
    let server_addrs = id_filter(p, "ServerIntranetAddress")?;
    let master_zone = opt_str(p, "MasterZoneId")?;
    let slave_zone = opt_str(p, "SlaveZoneId")?;
    for skip in [
        "VpcId",
        "VswitchId",
        "ResourceGroupId",
        "PageNumber",
        "PageSize",
    ] {
        p.skip(skip);
    }
    let tags = read_tags(p, false)?;
    let model = &*ctx.model;
    let has_server = |lb: &LoadBalancer, id: &str| {
        lb.backend_servers.iter().any(|s| s.server_id == id)
            || lb
                .vserver_groups
                .iter()
                .flat_map(|g| &g.backend_servers)
                .any(|s| s.server_id == id)
            || lb
                .master_slave_groups
                .iter()
                .any(|g| g.master.server_id == id || g.slave.server_id == id)
    };
    let mut out = Vec::new();
    for lb in model.lbs.values() {
        let meta = model.meta.get(&lb.load_balancer_id);
        // "Fuzzy" (S4): a substring match.
        let fuzzy = |list: &Option<Vec<String>>, value: &str| {
            list.as_ref()
                .is_none_or(|l| l.iter().any(|x| value.contains(x.as_str())))
        };
        let meta_is = |want: &Option<String>, f: fn(&LbMeta) -> &String| {
            want.as_ref()
                .is_none_or(|w| meta.is_some_and(|m| f(m) == w))
        };
        let keep = fuzzy(&ids, &lb.load_balancer_id)
            && fuzzy(&names, &lb.name)
            && address
                .as_ref()
                .is_none_or(|a| *a == lb.address.to_string())
            && meta_is(&address_type, |m| &m.address_type)
            && meta_is(&network_type, |m| &m.network_type)
            && meta_is(&charge, |m| &m.internet_charge_type)
            && meta_is(&master_zone, |m| &m.master_zone_id)
            && meta_is(&slave_zone, |m| &m.slave_zone_id)
            && server_id.as_ref().is_none_or(|s| has_server(lb, s))
            && server_addrs.as_ref().is_none_or(|addrs| {
                addrs.iter().any(|a| {
                    lb.backend_servers.iter().any(|s| {
                        model
                            .servers
                            .get(&s.server_id)
                            .map_or(s.server_id.clone(), |ip| ip.to_string())
                            .contains(a.as_str())
                    })
                })
            })
            && tags_match(meta, &tags);
        if keep {
            out.push(Value::Object(lb_summary(ctx, lb)));
        }
    }
    let total = out.len();
    Ok(resp(json!({
        "LoadBalancers": wrap("LoadBalancer", out),
        "TotalCount": total,
        "PageNumber": 1,
        "PageSize": total,
    })))
}

pub fn describe_load_balancer_attribute(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    p.skip("MasterZoneId");
    p.skip("SlaveZoneId");
    let lb = lb(ctx.model, &id)?;
    let mut r = lb_summary(ctx, lb);
    let ports: Vec<Value> = lb
        .listeners
        .iter()
        .map(|l| json!(l.listener_port))
        .collect();
    let pp: Vec<Value> = lb
        .listeners
        .iter()
        .map(|l| json!({"ListenerPort": l.listener_port, "ListenerProtocol": l.protocol.as_str()}))
        .collect();
    let servers: Vec<Value> = lb
        .backend_servers
        .iter()
        .map(|s| json!({"ServerId": s.server_id, "Weight": s.weight}))
        .collect();
    r.insert("ListenerPorts".into(), wrap("ListenerPort", ports));
    r.insert(
        "ListenerPortsAndProtocol".into(),
        wrap("ListenerPortAndProtocol", pp),
    );
    r.insert("BackendServers".into(), wrap("BackendServer", servers));
    Ok(r)
}

fn meta_mut<'m>(ctx: &'m mut Ctx, id: &str) -> Result<&'m mut LbMeta, ApiError> {
    lb(ctx.model, id)?;
    ctx.model
        .meta
        .get_mut(id)
        .ok_or_else(|| ApiError::invalid("The Instance is Not Available."))
}

pub fn modify_internet_spec(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let charge = choice(p, "InternetChargeType", &["paybybandwidth", "paybytraffic"])?;
    let bandwidth = match opt_int(p, "Bandwidth")? {
        None => None,
        Some(b @ 1..=1000) => Some(b as u32),
        Some(_) => return Err(ApiError::invalid("The specified bandwidth is not valid.")),
    };
    let m = meta_mut(ctx, &id)?;
    if let Some(c) = charge {
        if m.address_type == "intranet" && c != "paybytraffic" {
            return Err(ApiError::new(
                "UnsupportedOperation",
                400,
                "The Loadbalancer doesn't support this function.",
            ));
        }
        m.internet_charge_type = c.to_string();
    }
    if let Some(b) = bandwidth {
        m.bandwidth = b;
    }
    Ok(Response::new())
}

pub fn modify_instance_spec(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let spec = choice(
        p,
        "LoadBalancerSpec",
        &[
            "slb.s1.small",
            "slb.s2.small",
            "slb.s2.medium",
            "slb.s3.small",
            "slb.s3.medium",
            "slb.s3.large",
        ],
    )?;
    let m = meta_mut(ctx, &id)?;
    if let Some(s) = spec {
        m.spec = s.to_string();
    }
    Ok(Response::new())
}

pub fn modify_pay_type(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    choice(p, "PayType", &["PrePay"])?.ok_or_else(|| ApiError::missing("PayType"))?;
    let cycle = choice(p, "PricingCycle", &["year", "month"])?
        .ok_or_else(|| ApiError::missing("PricingCycle"))?;
    let duration = opt_int(p, "Duration")?.ok_or_else(|| ApiError::missing("Duration"))?;
    let max = if cycle == "year" { 3 } else { 9 };
    if !(1..=max).contains(&duration) {
        return Err(ApiError::invalid(
            "The specified parameter Duration is not valid.",
        ));
    }
    p.boolean("AutoPay").map_err(issue)?;
    meta_mut(ctx, &id)?.pay_type = "PrePay".to_string();
    Ok(Response::new())
}

// ---------------------------------------------------------------------------------------------
// Listeners (§5).

fn listener_ctx<'m>(model: &'m Model, lb: &'m LoadBalancer) -> ListenerContext<'m> {
    ListenerContext {
        vip: lb.address,
        vserver_groups: &lb.vserver_groups,
        master_slave_groups: &lb.master_slave_groups,
        acls: &model.acls,
    }
}

/// Copies the request's parameters except the ones the action itself consumed, marking all
/// of them read (the listener check reports unknown ones). Rules and domain extensions have
/// their own actions (§11, §12), so a listener request may not carry them.
fn listener_request(p: &mut ParamMap, consumed: &[&str]) -> Result<ParamMap, ApiError> {
    let mut m = ParamMap::new();
    for (k, v) in p.entries().to_vec() {
        p.skip(&k);
        if k == "Rules" || k == "DomainExtensions" {
            return Err(ApiError::new(
                "UnsupportedParameter",
                400,
                format!(
                    "The input parameter is not unsupported: {k} are managed by their own actions"
                ),
            ));
        }
        if !consumed.contains(&k.as_str()) {
            m.set(&k, v);
        }
    }
    Ok(m)
}

pub fn create_listener(
    ctx: &mut Ctx,
    p: &mut ParamMap,
    protocol: Protocol,
) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let port = req_port(p, "ListenerPort")?;
    let mut m = listener_request(p, &["LoadBalancerId"])?;
    m.set_str("ListenerProtocol", protocol.as_str());
    // B3.1: a listener created through the API is stopped until started.
    m.set_str("Status", "stopped");
    let model = &*ctx.model;
    let lb = lb(model, &id)?;
    if lb.listeners.iter().any(|l| l.listener_port == port) {
        return Err(ApiError::new(
            "ListenerAlreadyExists",
            400,
            "There is already a listener bound to the port on the specified load balancer.",
        ));
    }
    let listener =
        check_listener(&mut m, listener_ctx(model, lb)).map_err(|i| ApiError::from_issues(&i))?;
    check_certificates(model, &listener)?;
    if let Some(i) = check_listener_count(lb.listeners.len() + 1) {
        return Err(issue(i));
    }
    let lb = lb_mut(ctx.model, &id)?;
    lb.listeners.push(listener);
    let indexed: Vec<(usize, &Listener)> = lb.listeners.iter().enumerate().collect();
    let issues = check_listener_set(&indexed);
    if !issues.is_empty() {
        return Err(ApiError::from_issues(&issues));
    }
    Ok(Response::new())
}

fn protocol_mismatch() -> ApiError {
    ApiError::new(
        "UnsupportedOperationonfixedprotocalport",
        400,
        "The specified port has been assigned one type of protocal, and this protocal doesn't support this operation.",
    )
}

/// B3.4: a listener waiting for the data plane cannot be changed.
fn ensure_settled(ctx: &Ctx, lb: &str, port: u16) -> Result<(), ApiError> {
    match (ctx.pending)(lb, port) {
        Some(_) => Err(ApiError::listener_processing()),
        None => Ok(()),
    }
}

pub fn set_listener(
    ctx: &mut Ctx,
    p: &mut ParamMap,
    protocol: Protocol,
) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let port = req_port(p, "ListenerPort")?;
    let mut request = listener_request(p, &["LoadBalancerId", "ListenerPort"])?;
    let model = &*ctx.model;
    let lb = lb(model, &id)?;
    let idx = listener_index(lb, port)?;
    let old = &lb.listeners[idx];
    if old.protocol != protocol {
        return Err(protocol_mismatch()); // B3.10
    }
    ensure_settled(ctx, &id, port)?;
    let mut stored = export::listener(old);
    // §5.5: `VServerGroup` / `MasterSlaveServerGroup` switch the group references.
    for (switch, key, other) in [
        ("VServerGroup", "VServerGroupId", "MasterSlaveServerGroupId"),
        (
            "MasterSlaveServerGroup",
            "MasterSlaveServerGroupId",
            "VServerGroupId",
        ),
    ] {
        match request.remove(switch) {
            None => {}
            Some(PValue::Str(s)) if s == "on" => {
                if request.get(key).is_none() {
                    return Err(ApiError::missing(key));
                }
                stored.remove(other);
            }
            Some(PValue::Str(s)) if s == "off" => {
                stored.remove(key);
                request.remove(key);
            }
            Some(_) => {
                return Err(ApiError::invalid(format!(
                    "The specified parameter {switch} is not valid."
                )))
            }
        }
        if request.get(key).is_some() {
            stored.remove(other);
        }
    }
    if request.get("ListenerProtocol").is_some() || request.get("Status").is_some() {
        return Err(ApiError::new(
            "UnsupportedParameter",
            400,
            "The input parameter is not unsupported.",
        ));
    }
    stored.overlay(&request);
    let listener = check_listener(&mut stored, listener_ctx(model, lb))
        .map_err(|i| ApiError::from_issues(&i))?;
    check_certificates(model, &listener)?;
    let running = old.status == ListenerStatus::Running;
    let changed = listener != *old;
    lb_mut(ctx.model, &id)?.listeners[idx] = listener;
    if running && changed {
        // B3.4: running → configuring → running once the data plane has it.
        ctx.transitions.push((id, port, Transition::Configuring));
    }
    Ok(Response::new())
}

fn listener_status(ctx: &Ctx, lb: &str, l: &Listener) -> &'static str {
    match (ctx.pending)(lb, l.listener_port) {
        Some(t) => t.as_str(),
        None => export::status_name(l.status),
    }
}

pub fn describe_listener(
    ctx: &mut Ctx,
    p: &mut ParamMap,
    protocol: Protocol,
) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let port = req_port(p, "ListenerPort")?;
    let lb = lb(ctx.model, &id)?;
    let l = &lb.listeners[listener_index(lb, port)?];
    if l.protocol != protocol {
        return Err(protocol_mismatch());
    }
    let mut r = Response::new();
    for (k, v) in export::listener(l).entries() {
        let value = match v {
            PValue::Str(s) => json!(s),
            PValue::Int(i) => json!(i),
            PValue::Bool(b) => json!(b),
            PValue::List(_) => continue,
        };
        r.insert(k.clone(), value);
    }
    r.insert("Status".into(), json!(listener_status(ctx, &id, l)));
    r.insert("LoadBalancerId".into(), json!(id));
    if let Some(Value::String(ms)) = r.get("MasterSlaveServerGroupId").cloned() {
        // §5.9 documents the misspelt key; both are returned.
        r.insert("MaterSlaveServerGroupId".into(), json!(ms));
    }
    if protocol == Protocol::Udp {
        if let Some(t) = r.get("HealthCheckTimeout").cloned() {
            r.insert("HealthCheckConnectTimeout".into(), t);
        }
    }
    if protocol.is_layer7() {
        r.insert("XForwardedFor".into(), json!("on")); // B9.1
    } else {
        r.insert("HealthCheck".into(), json!("on")); // B8.1
    }
    Ok(r)
}

fn listener_port_action(ctx: &mut Ctx, p: &mut ParamMap) -> Result<(String, u16, usize), ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let port = req_port(p, "ListenerPort")?;
    let lb = lb(ctx.model, &id)?;
    let idx = listener_index(lb, port)?;
    Ok((id, port, idx))
}

pub fn start_listener(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, idx) = listener_port_action(ctx, p)?;
    let lb = lb_mut(ctx.model, &id)?;
    if lb.status == InstanceStatus::Locked {
        return Err(ApiError::invalid("The Instance is Not Available.")); // B2.3
    }
    let running = lb.listeners[idx].status == ListenerStatus::Running;
    ensure_settled(ctx, &id, port)?;
    if running {
        // B3.3: Start only from `stopped`.
        return Err(ApiError::invalid(
            "The specified parameter ListenerStatus is not valid.",
        ));
    }
    lb_mut(ctx.model, &id)?.listeners[idx].status = ListenerStatus::Running;
    ctx.transitions.push((id, port, Transition::Starting));
    Ok(Response::new())
}

pub fn stop_listener(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, idx) = listener_port_action(ctx, p)?;
    let lb = lb(ctx.model, &id)?;
    if lb.status == InstanceStatus::Locked {
        return Err(ApiError::invalid("The Instance is Not Available.")); // B2.3
    }
    let running = lb.listeners[idx].status == ListenerStatus::Running;
    ensure_settled(ctx, &id, port)?;
    if running {
        lb_mut(ctx.model, &id)?.listeners[idx].status = ListenerStatus::Stopped;
        ctx.transitions.push((id, port, Transition::Stopping)); // B3.5
    }
    Ok(Response::new())
}

pub fn delete_listener(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, idx) = listener_port_action(ctx, p)?;
    ensure_settled(ctx, &id, port)?; // B3.6
    lb_mut(ctx.model, &id)?.listeners.remove(idx);
    Ok(Response::new())
}

// ---------------------------------------------------------------------------------------------
// Default server group (§7).

fn servers_response(lb: &LoadBalancer) -> Response {
    let servers: Vec<Value> = lb
        .backend_servers
        .iter()
        .map(|s| json!({"ServerId": s.server_id, "Weight": s.weight}))
        .collect();
    resp(json!({
        "LoadBalancerId": lb.load_balancer_id,
        "BackendServers": wrap("BackendServer", servers),
    }))
}

pub fn add_backend_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let list = server_list(p, "BackendServers")?;
    let lb_ref = lb(ctx.model, &id)?;
    let mctx = member_ctx(ctx.model, lb_ref);
    let mut new = Vec::new();
    for mut m in list {
        new.push(check_backend_server(&mut m, mctx).map_err(|i| ApiError::from_issues(&i))?);
    }
    // §7.1: the first occurrence of a server in one request wins; an existing member gets
    // the new weight.
    let new = dedup_first(new, |s| s.server_id.clone());
    let lb = lb_mut(ctx.model, &id)?;
    for s in new {
        match lb
            .backend_servers
            .iter_mut()
            .find(|b| b.server_id == s.server_id)
        {
            Some(b) => b.weight = s.weight,
            None => lb.backend_servers.push(s),
        }
    }
    Ok(servers_response(lb))
}

pub fn remove_backend_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let ids = server_ids(p, "BackendServers")?;
    let lb = lb_mut(ctx.model, &id)?;
    lb.backend_servers.retain(|s| !ids.contains(&s.server_id));
    Ok(servers_response(lb))
}

pub fn set_backend_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let list = server_list(p, "BackendServers")?;
    let lb_ref = lb(ctx.model, &id)?;
    let mctx = member_ctx(ctx.model, lb_ref);
    let mut new = Vec::new();
    for mut m in list {
        new.push(check_backend_server(&mut m, mctx).map_err(|i| ApiError::from_issues(&i))?);
    }
    let lb = lb_mut(ctx.model, &id)?;
    for s in new {
        match lb
            .backend_servers
            .iter_mut()
            .find(|b| b.server_id == s.server_id)
        {
            Some(b) => b.weight = s.weight,
            None => {
                return Err(ApiError::new(
                    "InvalidServerId.NotFound",
                    400,
                    "The specified server is not found.",
                ))
            }
        }
    }
    Ok(servers_response(lb))
}

pub fn describe_health_status(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let port = opt_int(p, "ListenerPort")?.map(port).transpose()?;
    let lb = lb(ctx.model, &id)?;
    let listeners: Vec<&Listener> = lb
        .listeners
        .iter()
        .filter(|l| port.is_none_or(|p| p == l.listener_port))
        .collect();
    if port.is_some() && listeners.is_empty() {
        return Err(ApiError::new(
            "CheckedListenerNotFound",
            404,
            "No health-checked Listener to the specified port of the Load Balancer.",
        ));
    }
    let cfg = ctx.model.config(&config::Agent::default());
    let mut out = Vec::new();
    for l in listeners {
        for m in cfg.serving_members(lb, l) {
            // B8.14: no check running (stopped listener, check off) ⇒ unavailable.
            let checked = l.status == ListenerStatus::Running
                && l.health_check.enabled
                && lb.status == InstanceStatus::Active;
            let status = match checked.then(|| (ctx.health)(&id, l.listener_port, m.addr, m.port)) {
                Some(Some(true)) => "normal",
                Some(Some(false)) => "abnormal",
                _ => "unavailable",
            };
            out.push(json!({
                "ServerId": m.server_id,
                "ServerIp": m.addr.to_string(),
                "Port": m.port,
                "ListenerPort": l.listener_port,
                "Protocol": l.protocol.as_str(),
                "ServerHealthStatus": status,
            }));
        }
    }
    Ok(resp(json!({
        "LoadBalancerId": id,
        "BackendServers": wrap("BackendServer", out),
    })))
}

// ---------------------------------------------------------------------------------------------
// VServerGroups (§9) and master/slave groups (§10).

fn find_group(model: &Model, group_id: &str) -> Result<(String, usize), ApiError> {
    model
        .lbs
        .values()
        .find_map(|lb| {
            lb.vserver_groups
                .iter()
                .position(|g| g.vserver_group_id == group_id)
                .map(|i| (lb.load_balancer_id.clone(), i))
        })
        .ok_or_else(ApiError::rs_pool_not_found)
}

fn group_response(g: &VServerGroup) -> Response {
    let servers: Vec<Value> = g
        .backend_servers
        .iter()
        .map(|s| json!({"ServerId": s.server_id, "Port": s.port, "Weight": s.weight}))
        .collect();
    resp(json!({
        "VServerGroupId": g.vserver_group_id,
        "VServerGroupName": g.name,
        "BackendServers": wrap("BackendServer", servers),
    }))
}

fn group_name(p: &mut ParamMap, name: &str, required: bool) -> Result<Option<String>, ApiError> {
    let v = if required {
        Some(req_str(p, name)?)
    } else {
        opt_str(p, name)?
    };
    if let Some(n) = &v {
        if !check_name(n, 80) {
            return Err(ApiError::invalid(format!(
                "The specified parameter {name} is not valid."
            )));
        }
    }
    Ok(v)
}

fn group_members(
    model: &Model,
    lb: &LoadBalancer,
    list: Vec<ParamMap>,
) -> Result<Vec<config::GroupServer>, ApiError> {
    let mctx = member_ctx(model, lb);
    let mut out = Vec::new();
    for mut m in list {
        out.push(check_group_server(&mut m, mctx).map_err(|i| ApiError::from_issues(&i))?);
    }
    Ok(dedup_first(out, |s| (s.server_id.clone(), s.port)))
}

pub fn create_vserver_group(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let name = group_name(p, "VServerGroupName", true)?.unwrap_or_default();
    let list = match p.get("BackendServers") {
        None => Vec::new(),
        Some(_) => server_list(p, "BackendServers")?,
    };
    let lb_ref = lb(ctx.model, &id)?;
    let servers = group_members(ctx.model, lb_ref, list)?;
    let g = VServerGroup {
        vserver_group_id: new_id("rsp"),
        name,
        backend_servers: servers,
    };
    let out = group_response(&g);
    lb_mut(ctx.model, &id)?.vserver_groups.push(g);
    Ok(out)
}

fn group_mut<'m>(model: &'m mut Model, lb: &str, idx: usize) -> &'m mut VServerGroup {
    // Indices come from `find_group` on the same draft.
    &mut model
        .lbs
        .get_mut(lb)
        .expect("group's instance")
        .vserver_groups[idx]
}

pub fn set_vserver_group_attribute(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let name = group_name(p, "VServerGroupName", false)?;
    let list = match p.get("BackendServers") {
        None => Vec::new(),
        Some(_) => server_list(p, "BackendServers")?,
    };
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let members = group_members(ctx.model, lb(ctx.model, &lb_id)?, list)?;
    let g = group_mut(ctx.model, &lb_id, idx);
    if let Some(n) = name {
        g.name = n;
    }
    // §9.2: only weights of existing members change.
    for m in members {
        if let Some(s) = g
            .backend_servers
            .iter_mut()
            .find(|s| s.server_id == m.server_id && s.port == m.port)
        {
            s.weight = m.weight;
        }
    }
    Ok(group_response(g))
}

pub fn add_vserver_group_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let list = server_list(p, "BackendServers")?;
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let members = group_members(ctx.model, lb(ctx.model, &lb_id)?, list)?;
    let g = group_mut(ctx.model, &lb_id, idx);
    for m in members {
        match g
            .backend_servers
            .iter_mut()
            .find(|s| s.server_id == m.server_id && s.port == m.port)
        {
            Some(s) => s.weight = m.weight,
            None => g.backend_servers.push(m),
        }
    }
    Ok(group_response(g))
}

/// `{ServerId, Port}` pairs of a removal list (weights, if given, are ignored).
fn member_keys(list: Vec<ParamMap>) -> Result<Vec<(String, u16)>, ApiError> {
    list.into_iter()
        .map(|mut m| {
            let id = req_str(&mut m, "ServerId")?;
            let port = req_port(&mut m, "Port")?;
            m.skip("Weight");
            m.skip("ServerType");
            Ok((id, port))
        })
        .collect()
}

pub fn remove_vserver_group_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let keys = member_keys(server_list(p, "BackendServers")?)?;
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let g = group_mut(ctx.model, &lb_id, idx);
    g.backend_servers
        .retain(|s| !keys.iter().any(|(i, p)| *i == s.server_id && *p == s.port));
    Ok(group_response(g))
}

pub fn modify_vserver_group_servers(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let old = match p.get("OldBackendServers") {
        None => Vec::new(),
        Some(_) => member_keys(server_list(p, "OldBackendServers")?)?,
    };
    let new = match p.get("NewBackendServers") {
        None => Vec::new(),
        Some(_) => server_list(p, "NewBackendServers")?,
    };
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let members = group_members(ctx.model, lb(ctx.model, &lb_id)?, new)?;
    let g = group_mut(ctx.model, &lb_id, idx);
    g.backend_servers
        .retain(|s| !old.iter().any(|(i, p)| *i == s.server_id && *p == s.port));
    for m in members {
        match g
            .backend_servers
            .iter_mut()
            .find(|s| s.server_id == m.server_id && s.port == m.port)
        {
            Some(s) => s.weight = m.weight,
            None => g.backend_servers.push(m),
        }
    }
    Ok(group_response(g))
}

fn in_use() -> ApiError {
    ApiError::invalid("The resource status is invalid: the group is used by a listener")
}

pub fn delete_vserver_group(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let lb = lb_mut(ctx.model, &lb_id)?;
    let by_rule = |l: &Listener| {
        l.http
            .iter()
            .flat_map(|h| &h.rules)
            .any(|r| r.vserver_group_id == gid)
    };
    if lb
        .listeners
        .iter()
        .any(|l| l.group == GroupRef::VServerGroup(gid.clone()) || by_rule(l))
    {
        return Err(in_use());
    }
    lb.vserver_groups.remove(idx);
    Ok(Response::new())
}

pub fn describe_vserver_groups(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    p.skip("IncludeRule");
    p.skip("IncludeListener");
    let lb = lb(ctx.model, &id)?;
    let groups: Vec<Value> = lb
        .vserver_groups
        .iter()
        .map(|g| json!({"VServerGroupId": g.vserver_group_id, "VServerGroupName": g.name}))
        .collect();
    Ok(resp(
        json!({ "VServerGroups": wrap("VServerGroup", groups) }),
    ))
}

pub fn describe_vserver_group_attribute(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let gid = req_str(p, "VServerGroupId")?;
    let (lb_id, idx) = find_group(ctx.model, &gid)?;
    let g = &lb(ctx.model, &lb_id)?.vserver_groups[idx];
    let mut r = group_response(g);
    r.insert("LoadBalancerId".into(), json!(lb_id));
    Ok(r)
}

/// §10: the action sections' `MasterSlaveVServerGroupId` and the listeners'
/// `MasterSlaveServerGroupId` are synonyms.
fn ms_group_id(p: &mut ParamMap) -> Result<String, ApiError> {
    match opt_str(p, "MasterSlaveServerGroupId")? {
        Some(id) if !id.trim().is_empty() => {
            p.skip("MasterSlaveVServerGroupId");
            Ok(id.trim().to_string())
        }
        _ => req_str(p, "MasterSlaveVServerGroupId"),
    }
}

fn find_ms_group(model: &Model, gid: &str) -> Result<(String, usize), ApiError> {
    model
        .lbs
        .values()
        .find_map(|lb| {
            lb.master_slave_groups
                .iter()
                .position(|g| g.master_slave_server_group_id == gid)
                .map(|i| (lb.load_balancer_id.clone(), i))
        })
        .ok_or_else(ApiError::rs_pool_not_found)
}

fn ms_response(g: &MasterSlaveGroup) -> Response {
    let member = |s: &config::GroupServer, role: &str| json!({"ServerId": s.server_id, "Port": s.port, "Weight": s.weight, "ServerType": role});
    resp(json!({
        "MasterSlaveVServerGroupId": g.master_slave_server_group_id,
        "MasterSlaveVServerGroupName": g.name,
        // §10.1 documents the same name twice.
        "MasterSlaveBackendServers": wrap(
            "MasterSlaveBackendServer",
            vec![member(&g.master, "Master"), member(&g.slave, "Slave")]
        ),
    }))
}

pub fn create_master_slave_group(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let name = match opt_str(p, "MasterSlaveVServerGroupName")? {
        Some(n) => {
            p.skip("MasterSlaveServerGroupName");
            Some(n)
        }
        None => opt_str(p, "MasterSlaveServerGroupName")?,
    }
    .ok_or_else(|| ApiError::missing("MasterSlaveVServerGroupName"))?;
    if !check_name(&name, 80) {
        return Err(ApiError::invalid(
            "The specified parameter MasterSlaveVServerGroupName is not valid.",
        ));
    }
    let list = p
        .objects("MasterSlaveBackendServers")
        .map_err(issue)?
        .ok_or_else(|| ApiError::missing("MasterSlaveBackendServers"))?;
    let lb_ref = lb(ctx.model, &id)?;
    let mctx = member_ctx(ctx.model, lb_ref);
    let mut members = Vec::new();
    for mut m in list {
        members
            .push(check_master_slave_server(&mut m, mctx).map_err(|i| ApiError::from_issues(&i))?);
    }
    // B4.5: exactly two distinct members, one master and one slave.
    let (master, slave) = match members.as_slice() {
        [(a, MemberRole::Master), (b, MemberRole::Slave)]
        | [(b, MemberRole::Slave), (a, MemberRole::Master)]
            if (a.server_id.as_str(), a.port) != (b.server_id.as_str(), b.port) =>
        {
            (a.clone(), b.clone())
        }
        _ => {
            return Err(ApiError::invalid(
                "The specified parameter MasterSlaveBackendServers is not valid: exactly one Master and one Slave, distinct",
            ))
        }
    };
    let g = MasterSlaveGroup {
        master_slave_server_group_id: new_id("rsp"),
        name,
        master,
        slave,
    };
    let out = ms_response(&g);
    lb_mut(ctx.model, &id)?.master_slave_groups.push(g);
    Ok(out)
}

pub fn delete_master_slave_group(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = ms_group_id(p)?;
    let (lb_id, idx) = find_ms_group(ctx.model, &gid)?;
    let lb = lb_mut(ctx.model, &lb_id)?;
    if lb
        .listeners
        .iter()
        .any(|l| l.group == GroupRef::MasterSlave(gid.clone()))
    {
        return Err(in_use());
    }
    lb.master_slave_groups.remove(idx);
    Ok(Response::new())
}

pub fn describe_master_slave_group(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let gid = ms_group_id(p)?;
    let (lb_id, idx) = find_ms_group(ctx.model, &gid)?;
    let mut r = ms_response(&lb(ctx.model, &lb_id)?.master_slave_groups[idx]);
    r.insert("LoadBalancerId".into(), json!(lb_id));
    Ok(r)
}

pub fn describe_master_slave_groups(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let groups: Vec<Value> = lb(ctx.model, &id)?
        .master_slave_groups
        .iter()
        .map(|g| {
            json!({
                "MasterSlaveVServerGroupId": g.master_slave_server_group_id,
                "MasterSlaveVServerGroupName": g.name,
            })
        })
        .collect();
    Ok(resp(json!({
        "MasterSlaveVServerGroups": wrap("MasterSlaveVServerGroup", groups)
    })))
}

// ---------------------------------------------------------------------------------------------
// Legacy access control (§6.1–§6.4, B7.8–B7.11).

fn listener_mut<'m>(
    model: &'m mut Model,
    id: &str,
    port: u16,
) -> Result<&'m mut Listener, ApiError> {
    let lb = lb_mut(model, id)?;
    let idx = listener_index(lb, port)?;
    Ok(&mut lb.listeners[idx])
}

pub fn set_access_control_status(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, _) = listener_port_action(ctx, p)?;
    let status = choice(p, "AccessControlStatus", &["open_white_list", "close"])?
        .ok_or_else(|| ApiError::missing("AccessControlStatus"))?;
    ensure_settled(ctx, &id, port)?;
    let l = listener_mut(ctx.model, &id, port)?;
    l.access_control = match (status, l.access_control.take()) {
        ("close", _) => None,
        (_, Some(items)) => Some(items),
        // B7.11: an open list with no items admits nobody.
        (_, None) => Some(Vec::new()),
    };
    Ok(Response::new())
}

fn source_items(p: &mut ParamMap) -> Result<Vec<IpNet>, ApiError> {
    let text = req_str(p, "SourceItems")?;
    let items = parse_source_items(&text).map_err(issue)?;
    // §14 "SourceListOverLimit": per-request cap (300 in the console) — keep requests sane.
    if items.len() > 300 {
        return Err(ApiError::new(
            "SourceListOverLimit",
            400,
            "The sourceList is over the quato.",
        ));
    }
    Ok(items)
}

fn require_white_list(l: &mut Listener) -> Result<&mut Vec<IpNet>, ApiError> {
    l.access_control.as_mut().ok_or_else(|| {
        ApiError::new(
            "IncorrectListenerAccessControlStatusStatus",
            500,
            "Current listener access control status does not support this operation.",
        )
    })
}

pub fn add_white_list_item(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, _) = listener_port_action(ctx, p)?;
    let items = source_items(p)?;
    let l = listener_mut(ctx.model, &id, port)?;
    let list = require_white_list(l)?;
    for i in items {
        if !list.contains(&i) {
            list.push(i);
        }
    }
    Ok(Response::new())
}

pub fn remove_white_list_item(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, _) = listener_port_action(ctx, p)?;
    let items = source_items(p)?;
    let l = listener_mut(ctx.model, &id, port)?;
    require_white_list(l)?.retain(|i| !items.contains(i));
    Ok(Response::new())
}

pub fn describe_access_control(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, _, idx) = listener_port_action(ctx, p)?;
    let l = &lb(ctx.model, &id)?.listeners[idx];
    let (status, items) = match &l.access_control {
        None => ("close", String::new()),
        Some(items) => (
            "open_white_list",
            items
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(","),
        ),
    };
    Ok(resp(json!({
        "AccessControlStatus": status,
        "SourceItems": items,
        "ListenerPort": l.listener_port,
        "LoadBalancerId": id,
    })))
}

// ---------------------------------------------------------------------------------------------
// Tags (§13, B15.*): metadata of instances.

pub fn add_tags(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let tags = read_tags(p, true)?;
    let m = meta_mut(ctx, &id)?;
    for (k, v) in tags {
        let v = v.unwrap_or_default();
        match m.tags.iter_mut().find(|(tk, _)| *tk == k) {
            Some(t) => t.1 = v,
            None => m.tags.push((k, v)),
        }
    }
    if m.tags.len() > MAX_TAGS {
        return Err(ApiError::invalid(
            "The specified parameter Tags is not valid: an instance has at most 10 tags",
        ));
    }
    Ok(Response::new())
}

pub fn remove_tags(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let id = req_str(p, "LoadBalancerId")?;
    let tags = read_tags(p, true)?;
    let m = meta_mut(ctx, &id)?;
    m.tags.retain(|(k, v)| {
        !tags
            .iter()
            .any(|(tk, tv)| tk == k && tv.as_ref().is_none_or(|tv| tv == v))
    });
    Ok(Response::new())
}

pub fn describe_tags(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let ids = id_filter(p, "LoadBalancerId")?;
    let wanted = read_tags(p, false)?;
    p.skip("DistinctKey");
    p.skip("PageNumber");
    p.skip("PageSize");
    let mut counts: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (id, m) in &ctx.model.meta {
        if ids.as_ref().is_some_and(|ids| !ids.contains(id)) {
            continue;
        }
        if ids
            .as_ref()
            .is_some_and(|ids| !ids.iter().any(|i| ctx.model.lbs.contains_key(i)))
        {
            return Err(ApiError::lb_not_found());
        }
        for (k, v) in &m.tags {
            let hit = wanted.is_empty()
                || wanted
                    .iter()
                    .any(|(wk, wv)| wk == k && wv.as_ref().is_none_or(|wv| wv == v));
            if hit {
                counts
                    .entry((k.clone(), v.clone()))
                    .or_default()
                    .push(id.clone());
            }
        }
    }
    let sets: Vec<Value> = counts
        .into_iter()
        .map(|((k, v), ids)| json!({"TagKey": k, "TagValue": v, "InstanceCount": ids.len()}))
        .collect();
    let total = sets.len();
    Ok(resp(json!({
        "TagSets": wrap("TagSet", sets),
        "TotalCount": total,
        "PageNumber": 1,
        "PageSize": total,
    })))
}

// ---------------------------------------------------------------------------------------------
// Certificates (§4, B10.1–B10.6).

fn cert_name(p: &mut ParamMap, name: &str, required: bool) -> Result<String, ApiError> {
    let v = if required {
        req_str(p, name)?
    } else {
        opt_str(p, name)?.unwrap_or_default()
    };
    if !v.is_empty() && !check_name(&v, 80) {
        return Err(ApiError::invalid(format!(
            "The specified parameter {name} is not valid."
        )));
    }
    Ok(v)
}

fn cert_error(e: cert::CertError) -> ApiError {
    ApiError::new(e.code(), e.http_status(), e.message())
}

fn cert_record(
    ctx: &Ctx,
    name: String,
    info: cert::CertInfo,
    chain_pem: String,
    key_pem: Option<String>,
    resource_group_id: String,
) -> CertRecord {
    CertRecord::new(
        name,
        info,
        chain_pem,
        key_pem,
        resource_group_id,
        ctx.now_ms,
    )
}

fn cert_summary(ctx: &Ctx, kind: &str, id: &str, c: &CertRecord) -> Value {
    json!({
        format!("{kind}Id"): id,
        format!("{kind}Name"): c.name,
        "RegionId": ctx.settings.region_id,
        "Fingerprint": c.fingerprint,
        "CommonName": c.common_name,
        "SubjectAlternativeNames": wrap("SubjectAlternativeName", c.subject_alternative_names.iter().map(|s| json!(s)).collect()),
        "ExpireTime": c.expire_time,
        "ExpireTimeStamp": c.expire_timestamp_ms,
        "ResourceGroupId": c.resource_group_id,
        "CreateTimeStamp": c.create_time_ms,
    })
}

pub fn upload_server_certificate(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let name = cert_name(p, "ServerCertificateName", false)?;
    let cert = opt_str(p, "ServerCertificate")?.unwrap_or_default();
    let key = opt_str(p, "PrivateKey")?.unwrap_or_default();
    p.skip("AliCloudCertificateId");
    p.skip("AliCloudCertificateName");
    let rg = opt_str(p, "ResourceGroupId")?.unwrap_or_default();
    let v = cert::validate_server_certificate(&cert, &key).map_err(cert_error)?;
    let id = new_id("cert");
    let rec = cert_record(ctx, name.clone(), v.info, v.chain_pem, Some(v.key_pem), rg);
    let out = resp(json!({
        "ServerCertificateId": id,
        "ServerCertificateName": name,
        "Fingerprint": rec.fingerprint,
        "RegionId": ctx.settings.region_id,
        "ExpireTime": rec.expire_time,
        "ExpireTimeStamp": rec.expire_timestamp_ms,
        "CommonName": rec.common_name,
    }));
    ctx.model.certs.insert(id, rec);
    Ok(out)
}

pub fn upload_ca_certificate(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let name = cert_name(p, "CACertificateName", false)?;
    let cert = opt_str(p, "CACertificate")?.unwrap_or_default();
    let rg = opt_str(p, "ResourceGroupId")?.unwrap_or_default();
    let info = cert::validate_ca_certificate(&cert).map_err(cert_error)?;
    let id = new_id("ca");
    let rec = cert_record(ctx, name.clone(), info, cert.trim().to_string(), None, rg);
    let out = resp(json!({
        "CACertificateId": id,
        "CACertificateName": name,
        "Fingerprint": rec.fingerprint,
        "RegionId": ctx.settings.region_id,
        "ExpireTime": rec.expire_time,
        "ExpireTimeStamp": rec.expire_timestamp_ms,
        "CommonName": rec.common_name,
    }));
    ctx.model.ca_certs.insert(id, rec);
    Ok(out)
}

fn cert_not_found(ca: bool) -> ApiError {
    if ca {
        ApiError::new(
            "CACertificateId.NotFound",
            404,
            "Specified CACertificateId does not exist.",
        )
    } else {
        ApiError::new(
            "ServerCertificateId.NotFound",
            404,
            "Specified ServerCertificateId does not exist.",
        )
    }
}

/// B10.6: a certificate referenced by a listener cannot be deleted.
fn cert_in_use(model: &Model, id: &str) -> bool {
    model
        .lbs
        .values()
        .flat_map(|lb| &lb.listeners)
        .filter_map(|l| l.http.as_ref()?.tls.as_ref())
        .any(|t| {
            t.server_certificate_id == id
                || t.ca_certificate_id.as_deref() == Some(id)
                || t.domain_extensions
                    .iter()
                    .any(|e| e.server_certificate_id == id)
        })
}

fn delete_cert(ctx: &mut Ctx, p: &mut ParamMap, ca: bool) -> Result<Response, ApiError> {
    let id = req_str(
        p,
        if ca {
            "CACertificateId"
        } else {
            "ServerCertificateId"
        },
    )?;
    let map = if ca {
        &ctx.model.ca_certs
    } else {
        &ctx.model.certs
    };
    if !map.contains_key(&id) {
        return Err(cert_not_found(ca));
    }
    if cert_in_use(ctx.model, &id) {
        return Err(ApiError::new(
            "CertificateAndPrivateKeyIsRefered",
            400,
            "Certificate and PrivateKey Is Refered.",
        ));
    }
    if ca {
        ctx.model.ca_certs.remove(&id);
    } else {
        ctx.model.certs.remove(&id);
    }
    Ok(Response::new())
}

pub fn delete_server_certificate(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    delete_cert(ctx, p, false)
}

pub fn delete_ca_certificate(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    delete_cert(ctx, p, true)
}

fn describe_certs(ctx: &mut Ctx, p: &mut ParamMap, ca: bool) -> Result<Response, ApiError> {
    let kind = if ca {
        "CACertificate"
    } else {
        "ServerCertificate"
    };
    let id = opt_str(p, &format!("{kind}Id"))?;
    let rg = opt_str(p, "ResourceGroupId")?;
    let map = if ca {
        &ctx.model.ca_certs
    } else {
        &ctx.model.certs
    };
    let list: Vec<Value> = map
        .iter()
        .filter(|(k, c)| {
            id.as_ref().is_none_or(|i| i == *k)
                && rg.as_ref().is_none_or(|r| *r == c.resource_group_id)
        })
        .map(|(k, c)| cert_summary(ctx, kind, k, c))
        .collect();
    Ok(resp(json!({ format!("{kind}s"): wrap(kind, list) })))
}

pub fn describe_server_certificates(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    describe_certs(ctx, p, false)
}

pub fn describe_ca_certificates(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    describe_certs(ctx, p, true)
}

fn rename_cert(ctx: &mut Ctx, p: &mut ParamMap, ca: bool) -> Result<Response, ApiError> {
    let kind = if ca {
        "CACertificate"
    } else {
        "ServerCertificate"
    };
    let id = req_str(p, &format!("{kind}Id"))?;
    let name = cert_name(p, &format!("{kind}Name"), true)?;
    let map = if ca {
        &mut ctx.model.ca_certs
    } else {
        &mut ctx.model.certs
    };
    map.get_mut(&id).ok_or_else(|| cert_not_found(ca))?.name = name;
    Ok(Response::new())
}

pub fn set_server_certificate_name(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    rename_cert(ctx, p, false)
}

pub fn set_ca_certificate_name(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    rename_cert(ctx, p, true)
}

/// An HTTPS listener may only reference certificates that exist (§5.4); a domain extension's
/// certificate must cover its domain (B10.17).
fn check_certificates(model: &Model, l: &Listener) -> Result<(), ApiError> {
    if let Some(tls) = l.http.as_ref().and_then(|h| h.tls.as_ref()) {
        if !model.certs.contains_key(&tls.server_certificate_id) {
            return Err(cert_not_found(false));
        }
        for e in &tls.domain_extensions {
            let cert = model
                .certs
                .get(&e.server_certificate_id)
                .ok_or_else(|| cert_not_found(false))?;
            let names = || cert::served_names(&cert.common_name, &cert.subject_alternative_names);
            if !cert::covers(names(), &e.domain) {
                return Err(ApiError::invalid(format!(
                    "The specified parameter Domain is not valid: certificate {} is for {}, not {}",
                    e.server_certificate_id,
                    names().collect::<Vec<_>>().join(", "),
                    e.domain
                )));
            }
        }
        if let Some(ca) = &tls.ca_certificate_id {
            if !model.ca_certs.contains_key(ca) {
                return Err(cert_not_found(true));
            }
        }
    }
    Ok(())
}
