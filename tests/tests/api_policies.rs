//! ACL policy groups (§6, B7.1–B7.5), forwarding rules (§11, B11.1–B11.3) and domain extensions
//! (§12, B10.14–B10.20) through the API on loopback with a real store: happy paths, documented
//! errors, limits inside and outside, and the state after each call (and after a restart).
use serde_json::Value;
use tests::api::{openssl, TestApi};

fn list<'a>(v: &'a Value, outer: &str, inner: &str) -> &'a Vec<Value> {
    v[outer][inner]
        .as_array()
        .unwrap_or_else(|| panic!("{outer}.{inner} in {v}"))
}

/// Borrowed view of owned parameters.
fn p(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or_else(|| panic!("{key} in {v}"))
}

async fn lb(t: &mut TestApi, version: &str) -> String {
    let r = t
        .ok("CreateLoadBalancer", &[("AddressIPVersion", version)])
        .await;
    text(&r, "LoadBalancerId").to_string()
}

async fn group(t: &mut TestApi, lb: &str, name: &str) -> String {
    let g = t
        .ok(
            "CreateVServerGroup",
            &[
                ("LoadBalancerId", lb),
                ("VServerGroupName", name),
                ("BackendServers", r#"[{"ServerId":"10.66.1.1","Port":80}]"#),
            ],
        )
        .await;
    text(&g, "VServerGroupId").to_string()
}

async fn listener(t: &mut TestApi, action: &str, lb: &str, port: &str, extra: &[(&str, &str)]) {
    let mut p = vec![
        ("LoadBalancerId", lb),
        ("ListenerPort", port),
        ("BackendServerPort", "8080"),
        ("Bandwidth", "-1"),
    ];
    if action.contains("HTTP") {
        p.extend_from_slice(&[("StickySession", "off"), ("HealthCheck", "off")]);
    }
    p.extend_from_slice(extra);
    t.ok(action, &p).await;
}

#[tokio::test]
async fn acl_policy_groups_b7_1_to_b7_5() {
    let mut t = TestApi::start("acl").await.unwrap();
    let created = t
        .ok("CreateAccessControlList", &[("AclName", "office")])
        .await;
    let acl = text(&created, "AclId").to_string();
    assert!(acl.starts_with("nacl-"), "{acl}");
    t.err("CreateAccessControlList", &[], "MissingParameter", 400)
        .await;
    t.err(
        "CreateAccessControlList",
        &[("AclName", "no spaces")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateAccessControlList",
        &[("AclName", "x"), ("AddressIPVersion", "ipv5")],
        "InvalidParameter",
        400,
    )
    .await;
    let v6 = t
        .ok(
            "CreateAccessControlList",
            &[("AclName", "six"), ("AddressIPVersion", "ipv6")],
        )
        .await;
    let v6 = text(&v6, "AclId").to_string();
    let all = t.ok("DescribeAccessControlLists", &[]).await;
    assert_eq!(list(&all, "Acls", "Acl").len(), 2);
    let only6 = t
        .ok(
            "DescribeAccessControlLists",
            &[("AddressIPVersion", "ipv6")],
        )
        .await;
    assert_eq!(list(&only6, "Acls", "Acl")[0]["AclId"], v6.as_str());

    let add = |entries: &str| {
        vec![
            ("AclId".to_string(), acl.clone()),
            ("AclEntrys".to_string(), entries.to_string()),
        ]
    };
    t.ok(
        "AddAccessControlListEntry",
        &p(&add(
            r#"[{"entry":"10.0.0.0/8","comment":"corp"},{"entry":"192.0.2.7"}]"#,
        )),
    )
    .await;
    // B7.5 / §6 errors, each leaving the ACL as it was.
    for (entries, code) in [
        (r#"[{"entry":"10.0.0.0/8"}]"#, "Duplicated.AclEntry"),
        (r#"[{"entry":"fd00::/64"}]"#, "IpVersionConflict"),
        (
            r#"[{"entry":"10.1.0.0/16"},{"entry":"10.1.0.0/16"}]"#,
            "Duplicated.AclEntry",
        ),
        (r#"[{"entry":"300.1.1.1"}]"#, "InvalidParameter"),
        (r#"[{"comment":"no entry"}]"#, "MissingParameter"),
        (r#"{"entry":"10.2.0.0/16"}"#, "InvalidParameter"),
        ("[]", "InvalidParameter"),
    ] {
        t.err("AddAccessControlListEntry", &p(&add(entries)), code, 400)
            .await;
    }
    // 50 entries per request is the limit; 51 is refused.
    let many = |n: usize| {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"entry":"172.16.{i}.0/24"}}"#))
            .collect();
        format!("[{}]", items.join(","))
    };
    t.err(
        "AddAccessControlListEntry",
        &p(&add(&many(51))),
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("AddAccessControlListEntry", &p(&add(&many(50)))).await;
    let attr = t
        .ok("DescribeAccessControlListAttribute", &[("AclId", &acl)])
        .await;
    let entries = list(&attr, "AclEntrys", "AclEntry");
    assert_eq!(entries.len(), 52);
    assert_eq!(entries[0]["AclEntryIP"], "10.0.0.0/8");
    assert_eq!(entries[0]["AclEntryComment"], "corp");
    assert_eq!(entries[1]["AclEntryIP"], "192.0.2.7/32");
    let corp = t
        .ok(
            "DescribeAccessControlListAttribute",
            &[("AclId", &acl), ("AclEntryComment", "corp")],
        )
        .await;
    assert_eq!(list(&corp, "AclEntrys", "AclEntry").len(), 1);

    // Attach to a listener (B7.1); B7.5 an IPv6 ACL on an IPv4 instance is refused.
    let id = lb(&mut t, "ipv4").await;
    listener(
        &mut t,
        "CreateLoadBalancerTCPListener",
        &id,
        "80",
        &[("AclStatus", "on"), ("AclId", &acl), ("AclType", "black")],
    )
    .await;
    t.err(
        "CreateLoadBalancerTCPListener",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "81"),
            ("BackendServerPort", "80"),
            ("Bandwidth", "-1"),
            ("AclStatus", "on"),
            ("AclId", &v6),
            ("AclType", "white"),
        ],
        "IpVersionConflict",
        400,
    )
    .await;
    let attr = t
        .ok("DescribeAccessControlListAttribute", &[("AclId", &acl)])
        .await;
    let related = list(&attr, "RelatedListeners", "RelatedListener");
    assert_eq!(related.len(), 1);
    assert_eq!(related[0]["LoadBalancerId"], id.as_str());
    assert_eq!(related[0]["ListenerPort"], 80);
    assert_eq!(related[0]["AclType"], "black");
    t.err(
        "DeleteAccessControlList",
        &[("AclId", &acl)],
        "InvalidParameter",
        400,
    )
    .await;

    // Removal parses entries like additions; an absent entry is an error and removes nothing.
    t.err(
        "RemoveAccessControlListEntry",
        &p(&add(r#"[{"entry":"192.0.2.7"},{"entry":"203.0.113.1"}]"#)),
        "InvalidParameter",
        400,
    )
    .await;
    t.ok(
        "RemoveAccessControlListEntry",
        &p(&add(r#"[{"entry":"192.0.2.7"}]"#)),
    )
    .await;
    let attr = t
        .ok("DescribeAccessControlListAttribute", &[("AclId", &acl)])
        .await;
    assert_eq!(list(&attr, "AclEntrys", "AclEntry").len(), 51);

    t.ok(
        "SetAccessControlListAttribute",
        &[("AclId", &acl), ("AclName", "office-2")],
    )
    .await;
    for action in [
        "DescribeAccessControlListAttribute",
        "DeleteAccessControlList",
    ] {
        t.err(action, &[("AclId", "nacl-nope")], "AclNotExist", 400)
            .await;
    }
    t.err(
        "SetAccessControlListAttribute",
        &[("AclId", "nacl-nope"), ("AclName", "x")],
        "AclNotExist",
        400,
    )
    .await;

    // The ACL and its entries survive a restart; detached, it can be deleted.
    let dir = t.stop().await;
    let mut t = TestApi::start_in(dir).await.unwrap();
    let attr = t
        .ok("DescribeAccessControlListAttribute", &[("AclId", &acl)])
        .await;
    assert_eq!(attr["AclName"], "office-2");
    assert_eq!(list(&attr, "AclEntrys", "AclEntry").len(), 51);
    t.ok(
        "SetLoadBalancerTCPListenerAttribute",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "80"),
            ("AclStatus", "off"),
        ],
    )
    .await;
    t.ok("DeleteAccessControlList", &[("AclId", &acl)]).await;
    t.err(
        "DescribeAccessControlListAttribute",
        &[("AclId", &acl)],
        "AclNotExist",
        400,
    )
    .await;
}

#[tokio::test]
async fn forwarding_rules_b11_1_to_b11_3() {
    let mut t = TestApi::start("rules").await.unwrap();
    let id = lb(&mut t, "ipv4").await;
    let web = group(&mut t, &id, "web").await;
    let api = group(&mut t, &id, "api").await;
    listener(&mut t, "CreateLoadBalancerHTTPListener", &id, "80", &[]).await;
    listener(&mut t, "CreateLoadBalancerTCPListener", &id, "90", &[]).await;
    let rule = |name: &str, domain: &str, url: &str, g: &str| {
        format!(
            r#"{{"RuleName":"{name}","Domain":"{domain}","Url":"{url}","VServerGroupId":"{g}"}}"#
        )
    };
    let at = |port: &'static str, rules: String| {
        vec![
            ("LoadBalancerId".to_string(), id.clone()),
            ("ListenerPort".to_string(), port.to_string()),
            ("RuleList".to_string(), rules),
        ]
    };
    macro_rules! call {
        ($kind:ident, $action:expr, $v:expr $(, $code:expr, $status:expr)?) => {{
            t.$kind($action, &p(&$v) $(, $code, $status)?).await
        }};
    }
    // B11.1: TCP listeners take no rules.
    call!(
        err,
        "CreateRules",
        at("90", format!("[{}]", rule("a", "a.com", "/", &web))),
        "ListenerNotSupportRule",
        400
    );
    let created = call!(
        ok,
        "CreateRules",
        at(
            "80",
            format!(
                "[{},{}]",
                rule("api", "www.example.com", "/api", &api),
                rule("img", "*.example.com", "", &web)
            )
        )
    );
    let ids = list(&created, "Rules", "Rule");
    assert_eq!(ids.len(), 2);
    // B8.14: DescribeHealthStatus reports the members of the rules' groups too (the listener's
    // own group is empty here).
    let h = t
        .ok(
            "DescribeHealthStatus",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    let servers = list(&h, "BackendServers", "BackendServer");
    assert_eq!(servers.len(), 1, "{h}");
    assert_eq!(servers[0]["ServerId"], "10.66.1.1", "{h}");
    assert_eq!(servers[0]["Port"], 80, "{h}");
    assert_eq!(ids[0]["RuleName"], "api");
    let api_rule = text(&ids[0], "RuleId").to_string();
    assert!(api_rule.starts_with("rule-"), "{api_rule}");
    // B11.2 violations, each leaving the two rules alone.
    for (rules, code, status) in [
        (
            format!("[{}]", rule("api", "x.com", "/", &web)),
            "InvalidParameter",
            400,
        ),
        (
            format!("[{}]", rule("dup", "www.example.com", "/api", &web)),
            "InvalidParameter",
            400,
        ),
        (
            format!("[{}]", rule("none", "", "", &web)),
            "MissingParameter",
            400,
        ),
        (
            format!("[{}]", rule("bad", "-x.com", "/", &web)),
            "InvalidParameter",
            400,
        ),
        (
            format!("[{}]", rule("bad", "", "/a b", &web)),
            "InvalidParameter",
            400,
        ),
        (
            format!("[{}]", rule("bad", "", "/a", "rsp-nope")),
            "InvalidParameter",
            404,
        ),
        (
            r#"[{"RuleId":"rule-mine","RuleName":"x","Url":"/x","VServerGroupId":"g"}]"#
                .to_string(),
            "UnsupportedParameter",
            400,
        ),
        ("[]".to_string(), "InvalidParameter", 400),
        ("not json".to_string(), "InvalidParameter", 400),
    ] {
        call!(err, "CreateRules", at("80", rules), code, status);
    }
    let eleven: Vec<String> = (0..11)
        .map(|i| rule(&format!("r{i}"), "", &format!("/p{i}"), &web))
        .collect();
    call!(
        err,
        "CreateRules",
        at("80", format!("[{}]", eleven.join(","))),
        "InvalidParameter",
        400
    );
    call!(
        ok,
        "CreateRules",
        at("80", format!("[{}]", eleven[..10].join(",")))
    );
    let d = t
        .ok(
            "DescribeRules",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    let rules = list(&d, "Rules", "Rule");
    assert_eq!(rules.len(), 12);
    assert_eq!(rules[1]["Domain"], "*.example.com");
    assert_eq!(rules[1]["Url"], "");

    // B11.3: SetRule retargets; the group of a rule cannot be deleted.
    t.ok(
        "SetRule",
        &[("RuleId", &api_rule), ("VServerGroupId", &web)],
    )
    .await;
    t.err(
        "SetRule",
        &[("RuleId", &api_rule), ("VServerGroupId", "rsp-nope")],
        "InvalidParameter",
        404,
    )
    .await;
    let a = t
        .ok("DescribeRuleAttribute", &[("RuleId", &api_rule)])
        .await;
    assert_eq!(a["VServerGroupId"], web.as_str());
    assert_eq!(a["ListenerPort"], "80");
    assert_eq!(a["LoadBalancerId"], id.as_str());
    assert_eq!(a["Url"], "/api");
    t.err(
        "DeleteVServerGroup",
        &[("VServerGroupId", &web)],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("DeleteVServerGroup", &[("VServerGroupId", &api)])
        .await;

    // Listener changes keep the rules (B1.5); rules are not listener parameters.
    t.ok(
        "SetLoadBalancerHTTPListenerAttribute",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "80"),
            ("IdleTimeout", "30"),
        ],
    )
    .await;
    t.err(
        "SetLoadBalancerHTTPListenerAttribute",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "80"),
            ("Rules", "[]"),
        ],
        "UnsupportedParameter",
        400,
    )
    .await;

    let ids_json = |ids: &[&str]| {
        format!(
            "[{}]",
            ids.iter()
                .map(|i| format!("\"{i}\""))
                .collect::<Vec<_>>()
                .join(",")
        )
    };
    // One unknown id fails the whole batch.
    t.err(
        "DeleteRules",
        &[("RuleIds", &ids_json(&[&api_rule, "rule-nope"]))],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("DeleteRules", &[("RuleIds", &ids_json(&[&api_rule]))])
        .await;
    t.err(
        "DescribeRuleAttribute",
        &[("RuleId", &api_rule)],
        "InvalidParameter",
        400,
    )
    .await;
    let dir = t.stop().await;
    let mut t = TestApi::start_in(dir).await.unwrap();
    let d = t
        .ok(
            "DescribeRules",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    assert_eq!(
        list(&d, "Rules", "Rule").len(),
        11,
        "rules survive a restart"
    );
    t.ok("DeleteLoadBalancer", &[("LoadBalancerId", &id)]).await;
    let remaining = text(&list(&d, "Rules", "Rule")[0], "RuleId").to_string();
    t.err(
        "DescribeRuleAttribute",
        &[("RuleId", &remaining)],
        "InvalidParameter",
        400,
    )
    .await;
}

/// Uploads a self-signed certificate for `cn` and returns its id.
async fn certificate(t: &mut TestApi, cn: &str) -> String {
    let dir = t.dir.join("pem");
    std::fs::create_dir_all(&dir).unwrap();
    let subj = format!("/CN={cn}");
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "30",
            "-subj",
            &subj,
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let up = t
        .ok(
            "UploadServerCertificate",
            &[
                ("ServerCertificate", &read("c.pem")),
                ("PrivateKey", &read("k.pem")),
            ],
        )
        .await;
    text(&up, "ServerCertificateId").to_string()
}

#[tokio::test]
async fn domain_extensions_b10_14_to_b10_20() {
    let mut t = TestApi::start("sni").await.unwrap();
    let main = certificate(&mut t, "www.example.com").await;
    let shop = certificate(&mut t, "*.shop.example.com").await;
    let exact = certificate(&mut t, "a.shop.example.com").await;
    let id = lb(&mut t, "ipv4").await;
    listener(
        &mut t,
        "CreateLoadBalancerHTTPSListener",
        &id,
        "443",
        &[("ServerCertificateId", &main)],
    )
    .await;
    listener(&mut t, "CreateLoadBalancerHTTPListener", &id, "80", &[]).await;
    let at = |port: &str, domain: &str, cert: &str| {
        vec![
            ("LoadBalancerId".to_string(), id.clone()),
            ("ListenerPort".to_string(), port.to_string()),
            ("Domain".to_string(), domain.to_string()),
            ("ServerCertificateId".to_string(), cert.to_string()),
        ]
    };
    macro_rules! call {
        ($kind:ident, $action:expr, $v:expr $(, $code:expr, $status:expr)?) => {{
            t.$kind($action, &p(&$v) $(, $code, $status)?).await
        }};
    }
    call!(
        err,
        "CreateDomainExtension",
        at("80", "a.shop.example.com", &shop),
        "UnsupportedOperationonfixedprotocalport",
        400
    );
    call!(
        err,
        "CreateDomainExtension",
        at("8443", "a.shop.example.com", &shop),
        "ListenerNotFound",
        404
    );
    call!(
        err,
        "CreateDomainExtension",
        at("443", "a.shop.example.com", "cert-nope"),
        "ServerCertificateId.NotFound",
        404
    );
    // B10.17: the certificate must be for the domain.
    call!(
        err,
        "CreateDomainExtension",
        at("443", "www.other.com", &shop),
        "InvalidParameter",
        400
    );
    call!(
        err,
        "CreateDomainExtension",
        at("443", "x.y.shop.example.com", &shop),
        "InvalidParameter",
        400
    );
    call!(
        err,
        "CreateDomainExtension",
        at("443", "bad_domain.com", &shop),
        "InvalidParameter",
        400
    );
    let wild = call!(
        ok,
        "CreateDomainExtension",
        at("443", "*.shop.example.com", &shop)
    );
    assert_eq!(wild["ListenerPort"], 443);
    let wild_id = text(&wild, "DomainExtensionId").to_string();
    let one = call!(
        ok,
        "CreateDomainExtension",
        at("443", "b.shop.example.com", &shop)
    );
    let one_id = text(&one, "DomainExtensionId").to_string();
    call!(
        err,
        "CreateDomainExtension",
        at("443", "B.shop.example.com", &shop),
        "InvalidParameter",
        400
    );
    let d = t
        .ok(
            "DescribeDomainExtensions",
            &[("LoadBalancerId", &id), ("ListenerPort", "443")],
        )
        .await;
    let exts = list(&d, "DomainExtensions", "DomainExtension");
    assert_eq!(exts.len(), 2);
    assert_eq!(exts[0]["Domain"], "*.shop.example.com");
    assert_eq!(exts[0]["ServerCertificateId"], shop.as_str());
    let d = t
        .ok(
            "DescribeDomainExtensions",
            &[
                ("LoadBalancerId", &id),
                ("ListenerPort", "443"),
                ("DomainExtensionId", &one_id),
            ],
        )
        .await;
    assert_eq!(list(&d, "DomainExtensions", "DomainExtension").len(), 1);
    // B10.6: a certificate of an extension cannot be deleted.
    t.err(
        "DeleteServerCertificate",
        &[("ServerCertificateId", &shop)],
        "CertificateAndPrivateKeyIsRefered",
        400,
    )
    .await;
    // B10.20: editing replaces the certificate (which must still cover the domain).
    t.err(
        "SetDomainExtensionAttribute",
        &[
            ("DomainExtensionId", &one_id),
            ("ServerCertificateId", &exact),
        ],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("DeleteDomainExtension", &[("DomainExtensionId", &one_id)])
        .await;
    t.ok(
        "SetDomainExtensionAttribute",
        &[
            ("DomainExtensionId", &wild_id),
            ("ServerCertificateId", &shop),
        ],
    )
    .await;
    call!(
        ok,
        "CreateDomainExtension",
        at("443", "a.shop.example.com", &exact)
    );
    t.err(
        "DeleteDomainExtension",
        &[("DomainExtensionId", &one_id)],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("DeleteDomainExtension", &[("DomainExtensionId", &wild_id)])
        .await;
    t.ok("DeleteServerCertificate", &[("ServerCertificateId", &shop)])
        .await;
    let dir = t.stop().await;
    let mut t = TestApi::start_in(dir).await.unwrap();
    let d = t
        .ok(
            "DescribeDomainExtensions",
            &[("LoadBalancerId", &id), ("ListenerPort", "443")],
        )
        .await;
    let exts = list(&d, "DomainExtensions", "DomainExtension");
    assert_eq!(exts.len(), 1, "{d}");
    assert_eq!(exts[0]["Domain"], "a.shop.example.com");
    assert_eq!(exts[0]["ServerCertificateId"], exact.as_str());
}
