//! ACL policy groups (§6; the actions are not in the source documents, their names and shapes
//! follow the later SLB API). An ACL is validated by [`check_acl`] as in a file, and every
//! listener that references it is programmed from the changed entries (B7.1–B7.5).

use serde_json::{json, Value};

use super::*;
use crate::config::{check_acl, Acl};

/// Entries per Add/RemoveAccessControlListEntry request.
const MAX_ENTRIES_PER_REQUEST: usize = 50;

fn acl_not_exist() -> ApiError {
    ApiError::new("AclNotExist", 400, "The specified Acl does not exist.")
}

fn acl_index(model: &Model, acl_id: &str) -> Result<usize, ApiError> {
    model
        .acls
        .iter()
        .position(|a| a.acl_id == acl_id)
        .ok_or_else(acl_not_exist)
}

/// Listeners that reference the ACL: (LoadBalancerId, listener).
fn related<'m>(model: &'m Model, acl_id: &'m str) -> impl Iterator<Item = (&'m str, &'m Listener)> {
    model.lbs.values().flat_map(move |lb| {
        lb.listeners
            .iter()
            .filter(move |l| l.acl.as_ref().is_some_and(|a| a.acl_id == acl_id))
            .map(move |l| (lb.load_balancer_id.as_str(), l))
    })
}

fn acl_name(p: &mut ParamMap) -> Result<String, ApiError> {
    let name = req_str(p, "AclName")?;
    if !check_name(&name, 80) {
        return Err(ApiError::invalid(
            "The specified parameter AclName is not valid.",
        ));
    }
    Ok(name)
}

/// Validates `m` as the ACL and stores it at `idx` (or appends it).
fn store_acl(ctx: &mut Ctx, idx: Option<usize>, mut m: ParamMap) -> Result<(), ApiError> {
    let acl = check_acl(&mut m).map_err(|i| ApiError::from_issues(&i))?;
    match idx {
        Some(i) => ctx.model.acls[i] = acl,
        None => ctx.model.acls.push(acl),
    }
    Ok(())
}

pub fn create_access_control_list(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let name = acl_name(p)?;
    let version = choice(p, "AddressIPVersion", &["ipv4", "ipv6"])?.unwrap_or("ipv4");
    p.skip("ResourceGroupId");
    let acl_id = new_id("nacl");
    let mut m = ParamMap::new();
    m.set_str("AclId", &acl_id);
    m.set_str("AclName", name);
    m.set_str("AddressIPVersion", version);
    store_acl(ctx, None, m)?;
    Ok(resp(json!({ "AclId": acl_id })))
}

pub fn delete_access_control_list(ctx: &mut Ctx, p: &mut ParamMap) -> Result<Response, ApiError> {
    let acl_id = req_str(p, "AclId")?;
    let idx = acl_index(ctx.model, &acl_id)?;
    if related(ctx.model, &acl_id).next().is_some() {
        return Err(ApiError::invalid(
            "The resource status is invalid: the ACL is used by a listener",
        ));
    }
    ctx.model.acls.remove(idx);
    Ok(Response::new())
}

pub fn set_access_control_list_attribute(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let acl_id = req_str(p, "AclId")?;
    let name = acl_name(p)?;
    let idx = acl_index(ctx.model, &acl_id)?;
    ctx.model.acls[idx].name = name;
    Ok(Response::new())
}

fn entry_list(p: &mut ParamMap) -> Result<Vec<ParamMap>, ApiError> {
    let list = p
        .objects("AclEntrys")
        .map_err(issue)?
        .ok_or_else(|| ApiError::missing("AclEntrys"))?;
    if list.is_empty() || list.len() > MAX_ENTRIES_PER_REQUEST {
        return Err(ApiError::invalid(format!(
            "The specified parameter AclEntrys is not valid: 1 to {MAX_ENTRIES_PER_REQUEST} entries per request"
        )));
    }
    Ok(list)
}

pub fn add_access_control_list_entry(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let acl_id = req_str(p, "AclId")?;
    let entries = entry_list(p)?;
    let idx = acl_index(ctx.model, &acl_id)?;
    let mut m = export::acl(&ctx.model.acls[idx]);
    push_list(&mut m, "AclEntrys", entries);
    store_acl(ctx, Some(idx), m)?;
    // The data plane's LPM maps hold every ACL's entries.
    let total: usize = ctx.model.acls.iter().map(|a| a.entries.len()).sum();
    if total > slb_common::MAX_ACL_ENTRIES as usize {
        return Err(ApiError::new(
            "QuotaLimitExceeds.TotalAclEntry",
            400,
            format!(
                "The total number of ACL entries exceeds max supported number: {}",
                slb_common::MAX_ACL_ENTRIES
            ),
        ));
    }
    Ok(Response::new())
}

pub fn remove_access_control_list_entry(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let acl_id = req_str(p, "AclId")?;
    let entries = entry_list(p)?;
    let idx = acl_index(ctx.model, &acl_id)?;
    let version = ctx.model.acls[idx].ip_version;
    let mut gone = Vec::new();
    for mut e in entries {
        e.skip("comment");
        // The same parsing as an added entry, so `10.0.0.1` removes `10.0.0.1/32`.
        let mut probe = ParamMap::new();
        probe.set_str("AclId", &acl_id);
        probe.set_str("AddressIPVersion", version.as_str());
        probe.set("AclEntrys", PValue::List(vec![e]));
        let parsed: Acl = check_acl(&mut probe).map_err(|i| ApiError::from_issues(&i))?;
        gone.extend(parsed.entries.into_iter().map(|x| x.entry));
    }
    let acl = &mut ctx.model.acls[idx];
    for net in &gone {
        if !acl.entries.iter().any(|e| e.entry == *net) {
            return Err(ApiError::invalid(format!(
                "The specified resource does not exist: {net} is not in ACL {acl_id}"
            )));
        }
    }
    acl.entries.retain(|e| !gone.contains(&e.entry));
    Ok(Response::new())
}

fn acl_summary(a: &Acl) -> Value {
    json!({
        "AclId": a.acl_id,
        "AclName": a.name,
        "AddressIPVersion": a.ip_version.as_str(),
    })
}

pub fn describe_access_control_lists(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let name = opt_str(p, "AclName")?;
    let version = choice(p, "AddressIPVersion", &["ipv4", "ipv6"])?;
    p.skip("ResourceGroupId");
    let list: Vec<Value> = ctx
        .model
        .acls
        .iter()
        .filter(|a| name.as_ref().is_none_or(|n| a.name.contains(n.as_str())))
        .filter(|a| version.is_none_or(|v| a.ip_version.as_str() == v))
        .map(acl_summary)
        .collect();
    Ok(resp(json!({ "Acls": wrap("Acl", list) })))
}

pub fn describe_access_control_list_attribute(
    ctx: &mut Ctx,
    p: &mut ParamMap,
) -> Result<Response, ApiError> {
    let acl_id = req_str(p, "AclId")?;
    let comment = opt_str(p, "AclEntryComment")?;
    let a = &ctx.model.acls[acl_index(ctx.model, &acl_id)?];
    let entries: Vec<Value> = a
        .entries
        .iter()
        .filter(|e| comment.as_ref().is_none_or(|c| e.comment == *c))
        .map(|e| json!({"AclEntryIP": e.entry.to_string(), "AclEntryComment": e.comment}))
        .collect();
    let listeners: Vec<Value> = related(ctx.model, &acl_id)
        .map(|(lb, l)| {
            json!({
                "LoadBalancerId": lb,
                "ListenerPort": l.listener_port,
                "Protocol": l.protocol.as_str(),
                "AclType": match l.acl.as_ref().map(|a| a.acl_type) {
                    Some(config::AclType::Black) => "black",
                    _ => "white",
                },
            })
        })
        .collect();
    let mut out = resp(acl_summary(a));
    out.insert("AclEntrys".into(), wrap("AclEntry", entries));
    out.insert(
        "RelatedListeners".into(),
        wrap("RelatedListener", listeners),
    );
    Ok(out)
}
