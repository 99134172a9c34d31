//! Agent configuration: the TOML file format (keys are the SLB API 2014-05-15 parameter names),
//! the typed model and its validation.
//!
//! Layers: [`params`] abstracts "a bag of named API parameters" (TOML table today, query string
//! later); [`validate`] holds the `check_*` functions that turn such a bag into model types or
//! [`Issue`]s; this module reads a file, runs the checks, and places every issue at a file line.

mod error;
pub mod export;
mod model;
mod params;
mod pmap;
mod read;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use toml_edit::ImDocument;

pub use error::{ApiCode, ConfigError, Issue, Located};
pub use model::*;
pub use params::Params;
pub use pmap::{PValue, ParamMap};
pub use validate::{
    check_acl, check_backend_server, check_description, check_group_server, check_listener,
    check_listener_count, check_listener_set, check_load_balancer, check_master_slave_group,
    check_master_slave_server, check_name, check_vserver_group, dedup_first, parse_source_items,
    resolve_server, ListenerContext, MemberContext, MAX_LISTENERS_PER_LB, RESERVED_UDP_PORTS,
};

use error::line_col;
use params::{span_of, TomlParams};
use read::Read;

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_at(&text, &path.display().to_string(), path.parent())
}

/// Parses and validates configuration text; `file_name` is only used in error locations.
/// Certificate files cannot be named: they are read relative to a file on disk ([`load`]).
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
    parse_at(text, file_name, None)
}

/// `dir`: the directory certificate file names are relative to.
fn parse_at(text: &str, file_name: &str, dir: Option<&Path>) -> Result<Config, ConfigError> {
    let doc = ImDocument::parse(text).map_err(|e| {
        let (line, column) = line_col(text, e.span().map_or(0, |s| s.start));
        ConfigError::Syntax {
            file: file_name.to_string(),
            line,
            column,
            message: e.message().trim().to_string(),
        }
    })?;
    let mut root = TomlParams::new(doc.as_table());
    let (config, issues) = read_config(&mut root, dir);
    match issues.is_empty() {
        true => Ok(config),
        false => {
            let errors = issues
                .into_iter()
                .map(|issue| {
                    let offset = span_of(doc.as_table(), &issue.path).map_or(0, |s| s.start);
                    let (line, column) = line_col(text, offset);
                    Located {
                        file: file_name.to_string(),
                        line,
                        column,
                        issue,
                    }
                })
                .collect();
            Err(ConfigError::Invalid { errors })
        }
    }
}

fn read_config(root: &mut TomlParams<'_>, dir: Option<&Path>) -> (Config, Vec<Issue>) {
    let mut issues = Vec::new();
    let mut agent = match root.table("Agent") {
        Ok(Some(mut t)) => read_agent(&mut t, &mut issues),
        Ok(None) => Agent::default(),
        Err(issue) => {
            issues.push(issue);
            Agent::default()
        }
    };
    match root.table("Api") {
        Ok(Some(mut t)) => agent.api = read_api(&mut t, &mut issues),
        Ok(None) => {}
        Err(issue) => issues.push(issue),
    }
    let mut r = Read::new(root);
    let servers = read_servers(&mut r);
    let mut acls = Vec::new();
    for (i, mut obj) in r
        .objects("Acls")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match check_acl(&mut obj) {
            Ok(acl) => acls.push((i, acl)),
            Err(e) => r.extend(&format!("Acls[{i}]"), e),
        }
    }
    unique(
        &mut r,
        acls.iter()
            .map(|(i, a)| (format!("Acls[{i}].AclId"), a.acl_id.as_str())),
        "AclId",
        "§6",
    );
    let acls: Vec<Acl> = acls.into_iter().map(|(_, a)| a).collect();
    let mut lbs = Vec::new();
    for (i, mut obj) in r
        .objects("LoadBalancers")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        match check_load_balancer(&mut obj, &servers, &acls) {
            Ok(lb) => lbs.push((i, lb)),
            Err(e) => r.extend(&format!("LoadBalancers[{i}]"), e),
        }
    }
    check_across_load_balancers(&mut r, &lbs);
    let (certificates, names) = read_certificates(&mut r, dir);
    // Without [Api] the file is the whole configuration, so its listeners' certificates must
    // be in it. Indices only match the file when everything parsed.
    if dir.is_some() && agent.api.is_none() && r.issues.is_empty() && issues.is_empty() {
        check_certificate_references(&mut r, &lbs, &certificates, &names);
    }
    let issues_tail = r.finish(&[], "the configuration file");
    issues.extend(issues_tail);
    let config = Config {
        agent,
        servers,
        acls,
        load_balancers: lbs.into_iter().map(|(_, lb)| lb).collect(),
        certificates,
    };
    (config, issues)
}

/// Identifiers that must be unique in the file; later duplicates are reported.
fn unique<'a, P: Params>(
    r: &mut Read<'_, P>,
    ids: impl IntoIterator<Item = (String, &'a str)>,
    what: &str,
    rule: &'static str,
) {
    let mut seen: HashMap<&str, String> = HashMap::new();
    for (path, id) in ids {
        if let Some(first) = seen.get(id) {
            let message =
                format!("The resource already exists: {what} {id:?} is already used at {first}");
            r.issue(path, ApiCode::InvalidParameter, rule, message);
        } else {
            seen.insert(id, path);
        }
    }
}

/// File-wide uniqueness: load balancer ids, group ids (one namespace, as the API's
/// `VServerGroupId` may name either kind, B4.4), and VIP:port across instances (B3.7).
fn check_across_load_balancers<P: Params>(r: &mut Read<'_, P>, lbs: &[(usize, LoadBalancer)]) {
    unique(
        r,
        lbs.iter().map(|(i, lb)| {
            (
                format!("LoadBalancers[{i}].LoadBalancerId"),
                lb.load_balancer_id.as_str(),
            )
        }),
        "LoadBalancerId",
        "§2.1",
    );
    let groups = lbs.iter().flat_map(|(i, lb)| {
        let v = lb.vserver_groups.iter().enumerate().map(move |(j, g)| {
            (
                format!("LoadBalancers[{i}].VServerGroups[{j}].VServerGroupId"),
                g.vserver_group_id.as_str(),
            )
        });
        let m =
            lb.master_slave_groups
                .iter()
                .enumerate()
                .map(move |(j, g)| {
                    (
                format!("LoadBalancers[{i}].MasterSlaveServerGroups[{j}].MasterSlaveServerGroupId"),
                g.master_slave_server_group_id.as_str(),
            )
                });
        v.chain(m)
    });
    unique(r, groups, "server group id", "§9");
    let mut rules = Vec::new();
    let mut extensions = Vec::new();
    for (i, lb) in lbs {
        for (j, l) in lb.listeners.iter().enumerate() {
            let Some(h) = &l.http else { continue };
            let at = format!("LoadBalancers[{i}].Listeners[{j}]");
            for (k, x) in h.rules.iter().enumerate() {
                rules.push((format!("{at}.Rules[{k}].RuleId"), x.rule_id.as_str()));
            }
            for (k, e) in h
                .tls
                .iter()
                .flat_map(|t| t.domain_extensions.iter().enumerate())
            {
                extensions.push((
                    format!("{at}.DomainExtensions[{k}].DomainExtensionId"),
                    e.domain_extension_id.as_str(),
                ));
            }
        }
    }
    unique(r, rules, "RuleId", "§11");
    unique(r, extensions, "DomainExtensionId", "§12");
    // The data plane keys listeners on VIP:port, so two instances sharing a VIP must not share a port.
    let mut seen: HashMap<(IpAddr, u16), String> = HashMap::new();
    for (i, lb) in lbs {
        for (j, l) in lb.listeners.iter().enumerate() {
            let path = format!("LoadBalancers[{i}].Listeners[{j}].ListenerPort");
            if let Some(first) = seen.get(&(lb.address, l.listener_port)) {
                let message = format!(
                    "There is already a listener bound to {}:{} ({first})",
                    lb.address, l.listener_port
                );
                r.issue(path, ApiCode::ListenerAlreadyExists, "B3.7", message);
            } else {
                seen.insert((lb.address, l.listener_port), path);
            }
        }
    }
}

fn read_agent(t: &mut TomlParams<'_>, issues: &mut Vec<Issue>) -> Agent {
    let defaults = Agent::default();
    let interfaces = t.string_list("Interfaces").unwrap_or_else(|issue| {
        issues.push(issue.under("Agent"));
        None
    });
    let mut r = Read::new(t);
    let xdp_mode = r
        .choice(
            "XdpMode",
            &[("native", XdpMode::Native), ("generic", XdpMode::Generic)],
            "config",
        )
        .unwrap_or(defaults.xdp_mode);
    let pin_path = r.string("PinPath").map_or(defaults.pin_path, PathBuf::from);
    let table_size = |r: &mut Read<'_, _>, name: &str, default: u32| {
        r.range(name, 1024, 16_777_216, ApiCode::InvalidParameter, "B1.2")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(default)
    };
    let flow_table_size = table_size(&mut r, "FlowTableSize", defaults.flow_table_size);
    let persist_table_size = table_size(&mut r, "PersistTableSize", defaults.persist_table_size);
    let region_id = r.string("RegionId").unwrap_or(defaults.region_id);
    let agent = Agent {
        interfaces: interfaces.unwrap_or_default(),
        xdp_mode,
        pin_path,
        flow_table_size,
        persist_table_size,
        region_id,
        api: None,
    };
    issues.extend(
        r.finish(&[], "[Agent]")
            .into_iter()
            .map(|i| i.under("Agent")),
    );
    agent
}

/// `[Api]`: where the management API listens, its keys, state and VIP pool.
fn read_api(t: &mut TomlParams<'_>, issues: &mut Vec<Issue>) -> Option<ApiSection> {
    let mut lists = |name: &str| {
        t.string_list(name).unwrap_or_else(|issue| {
            issues.push(issue.under("Api"));
            None
        })
    };
    let pool_text = lists("VipPool").unwrap_or_default();
    let zone_ids = lists("ZoneIds").unwrap_or_else(|| vec!["local-a".to_string()]);
    let mut r = Read::new(t);
    let listen = match r.string("Listen") {
        None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 8600))),
        Some(s) => match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                r.issue(
                    "Listen",
                    ApiCode::InvalidParameter,
                    "config",
                    format!("{s:?} is not an address:port"),
                );
                None
            }
        },
    };
    let keys_file = r
        .string("KeysFile")
        .map_or_else(|| PathBuf::from("/etc/slb/access-keys.toml"), PathBuf::from);
    let state_path = r
        .string("StatePath")
        .map_or_else(|| PathBuf::from("/var/lib/slb/state.redb"), PathBuf::from);
    let tls = match (r.string("TlsCertificate"), r.string("TlsPrivateKey")) {
        (None, None) => None,
        (Some(c), Some(k)) => Some(ApiTls {
            certificate: PathBuf::from(c),
            private_key: PathBuf::from(k),
        }),
        (Some(_), None) => {
            r.missing("TlsPrivateKey", "config");
            None
        }
        (None, Some(_)) => {
            r.missing("TlsCertificate", "config");
            None
        }
    };
    let mut vip_pool = Vec::new();
    for (i, text) in pool_text.iter().enumerate() {
        match text.parse::<IpNet>() {
            Ok(n) => vip_pool.push(n),
            Err(_) => r.issue(
                format!("VipPool[{i}]"),
                ApiCode::InvalidParameter,
                "config",
                format!("{text:?} is not a CIDR"),
            ),
        }
    }
    let done = r.finish(&[], "[Api]");
    let ok = done.is_empty();
    issues.extend(done.into_iter().map(|i| i.under("Api")));
    Some(ApiSection {
        listen: listen?,
        keys_file,
        state_path,
        vip_pool,
        zone_ids,
        tls,
    })
    .filter(|_| ok)
}

/// `[[Servers]]`: the ServerId → address registry (§7: a self-hosted LB needs one).
fn read_servers<P: Params>(r: &mut Read<'_, P>) -> BTreeMap<String, IpAddr> {
    let mut servers = BTreeMap::new();
    let mut first_at = HashMap::new();
    for (i, mut obj) in r
        .objects("Servers")
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let prefix = format!("Servers[{i}]");
        let mut s = Read::new(&mut obj);
        let id = s.required_id("ServerId", "§7");
        let addr = match s.string("Address").map(|a| a.trim().parse::<IpAddr>()) {
            None => {
                s.missing("Address", "§7");
                None
            }
            Some(Err(_)) => {
                s.issue(
                    "Address",
                    ApiCode::InvalidParameter,
                    "§7",
                    "Address must be an IPv4 or IPv6 address",
                );
                None
            }
            Some(Ok(a)) => Some(a),
        };
        let mut issues = s.finish(&[], "[[Servers]]");
        if let (Some(id), Some(addr)) = (id, addr) {
            if let Some(first) = first_at.get(&id) {
                issues.push(Issue::new(
                    "ServerId",
                    ApiCode::InvalidParameter,
                    Some("§7"),
                    format!("ServerId {id:?} is already defined at Servers[{first}]"),
                ));
            } else {
                first_at.insert(id.clone(), i);
                servers.insert(id, addr);
            }
        }
        r.extend(&prefix, issues);
    }
    servers
}

/// `[[ServerCertificates]]` (`ServerCertificateId`, `ServerCertificate`, `PrivateKey`) and
/// `[[CACertificates]]` (`CACertificateId`, `CACertificate`): PEM files relative to the
/// configuration file, validated like uploads (B10.1–B10.4). With `[Api]` they seed a new
/// state store, like the file's other resources. Also returns the names each server
/// certificate serves (B10.17).
fn read_certificates<P: Params>(
    r: &mut Read<'_, P>,
    dir: Option<&Path>,
) -> (Certificates, HashMap<String, Vec<String>>) {
    let mut certs = Certificates::default();
    let mut names = HashMap::new();
    // Section, ID field, certificate field, key field (server certificates only).
    let sections = [
        (
            "ServerCertificates",
            "ServerCertificateId",
            "ServerCertificate",
            Some("PrivateKey"),
        ),
        ("CACertificates", "CACertificateId", "CACertificate", None),
    ];
    for (section, id_name, pem_name, key_name) in sections {
        for (i, mut obj) in r
            .objects(section)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let mut c = Read::new(&mut obj);
            let id = c.required_id(id_name, "§4");
            if dir.is_none() {
                let message = "certificate files are only read from a configuration file on disk";
                c.issue(id_name, ApiCode::InvalidParameter, "§4", message);
            }
            let pem = |c: &mut Read<'_, _>, field: &str| {
                let name = c.string(field);
                if name.is_none() {
                    c.missing(field, "B10.1");
                }
                let path = dir?.join(name?);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(text),
                    Err(e) => {
                        let message = format!("reading {}: {e}", path.display());
                        c.issue(field, ApiCode::InvalidParameter, "B10.1", message);
                        None
                    }
                }
            };
            let cert = pem(&mut c, pem_name);
            let key = key_name.and_then(|k| pem(&mut c, k));
            match (id, cert, key) {
                (Some(id), Some(cert), Some(key)) => {
                    match crate::api::cert::validate_server_certificate(&cert, &key) {
                        Ok(v) => {
                            let served = crate::api::cert::served_names(
                                &v.info.common_name,
                                &v.info.subject_alternative_names,
                            );
                            names.insert(id.clone(), served.map(str::to_string).collect());
                            let (chain_pem, key_pem) = (v.chain_pem, v.key_pem);
                            certs
                                .server
                                .insert(id, ServerCertificate { chain_pem, key_pem });
                        }
                        Err(e) => {
                            c.issue(pem_name, ApiCode::InvalidParameter, "B10.4", e.message())
                        }
                    }
                }
                (Some(id), Some(cert), None) if key_name.is_none() => {
                    match crate::api::cert::validate_ca_certificate(&cert) {
                        Ok(_) => {
                            certs.ca.insert(id, cert);
                        }
                        Err(e) => {
                            c.issue(pem_name, ApiCode::InvalidParameter, "B10.1", e.message())
                        }
                    }
                }
                _ => {}
            }
            let known: Vec<&str> = [id_name, pem_name].into_iter().chain(key_name).collect();
            let issues = c.finish(&known, section);
            r.extend(&format!("{section}[{i}]"), issues);
        }
    }
    (certs, names)
}

/// Every certificate an HTTPS listener or domain extension names is in the file, and an
/// extension's domain is one its certificate serves (B10.17).
fn check_certificate_references<P: Params>(
    r: &mut Read<'_, P>,
    lbs: &[(usize, LoadBalancer)],
    certs: &Certificates,
    names: &HashMap<String, Vec<String>>,
) {
    for (i, lb) in lbs {
        for (j, l) in lb.listeners.iter().enumerate() {
            let Some(tls) = l.http.as_ref().and_then(|h| h.tls.as_ref()) else {
                continue;
            };
            let at = format!("LoadBalancers[{i}].Listeners[{j}]");
            let unknown = |r: &mut Read<'_, P>, path: String, id: &str, section: &str| {
                let message = format!("certificate {id:?} is not in [[{section}]]");
                r.issue(path, ApiCode::InvalidParameter, "§4", message);
            };
            if !certs.server.contains_key(&tls.server_certificate_id) {
                let path = format!("{at}.ServerCertificateId");
                unknown(r, path, &tls.server_certificate_id, "ServerCertificates");
            }
            if let Some(ca) = tls.ca_certificate_id.as_ref() {
                if !certs.ca.contains_key(ca) {
                    unknown(r, format!("{at}.CACertificateId"), ca, "CACertificates");
                }
            }
            for (k, e) in tls.domain_extensions.iter().enumerate() {
                let at = format!("{at}.DomainExtensions[{k}]");
                let Some(served) = names.get(&e.server_certificate_id) else {
                    let path = format!("{at}.ServerCertificateId");
                    unknown(r, path, &e.server_certificate_id, "ServerCertificates");
                    continue;
                };
                if !crate::api::cert::covers(served.iter().map(String::as_str), &e.domain) {
                    let message = format!(
                        "certificate {} is for {}, not {}",
                        e.server_certificate_id,
                        served.join(", "),
                        e.domain
                    );
                    r.issue(
                        format!("{at}.Domain"),
                        ApiCode::InvalidParameter,
                        "B10.17",
                        message,
                    );
                }
            }
        }
    }
}

impl Config {
    /// The address a `ServerId` stands for.
    pub fn resolve_server(&self, server_id: &str) -> Option<IpAddr> {
        resolve_server(&self.servers, server_id)
    }

    /// Resolved members of a listener's group, in configuration order (first occurrence of a
    /// duplicate wins, B4.10). Default-group members serve on the listener's BackendServerPort
    /// (B4.1); group members on their own port (B4.2).
    pub fn listener_members(&self, lb: &LoadBalancer, listener: &Listener) -> Vec<Member> {
        self.group_members(lb, &listener.group, listener.backend_server_port)
    }

    /// Members of the listener's group and of its forwarding rules' groups (§11), each once:
    /// the backends an HTTP/HTTPS listener sends requests to.
    pub fn serving_members(&self, lb: &LoadBalancer, listener: &Listener) -> Vec<Member> {
        let mut all = self.listener_members(lb, listener);
        for rule in listener.http.iter().flat_map(|h| &h.rules) {
            let group = GroupRef::VServerGroup(rule.vserver_group_id.clone());
            for m in self.group_members(lb, &group, None) {
                if !all.iter().any(|a| a.addr == m.addr && a.port == m.port) {
                    all.push(m);
                }
            }
        }
        all
    }

    /// Resolved members of a server group; `backend_server_port` is where default-group
    /// members serve.
    pub fn group_members(
        &self,
        lb: &LoadBalancer,
        group: &GroupRef,
        backend_server_port: Option<u16>,
    ) -> Vec<Member> {
        let member = |server_id: &str, port: u16, weight: u8, role: MemberRole| {
            self.resolve_server(server_id).map(|addr| Member {
                server_id: server_id.to_string(),
                addr,
                port,
                weight,
                role,
            })
        };
        match group {
            GroupRef::Default => match backend_server_port {
                Some(port) => lb
                    .backend_servers
                    .iter()
                    .filter_map(|s| member(&s.server_id, port, s.weight, MemberRole::Normal))
                    .collect(),
                None => Vec::new(),
            },
            GroupRef::VServerGroup(id) => lb
                .vserver_groups
                .iter()
                .filter(|g| &g.vserver_group_id == id)
                .flat_map(|g| &g.backend_servers)
                .filter_map(|s| member(&s.server_id, s.port, s.weight, MemberRole::Normal))
                .collect(),
            GroupRef::MasterSlave(id) => lb
                .master_slave_groups
                .iter()
                .filter(|g| &g.master_slave_server_group_id == id)
                .flat_map(|g| {
                    [
                        member(
                            &g.master.server_id,
                            g.master.port,
                            g.master.weight,
                            MemberRole::Master,
                        ),
                        member(
                            &g.slave.server_id,
                            g.slave.port,
                            g.slave.weight,
                            MemberRole::Slave,
                        ),
                    ]
                })
                .flatten()
                .collect(),
        }
    }
}
