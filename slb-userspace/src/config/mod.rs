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
    parse(&text, &path.display().to_string())
}

/// Parses and validates configuration text; `file_name` is only used in error locations.
pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
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
    let (config, issues) = read_config(&mut root);
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

fn read_config(root: &mut TomlParams<'_>) -> (Config, Vec<Issue>) {
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
    let issues_tail = r.finish(&[], "the configuration file");
    issues.extend(issues_tail);
    let config = Config {
        agent,
        servers,
        acls,
        load_balancers: lbs.into_iter().map(|(_, lb)| lb).collect(),
        certificates: Certificates::default(),
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

impl Config {
    /// The address a `ServerId` stands for.
    pub fn resolve_server(&self, server_id: &str) -> Option<IpAddr> {
        resolve_server(&self.servers, server_id)
    }

    /// Resolved members of a listener's group, in configuration order (first occurrence of a
    /// duplicate wins, B4.10). Default-group members serve on the listener's BackendServerPort
    /// (B4.1); group members on their own port (B4.2).
    pub fn listener_members(&self, lb: &LoadBalancer, listener: &Listener) -> Vec<Member> {
        let member = |server_id: &str, port: u16, weight: u8, role: MemberRole| {
            self.resolve_server(server_id).map(|addr| Member {
                server_id: server_id.to_string(),
                addr,
                port,
                weight,
                role,
            })
        };
        match &listener.group {
            GroupRef::Default => match listener.backend_server_port {
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
