//! `ExportConfiguration` and `ApplyConfiguration`: slb's own actions (not in the SLB API) behind
//! `slb export` and `slb apply`. The file and the API are one model: a document is validated by
//! the same `check_*` functions as a configuration file and as every API action, and the result
//! replaces the resources in one committed transaction.

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
        ConfigError::Invalid { errors } => {
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

/// What turning `old` into `new` does, one line per resource, parameter-level for changes.
fn plan(old: &Model, new: &Model) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff =
        |what: &str, o: Option<ParamMap>, n: Option<ParamMap>, skip: &[&str]| match (o, n) {
            (None, Some(_)) => out.push(format!("+ {what}")),
            (Some(_), None) => out.push(format!("- {what}")),
            (Some(o), Some(n)) => {
                let f = fields(&o, &n, skip);
                if !f.is_empty() {
                    out.push(format!("~ {what}: {}", f.join(", ")));
                }
            }
            (None, None) => {}
        };
    let ids = |a: Vec<String>, b: Vec<String>| {
        let mut all = a;
        for x in b {
            if !all.contains(&x) {
                all.push(x);
            }
        }
        all
    };
    for id in ids(
        old.servers.keys().cloned().collect(),
        new.servers.keys().cloned().collect(),
    ) {
        let get = |m: &Model| m.servers.get(&id).map(|a| export::server(&id, *a));
        diff(&format!("server {id}"), get(old), get(new), &[]);
    }
    let acl_ids = |m: &Model| m.acls.iter().map(|a| a.acl_id.clone()).collect();
    for id in ids(acl_ids(old), acl_ids(new)) {
        let get = |m: &Model| m.acls.iter().find(|a| a.acl_id == id).map(export::acl);
        diff(&format!("acl {id}"), get(old), get(new), &[]);
    }
    for id in ids(
        old.lbs.keys().cloned().collect(),
        new.lbs.keys().cloned().collect(),
    ) {
        let (o, n) = (old.lbs.get(&id), new.lbs.get(&id));
        const NESTED: &[&str] = &["VServerGroups", "MasterSlaveServerGroups", "Listeners"];
        diff(
            &format!("load balancer {id}"),
            o.map(export::load_balancer),
            n.map(export::load_balancer),
            NESTED,
        );
        if n.is_none() {
            continue; // B2.4: deleting the instance deletes what it holds
        }
        let vsg = |lb: Option<&LoadBalancer>| {
            lb.iter()
                .flat_map(|lb| &lb.vserver_groups)
                .map(|g| g.vserver_group_id.clone())
                .collect()
        };
        for g in ids(vsg(o), vsg(n)) {
            let get = |lb: Option<&LoadBalancer>| {
                lb?.vserver_groups
                    .iter()
                    .find(|x| x.vserver_group_id == g)
                    .map(export::vserver_group)
            };
            diff(&format!("vserver group {id}/{g}"), get(o), get(n), &[]);
        }
        let ms = |lb: Option<&LoadBalancer>| {
            lb.iter()
                .flat_map(|lb| &lb.master_slave_groups)
                .map(|g| g.master_slave_server_group_id.clone())
                .collect()
        };
        for g in ids(ms(o), ms(n)) {
            let get = |lb: Option<&LoadBalancer>| {
                lb?.master_slave_groups
                    .iter()
                    .find(|x| x.master_slave_server_group_id == g)
                    .map(export::master_slave_group)
            };
            diff(&format!("master/slave group {id}/{g}"), get(o), get(n), &[]);
        }
        let ports = |lb: Option<&LoadBalancer>| {
            lb.iter()
                .flat_map(|lb| &lb.listeners)
                .map(|l| l.listener_port.to_string())
                .collect()
        };
        for port in ids(ports(o), ports(n)) {
            let get = |lb: Option<&LoadBalancer>| {
                lb?.listeners
                    .iter()
                    .find(|l| l.listener_port.to_string() == port)
                    .map(|l| (l.protocol.as_str(), export::listener(l)))
            };
            let (a, b) = (get(o), get(n));
            let proto = b.as_ref().or(a.as_ref()).map_or("", |(p, _)| *p);
            diff(
                &format!("listener {id} {proto}:{port}"),
                a.map(|(_, m)| m),
                b.map(|(_, m)| m),
                &[],
            );
        }
    }
    out
}
