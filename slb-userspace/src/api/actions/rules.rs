//! Forwarding rules (§11, B11.*) and domain extensions (§12, B10.14–B10.20) of HTTP/HTTPS
//! listeners. Both live in the listener's parameters, so every change goes back through
//! [`check_listener`] exactly like a file or a `Set…ListenerAttribute` call would.

use serde_json::{json, Value};

use super::*;
use crate::config::{DomainExtension, Rule};

/// B11.2: rules per `CreateRules` and ids per `DeleteRules`.
const MAX_RULES_PER_REQUEST: usize = 10;

fn listener_not_support_rule() -> ApiError {
    ApiError::new(
        "ListenerNotSupportRule",
        400,
        "The specified listener does not support rules.",
    )
}

fn rule_not_found() -> ApiError {
    ApiError::invalid("The specified resource does not exist: no such RuleId")
}

fn extension_not_found() -> ApiError {
    ApiError::invalid("The specified resource does not exist: no such DomainExtensionId")
}

/// Replaces the listener with `edit` applied to its parameters, re-validated as a whole.
fn edit_listener(
    ctx: &mut Ctx,
    id: &str,
    idx: usize,
    edit: impl FnOnce(&mut ParamMap),
) -> Result<(), ApiError> {
    let model = &*ctx.model;
    let lb = lb(model, id)?;
    let mut m = export::listener(&lb.listeners[idx]);
    edit(&mut m);
    let listener =
        check_listener(&mut m, listener_ctx(model, lb)).map_err(|i| ApiError::from_issues(&i))?;
    check_certificates(model, &listener)?;
    lb_mut(ctx.model, id)?.listeners[idx] = listener;
    Ok(())
}

/// Rewrites each element of the listener's list parameter `name`.
fn map_list(m: &mut ParamMap, name: &str, f: impl Fn(ParamMap) -> Option<ParamMap>) {
    if let Some(PValue::List(l)) = m.remove(name) {
        let l: Vec<ParamMap> = l.into_iter().filter_map(f).collect();
        if !l.is_empty() {
            m.set(name, PValue::List(l));
        }
    }
}

fn id_of(m: &ParamMap, key: &str) -> Option<String> {
    match m.get(key) {
        Some(PValue::Str(s)) => Some(s.clone()),
        _ => None,
    }
}

fn http_listener(ctx: &mut Ctx, p: &mut ParamMap) -> Result<(String, usize), ApiError> {
    let (id, _, idx) = listener_port_action(ctx, p)?;
    if !lb(ctx.model, &id)?.listeners[idx].protocol.is_layer7() {
        return Err(listener_not_support_rule()); // B11.1
    }
    Ok((id, idx))
}

/// (LoadBalancerId, listener index, rule) of a rule id.
fn find_rule<'m>(model: &'m Model, rule_id: &str) -> Result<(String, usize, &'m Rule), ApiError> {
    model
        .lbs
        .values()
        .find_map(|lb| {
            lb.listeners.iter().enumerate().find_map(|(i, l)| {
                let r = l
                    .http
                    .as_ref()?
                    .rules
                    .iter()
                    .find(|r| r.rule_id == rule_id)?;
                Some((lb.load_balancer_id.clone(), i, r))
            })
        })
        .ok_or_else(rule_not_found)
}

fn rule_json(r: &Rule) -> Value {
    json!({
        "RuleId": r.rule_id,
        "RuleName": r.name,
        "Domain": r.domain.as_deref().unwrap_or(""),
        "Url": r.url.as_deref().unwrap_or(""),
        "VServerGroupId": r.vserver_group_id,
    })
}

pub fn create_rules(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, idx) = http_listener(ctx, p)?;
    let mut list = p
        .objects("RuleList")
        .map_err(issue)?
        .ok_or_else(|| ApiError::missing("RuleList"))?;
    if list.is_empty() || list.len() > MAX_RULES_PER_REQUEST {
        return Err(ApiError::invalid(format!(
            "The specified parameter RuleList is not valid: 1 to {MAX_RULES_PER_REQUEST} rules per request"
        )));
    }
    for r in &mut list {
        if r.get("RuleId").is_some() {
            return Err(ApiError::new(
                "UnsupportedParameter",
                400,
                "The input parameter is not unsupported: RuleId is assigned by the server",
            ));
        }
        r.set_str("RuleId", new_id("rule"));
    }
    let created: Vec<Value> = list
        .iter()
        .map(|r| json!({"RuleId": id_of(r, "RuleId"), "RuleName": id_of(r, "RuleName")}))
        .collect();
    edit_listener(ctx, &id, idx, |m| push_list(m, "Rules", list))?;
    Ok(resp(json!({ "Rules": wrap("Rule", created) })))
}

/// A JSON list of ids (`["rule-…", …]`), at most `MAX_RULES_PER_REQUEST`.
fn id_list(p: &mut ParamMap, name: &str) -> Result<Vec<String>, ApiError> {
    let text = req_str(p, name)?;
    let bad = || ApiError::invalid(format!("The specified parameter {name} is not valid."));
    let ids: Vec<String> = serde_json::from_str(&text).map_err(|_| bad())?;
    if ids.is_empty() || ids.len() > MAX_RULES_PER_REQUEST {
        return Err(bad());
    }
    Ok(ids)
}

pub fn delete_rules(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    for rule_id in id_list(p, "RuleIds")? {
        let (id, idx, _) = find_rule(ctx.model, &rule_id)?;
        edit_listener(ctx, &id, idx, |m| {
            map_list(m, "Rules", |r| {
                (id_of(&r, "RuleId").as_deref() != Some(&rule_id)).then_some(r)
            })
        })?;
    }
    Ok(Response::new())
}

pub fn set_rule(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let rule_id = req_str(p, "RuleId")?;
    let group = opt_str(p, "VServerGroupId")?;
    let (id, idx, _) = find_rule(ctx.model, &rule_id)?;
    if let Some(group) = group {
        edit_listener(ctx, &id, idx, |m| {
            map_list(m, "Rules", |mut r| {
                if id_of(&r, "RuleId").as_deref() == Some(&rule_id) {
                    r.set_str("VServerGroupId", group.trim());
                }
                Some(r)
            })
        })?;
    }
    Ok(Response::new())
}

pub fn describe_rule_attribute(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let rule_id = req_str(p, "RuleId")?;
    let (id, idx, r) = find_rule(ctx.model, &rule_id)?;
    let mut out = resp(rule_json(r));
    out.insert("LoadBalancerId".into(), json!(id));
    let port = lb(ctx.model, &id)?.listeners[idx].listener_port;
    out.insert("ListenerPort".into(), json!(port.to_string()));
    Ok(out)
}

pub fn describe_rules(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, idx) = http_listener(ctx, p)?;
    let l = &lb(ctx.model, &id)?.listeners[idx];
    let rules: Vec<Value> = l
        .http
        .iter()
        .flat_map(|h| &h.rules)
        .map(rule_json)
        .collect();
    Ok(resp(json!({ "Rules": wrap("Rule", rules) })))
}

// ---------------------------------------------------------------------------------------------
// Domain extensions (§12; only CreateDomainExtension's name is documented).

fn https_listener(ctx: &mut Ctx, p: &mut ParamMap) -> Result<(String, u16, usize), ApiError> {
    let (id, port, idx) = listener_port_action(ctx, p)?;
    if lb(ctx.model, &id)?.listeners[idx].protocol != Protocol::Https {
        return Err(protocol_mismatch());
    }
    Ok((id, port, idx))
}

fn find_extension<'m>(
    model: &'m Model,
    ext_id: &str,
) -> Result<(String, usize, &'m DomainExtension), ApiError> {
    model
        .lbs
        .values()
        .find_map(|lb| {
            lb.listeners.iter().enumerate().find_map(|(i, l)| {
                let tls = l.http.as_ref()?.tls.as_ref()?;
                let e = tls
                    .domain_extensions
                    .iter()
                    .find(|e| e.domain_extension_id == ext_id)?;
                Some((lb.load_balancer_id.clone(), i, e))
            })
        })
        .ok_or_else(extension_not_found)
}

pub fn create_domain_extension(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, port, idx) = https_listener(ctx, p)?;
    let mut e = ParamMap::new();
    e.set_str("Domain", req_str(p, "Domain")?);
    e.set_str("ServerCertificateId", req_str(p, "ServerCertificateId")?);
    let ext_id = new_id("de");
    e.set_str("DomainExtensionId", &ext_id);
    edit_listener(ctx, &id, idx, |m| push_list(m, "DomainExtensions", vec![e]))?;
    Ok(resp(json!({
        "DomainExtensionId": ext_id,
        "ListenerPort": port,
    })))
}

pub fn set_domain_extension_attribute(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let ext_id = req_str(p, "DomainExtensionId")?;
    let cert = req_str(p, "ServerCertificateId")?;
    let (id, idx, _) = find_extension(ctx.model, &ext_id)?;
    // B10.20: editing an extension replaces its certificate.
    edit_listener(ctx, &id, idx, |m| {
        map_list(m, "DomainExtensions", |mut e| {
            if id_of(&e, "DomainExtensionId").as_deref() == Some(&ext_id) {
                e.set_str("ServerCertificateId", &cert);
            }
            Some(e)
        })
    })?;
    Ok(Response::new())
}

pub fn delete_domain_extension(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let ext_id = req_str(p, "DomainExtensionId")?;
    let (id, idx, _) = find_extension(ctx.model, &ext_id)?;
    edit_listener(ctx, &id, idx, |m| {
        map_list(m, "DomainExtensions", |e| {
            (id_of(&e, "DomainExtensionId").as_deref() != Some(&ext_id)).then_some(e)
        })
    })?;
    Ok(Response::new())
}

pub fn describe_domain_extensions(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let (id, _, idx) = https_listener(ctx, p)?;
    let only = opt_str(p, "DomainExtensionId")?;
    let l = &lb(ctx.model, &id)?.listeners[idx];
    let list: Vec<Value> = l
        .http
        .iter()
        .filter_map(|h| h.tls.as_ref())
        .flat_map(|t| &t.domain_extensions)
        .filter(|e| only.as_ref().is_none_or(|o| *o == e.domain_extension_id))
        .map(|e| {
            json!({
                "DomainExtensionId": e.domain_extension_id,
                "Domain": e.domain,
                "ServerCertificateId": e.server_certificate_id,
            })
        })
        .collect();
    Ok(resp(
        json!({ "DomainExtensions": wrap("DomainExtension", list) }),
    ))
}
