//! Semantic checks, independent of TOML: each `check_*` reads one API object from a [`Params`] bag
//! and returns the typed model or every issue found (paths relative to the object).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::error::{ApiCode, Issue};
use super::model::*;
use super::params::Params;
use super::read::Read;

/// Every listener parameter of slb-api.md §5.0 this module understands; a name from this list
/// that does not apply to a listener's protocol is reported as such rather than as unknown.
const LISTENER_PARAMS: &[&str] = &[
    "ListenerProtocol",
    "ListenerPort",
    "BackendServerPort",
    "Status",
    "Scheduler",
    "PersistenceTimeout",
    "EstablishedTimeout",
    "Bandwidth",
    "VServerGroupId",
    "MasterSlaveServerGroupId",
    "AclStatus",
    "AclId",
    "AclType",
    "AccessControlStatus",
    "SourceItems",
    "Description",
    "SynProxy",
    "ProxyProtocolV2Enabled",
    "HealthCheck",
    "HealthCheckType",
    "HealthCheckDomain",
    "HealthCheckURI",
    "HealthCheckConnectPort",
    "HealthyThreshold",
    "UnhealthyThreshold",
    "HealthCheckTimeout",
    "HealthCheckInterval",
    "HealthCheckHttpCode",
    "HealthCheckMethod",
    "HealthCheckHttpVersion",
    "HealthCheckReq",
    "HealthCheckExp",
    "XForwardedFor",
    "XForwardedFor_SLBIP",
    "XForwardedFor_SLBID",
    "XForwardedFor_proto",
    "XForwardedFor_SLBPORT",
    "XForwardedFor_ClientSrcPort",
    "StickySession",
    "StickySessionType",
    "CookieTimeout",
    "Cookie",
    "Gzip",
    "IdleTimeout",
    "RequestTimeout",
    "ListenerForward",
    "ForwardPort",
    "ServerCertificateId",
    "CACertificateId",
    "EnableHttp2",
    "TLSCipherPolicy",
    "Rules",
    "DomainExtensions",
];

/// B3.9: listeners per instance.
pub const MAX_LISTENERS_PER_LB: usize = 50;
/// B12.5: ports a UDP listener may not use.
pub const RESERVED_UDP_PORTS: [u16; 3] = [250, 4789, 4790];

fn done<T, P: Params>(r: Read<'_, P>, context: &str, value: Option<T>) -> Result<T, Vec<Issue>> {
    let issues = r.finish(&[], context);
    match value {
        Some(v) if issues.is_empty() => Ok(v),
        _ => Err(issues),
    }
}

/// §14: `[A-Za-z0-9-/._]`, 1..=max characters (LoadBalancerName and, by the spec's suggestion,
/// group names).
pub fn check_name(name: &str, max: usize) -> bool {
    let n = name.chars().count();
    (1..=max).contains(&n)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '.' | '_'))
}

/// §14 listener `Description`: 1–256 of letters, digits, `-/._`; the console also allows Chinese,
/// so any non-ASCII letter is accepted.
pub fn check_description(text: &str) -> bool {
    let n = text.chars().count();
    (1..=256).contains(&n)
        && text.chars().all(|c| {
            c.is_ascii_alphanumeric()
                || matches!(c, '-' | '/' | '.' | '_')
                || (!c.is_ascii() && c.is_alphanumeric())
        })
}

/// `ServerId` → address: the registry first, else the id itself as an IP literal (§7, not in docs).
pub fn resolve_server(servers: &BTreeMap<String, IpAddr>, server_id: &str) -> Option<IpAddr> {
    servers
        .get(server_id)
        .copied()
        .or_else(|| server_id.parse().ok())
}

/// What member checks need to know about the instance.
#[derive(Debug, Clone, Copy)]
pub struct MemberContext<'a> {
    pub servers: &'a BTreeMap<String, IpAddr>,
    /// The instance's VIP: members must be of the same address family.
    pub vip: IpAddr,
}

struct RawMember {
    server_id: String,
    port: Option<u16>,
    weight: u8,
}

/// Common part of all member kinds: ServerId (resolvable, same family as the VIP), Weight, Port.
fn read_member<P: Params>(
    r: &mut Read<'_, P>,
    ctx: MemberContext<'_>,
    with_port: bool,
) -> Option<RawMember> {
    let server_id = r.required_id("ServerId", "B4.1");
    if let Some(id) = &server_id {
        match resolve_server(ctx.servers, id) {
            None => r.issue(
                "ServerId",
                ApiCode::InvalidServerIdNotFound,
                "§7",
                format!("The specified server is not found: {id:?} is neither in [[Servers]] nor an IP address"),
            ),
            // We NAT without 4↔6 translation, so a member must share the VIP's family.
            Some(addr) if IpVersion::of(addr) != IpVersion::of(ctx.vip) => r.issue(
                "ServerId",
                ApiCode::InvalidParameter,
                "B12.1",
                format!(
                    "server {id:?} has address {addr} but the VIP {} is {}; backends must use the VIP's address family",
                    ctx.vip,
                    IpVersion::of(ctx.vip).as_str()
                ),
            ),
            Some(_) => {}
        }
    }
    // B4.7: weight 0..=100, default 100.
    let weight = r
        .range("Weight", 0, 100, ApiCode::InvalidWeightMalformed, "B4.7")
        .map_or(100, |w| w as u8);
    let port = if with_port {
        let port = r.port("Port");
        if port.is_none() {
            r.missing("Port", "B4.2");
        }
        port
    } else {
        None
    };
    Some(RawMember {
        server_id: server_id?,
        port,
        weight,
    })
}

/// A default-group member `{ServerId, Weight}` (B4.1).
pub fn check_backend_server<P: Params>(
    p: &mut P,
    ctx: MemberContext<'_>,
) -> Result<BackendServer, Vec<Issue>> {
    let mut r = Read::new(p);
    let m = read_member(&mut r, ctx, false);
    done(
        r,
        "BackendServers",
        m.map(|m| BackendServer {
            server_id: m.server_id,
            weight: m.weight,
        }),
    )
}

/// A VServerGroup member `{ServerId, Port, Weight}` (B4.2).
pub fn check_group_server<P: Params>(
    p: &mut P,
    ctx: MemberContext<'_>,
) -> Result<GroupServer, Vec<Issue>> {
    let mut r = Read::new(p);
    let m = read_member(&mut r, ctx, true);
    let v = m.and_then(|m| {
        Some(GroupServer {
            port: m.port?,
            server_id: m.server_id,
            weight: m.weight,
        })
    });
    done(r, "BackendServers", v)
}

/// A master/slave member `{ServerId, Port, Weight, ServerType}`; ServerType defaults to Master (B4.5).
pub fn check_master_slave_server<P: Params>(
    p: &mut P,
    ctx: MemberContext<'_>,
) -> Result<(GroupServer, MemberRole), Vec<Issue>> {
    let mut r = Read::new(p);
    let m = read_member(&mut r, ctx, true);
    let role = r
        .choice(
            "ServerType",
            &[("Master", MemberRole::Master), ("Slave", MemberRole::Slave)],
            "B4.5",
        )
        .unwrap_or(MemberRole::Master);
    let v = m.and_then(|m| {
        Some((
            GroupServer {
                port: m.port?,
                server_id: m.server_id,
                weight: m.weight,
            },
            role,
        ))
    });
    done(r, "MasterSlaveBackendServers", v)
}

/// Checks every element of a member list, prefixing issues with `Name[i]`.
fn members<P: Params, T>(
    r: &mut Read<'_, P>,
    name: &str,
    mut check: impl FnMut(&mut P::Object) -> Result<T, Vec<Issue>>,
) -> Option<Vec<T>> {
    let list = r.objects(name)?;
    let mut out = Vec::with_capacity(list.len());
    for (i, mut obj) in list.into_iter().enumerate() {
        match check(&mut obj) {
            Ok(v) => out.push(v),
            Err(issues) => r.extend(&format!("{name}[{i}]"), issues),
        }
    }
    Some(out)
}

/// B4.10: a server listed twice keeps its first occurrence.
pub fn dedup_first<T, K: Eq + std::hash::Hash>(items: Vec<T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|t| seen.insert(key(t))).collect()
}

/// A VServerGroup (§9).
pub fn check_vserver_group<P: Params>(
    p: &mut P,
    ctx: MemberContext<'_>,
) -> Result<VServerGroup, Vec<Issue>> {
    let mut r = Read::new(p);
    let id = r.required_id("VServerGroupId", "§9");
    let name = group_name(&mut r, "VServerGroupName");
    let servers =
        members(&mut r, "BackendServers", |o| check_group_server(o, ctx)).unwrap_or_default();
    let v = id.map(|id| VServerGroup {
        vserver_group_id: id,
        name,
        backend_servers: dedup_first(servers, |s| (s.server_id.clone(), s.port)),
    });
    done(r, "VServerGroups", v)
}

/// Group names have no documented rule; slb-api.md §9 suggests the LoadBalancerName rule.
fn group_name<P: Params>(r: &mut Read<'_, P>, field: &str) -> String {
    let name = r.string(field).unwrap_or_default();
    if !name.is_empty() && !check_name(&name, 80) {
        r.issue(
            field,
            ApiCode::InvalidParameter,
            "§14",
            format!("{field} must be 1-80 characters of letters, digits, '-', '/', '.', '_'"),
        );
    }
    name
}

/// A master/slave group (§10, B4.5).
pub fn check_master_slave_group<P: Params>(
    p: &mut P,
    ctx: MemberContext<'_>,
) -> Result<MasterSlaveGroup, Vec<Issue>> {
    let mut r = Read::new(p);
    let id = r.required_id("MasterSlaveServerGroupId", "§10");
    let name = group_name(&mut r, "MasterSlaveServerGroupName");
    let list = members(&mut r, "MasterSlaveBackendServers", |o| {
        check_master_slave_server(o, ctx)
    });
    let field = "MasterSlaveBackendServers";
    let pair = match list {
        None => {
            r.missing(field, "B4.5");
            None
        }
        // A rejected member is missing from `list`, so the group's shape is judged only when every
        // member passed.
        Some(_) if !r.issues.is_empty() => None,
        Some(list) => {
            let mut errors = Vec::new();
            if list.len() != 2 {
                errors.push(format!(
                    "a master/slave group needs exactly 2 members, got {}",
                    list.len()
                ));
            } else if list[0].0.server_id == list[1].0.server_id && list[0].0.port == list[1].0.port
            {
                errors.push("the two members must differ in {ServerId, Port}".to_string());
            } else if list[0].1 == list[1].1 {
                errors.push("exactly one member must be ServerType Master and one Slave (ServerType defaults to Master)".to_string());
            }
            for e in errors {
                r.issue(field, ApiCode::InvalidParameter, "B4.5", e);
            }
            match list.as_slice() {
                [(a, MemberRole::Master), (b, MemberRole::Slave)] => Some((a.clone(), b.clone())),
                [(b, MemberRole::Slave), (a, MemberRole::Master)] => Some((a.clone(), b.clone())),
                _ => None,
            }
        }
    };
    let v = id.zip(pair).map(|(id, (master, slave))| MasterSlaveGroup {
        master_slave_server_group_id: id,
        name,
        master,
        slave,
    });
    done(r, "MasterSlaveServerGroups", v)
}

/// An ACL entry: IP or CIDR; a bare IP is a host route. Host bits are cleared.
fn parse_net(text: &str) -> Option<IpNet> {
    let text = text.trim();
    text.parse::<IpNet>()
        .ok()
        .or_else(|| text.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

fn check_acl_entry<P: Params>(p: &mut P, version: IpVersion) -> Result<AclEntry, Vec<Issue>> {
    let mut r = Read::new(p);
    let text = r.required_id("entry", "B7.2");
    let comment = r.string("comment").unwrap_or_default();
    let entry = text.and_then(|t| match parse_net(&t) {
        None => {
            r.issue(
                "entry",
                ApiCode::InvalidParameter,
                "B7.2",
                format!("{t:?} is not an IP address or CIDR"),
            );
            None
        }
        Some(net) if IpVersion::of(net.addr()) != version => {
            r.issue(
                "entry",
                ApiCode::IpVersionConflict,
                "B7.5",
                format!(
                    "{t:?} is not an {} entry but the ACL is {}",
                    version.as_str(),
                    version.as_str()
                ),
            );
            None
        }
        Some(net) => Some(net),
    });
    done(
        r,
        "AclEntrys",
        entry.map(|entry| AclEntry { entry, comment }),
    )
}

/// An ACL policy group (§6).
pub fn check_acl<P: Params>(p: &mut P) -> Result<Acl, Vec<Issue>> {
    let mut r = Read::new(p);
    let id = r.required_id("AclId", "B7.1");
    let name = r.string("AclName").unwrap_or_default();
    let version = r
        .choice(
            "AddressIPVersion",
            &[("ipv4", IpVersion::V4), ("ipv6", IpVersion::V6)],
            "B7.5",
        )
        .unwrap_or(IpVersion::V4);
    let entries = members(&mut r, "AclEntrys", |o| check_acl_entry(o, version)).unwrap_or_default();
    // Indices only match the file when every entry parsed, so duplicates are judged then.
    if r.issues.is_empty() {
        let mut seen = HashSet::new();
        for (i, e) in entries.iter().enumerate() {
            if !seen.insert(e.entry) {
                r.issue(
                    format!("AclEntrys[{i}].entry"),
                    ApiCode::DuplicatedAclEntry,
                    "§5.4",
                    format!("{} is already in the ACL", e.entry),
                );
            }
        }
    }
    done(
        r,
        "Acls",
        id.map(|acl_id| Acl {
            acl_id,
            name,
            ip_version: version,
            entries,
        }),
    )
}

/// B7.9: comma-separated IPs/CIDRs; allow-all entries (`0.0.0.0`, `0.0.0.0/0`, `::/0`) are refused.
/// The issue's path is `SourceItems`; the API also uses this for Add/RemoveListenerWhiteListItem.
pub fn parse_source_items(text: &str) -> Result<Vec<IpNet>, Issue> {
    let invalid = |detail: String| {
        Issue::new(
            "SourceItems",
            ApiCode::InvalidParameter,
            Some("B7.9"),
            format!("The specified parameter SourceItems is not valid: {detail}"),
        )
    };
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match parse_net(item) {
            None => Err(invalid(format!("{item:?}"))),
            Some(net) if net.prefix_len() == 0 || net.addr().is_unspecified() => Err(invalid(
                format!("{item:?} allows everybody; use AccessControlStatus = \"close\" instead"),
            )),
            Some(net) => Ok(net),
        })
        .collect()
}

/// What a listener check needs to know about its instance.
#[derive(Debug, Clone, Copy)]
pub struct ListenerContext<'a> {
    pub vip: IpAddr,
    pub vserver_groups: &'a [VServerGroup],
    pub master_slave_groups: &'a [MasterSlaveGroup],
    pub acls: &'a [Acl],
}

const PROTOCOLS: &[(&str, Protocol)] = &[
    ("tcp", Protocol::Tcp),
    ("udp", Protocol::Udp),
    ("http", Protocol::Http),
    ("https", Protocol::Https),
];

/// One listener (slb-api.md §5.0–§5.4). Cross-listener rules are in [`check_listener_set`].
pub fn check_listener<P: Params>(
    p: &mut P,
    ctx: ListenerContext<'_>,
) -> Result<Listener, Vec<Issue>> {
    let mut r = Read::new(p);
    let Some(protocol) = r.choice("ListenerProtocol", PROTOCOLS, "§5") else {
        r.missing("ListenerProtocol", "§5");
        // Without a protocol we cannot tell which parameters apply; report just this.
        return Err(r.issues);
    };
    let context = format!("{} listeners", protocol.as_str());
    let l4 = !protocol.is_layer7();

    let listener_port = r.port("ListenerPort");
    match listener_port {
        None => r.missing("ListenerPort", "B3.8"),
        Some(port) if protocol == Protocol::Udp && RESERVED_UDP_PORTS.contains(&port) => r.issue(
            "ListenerPort",
            ApiCode::InvalidParameter,
            "B12.5",
            format!("UDP port {port} is reserved"),
        ),
        Some(_) => {}
    }
    let backend_server_port = r.port("BackendServerPort");
    let status = r
        .choice(
            "Status",
            &[
                ("running", ListenerStatus::Running),
                ("stopped", ListenerStatus::Stopped),
            ],
            "B3.11",
        )
        .unwrap_or(ListenerStatus::Running);
    let scheduler = read_scheduler(&mut r, protocol);
    let persistence_timeout = if l4 {
        r.range(
            "PersistenceTimeout",
            0,
            3600,
            ApiCode::InvalidParameter,
            "B6.1",
        )
        .unwrap_or(0) as u32
    } else {
        0
    };
    let established_timeout = if protocol == Protocol::Tcp {
        r.range(
            "EstablishedTimeout",
            10,
            900,
            ApiCode::InvalidParameter,
            "B12.3",
        )
        .unwrap_or(900) as u32
    } else {
        900
    };
    let bandwidth = match r.int("Bandwidth") {
        None | Some(-1) => None,
        Some(b @ 1..=5120) => Some(b as u32),
        Some(b) => {
            r.issue(
                "Bandwidth",
                ApiCode::InvalidParameter,
                "B13.2",
                format!("The specified bandwidth is not valid: {b} is neither -1 nor in 1..=5120"),
            );
            None
        }
    };
    let group = read_group(&mut r, protocol, ctx);
    if group == Some(GroupRef::Default) && backend_server_port.is_none() {
        // B4.2: the port is optional only when a group supplies per-member ports.
        r.missing("BackendServerPort", "B1.4");
    }
    let acl = read_acl(&mut r, ctx);
    let access_control = read_access_control(&mut r);
    let description = r.string("Description").unwrap_or_default();
    if !description.is_empty() && !check_description(&description) {
        r.issue("Description", ApiCode::InvalidParameter, "§14", "Description must be 1-256 characters of letters, digits, '-', '/', '.', '_' (or Chinese)");
    }
    let health_check = read_health_check(&mut r, protocol);
    let tcp = (protocol == Protocol::Tcp).then(|| TcpSettings {
        syn_proxy: r
            .choice("SynProxy", &[("enable", true), ("disable", false)], "B12.4")
            .unwrap_or(false),
        proxy_protocol_v2: r.boolean("ProxyProtocolV2Enabled").unwrap_or(false),
    });
    let http = if protocol.is_layer7() {
        read_http(&mut r, protocol, ctx)
    } else {
        None
    };
    let value = (|| {
        Some(Listener {
            protocol,
            listener_port: listener_port?,
            backend_server_port,
            status,
            scheduler,
            persistence_timeout,
            established_timeout,
            bandwidth,
            group: group?,
            acl: acl?,
            access_control: access_control?,
            description,
            health_check: health_check?,
            tcp,
            http: if protocol.is_layer7() {
                Some(http?)
            } else {
                None
            },
        })
    })();
    let issues = r.finish(LISTENER_PARAMS, &context);
    match value {
        Some(v) if issues.is_empty() => Ok(v),
        _ => Err(issues),
    }
}

/// B5.1 default wrr; B5.7: `qch` is UDP only and no consistent hash on HTTP/HTTPS.
fn read_scheduler<P: Params>(r: &mut Read<'_, P>, protocol: Protocol) -> Scheduler {
    let scheduler = r
        .choice(
            "Scheduler",
            &[
                ("wrr", Scheduler::Wrr),
                ("rr", Scheduler::Rr),
                ("wlc", Scheduler::Wlc),
                ("sch", Scheduler::Sch),
                ("tch", Scheduler::Tch),
                ("qch", Scheduler::Qch),
            ],
            "B5.1",
        )
        .unwrap_or(Scheduler::Wrr);
    let consistent_hash = matches!(scheduler, Scheduler::Sch | Scheduler::Tch | Scheduler::Qch);
    let refused = (protocol.is_layer7() && consistent_hash)
        || (scheduler == Scheduler::Qch && protocol != Protocol::Udp);
    if refused {
        r.issue(
            "Scheduler",
            ApiCode::InvalidParameter,
            "B5.7",
            format!(
                "The specified parameter Scheduler is not valid: not available on {} listeners",
                protocol.as_str()
            ),
        );
    }
    scheduler
}

/// B4.2–B4.4: which server group serves the listener; the group must exist in the instance.
fn read_group<P: Params>(
    r: &mut Read<'_, P>,
    protocol: Protocol,
    ctx: ListenerContext<'_>,
) -> Option<GroupRef> {
    let vsg = r
        .string("VServerGroupId")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    // Read on every protocol so HTTP/HTTPS get the documented B4.4 error, not "does not apply".
    let ms = r
        .string("MasterSlaveServerGroupId")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let is_ms = |id: &str| {
        ctx.master_slave_groups
            .iter()
            .any(|g| g.master_slave_server_group_id == id)
    };
    let not_found = |field: &str, id: &str| {
        Issue::new(
            field,
            ApiCode::RsPoolNotFound,
            Some("B4.2"),
            format!("RS Pool doesn't exist: no group {id:?} in this load balancer"),
        )
    };
    match (vsg, ms) {
        (Some(_), Some(_)) => {
            r.issue(
                "MasterSlaveServerGroupId",
                ApiCode::InvalidParameter,
                "B4.3",
                "VServerGroupId and MasterSlaveServerGroupId are mutually exclusive",
            );
            None
        }
        (Some(id), None) if protocol.is_layer7() && is_ms(&id) => {
            r.issue(
                "VServerGroupId",
                ApiCode::InvalidParameterVServerGroupId,
                "B4.4",
                "The MasterSlaveServerGroup can not be attached to HTTP or HTTPS listener.",
            );
            None
        }
        (None, Some(_)) if protocol.is_layer7() => {
            r.issue(
                "MasterSlaveServerGroupId",
                ApiCode::InvalidParameterVServerGroupId,
                "B4.4",
                "The MasterSlaveServerGroup can not be attached to HTTP or HTTPS listener.",
            );
            None
        }
        (Some(id), None) => {
            if ctx.vserver_groups.iter().any(|g| g.vserver_group_id == id) {
                Some(GroupRef::VServerGroup(id))
            } else {
                r.issues.push(not_found("VServerGroupId", &id));
                None
            }
        }
        (None, Some(id)) => {
            if is_ms(&id) {
                Some(GroupRef::MasterSlave(id))
            } else {
                r.issues.push(not_found("MasterSlaveServerGroupId", &id));
                None
            }
        }
        (None, None) => Some(GroupRef::Default),
    }
}

/// B7.1/B7.5: `Some(None)` = ACL off; `None` = invalid (issue recorded).
fn read_acl<P: Params>(
    r: &mut Read<'_, P>,
    ctx: ListenerContext<'_>,
) -> Option<Option<ListenerAcl>> {
    if !r.switch("AclStatus", false) {
        // B1.3: AclId/AclType are ignored while the ACL is off.
        r.skip(&["AclId", "AclType"]);
        return Some(None);
    }
    let id = r.required_id("AclId", "B7.1");
    let acl_type = r.choice(
        "AclType",
        &[("white", AclType::White), ("black", AclType::Black)],
        "B7.1",
    );
    if acl_type.is_none() {
        r.missing("AclType", "B7.1");
    }
    let id = id?;
    match ctx.acls.iter().find(|a| a.acl_id == id) {
        None => {
            r.issue(
                "AclId",
                ApiCode::AclNotExist,
                "B7.1",
                format!("Acl does not exist: {id:?}"),
            );
            None
        }
        Some(acl) if acl.ip_version != IpVersion::of(ctx.vip) => {
            r.issue("AclId", ApiCode::IpVersionConflict, "B7.5", format!(
                "The ip version of this LoadBalancer and the Acl is conflict: ACL {id:?} is {} but the VIP {} is {}",
                acl.ip_version.as_str(), ctx.vip, IpVersion::of(ctx.vip).as_str()
            ));
            None
        }
        Some(_) => Some(Some(ListenerAcl {
            acl_id: id,
            acl_type: acl_type?,
        })),
    }
}

/// B7.8/B7.9: legacy white list; items are validated even while closed (they are kept, B7.10).
fn read_access_control<P: Params>(r: &mut Read<'_, P>) -> Option<Option<Vec<IpNet>>> {
    let open = r
        .choice(
            "AccessControlStatus",
            &[("open_white_list", true), ("close", false)],
            "B7.8",
        )
        .unwrap_or(false);
    let items = match parse_source_items(&r.string("SourceItems").unwrap_or_default()) {
        Ok(items) => items,
        Err(issue) => {
            r.issues.push(issue);
            return None;
        }
    };
    Some(open.then_some(items))
}

fn threshold<P: Params>(r: &mut Read<'_, P>, name: &str, lo: i64, hi: i64, default: i64) -> i64 {
    r.range(name, lo, hi, ApiCode::InvalidParameter, "B8.11")
        .unwrap_or(default)
}

/// B8.1–B8.17.
fn read_health_check<P: Params>(r: &mut Read<'_, P>, protocol: Protocol) -> Option<HealthCheck> {
    let enabled = if protocol.is_layer7() {
        let on = r.switch_opt("HealthCheck");
        if on.is_none() {
            r.missing("HealthCheck", "B8.2");
        }
        on.unwrap_or(false)
    } else {
        true // B8.1: always on for TCP/UDP.
    };
    // B8.7: -520 means "the backend port", like leaving it unset.
    let connect_port = match r.int("HealthCheckConnectPort") {
        None | Some(-520) => None,
        Some(p @ 1..=65535) => u16::try_from(p).ok(),
        Some(p) => {
            r.issue("HealthCheckConnectPort", ApiCode::InvalidParameter, "B8.7", format!("The specified parameter ConnectPort is not valid: {p} is neither -520 nor in 1..=65535"));
            None
        }
    };
    // B8.11 ranges, B8.12 defaults.
    let healthy_threshold = threshold(r, "HealthyThreshold", 2, 10, 3) as u8;
    let unhealthy_threshold = threshold(r, "UnhealthyThreshold", 2, 10, 3) as u8;
    let timeout = threshold(r, "HealthCheckTimeout", 1, 300, 5) as u16;
    let interval = threshold(r, "HealthCheckInterval", 1, 50, 2) as u16;
    let probe = match protocol {
        Protocol::Udp => {
            let request = udp_payload(r, "HealthCheckReq");
            let expect = udp_payload(r, "HealthCheckExp");
            Probe::Udp { request, expect }
        }
        Protocol::Tcp => {
            let http = r
                .choice("HealthCheckType", &[("tcp", false), ("http", true)], "B8.3")
                .unwrap_or(false);
            // B1.3: HTTP-check parameters are ignored while the check is TCP.
            let probe = read_http_probe(r, http)?;
            if http {
                Probe::Http(probe)
            } else {
                Probe::Tcp
            }
        }
        Protocol::Http | Protocol::Https => Probe::Http(read_http_probe(r, enabled)?),
    };
    Some(HealthCheck {
        enabled,
        connect_port,
        healthy_threshold,
        unhealthy_threshold,
        timeout,
        interval,
        probe,
    })
}

/// B8.13 / §14: letters and digits only, at most 500 characters; empty = unset.
fn udp_payload<P: Params>(r: &mut Read<'_, P>, name: &str) -> Option<String> {
    let text = r.string(name).filter(|s| !s.is_empty())?;
    if text.len() <= 500 && text.chars().all(|c| c.is_ascii_alphanumeric()) {
        Some(text)
    } else {
        r.issue(
            name,
            ApiCode::InvalidParameter,
            "B8.13",
            format!("{name} must be at most 500 letters and digits"),
        );
        None
    }
}

const HTTP_PROBE_PARAMS: &[&str] = &[
    "HealthCheckDomain",
    "HealthCheckURI",
    "HealthCheckHttpCode",
    "HealthCheckMethod",
    "HealthCheckHttpVersion",
];

/// B8.4–B8.6, B8.16, B8.17. When `used` is false the parameters are accepted and ignored (B1.3)
/// and the defaults are returned.
fn read_http_probe<P: Params>(r: &mut Read<'_, P>, used: bool) -> Option<HttpProbe> {
    let default = HttpProbe {
        domain: None,
        uri: "/".to_string(),
        http_codes: vec![HttpCodeClass::Http2xx],
        method: HealthCheckMethod::Head,
        version: HealthCheckHttpVersion::Http10,
    };
    if !used {
        r.skip(HTTP_PROBE_PARAMS);
        return Some(default);
    }
    let mut ok = true;
    let domain_given = r.string("HealthCheckDomain");
    let domain = match domain_given.as_deref() {
        None | Some("") | Some("$_ip") => None,
        Some(d)
            if (1..=80).contains(&d.len())
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') =>
        {
            Some(d.to_string())
        }
        Some(d) => {
            r.issue(
                "HealthCheckDomain",
                ApiCode::InvalidParameter,
                "B8.16",
                format!("The specified parameter Domain is not valid: {d:?}"),
            );
            ok = false;
            None
        }
    };
    let uri = r
        .string("HealthCheckURI")
        .unwrap_or_else(|| "/".to_string());
    let uri_ok = (1..=80).contains(&uri.len())
        && uri.starts_with('/')
        && uri
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-/.%?#&".contains(c));
    if !uri_ok {
        r.issue(
            "HealthCheckURI",
            ApiCode::InvalidParameter,
            "B8.16",
            format!("The specified parameter URI is not valid: {uri:?}"),
        );
        ok = false;
    }
    let codes_text = r
        .string("HealthCheckHttpCode")
        .unwrap_or_else(|| "http_2xx".to_string());
    let mut http_codes = Vec::new();
    for token in codes_text.split(',').map(str::trim) {
        let class = match token {
            "http_2xx" => HttpCodeClass::Http2xx,
            "http_3xx" => HttpCodeClass::Http3xx,
            "http_4xx" => HttpCodeClass::Http4xx,
            "http_5xx" => HttpCodeClass::Http5xx,
            _ => {
                r.issue(
                    "HealthCheckHttpCode",
                    ApiCode::InvalidParameter,
                    "B8.16",
                    format!("The specified parameter HealthCheckHttpCode is not valid: {token:?}"),
                );
                ok = false;
                continue;
            }
        };
        http_codes.push(class);
    }
    http_codes.sort();
    http_codes.dedup();
    let method = r
        .choice(
            "HealthCheckMethod",
            &[
                ("head", HealthCheckMethod::Head),
                ("get", HealthCheckMethod::Get),
            ],
            "B8.5",
        )
        .unwrap_or(HealthCheckMethod::Head);
    let version = match r.string("HealthCheckHttpVersion").as_deref() {
        None | Some("http1.0") => HealthCheckHttpVersion::Http10,
        Some("http1.1") => {
            if domain_given.is_none() {
                r.issue(
                    "HealthCheckDomain",
                    ApiCode::MissingParamHealthCheckDomain,
                    "B8.17",
                    "The HealthCheckDomain is required when HealthCheckHttpVersion is http1.1.",
                );
                ok = false;
            }
            HealthCheckHttpVersion::Http11
        }
        Some(v) => {
            r.issue(
                "HealthCheckHttpVersion",
                ApiCode::InvalidParameterHealthCheckHttpVersion,
                "B8.17",
                format!("The param HealthCheckHttpVersion is invalid: {v:?} (http1.0 or http1.1)"),
            );
            ok = false;
            HealthCheckHttpVersion::Http10
        }
    };
    ok.then_some(HttpProbe {
        domain,
        uri,
        http_codes,
        method,
        version,
    })
}

/// B6.2–B6.5: `None` = invalid (issue recorded).
fn read_sticky<P: Params>(r: &mut Read<'_, P>) -> Option<StickySession> {
    let on = r.switch_opt("StickySession");
    let Some(on) = on else {
        r.missing("StickySession", "B6.2");
        return None;
    };
    if !on {
        // B6.2/B1.3: the other sticky parameters are ignored.
        r.skip(&["StickySessionType", "CookieTimeout", "Cookie"]);
        return Some(StickySession::Off);
    }
    let insert = r.choice(
        "StickySessionType",
        &[("insert", true), ("server", false)],
        "B6.2",
    );
    match insert {
        None => {
            r.missing("StickySessionType", "B6.2");
            None
        }
        Some(true) => {
            r.skip(&["Cookie"]);
            let t = r.range("CookieTimeout", 1, 86400, ApiCode::InvalidParameter, "B6.3");
            if t.is_none() {
                r.missing("CookieTimeout", "B6.3");
            }
            t.map(|t| StickySession::Insert {
                cookie_timeout: t as u32,
            })
        }
        Some(false) => {
            r.skip(&["CookieTimeout"]);
            let cookie = r.string("Cookie");
            match cookie {
                None => {
                    r.missing("Cookie", "B1.4");
                    None
                }
                // B6.5: RFC 2965 token, letters and digits only (which also excludes ',', ';', ' ', '$').
                Some(c)
                    if (1..=200).contains(&c.len())
                        && c.chars().all(|ch| ch.is_ascii_alphanumeric()) =>
                {
                    Some(StickySession::Server { cookie: c })
                }
                Some(c) => {
                    r.issue(
                        "Cookie",
                        ApiCode::InvalidParameter,
                        "B6.5",
                        format!("Cookie {c:?} must be 1-200 ASCII letters and digits"),
                    );
                    None
                }
            }
        }
    }
}

const TLS_POLICIES: &[(&str, TlsCipherPolicy)] = &[
    ("tls_cipher_policy_1_0", TlsCipherPolicy::Tls10),
    ("tls_cipher_policy_1_1", TlsCipherPolicy::Tls11),
    ("tls_cipher_policy_1_2", TlsCipherPolicy::Tls12),
    ("tls_cipher_policy_1_2_strict", TlsCipherPolicy::Tls12Strict),
    (
        "tls_cipher_policy_1_2_strict_with_1_3",
        TlsCipherPolicy::Tls12StrictWith13,
    ),
];

/// HTTP/HTTPS parameters (§5.3, §5.4, §9 of the behaviour spec).
fn read_http<P: Params>(
    r: &mut Read<'_, P>,
    protocol: Protocol,
    ctx: ListenerContext<'_>,
) -> Option<HttpSettings> {
    let vip = ctx.vip;
    // B9.1: X-Forwarded-For is forced on, `off` is accepted and ignored; B9.6: not on IPv6.
    if r.switch_opt("XForwardedFor") == Some(true) && vip.is_ipv6() {
        r.issue(
            "XForwardedFor",
            ApiCode::ListenerForwardNotSupport,
            "B9.6",
            "X-Forward-For is not supported to a ipv6 instance.",
        );
    }
    let xff_slb_ip = r.switch("XForwardedFor_SLBIP", false);
    let xff_slb_id = r.switch("XForwardedFor_SLBID", false);
    let xff_proto = r.switch("XForwardedFor_proto", false);
    let xff_slb_port = r.switch("XForwardedFor_SLBPORT", false);
    let xff_client_src_port = r.switch("XForwardedFor_ClientSrcPort", false);
    let sticky_session = read_sticky(r);
    let gzip = r.switch("Gzip", true);
    let idle_timeout = r
        .range(
            "IdleTimeout",
            1,
            60,
            ApiCode::InvalidParameterIdleTimeout,
            "B9.7",
        )
        .unwrap_or(15) as u32;
    let request_timeout = r
        .range(
            "RequestTimeout",
            1,
            180,
            ApiCode::InvalidParameterRequestTimeout,
            "B9.8",
        )
        .unwrap_or(60) as u32;
    // `None` = invalid; `Some(None)` = no redirect.
    let forward_port = if protocol == Protocol::Http && r.switch("ListenerForward", false) {
        let port = r.port("ForwardPort");
        if port.is_none() {
            r.missing("ForwardPort", "B9.19");
        }
        port.map(Some)
    } else {
        if protocol == Protocol::Http {
            // B1.3: ignored while ListenerForward is off.
            r.skip(&["ForwardPort"]);
        }
        Some(None)
    };
    let tls = if protocol == Protocol::Https {
        let cert = r.required_id("ServerCertificateId", "§5.4");
        let ca = r
            .string("CACertificateId")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let enable_http2 = r.switch("EnableHttp2", true);
        let policy = r
            .choice("TLSCipherPolicy", TLS_POLICIES, "§10.3")
            .unwrap_or(TlsCipherPolicy::Tls10);
        let extensions = members(r, "DomainExtensions", check_domain_extension);
        if let Some(list) = &extensions {
            unique_in_listener(
                r,
                "DomainExtensions",
                list,
                |e| e.domain.to_ascii_lowercase(),
                "B10.14",
                "Domain",
            );
        }
        Some(Some(TlsSettings {
            server_certificate_id: cert?,
            ca_certificate_id: ca,
            enable_http2,
            tls_cipher_policy: policy,
            domain_extensions: extensions.unwrap_or_default(),
        }))
    } else {
        Some(None)
    };
    let rules = members(r, "Rules", |o| check_rule(o, ctx.vserver_groups)).unwrap_or_default();
    unique_in_listener(r, "Rules", &rules, |x| x.name.clone(), "B11.2", "RuleName");
    unique_in_listener(
        r,
        "Rules",
        &rules,
        |x| {
            (
                x.domain.as_deref().map(str::to_ascii_lowercase),
                x.url.clone(),
            )
        },
        "B11.2",
        "Domain",
    );
    Some(HttpSettings {
        xff_slb_ip,
        xff_slb_id,
        xff_proto,
        xff_slb_port,
        xff_client_src_port,
        sticky_session: sticky_session?,
        gzip,
        idle_timeout,
        request_timeout,
        forward_port: forward_port?,
        tls: tls?,
        rules,
    })
}

/// Later duplicates (by `key`) in a listener's list, reported at `list[i].field`. Indices only
/// match the input when every element parsed, so duplicates are judged then.
fn unique_in_listener<P: Params, T, K: Eq + std::hash::Hash>(
    r: &mut Read<'_, P>,
    list: &str,
    items: &[T],
    key: impl Fn(&T) -> K,
    rule: &'static str,
    field: &str,
) {
    if r.issues.iter().any(|i| i.path.starts_with(list)) {
        return;
    }
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        if !seen.insert(key(item)) {
            r.issue(
                format!("{list}[{i}].{field}"),
                ApiCode::InvalidParameter,
                rule,
                format!("The resource already exists: {list}[{i}] repeats the {field} of an earlier one in this listener"),
            );
        }
    }
}

/// B10.15: letters, digits, `-`, `.`, first character a letter or digit; exact or `*.` wildcard.
pub fn check_domain(domain: &str) -> bool {
    let body = domain.strip_prefix("*.").unwrap_or(domain);
    (1..=253).contains(&body.len())
        && body.starts_with(|c: char| c.is_ascii_alphanumeric())
        && body
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        && !body.split('.').any(str::is_empty)
}

/// §11.1 `Url`: 1–80 of letters, digits, `-/.%?#&`.
pub fn check_url(url: &str) -> bool {
    (1..=80).contains(&url.len())
        && url.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '/' | '.' | '%' | '?' | '#' | '&')
        })
}

/// A forwarding rule (§11.1) of an HTTP/HTTPS listener, targeting a group of its instance.
pub fn check_rule<P: Params>(p: &mut P, groups: &[VServerGroup]) -> Result<Rule, Vec<Issue>> {
    let mut r = Read::new(p);
    let id = r.required_id("RuleId", "§11.1");
    let name = r.required_id("RuleName", "B11.2");
    if name.as_deref().is_some_and(|n| !check_name(n, 80)) {
        r.issue("RuleName", ApiCode::InvalidParameter, "§11.1", "The specified parameter RuleName is not valid: 1-80 characters of letters, digits, '-', '/', '.', '_'");
    }
    let domain = r
        .string("Domain")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if domain.as_deref().is_some_and(|d| !check_domain(d)) {
        r.issue(
            "Domain",
            ApiCode::InvalidParameter,
            "B10.15",
            "The specified parameter Domain is not valid.",
        );
    }
    let url = r
        .string("Url")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if url.as_deref().is_some_and(|u| !check_url(u)) {
        r.issue(
            "Url",
            ApiCode::InvalidParameter,
            "§11.1",
            "The specified parameter URI is not valid.",
        );
    }
    if domain.is_none()
        && url.is_none()
        && !r
            .issues
            .iter()
            .any(|i| i.path == "Domain" || i.path == "Url")
    {
        r.issue("Domain", ApiCode::MissingParameter, "B11.2", "The combination of some parameters violates the spec: a rule needs a Domain, a Url or both.");
    }
    let group = r.required_id("VServerGroupId", "B11.2");
    let group = group.filter(|g| {
        let found = groups.iter().any(|x| &x.vserver_group_id == g);
        if !found {
            r.issue(
                "VServerGroupId",
                ApiCode::RsPoolNotFound,
                "B11.3",
                format!("RS Pool doesn't exist: no group {g:?} in this load balancer"),
            );
        }
        found
    });
    let value = (|| {
        Some(Rule {
            rule_id: id?,
            name: name?,
            domain,
            url,
            vserver_group_id: group?,
        })
    })();
    done(r, "Rules", value)
}

/// A domain extension (§12) of an HTTPS listener. Whether its certificate exists and covers
/// the domain (B10.17) is the certificate store's to say, so the API checks that.
pub fn check_domain_extension<P: Params>(p: &mut P) -> Result<DomainExtension, Vec<Issue>> {
    let mut r = Read::new(p);
    let id = r.required_id("DomainExtensionId", "§12.1");
    let domain = r.required_id("Domain", "B10.15");
    if domain.as_deref().is_some_and(|d| !check_domain(d)) {
        r.issue(
            "Domain",
            ApiCode::InvalidParameter,
            "B10.15",
            "The specified parameter Domain is not valid.",
        );
    }
    let cert = r.required_id("ServerCertificateId", "§12.1");
    let value = (|| {
        Some(DomainExtension {
            domain_extension_id: id?,
            domain: domain?,
            server_certificate_id: cert?,
        })
    })();
    done(r, "DomainExtensions", value)
}

/// B3.9: at most 50 listeners per instance; the issue points at the first listener too many.
pub fn check_listener_count(count: usize) -> Option<Issue> {
    (count > MAX_LISTENERS_PER_LB).then(|| {
        Issue::new(
            format!("Listeners[{MAX_LISTENERS_PER_LB}]"),
            ApiCode::VipTooManyListeners,
            Some("B3.9"),
            format!("The total number of input listeners exceeds max supported number: {MAX_LISTENERS_PER_LB} (got {count})"),
        )
    })
}

/// Rules across the listeners of one instance: B3.7 one listener per port whatever the protocol,
/// B9.19 a redirect targets an HTTPS listener of the same instance. Listeners come with their
/// index so paths (`Listeners[i].…`) stay right when some listeners were already rejected.
pub fn check_listener_set(listeners: &[(usize, &Listener)]) -> Vec<Issue> {
    let mut issues = Vec::new();
    let mut ports = BTreeMap::new();
    for &(i, l) in listeners {
        if let Some(&first) = ports.get(&l.listener_port) {
            issues.push(Issue::new(
                format!("Listeners[{i}].ListenerPort"),
                ApiCode::ListenerAlreadyExists,
                Some("B3.7"),
                format!("There is already a listener bound to the port on the specified load balancer: port {} is used by Listeners[{first}]", l.listener_port),
            ));
        } else {
            ports.insert(l.listener_port, i);
        }
    }
    for &(i, l) in listeners {
        let Some(port) = l.http.as_ref().and_then(|h| h.forward_port) else {
            continue;
        };
        let target_is_https = listeners
            .iter()
            .any(|(_, t)| t.listener_port == port && t.protocol == Protocol::Https);
        if !target_is_https {
            issues.push(Issue::new(
                format!("Listeners[{i}].ForwardPort"),
                ApiCode::InvalidParameter,
                Some("B9.19"),
                format!("ListenerForward needs an HTTPS listener on port {port} of the same load balancer"),
            ));
        }
    }
    issues
}

/// A load balancer instance with its groups and listeners (paths relative to the instance).
pub fn check_load_balancer<P: Params>(
    p: &mut P,
    servers: &BTreeMap<String, IpAddr>,
    acls: &[Acl],
) -> Result<LoadBalancer, Vec<Issue>> {
    const NESTED: &[&str] = &[
        "BackendServers",
        "VServerGroups",
        "MasterSlaveServerGroups",
        "Listeners",
    ];
    let mut r = Read::new(p);
    let id = r.required_id("LoadBalancerId", "§2.1");
    let name = r.string("LoadBalancerName").unwrap_or_default();
    if !name.is_empty() && !check_name(&name, 80) {
        r.issue(
            "LoadBalancerName",
            ApiCode::InvalidParameter,
            "§14",
            "The Lb Name is Not supported: 1-80 characters of letters, digits, '-', '/', '.', '_'",
        );
    }
    let status = r
        .choice(
            "LoadBalancerStatus",
            &[
                ("active", InstanceStatus::Active),
                ("inactive", InstanceStatus::Inactive),
                ("locked", InstanceStatus::Locked),
            ],
            "B2.1",
        )
        .unwrap_or(InstanceStatus::Active);
    let vip = match r.string("Address").map(|a| a.trim().parse::<IpAddr>()) {
        None => {
            r.missing("Address", "§2.1");
            None
        }
        Some(Err(_)) => {
            r.issue(
                "Address",
                ApiCode::IpNotAvailable,
                "§2.1",
                "The specified parameter Address is not valid: not an IPv4 or IPv6 address",
            );
            None
        }
        Some(Ok(vip)) => Some(vip),
    };
    let Some(vip) = vip else {
        // Members and ACLs are checked against the VIP's family; without it they cannot be checked.
        r.skip(NESTED);
        return Err(r.finish(&[], "LoadBalancers"));
    };
    let ctx = MemberContext { servers, vip };
    let backend_servers =
        members(&mut r, "BackendServers", |o| check_backend_server(o, ctx)).unwrap_or_default();
    let vserver_groups =
        members(&mut r, "VServerGroups", |o| check_vserver_group(o, ctx)).unwrap_or_default();
    let master_slave_groups = members(&mut r, "MasterSlaveServerGroups", |o| {
        check_master_slave_group(o, ctx)
    })
    .unwrap_or_default();
    let lctx = ListenerContext {
        vip,
        vserver_groups: &vserver_groups,
        master_slave_groups: &master_slave_groups,
        acls,
    };
    let raw = r.objects("Listeners").unwrap_or_default();
    if let Some(issue) = check_listener_count(raw.len()) {
        r.issues.push(issue);
    }
    let mut listeners = Vec::with_capacity(raw.len());
    for (i, mut obj) in raw.into_iter().enumerate() {
        match check_listener(&mut obj, lctx) {
            Ok(l) => listeners.push((i, l)),
            Err(issues) => r.extend(&format!("Listeners[{i}]"), issues),
        }
    }
    let indexed: Vec<(usize, &Listener)> = listeners.iter().map(|(i, l)| (*i, l)).collect();
    r.issues.extend(check_listener_set(&indexed));
    let value = id.map(|load_balancer_id| LoadBalancer {
        load_balancer_id,
        name,
        address: vip,
        status,
        backend_servers: dedup_first(backend_servers, |s| s.server_id.clone()),
        vserver_groups,
        master_slave_groups,
        listeners: listeners.into_iter().map(|(_, l)| l).collect(),
    });
    done(r, "LoadBalancers", value)
}
