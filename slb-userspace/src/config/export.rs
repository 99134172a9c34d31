//! The model back into API parameters: what `Describe*` actions, the state store and
//! `slb export` start from. Every map produced here validates through the same `check_*`
//! function back into the identical model (tested in `tests.rs`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use toml_edit::{Array, ArrayOfTables, DocumentMut, InlineTable, Item, Table, Value};

use super::model::*;
use super::pmap::{PValue, ParamMap};

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn scheduler_name(s: Scheduler) -> &'static str {
    match s {
        Scheduler::Wrr => "wrr",
        Scheduler::Rr => "rr",
        Scheduler::Wlc => "wlc",
        Scheduler::Sch => "sch",
        Scheduler::Tch => "tch",
        Scheduler::Qch => "qch",
    }
}

pub fn status_name(s: ListenerStatus) -> &'static str {
    match s {
        ListenerStatus::Running => "running",
        ListenerStatus::Stopped => "stopped",
    }
}

pub fn instance_status_name(s: InstanceStatus) -> &'static str {
    match s {
        InstanceStatus::Active => "active",
        InstanceStatus::Inactive => "inactive",
        InstanceStatus::Locked => "locked",
    }
}

pub fn tls_policy_name(p: TlsCipherPolicy) -> &'static str {
    match p {
        TlsCipherPolicy::Tls10 => "tls_cipher_policy_1_0",
        TlsCipherPolicy::Tls11 => "tls_cipher_policy_1_1",
        TlsCipherPolicy::Tls12 => "tls_cipher_policy_1_2",
        TlsCipherPolicy::Tls12Strict => "tls_cipher_policy_1_2_strict",
        TlsCipherPolicy::Tls12StrictWith13 => "tls_cipher_policy_1_2_strict_with_1_3",
    }
}

pub fn http_code_name(c: HttpCodeClass) -> &'static str {
    match c {
        HttpCodeClass::Http2xx => "http_2xx",
        HttpCodeClass::Http3xx => "http_3xx",
        HttpCodeClass::Http4xx => "http_4xx",
        HttpCodeClass::Http5xx => "http_5xx",
    }
}

pub fn backend_server(s: &BackendServer) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("ServerId", &s.server_id);
    m.set_int("Weight", i64::from(s.weight));
    m
}

pub fn group_server(s: &GroupServer) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("ServerId", &s.server_id);
    m.set_int("Port", i64::from(s.port));
    m.set_int("Weight", i64::from(s.weight));
    m
}

pub fn vserver_group(g: &VServerGroup) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("VServerGroupId", &g.vserver_group_id);
    if !g.name.is_empty() {
        m.set_str("VServerGroupName", &g.name);
    }
    m.set(
        "BackendServers",
        PValue::List(g.backend_servers.iter().map(group_server).collect()),
    );
    m
}

pub fn master_slave_group(g: &MasterSlaveGroup) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("MasterSlaveServerGroupId", &g.master_slave_server_group_id);
    if !g.name.is_empty() {
        m.set_str("MasterSlaveServerGroupName", &g.name);
    }
    let member = |s: &GroupServer, role: &str| {
        let mut p = group_server(s);
        p.set_str("ServerType", role);
        p
    };
    m.set(
        "MasterSlaveBackendServers",
        PValue::List(vec![member(&g.master, "Master"), member(&g.slave, "Slave")]),
    );
    m
}

fn http_probe(m: &mut ParamMap, p: &HttpProbe) {
    m.set_str("HealthCheckDomain", p.domain.as_deref().unwrap_or("$_ip"));
    m.set_str("HealthCheckURI", &p.uri);
    let codes: Vec<&str> = p.http_codes.iter().map(|c| http_code_name(*c)).collect();
    m.set_str("HealthCheckHttpCode", codes.join(","));
    m.set_str(
        "HealthCheckMethod",
        match p.method {
            HealthCheckMethod::Head => "head",
            HealthCheckMethod::Get => "get",
        },
    );
    m.set_str(
        "HealthCheckHttpVersion",
        match p.version {
            HealthCheckHttpVersion::Http10 => "http1.0",
            HealthCheckHttpVersion::Http11 => "http1.1",
        },
    );
}

fn health_check(m: &mut ParamMap, protocol: Protocol, h: &HealthCheck) {
    if protocol.is_layer7() {
        m.set_str("HealthCheck", on_off(h.enabled));
    }
    if let Some(port) = h.connect_port {
        m.set_int("HealthCheckConnectPort", i64::from(port));
    }
    m.set_int("HealthyThreshold", i64::from(h.healthy_threshold));
    m.set_int("UnhealthyThreshold", i64::from(h.unhealthy_threshold));
    m.set_int("HealthCheckTimeout", i64::from(h.timeout));
    m.set_int("HealthCheckInterval", i64::from(h.interval));
    match &h.probe {
        Probe::Tcp => m.set_str("HealthCheckType", "tcp"),
        Probe::Http(p) => {
            if protocol == Protocol::Tcp {
                m.set_str("HealthCheckType", "http");
            }
            http_probe(m, p);
        }
        Probe::Udp { request, expect } => {
            if let Some(r) = request {
                m.set_str("HealthCheckReq", r);
            }
            if let Some(e) = expect {
                m.set_str("HealthCheckExp", e);
            }
        }
    }
}

fn http_settings(m: &mut ParamMap, protocol: Protocol, h: &HttpSettings) {
    m.set_str("XForwardedFor_SLBIP", on_off(h.xff_slb_ip));
    m.set_str("XForwardedFor_SLBID", on_off(h.xff_slb_id));
    m.set_str("XForwardedFor_proto", on_off(h.xff_proto));
    m.set_str("XForwardedFor_SLBPORT", on_off(h.xff_slb_port));
    m.set_str("XForwardedFor_ClientSrcPort", on_off(h.xff_client_src_port));
    match &h.sticky_session {
        StickySession::Off => m.set_str("StickySession", "off"),
        StickySession::Insert { cookie_timeout } => {
            m.set_str("StickySession", "on");
            m.set_str("StickySessionType", "insert");
            m.set_int("CookieTimeout", i64::from(*cookie_timeout));
        }
        StickySession::Server { cookie } => {
            m.set_str("StickySession", "on");
            m.set_str("StickySessionType", "server");
            m.set_str("Cookie", cookie);
        }
    }
    m.set_str("Gzip", on_off(h.gzip));
    m.set_int("IdleTimeout", i64::from(h.idle_timeout));
    m.set_int("RequestTimeout", i64::from(h.request_timeout));
    if protocol == Protocol::Http {
        m.set_str("ListenerForward", on_off(h.forward_port.is_some()));
        if let Some(port) = h.forward_port {
            m.set_int("ForwardPort", i64::from(port));
        }
    }
    if let Some(tls) = &h.tls {
        m.set_str("ServerCertificateId", &tls.server_certificate_id);
        if let Some(ca) = &tls.ca_certificate_id {
            m.set_str("CACertificateId", ca);
        }
        m.set_str("EnableHttp2", on_off(tls.enable_http2));
        m.set_str("TLSCipherPolicy", tls_policy_name(tls.tls_cipher_policy));
        if !tls.domain_extensions.is_empty() {
            m.set(
                "DomainExtensions",
                PValue::List(tls.domain_extensions.iter().map(domain_extension).collect()),
            );
        }
    }
    if !h.rules.is_empty() {
        m.set("Rules", PValue::List(h.rules.iter().map(rule).collect()));
    }
}

pub fn rule(r: &Rule) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("RuleId", &r.rule_id);
    m.set_str("RuleName", &r.name);
    if let Some(d) = &r.domain {
        m.set_str("Domain", d);
    }
    if let Some(u) = &r.url {
        m.set_str("Url", u);
    }
    m.set_str("VServerGroupId", &r.vserver_group_id);
    m
}

pub fn domain_extension(e: &DomainExtension) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("DomainExtensionId", &e.domain_extension_id);
    m.set_str("Domain", &e.domain);
    m.set_str("ServerCertificateId", &e.server_certificate_id);
    m
}

pub fn listener(l: &Listener) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("ListenerProtocol", l.protocol.as_str());
    m.set_int("ListenerPort", i64::from(l.listener_port));
    if let Some(port) = l.backend_server_port {
        m.set_int("BackendServerPort", i64::from(port));
    }
    m.set_str("Status", status_name(l.status));
    m.set_str("Scheduler", scheduler_name(l.scheduler));
    if !l.protocol.is_layer7() {
        m.set_int("PersistenceTimeout", i64::from(l.persistence_timeout));
    }
    if l.protocol == Protocol::Tcp {
        m.set_int("EstablishedTimeout", i64::from(l.established_timeout));
    }
    m.set_int("Bandwidth", l.bandwidth.map_or(-1, i64::from));
    match &l.group {
        GroupRef::Default => {}
        GroupRef::VServerGroup(id) => m.set_str("VServerGroupId", id),
        GroupRef::MasterSlave(id) => m.set_str("MasterSlaveServerGroupId", id),
    }
    match &l.acl {
        None => m.set_str("AclStatus", "off"),
        Some(acl) => {
            m.set_str("AclStatus", "on");
            m.set_str("AclId", &acl.acl_id);
            m.set_str(
                "AclType",
                match acl.acl_type {
                    AclType::White => "white",
                    AclType::Black => "black",
                },
            );
        }
    }
    match &l.access_control {
        None => m.set_str("AccessControlStatus", "close"),
        Some(items) => {
            m.set_str("AccessControlStatus", "open_white_list");
            let items: Vec<String> = items.iter().map(|n| n.to_string()).collect();
            m.set_str("SourceItems", items.join(","));
        }
    }
    if !l.description.is_empty() {
        m.set_str("Description", &l.description);
    }
    health_check(&mut m, l.protocol, &l.health_check);
    if let Some(tcp) = &l.tcp {
        m.set_str("SynProxy", if tcp.syn_proxy { "enable" } else { "disable" });
        m.set(
            "ProxyProtocolV2Enabled",
            PValue::Bool(tcp.proxy_protocol_v2),
        );
    }
    if let Some(http) = &l.http {
        http_settings(&mut m, l.protocol, http);
    }
    m
}

pub fn load_balancer(lb: &LoadBalancer) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("LoadBalancerId", &lb.load_balancer_id);
    if !lb.name.is_empty() {
        m.set_str("LoadBalancerName", &lb.name);
    }
    m.set_str("Address", lb.address.to_string());
    m.set_str("LoadBalancerStatus", instance_status_name(lb.status));
    m.set(
        "BackendServers",
        PValue::List(lb.backend_servers.iter().map(backend_server).collect()),
    );
    m.set(
        "VServerGroups",
        PValue::List(lb.vserver_groups.iter().map(vserver_group).collect()),
    );
    m.set(
        "MasterSlaveServerGroups",
        PValue::List(
            lb.master_slave_groups
                .iter()
                .map(master_slave_group)
                .collect(),
        ),
    );
    m.set(
        "Listeners",
        PValue::List(lb.listeners.iter().map(listener).collect()),
    );
    m
}

pub fn acl(a: &Acl) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("AclId", &a.acl_id);
    if !a.name.is_empty() {
        m.set_str("AclName", &a.name);
    }
    m.set_str("AddressIPVersion", a.ip_version.as_str());
    let entries = a
        .entries
        .iter()
        .map(|e| {
            let mut p = ParamMap::new();
            p.set_str("entry", e.entry.to_string());
            if !e.comment.is_empty() {
                p.set_str("comment", &e.comment);
            }
            p
        })
        .collect();
    m.set("AclEntrys", PValue::List(entries));
    m
}

pub fn server(id: &str, addr: IpAddr) -> ParamMap {
    let mut m = ParamMap::new();
    m.set_str("ServerId", id);
    m.set_str("Address", addr.to_string());
    m
}

fn value(v: &PValue) -> Value {
    match v {
        PValue::Str(s) => Value::from(s.as_str()),
        PValue::Int(i) => Value::from(*i),
        PValue::Bool(b) => Value::from(*b),
        PValue::List(items) => {
            let mut a = Array::new();
            for item in items {
                a.push(Value::InlineTable(inline(item)));
            }
            Value::Array(a)
        }
    }
}

fn inline(m: &ParamMap) -> InlineTable {
    let mut t = InlineTable::new();
    for (k, v) in m.entries() {
        t.insert(k, value(v));
    }
    t
}

/// A `[[Section]]` table: scalars as keys, member lists as inline tables, and the
/// `nested` list (if any) as a sub-array of tables.
fn table(m: &ParamMap, nested: Option<&str>) -> Table {
    let mut t = Table::new();
    for (k, v) in m.entries() {
        if Some(k.as_str()) == nested {
            continue;
        }
        match v {
            // One member per line keeps big groups readable and diffable.
            PValue::List(items) => {
                let mut a = Array::new();
                for item in items {
                    let mut it = inline(item);
                    it.decor_mut().set_prefix("\n  ");
                    a.push(Value::InlineTable(it));
                }
                a.set_trailing("\n");
                a.set_trailing_comma(true);
                t.insert(k, Item::Value(Value::Array(a)));
            }
            _ => {
                t.insert(k, Item::Value(value(v)));
            }
        }
    }
    if let Some(PValue::List(items)) = nested.and_then(|n| m.get(n)) {
        let mut aot = ArrayOfTables::new();
        for item in items {
            aot.push(table(item, None));
        }
        if let Some(n) = nested {
            t.insert(n, Item::ArrayOfTables(aot));
        }
    }
    t
}

/// The resources of `cfg` (not the `[Agent]` section) as a TOML document that
/// [`super::parse`] accepts and turns back into the same resources.
pub fn to_toml(servers: &BTreeMap<String, IpAddr>, acls: &[Acl], lbs: &[LoadBalancer]) -> String {
    let mut doc = DocumentMut::new();
    let mut section = |name: &str, maps: Vec<ParamMap>, nested: Option<&str>| {
        if maps.is_empty() {
            return;
        }
        let mut aot = ArrayOfTables::new();
        for m in &maps {
            aot.push(table(m, nested));
        }
        doc.insert(name, Item::ArrayOfTables(aot));
    };
    section(
        "Servers",
        servers.iter().map(|(id, a)| server(id, *a)).collect(),
        None,
    );
    section("Acls", acls.iter().map(acl).collect(), None);
    section(
        "LoadBalancers",
        lbs.iter().map(load_balancer).collect(),
        Some("Listeners"),
    );
    doc.to_string()
}
