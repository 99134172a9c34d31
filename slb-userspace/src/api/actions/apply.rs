//! `ExportConfiguration` and `ApplyConfiguration`: slb's own actions (not in the SLB API) behind
//! `slb export` and `slb apply`. The file and the API are one model: a document is validated by
//! the same `check_*` functions as a configuration file and as every API action, and the result
//! replaces the resources in one committed transaction.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};

use super::*;
use crate::config::ConfigError;

pub fn export_configuration(ctx: &mut Ctx, _p: &mut ParamMap) -> Result<Response, ApiError> {
    let m = &*ctx.model;
    let lbs: Vec<LoadBalancer> = m.lbs.values().cloned().collect();
    Ok(resp(json!({
        "Configuration": export::to_toml(&m.servers, &m.acls, &lbs),
    })))
}

fn config_error(e: ConfigError) -> ApiError {
    match e {
        ConfigError::Invalid { errors } if !errors.is_empty() => {
            let first = &errors[0].issue;
            let all: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
            ApiError::new(
                first.code.as_str(),
                first.code.http_status(),
                all.join("\n"),
            )
        }
        other => ApiError::invalid(other.to_string()),
    }
}

pub fn apply_configuration(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let text = opt_str(p, "Configuration")?.ok_or_else(|| ApiError::missing("Configuration"))?;
    let dry_run = p.boolean("DryRun").map_err(issue)?.unwrap_or(false);
    let cfg = config::parse(&text, "Configuration").map_err(config_error)?;
    let old = &*ctx.model;
    let mut new = Model {
        servers: cfg.servers,
        acls: cfg.acls,
        lbs: cfg
            .load_balancers
            .into_iter()
            .map(|l| (l.load_balancer_id.clone(), l))
            .collect(),
        ..old.clone()
    };
    // API-only records follow their instance.
    new.meta.retain(|id, _| new.lbs.contains_key(id));
    new.tokens
        .retain(|_, t| new.lbs.contains_key(&t.load_balancer_id));
    for l in new.lbs.values().flat_map(|lb| &lb.listeners) {
        check_certificates(&new, l)?;
    }
    let changes = plan(old, &new);
    let mut transitions = Vec::new();
    for lb in new.lbs.values() {
        for l in &lb.listeners {
            let before = old.lbs.get(&lb.load_balancer_id).and_then(|o| {
                o.listeners
                    .iter()
                    .find(|x| x.listener_port == l.listener_port)
            });
            let t = match (before.map(|b| b.status), l.status) {
                (Some(ListenerStatus::Stopped) | None, ListenerStatus::Running) => {
                    Some(Transition::Starting)
                }
                (Some(ListenerStatus::Running), ListenerStatus::Stopped) => {
                    Some(Transition::Stopping)
                }
                (Some(ListenerStatus::Running), ListenerStatus::Running) => {
                    (before != Some(l)).then_some(Transition::Configuring)
                }
                _ => None,
            };
            if let Some(t) = t {
                transitions.push((lb.load_balancer_id.clone(), l.listener_port, t));
            }
        }
    }
    if !dry_run {
        *ctx.model = new;
        ctx.transitions = transitions;
    }
    let changes: Vec<Value> = changes.into_iter().map(Value::String).collect();
    Ok(resp(json!({
        "DryRun": dry_run,
        "Changes": wrap("Change", changes),
    })))
}

/// `Key: old → new` for every parameter that differs (lists are summarised).
fn fields(old: &ParamMap, new: &ParamMap, skip: &[&str]) -> Vec<String> {
    let show = |v: Option<&PValue>| match v {
        None => "-".to_string(),
        Some(PValue::Str(s)) => format!("{s:?}"),
        Some(PValue::Int(i)) => i.to_string(),
        Some(PValue::Bool(b)) => b.to_string(),
        Some(PValue::List(l)) => format!("[{} items]", l.len()),
    };
    let mut keys: Vec<&str> = old.entries().iter().map(|(k, _)| k.as_str()).collect();
    for (k, _) in new.entries() {
        if !keys.contains(&k.as_str()) {
            keys.push(k);
        }
    }
    keys.into_iter()
        .filter(|k| !skip.contains(k) && old.get(k) != new.get(k))
        .map(|k| format!("{k}: {} → {}", show(old.get(k)), show(new.get(k))))
        .collect()
}

/// Plan lines for one kind of resource, matched by `key` in the order of `old` then the new
/// ones: `+ label`, `- label`, or `~ label: changes` with the parameters that differ.
fn diff_each<'a, T: 'a>(
    out: &mut Vec<String>,
    old: impl IntoIterator<Item = &'a T>,
    new: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> String,
    label: impl Fn(&T) -> String,
    params: impl Fn(&T) -> ParamMap,
    skip: &[&str],
) {
    let old: Vec<(String, &T)> = old.into_iter().map(|x| (key(x), x)).collect();
    let new: Vec<(String, &T)> = new.into_iter().map(|x| (key(x), x)).collect();
    let new_by_key: HashMap<&str, &T> = new.iter().map(|(k, x)| (k.as_str(), *x)).collect();
    let old_keys: HashSet<&str> = old.iter().map(|(k, _)| k.as_str()).collect();
    for (k, o) in &old {
        match new_by_key.get(k.as_str()) {
            None => out.push(format!("- {}", label(o))),
            Some(n) => {
                let f = fields(&params(o), &params(n), skip);
                if !f.is_empty() {
                    out.push(format!("~ {}: {}", label(n), f.join(", ")));
                }
            }
        }
    }
    for (_, n) in new.iter().filter(|(k, _)| !old_keys.contains(k.as_str())) {
        out.push(format!("+ {}", label(n)));
    }
}

/// What turning `old` into `new` does, one line per resource, parameter-level for changes.
fn plan(old: &Model, new: &Model) -> Vec<String> {
    let mut out = Vec::new();
    let servers = |m: &Model| -> Vec<(String, IpAddr)> {
        m.servers.iter().map(|(k, a)| (k.clone(), *a)).collect()
    };
    diff_each(
        &mut out,
        &servers(old),
        &servers(new),
        |s| s.0.clone(),
        |s| format!("server {}", s.0),
        |s| export::server(&s.0, s.1),
        &[],
    );
    diff_each(
        &mut out,
        &old.acls,
        &new.acls,
        |a| a.acl_id.clone(),
        |a| format!("acl {}", a.acl_id),
        export::acl,
        &[],
    );
    let added = new.lbs.keys().filter(|k| !old.lbs.contains_key(*k));
    for id in old.lbs.keys().chain(added) {
        let (o, n) = (old.lbs.get(id), new.lbs.get(id));
        diff_each(
            &mut out,
            o,
            n,
            |lb| lb.load_balancer_id.clone(),
            |_| format!("load balancer {id}"),
            export::load_balancer,
            &["VServerGroups", "MasterSlaveServerGroups", "Listeners"],
        );
        // B2.4: deleting the instance deletes what it holds.
        let Some(n) = n else { continue };
        diff_each(
            &mut out,
            o.iter().flat_map(|o| &o.vserver_groups),
            &n.vserver_groups,
            |g| g.vserver_group_id.clone(),
            |g| format!("vserver group {id}/{}", g.vserver_group_id),
            export::vserver_group,
            &[],
        );
        diff_each(
            &mut out,
            o.iter().flat_map(|o| &o.master_slave_groups),
            &n.master_slave_groups,
            |g| g.master_slave_server_group_id.clone(),
            |g| format!("master/slave group {id}/{}", g.master_slave_server_group_id),
            export::master_slave_group,
            &[],
        );
        diff_each(
            &mut out,
            o.iter().flat_map(|o| &o.listeners),
            &n.listeners,
            |l| l.listener_port.to_string(),
            |l| format!("listener {id} {}:{}", l.protocol.as_str(), l.listener_port),
            export::listener,
            &[],
        );
    }
    out
}
