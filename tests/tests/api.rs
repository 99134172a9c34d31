//! The management API over real HTTP on loopback with a real store: every action's happy path,
//! its documented errors, range boundaries inside and outside, and the state after each call.
//! Test names cite the rule (slb-behaviour.md) or spec section (slb-api.md) they prove.
use serde_json::Value;
use tests::api::{openssl, TestApi, REGION};

async fn lb(t: &mut TestApi) -> String {
    let r = t
        .ok("CreateLoadBalancer", &[("LoadBalancerName", "web")])
        .await;
    r["LoadBalancerId"].as_str().expect("id").to_string()
}

async fn tcp_listener(
    t: &mut TestApi,
    lb: &str,
    port: &str,
    extra: &[(&str, &str)],
) -> (u16, Value) {
    let mut p = vec![
        ("LoadBalancerId", lb),
        ("ListenerPort", port),
        ("BackendServerPort", "8080"),
        ("Bandwidth", "-1"),
    ];
    p.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    p.extend_from_slice(extra);
    t.call("CreateLoadBalancerTCPListener", &p).await
}

async fn desc(t: &mut TestApi, id: &str) -> Value {
    t.ok(
        "DescribeLoadBalancerTCPListenerAttribute",
        &[("LoadBalancerId", id), ("ListenerPort", "80")],
    )
    .await
}

fn list<'a>(v: &'a Value, outer: &str, inner: &str) -> &'a Vec<Value> {
    v[outer][inner]
        .as_array()
        .unwrap_or_else(|| panic!("{outer}.{inner} in {v}"))
}

#[tokio::test]
async fn create_load_balancer_defaults_and_attributes_b2_1_b2_5_b2_8() {
    let mut t = TestApi::start("create").await.unwrap();
    let created = t.ok("CreateLoadBalancer", &[]).await;
    let id = created["LoadBalancerId"].as_str().unwrap();
    assert!(id.starts_with("lb-"));
    assert_eq!(
        created["Address"], "10.66.0.1",
        "first address of the VIP pool"
    );
    let a = t
        .ok("DescribeLoadBalancerAttribute", &[("LoadBalancerId", id)])
        .await;
    assert_eq!(a["LoadBalancerStatus"], "active"); // B2.1
    assert_eq!(a["AddressType"], "internet"); // B2.5
    assert_eq!(a["InternetChargeType"], "paybytraffic");
    assert_eq!(a["Bandwidth"], 1);
    assert_eq!(a["LoadBalancerSpec"], "slb.s1.small");
    assert_eq!(a["LoadBalancerName"], ""); // B2.8
    assert_eq!(a["RegionId"], REGION);
    // B2.5: intranet instances are pay-by-traffic whatever was asked.
    let i = t
        .ok(
            "CreateLoadBalancer",
            &[
                ("AddressType", "intranet"),
                ("InternetChargeType", "paybybandwidth"),
            ],
        )
        .await;
    let a = t
        .ok(
            "DescribeLoadBalancerAttribute",
            &[("LoadBalancerId", i["LoadBalancerId"].as_str().unwrap())],
        )
        .await;
    assert_eq!(a["InternetChargeType"], "paybytraffic");
    assert_eq!(i["Address"], "10.66.0.2");
    // IPv6 from the pool's v6 range (AddressIPVersion, not in the 2014 docs).
    let v6 = t
        .ok("CreateLoadBalancer", &[("AddressIPVersion", "ipv6")])
        .await;
    assert_eq!(v6["Address"], "fd66::1");
    // Boundaries: Bandwidth 1..=1000, names 1..=80 of [A-Za-z0-9-/._].
    t.ok(
        "CreateLoadBalancer",
        &[("Bandwidth", "1000"), ("LoadBalancerName", &"a".repeat(80))],
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("Bandwidth", "1001")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("Bandwidth", "0")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("LoadBalancerName", &"a".repeat(81))],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("LoadBalancerName", "a b")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("AddressType", "public")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("Address", "10.66.0.1")],
        "IpNotAvailable",
        400,
    )
    .await;
    t.err(
        "CreateLoadBalancer",
        &[("MasterZoneId", "nowhere")],
        "InvalidParameter",
        400,
    )
    .await;
    let all = t.ok("DescribeLoadBalancers", &[]).await;
    assert_eq!(
        list(&all, "LoadBalancers", "LoadBalancer").len(),
        4,
        "failed calls created nothing"
    );
}

#[tokio::test]
async fn client_token_is_idempotent_b2_6() {
    let mut t = TestApi::start("token").await.unwrap();
    let a = t
        .ok(
            "CreateLoadBalancer",
            &[("ClientToken", "tok-1"), ("LoadBalancerName", "x")],
        )
        .await;
    let b = t
        .ok(
            "CreateLoadBalancer",
            &[("ClientToken", "tok-1"), ("LoadBalancerName", "x")],
        )
        .await;
    assert_eq!(a["LoadBalancerId"], b["LoadBalancerId"]);
    t.err(
        "CreateLoadBalancer",
        &[("ClientToken", "tok-1"), ("LoadBalancerName", "y")],
        "IdempotentParameterMismatch",
        400,
    )
    .await;
    // Case-sensitive: another token.
    let c = t
        .ok(
            "CreateLoadBalancer",
            &[("ClientToken", "TOK-1"), ("LoadBalancerName", "x")],
        )
        .await;
    assert_ne!(a["LoadBalancerId"], c["LoadBalancerId"]);
    let all = t.ok("DescribeLoadBalancers", &[]).await;
    assert_eq!(list(&all, "LoadBalancers", "LoadBalancer").len(), 2);
    t.err(
        "CreateLoadBalancer",
        &[("ClientToken", &"t".repeat(65))],
        "InvalidParameter",
        400,
    )
    .await;
}

#[tokio::test]
async fn delete_cascades_and_status_rules_b2_2_b2_3_b2_4() {
    let mut t = TestApi::start("delete").await.unwrap();
    let id = lb(&mut t).await;
    tcp_listener(&mut t, &id, "80", &[]).await;
    t.ok(
        "AddTags",
        &[
            ("LoadBalancerId", &id),
            ("Tags", r#"[{"TagKey":"env","TagValue":"prod"}]"#),
        ],
    )
    .await;
    t.ok(
        "SetLoadBalancerStatus",
        &[("LoadBalancerId", &id), ("LoadBalancerStatus", "inactive")],
    )
    .await;
    let a = t
        .ok("DescribeLoadBalancerAttribute", &[("LoadBalancerId", &id)])
        .await;
    assert_eq!(a["LoadBalancerStatus"], "inactive");
    // B2.2: the listener configuration is kept while inactive.
    assert_eq!(list(&a, "ListenerPorts", "ListenerPort").len(), 1);
    // B2.3: `locked` cannot be set.
    t.err(
        "SetLoadBalancerStatus",
        &[("LoadBalancerId", &id), ("LoadBalancerStatus", "locked")],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok("DeleteLoadBalancer", &[("LoadBalancerId", &id)]).await;
    t.err(
        "DescribeLoadBalancerAttribute",
        &[("LoadBalancerId", &id)],
        "InvalidLoadBalancerId.NotFound",
        404,
    )
    .await;
    t.err(
        "DeleteLoadBalancer",
        &[("LoadBalancerId", &id)],
        "InvalidLoadBalancerId.NotFound",
        404,
    )
    .await;
    // B2.4: its tags are gone too.
    let tags = t.ok("DescribeTags", &[]).await;
    assert!(list(&tags, "TagSets", "TagSet").is_empty());
    t.err("DeleteLoadBalancer", &[], "MissingParameter", 400)
        .await;
}

#[tokio::test]
async fn describe_load_balancers_filters_b2_7() {
    let mut t = TestApi::start("filters").await.unwrap();
    let a = lb(&mut t).await;
    let b = lb(&mut t).await;
    t.ok(
        "AddBackendServers",
        &[
            ("LoadBalancerId", &b),
            ("BackendServers", r#"[{"ServerId":"10.66.1.5"}]"#),
        ],
    )
    .await;
    let r = t
        .ok("DescribeLoadBalancers", &[("ServerId", "10.66.1.5")])
        .await;
    let found = list(&r, "LoadBalancers", "LoadBalancer");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["LoadBalancerId"], b.as_str());
    let both = format!("{a},{b}");
    let r = t
        .ok("DescribeLoadBalancers", &[("LoadBalancerId", &both)])
        .await;
    assert_eq!(list(&r, "LoadBalancers", "LoadBalancer").len(), 2);
    let eleven = ["lb-x"; 11].join(",");
    t.err(
        "DescribeLoadBalancers",
        &[("LoadBalancerId", &eleven)],
        "InvalidParameter",
        400,
    )
    .await;
    let (s, b) = t
        .client
        .call("DescribeLoadBalancers", &[("RegionId", "elsewhere")])
        .await
        .unwrap();
    assert_eq!(
        (s, b["Code"].as_str()),
        (404, Some("InvalidRegionId.NotFound"))
    );
}

#[tokio::test]
async fn listener_state_machine_b3_1_b3_3_b3_4_b3_5_b3_6() {
    let mut t = TestApi::start("states").await.unwrap();
    let id = lb(&mut t).await;
    let (s, body) = tcp_listener(&mut t, &id, "80", &[]).await;
    assert_eq!(s, 200, "{body}");
    let status = |v: &Value| v["Status"].as_str().unwrap().to_string();
    assert_eq!(status(&desc(&mut t, &id).await), "stopped"); // B3.1
                                                             // B3.3: starting until the data plane has it, then running.
    let p = [("LoadBalancerId", id.as_str()), ("ListenerPort", "80")];
    let (s, _) = t.call_held("StartLoadBalancerListener", &p).await;
    assert_eq!(s, 200);
    let (_, v) = t
        .call_held("DescribeLoadBalancerTCPListenerAttribute", &p)
        .await;
    assert_eq!(status(&v), "starting");
    // B3.4: no modification while starting.
    let (s, v) = t
        .call_held(
            "SetLoadBalancerTCPListenerAttribute",
            &[p[0], p[1], ("Scheduler", "rr")],
        )
        .await;
    assert_eq!((s, v["Code"].as_str()), (400, Some("ListenerProcessing")));
    t.settle();
    assert_eq!(status(&desc(&mut t, &id).await), "running");
    // Start is only accepted in `stopped`.
    t.err("StartLoadBalancerListener", &p, "InvalidParameter", 400)
        .await;
    // B3.4: a change moves running → configuring → running.
    let (s, _) = t
        .call_held(
            "SetLoadBalancerTCPListenerAttribute",
            &[p[0], p[1], ("Scheduler", "rr")],
        )
        .await;
    assert_eq!(s, 200);
    let (_, v) = t
        .call_held("DescribeLoadBalancerTCPListenerAttribute", &p)
        .await;
    assert_eq!(status(&v), "configuring");
    t.settle();
    let v = desc(&mut t, &id).await;
    assert_eq!(
        (status(&v).as_str(), v["Scheduler"].as_str()),
        ("running", Some("rr"))
    );
    // B3.5: stopping → stopped.
    let (s, _) = t.call_held("StopLoadBalancerListener", &p).await;
    assert_eq!(s, 200);
    let (_, v) = t
        .call_held("DescribeLoadBalancerTCPListenerAttribute", &p)
        .await;
    assert_eq!(status(&v), "stopping");
    // B3.6: no delete while stopping.
    let (s, v) = t.call_held("DeleteLoadBalancerListener", &p).await;
    assert_eq!((s, v["Code"].as_str()), (400, Some("ListenerProcessing")));
    t.settle();
    assert_eq!(status(&desc(&mut t, &id).await), "stopped");
    t.ok("DeleteLoadBalancerListener", &p).await;
    t.err(
        "DescribeLoadBalancerTCPListenerAttribute",
        &p,
        "ListenerNotFound",
        404,
    )
    .await;
    t.err("StartLoadBalancerListener", &p, "ListenerNotFound", 404)
        .await;
}

#[tokio::test]
async fn listener_ports_protocols_and_limits_b3_7_b3_8_b3_9_b3_10_b12_5() {
    let mut t = TestApi::start("ports").await.unwrap();
    let id = lb(&mut t).await;
    for port in ["1", "65535"] {
        let (s, b) = tcp_listener(&mut t, &id, port, &[]).await;
        assert_eq!(s, 200, "{b}");
    }
    for port in ["0", "65536", "x"] {
        let (s, b) = tcp_listener(&mut t, &id, port, &[]).await;
        assert_eq!(
            (s, b["Code"].as_str()),
            (400, Some("InvalidParameter")),
            "{port}: {b}"
        );
    }
    // B3.7: one listener per port whatever the protocol.
    let (s, b) = t
        .call(
            "CreateLoadBalancerUDPListener",
            &[
                ("LoadBalancerId", &id),
                ("ListenerPort", "1"),
                ("BackendServerPort", "53"),
            ],
        )
        .await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (400, Some("ListenerAlreadyExists")),
        "{b}"
    );
    // B12.5: reserved UDP ports.
    for port in ["250", "4789", "4790"] {
        let (s, b) = t
            .call(
                "CreateLoadBalancerUDPListener",
                &[
                    ("LoadBalancerId", &id),
                    ("ListenerPort", port),
                    ("BackendServerPort", "53"),
                ],
            )
            .await;
        assert_eq!(
            (s, b["Code"].as_str()),
            (400, Some("InvalidParameter")),
            "{b}"
        );
    }
    // B3.10: protocol-specific actions on another protocol's port.
    t.err(
        "DescribeLoadBalancerUDPListenerAttribute",
        &[("LoadBalancerId", &id), ("ListenerPort", "1")],
        "UnsupportedOperationonfixedprotocalport",
        400,
    )
    .await;
    // B1.4: BackendServerPort is required without a group.
    let (s, b) = t
        .call(
            "CreateLoadBalancerTCPListener",
            &[("LoadBalancerId", &id), ("ListenerPort", "90")],
        )
        .await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (400, Some("MissingParameter")),
        "{b}"
    );
    // B3.9: at most 50 listeners per instance.
    for port in 100..148 {
        let (s, b) = tcp_listener(&mut t, &id, &port.to_string(), &[]).await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = tcp_listener(&mut t, &id, "200", &[]).await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (400, Some("VipTooManyListeners")),
        "{b}"
    );
    t.err(
        "CreateLoadBalancerTCPListener",
        &[
            ("LoadBalancerId", "lb-nope"),
            ("ListenerPort", "80"),
            ("BackendServerPort", "80"),
        ],
        "InvalidLoadBalancerId.NotFound",
        404,
    )
    .await;
}

/// B1.2 boundaries of the TCP/UDP listener parameters (slb-api.md §5.0), each inside and outside.
#[tokio::test]
async fn listener_parameter_boundaries_b1_2() {
    let mut t = TestApi::start("bounds").await.unwrap();
    let id = lb(&mut t).await;
    let cases: &[(&str, &str, bool)] = &[
        ("PersistenceTimeout", "0", true),
        ("PersistenceTimeout", "3600", true),
        ("PersistenceTimeout", "3601", false),
        ("PersistenceTimeout", "-1", false),
        ("EstablishedTimeout", "10", true),
        ("EstablishedTimeout", "900", true),
        ("EstablishedTimeout", "9", false),
        ("EstablishedTimeout", "901", false),
        ("HealthyThreshold", "2", true),
        ("HealthyThreshold", "10", true),
        ("HealthyThreshold", "1", false),
        ("HealthyThreshold", "11", false),
        ("UnhealthyThreshold", "2", true),
        ("UnhealthyThreshold", "11", false),
        ("HealthCheckTimeout", "1", true),
        ("HealthCheckTimeout", "300", true),
        ("HealthCheckTimeout", "301", false),
        ("HealthCheckInterval", "1", true),
        ("HealthCheckInterval", "50", true),
        ("HealthCheckInterval", "51", false),
        ("HealthCheckConnectPort", "-520", true),
        ("HealthCheckConnectPort", "65535", true),
        ("HealthCheckConnectPort", "0", false),
        ("Bandwidth", "-1", true),
        ("Bandwidth", "5120", true),
        ("Bandwidth", "0", false),
        ("Bandwidth", "5121", false),
        ("Scheduler", "tch", true),
        ("Scheduler", "qch", false), // B5.7: UDP only
        ("Scheduler", "lc", false),
        ("SynProxy", "enable", true),
        ("SynProxy", "on", false), // B1.1
    ];
    for (i, (name, value, ok)) in cases.iter().enumerate() {
        let port = (1000 + i).to_string();
        let (s, b) = tcp_listener(&mut t, &id, &port, &[(name, value)]).await;
        if *ok {
            assert_eq!(s, 200, "{name}={value}: {b}");
            let d = t
                .ok(
                    "DescribeLoadBalancerTCPListenerAttribute",
                    &[("LoadBalancerId", &id), ("ListenerPort", &port)],
                )
                .await;
            if *name != "HealthCheckConnectPort" || *value != "-520" {
                assert_eq!(
                    d[*name].to_string().trim_matches('"'),
                    *value,
                    "{name} stored: {d}"
                );
            }
        } else {
            assert_eq!(
                (s, b["Code"].as_str()),
                (400, Some("InvalidParameter")),
                "{name}={value}: {b}"
            );
        }
    }
}

#[tokio::test]
async fn set_listener_keeps_omitted_values_and_switches_groups_b1_5_b4_3() {
    let mut t = TestApi::start("set").await.unwrap();
    let id = lb(&mut t).await;
    let g = t
        .ok(
            "CreateVServerGroup",
            &[
                ("LoadBalancerId", &id),
                ("VServerGroupName", "g"),
                ("BackendServers", r#"[{"ServerId":"10.66.1.1","Port":81}]"#),
            ],
        )
        .await;
    let gid = g["VServerGroupId"].as_str().unwrap().to_string();
    tcp_listener(
        &mut t,
        &id,
        "80",
        &[("PersistenceTimeout", "60"), ("HealthyThreshold", "5")],
    )
    .await;
    let p = [("LoadBalancerId", id.as_str()), ("ListenerPort", "80")];
    t.ok(
        "SetLoadBalancerTCPListenerAttribute",
        &[p[0], p[1], ("Scheduler", "wlc")],
    )
    .await;
    let d = t.ok("DescribeLoadBalancerTCPListenerAttribute", &p).await;
    assert_eq!(
        (
            d["Scheduler"].as_str(),
            d["PersistenceTimeout"].as_i64(),
            d["HealthyThreshold"].as_i64()
        ),
        (Some("wlc"), Some(60), Some(5))
    );
    t.ok(
        "SetLoadBalancerTCPListenerAttribute",
        &[p[0], p[1], ("VServerGroup", "on"), ("VServerGroupId", &gid)],
    )
    .await;
    let d = t.ok("DescribeLoadBalancerTCPListenerAttribute", &p).await;
    assert_eq!(d["VServerGroupId"], gid.as_str());
    // Referenced groups cannot be deleted.
    t.err(
        "DeleteVServerGroup",
        &[("VServerGroupId", &gid)],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok(
        "SetLoadBalancerTCPListenerAttribute",
        &[p[0], p[1], ("VServerGroup", "off")],
    )
    .await;
    let d = t.ok("DescribeLoadBalancerTCPListenerAttribute", &p).await;
    assert!(d.get("VServerGroupId").is_none(), "{d}");
    t.ok("DeleteVServerGroup", &[("VServerGroupId", &gid)])
        .await;
    // A failed Set changes nothing.
    t.err(
        "SetLoadBalancerTCPListenerAttribute",
        &[
            p[0],
            p[1],
            ("Scheduler", "wlc"),
            ("PersistenceTimeout", "9999"),
        ],
        "InvalidParameter",
        400,
    )
    .await;
    let d2 = t.ok("DescribeLoadBalancerTCPListenerAttribute", &p).await;
    assert_eq!(d2["PersistenceTimeout"], 60);
    t.err(
        "SetLoadBalancerUDPListenerAttribute",
        &[p[0], p[1]],
        "UnsupportedOperationonfixedprotocalport",
        400,
    )
    .await;
    t.err(
        "SetLoadBalancerTCPListenerAttribute",
        &[p[0], p[1], ("Bogus", "1")],
        "UnsupportedParameter",
        400,
    )
    .await;
}

#[tokio::test]
async fn backend_servers_b4_7_b4_10_and_limits_s7() {
    let mut t = TestApi::start("backends").await.unwrap();
    let id = lb(&mut t).await;
    let r = t
        .ok("AddBackendServers", &[("LoadBalancerId", &id), ("BackendServers", r#"[{"ServerId":"10.66.1.1","Weight":"0"},{"ServerId":"10.66.1.2","Weight":100},{"ServerId":"10.66.1.1","Weight":7}]"#)])
        .await;
    let servers = list(&r, "BackendServers", "BackendServer");
    // B4.10: the first occurrence wins; B4.7: weight 0 and 100 are valid.
    assert_eq!(servers.len(), 2);
    assert_eq!(servers[0]["Weight"], 0);
    for (w, code) in [
        ("101", "InvalidWeight.Malformed"),
        ("-1", "InvalidWeight.Malformed"),
    ] {
        let body = format!(r#"[{{"ServerId":"10.66.1.3","Weight":{w}}}]"#);
        t.err(
            "AddBackendServers",
            &[("LoadBalancerId", &id), ("BackendServers", &body)],
            code,
            400,
        )
        .await;
    }
    t.err(
        "AddBackendServers",
        &[
            ("LoadBalancerId", &id),
            ("BackendServers", r#"[{"ServerId":"vm-unknown"}]"#),
        ],
        "InvalidServerId.NotFound",
        400,
    )
    .await;
    // §7: at most 20 per request.
    let many: Vec<String> = (1..=21)
        .map(|i| format!(r#"{{"ServerId":"10.66.2.{i}"}}"#))
        .collect();
    let many = format!("[{}]", many.join(","));
    t.err(
        "AddBackendServers",
        &[("LoadBalancerId", &id), ("BackendServers", &many)],
        "TooManyBackendServers",
        400,
    )
    .await;
    t.err(
        "AddBackendServers",
        &[("LoadBalancerId", &id), ("BackendServers", "[{")],
        "InvalidParameter",
        400,
    )
    .await;
    let r = t
        .ok(
            "SetBackendServers",
            &[
                ("LoadBalancerId", &id),
                (
                    "BackendServers",
                    r#"[{"ServerId":"10.66.1.1","Weight":50}]"#,
                ),
            ],
        )
        .await;
    assert_eq!(list(&r, "BackendServers", "BackendServer")[0]["Weight"], 50);
    t.err(
        "SetBackendServers",
        &[
            ("LoadBalancerId", &id),
            (
                "BackendServers",
                r#"[{"ServerId":"10.66.9.9","Weight":50}]"#,
            ),
        ],
        "InvalidServerId.NotFound",
        400,
    )
    .await;
    // §7.2: absent servers are ignored.
    let r = t
        .ok(
            "RemoveBackendServers",
            &[
                ("LoadBalancerId", &id),
                ("BackendServers", r#"["10.66.1.1","10.66.7.7"]"#),
            ],
        )
        .await;
    assert_eq!(list(&r, "BackendServers", "BackendServer").len(), 1);
    // An IPv6 server on an IPv4 instance cannot be NATed.
    t.err(
        "AddBackendServers",
        &[
            ("LoadBalancerId", &id),
            ("BackendServers", r#"[{"ServerId":"fd00::1"}]"#),
        ],
        "InvalidParameter",
        400,
    )
    .await;
}

#[tokio::test]
async fn vserver_and_master_slave_groups_b4_2_b4_4_b4_5() {
    let mut t = TestApi::start("groups").await.unwrap();
    let id = lb(&mut t).await;
    let g = t
        .ok(
            "CreateVServerGroup",
            &[
                ("LoadBalancerId", &id),
                ("VServerGroupName", "web"),
                (
                    "BackendServers",
                    r#"[{"ServerId":"10.66.1.1","Port":80,"Weight":10}]"#,
                ),
            ],
        )
        .await;
    let gid = g["VServerGroupId"].as_str().unwrap().to_string();
    let r = t
        .ok(
            "AddVServerGroupBackendServers",
            &[
                ("VServerGroupId", &gid),
                ("BackendServers", r#"[{"ServerId":"10.66.1.1","Port":81}]"#),
            ],
        )
        .await;
    assert_eq!(
        list(&r, "BackendServers", "BackendServer").len(),
        2,
        "same server, other port: B4.2"
    );
    let r = t
        .ok(
            "ModifyVServerGroupBackendServers",
            &[
                ("VServerGroupId", &gid),
                (
                    "OldBackendServers",
                    r#"[{"ServerId":"10.66.1.1","Port":80}]"#,
                ),
                (
                    "NewBackendServers",
                    r#"[{"ServerId":"10.66.1.2","Port":80,"Weight":30}]"#,
                ),
            ],
        )
        .await;
    let members = list(&r, "BackendServers", "BackendServer");
    assert_eq!(members.len(), 2);
    assert!(members
        .iter()
        .any(|m| m["ServerId"] == "10.66.1.2" && m["Weight"] == 30));
    t.ok(
        "SetVServerGroupAttribute",
        &[("VServerGroupId", &gid), ("VServerGroupName", "renamed")],
    )
    .await;
    let a = t
        .ok("DescribeVServerGroupAttribute", &[("VServerGroupId", &gid)])
        .await;
    assert_eq!(a["VServerGroupName"], "renamed");
    let all = t
        .ok("DescribeVServerGroups", &[("LoadBalancerId", &id)])
        .await;
    assert_eq!(list(&all, "VServerGroups", "VServerGroup").len(), 1);
    t.err(
        "DescribeVServerGroupAttribute",
        &[("VServerGroupId", "rsp-nope")],
        "InvalidParameter",
        404,
    )
    .await;
    t.err(
        "AddVServerGroupBackendServers",
        &[
            ("VServerGroupId", &gid),
            ("BackendServers", r#"[{"ServerId":"10.66.1.1","Port":0}]"#),
        ],
        "InvalidParameter",
        400,
    )
    .await;
    // B4.5: exactly one master and one slave, distinct.
    let bad = r#"[{"ServerId":"10.66.1.1","Port":80},{"ServerId":"10.66.1.2","Port":80}]"#;
    t.err(
        "CreateMasterSlaveVServerGroup",
        &[
            ("LoadBalancerId", &id),
            ("MasterSlaveVServerGroupName", "ms"),
            ("MasterSlaveBackendServers", bad),
        ],
        "InvalidParameter",
        400,
    )
    .await;
    let good = r#"[{"ServerId":"10.66.1.1","Port":80,"ServerType":"Master"},{"ServerId":"10.66.1.2","Port":80,"ServerType":"Slave"}]"#;
    let ms = t
        .ok(
            "CreateMasterSlaveVServerGroup",
            &[
                ("LoadBalancerId", &id),
                ("MasterSlaveVServerGroupName", "ms"),
                ("MasterSlaveBackendServers", good),
            ],
        )
        .await;
    let msid = ms["MasterSlaveVServerGroupId"]
        .as_str()
        .unwrap()
        .to_string();
    // B4.4: not on HTTP listeners.
    let (s, b) = t
        .call(
            "CreateLoadBalancerHTTPListener",
            &[
                ("LoadBalancerId", &id),
                ("ListenerPort", "80"),
                ("MasterSlaveServerGroupId", &msid),
                ("HealthCheck", "off"),
                ("StickySession", "off"),
                ("Bandwidth", "-1"),
            ],
        )
        .await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (400, Some("InvalidParameter.VServerGroupId")),
        "{b}"
    );
    let (s, b) = tcp_listener(&mut t, &id, "81", &[("MasterSlaveServerGroupId", &msid)]).await;
    assert_eq!(s, 200, "{b}");
    t.err(
        "DeleteMasterSlaveVServerGroup",
        &[("MasterSlaveVServerGroupId", &msid)],
        "InvalidParameter",
        400,
    )
    .await;
    let d = t
        .ok(
            "DescribeMasterSlaveVServerGroupAttribute",
            &[("MasterSlaveVServerGroupId", &msid)],
        )
        .await;
    assert_eq!(
        list(&d, "MasterSlaveBackendServers", "MasterSlaveBackendServer").len(),
        2
    );
    let l = t
        .ok(
            "DescribeMasterSlaveVServerGroups",
            &[("LoadBalancerId", &id)],
        )
        .await;
    assert_eq!(
        list(&l, "MasterSlaveVServerGroups", "MasterSlaveVServerGroup").len(),
        1
    );
    // A listener referencing an unknown group: "RS Pool doesn't exist." (404).
    let (s, b) = tcp_listener(&mut t, &id, "82", &[("VServerGroupId", "rsp-nope")]).await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (404, Some("InvalidParameter")),
        "{b}"
    );
}

#[tokio::test]
async fn legacy_white_list_b7_8_to_b7_11() {
    let mut t = TestApi::start("whitelist").await.unwrap();
    let id = lb(&mut t).await;
    tcp_listener(&mut t, &id, "80", &[]).await;
    let p = [("LoadBalancerId", id.as_str()), ("ListenerPort", "80")];
    t.err(
        "AddListenerWhiteListItem",
        &[p[0], p[1], ("SourceItems", "10.0.0.1")],
        "IncorrectListenerAccessControlStatusStatus",
        500,
    )
    .await;
    t.ok(
        "SetListenerAccessControlStatus",
        &[p[0], p[1], ("AccessControlStatus", "open_white_list")],
    )
    .await;
    let d = t.ok("DescribeListenerAccessControlAttribute", &p).await;
    assert_eq!(
        (d["AccessControlStatus"].as_str(), d["SourceItems"].as_str()),
        (Some("open_white_list"), Some(""))
    );
    t.ok(
        "AddListenerWhiteListItem",
        &[p[0], p[1], ("SourceItems", "10.0.0.1,192.168.0.0/16")],
    )
    .await;
    t.err(
        "AddListenerWhiteListItem",
        &[p[0], p[1], ("SourceItems", "0.0.0.0/0")],
        "InvalidParameter",
        400,
    )
    .await;
    t.err(
        "AddListenerWhiteListItem",
        &[p[0], p[1], ("SourceItems", "not-an-ip")],
        "InvalidParameter",
        400,
    )
    .await;
    t.ok(
        "RemoveListenerWhiteListItem",
        &[p[0], p[1], ("SourceItems", "10.0.0.1")],
    )
    .await;
    let d = t.ok("DescribeListenerAccessControlAttribute", &p).await;
    assert_eq!(d["SourceItems"], "192.168.0.0/16");
    t.ok(
        "SetListenerAccessControlStatus",
        &[p[0], p[1], ("AccessControlStatus", "close")],
    )
    .await;
    t.err(
        "SetListenerAccessControlStatus",
        &[p[0], p[1], ("AccessControlStatus", "open")],
        "InvalidParameter",
        400,
    )
    .await;
}

#[tokio::test]
async fn tags_b15() {
    let mut t = TestApi::start("tags").await.unwrap();
    let a = lb(&mut t).await;
    let b = lb(&mut t).await;
    for id in [&a, &b] {
        t.ok(
            "AddTags",
            &[
                ("LoadBalancerId", id),
                ("Tags", r#"[{"TagKey":"env","TagValue":"prod"}]"#),
            ],
        )
        .await;
    }
    let r = t.ok("DescribeTags", &[]).await;
    let sets = list(&r, "TagSets", "TagSet");
    assert_eq!(
        (sets.len(), sets[0]["InstanceCount"].as_u64()),
        (1, Some(2))
    );
    let r = t
        .ok(
            "DescribeLoadBalancers",
            &[("Tags", r#"[{"TagKey":"env","TagValue":"prod"}]"#)],
        )
        .await;
    assert_eq!(list(&r, "LoadBalancers", "LoadBalancer").len(), 2);
    t.ok(
        "RemoveTags",
        &[("LoadBalancerId", &a), ("Tags", r#"[{"TagKey":"env"}]"#)],
    )
    .await;
    let r = t.ok("DescribeTags", &[]).await;
    assert_eq!(list(&r, "TagSets", "TagSet")[0]["InstanceCount"], 1);
    t.err(
        "AddTags",
        &[
            ("LoadBalancerId", &a),
            ("Tags", r#"[{"TagKey":"aliyun-x"}]"#),
        ],
        "InvalidParameter",
        400,
    )
    .await;
    let eleven: Vec<String> = (0..11).map(|i| format!(r#"{{"TagKey":"k{i}"}}"#)).collect();
    let eleven = format!("[{}]", eleven.join(","));
    t.err(
        "AddTags",
        &[("LoadBalancerId", &a), ("Tags", &eleven)],
        "InvalidParameter",
        400,
    )
    .await;
}

#[tokio::test]
async fn certificates_b10_4_b10_5_b10_6() {
    let mut t = TestApi::start("certs").await.unwrap();
    let dir = t.dir.join("pem");
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k.pem",
            "-out",
            "c.pem",
            "-days",
            "30",
            "-subj",
            "/CN=www.example.com",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k2.pem",
            "-out",
            "c2.pem",
            "-days",
            "30",
            "-subj",
            "/CN=other",
        ],
    );
    openssl(
        &dir,
        &[
            "pkey", "-in", "k.pem", "-aes256", "-passout", "pass:x", "-out", "enc.pem",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (cert, key, key2, enc) = (
        read("c.pem"),
        read("k.pem"),
        read("k2.pem"),
        read("enc.pem"),
    );
    let up = t
        .ok(
            "UploadServerCertificate",
            &[
                ("ServerCertificate", &cert),
                ("PrivateKey", &key),
                ("ServerCertificateName", "www"),
            ],
        )
        .await;
    let cid = up["ServerCertificateId"].as_str().unwrap().to_string();
    let fp = up["Fingerprint"].as_str().unwrap();
    assert_eq!(fp.split(':').count(), 20, "SHA-1, colon-separated: {fp}");
    t.err(
        "UploadServerCertificate",
        &[("ServerCertificate", &cert), ("PrivateKey", &key2)],
        "CertificateNotMatchPrivateKey",
        400,
    )
    .await;
    t.err(
        "UploadServerCertificate",
        &[("ServerCertificate", &cert), ("PrivateKey", &enc)],
        "PrivateKeyEncryption",
        400,
    )
    .await;
    t.err(
        "UploadServerCertificate",
        &[("ServerCertificate", "garbage"), ("PrivateKey", &key)],
        "InvalidParameter",
        404,
    )
    .await;
    // B10.5: no key material in any response.
    let d = t.ok("DescribeServerCertificates", &[]).await;
    let text = d.to_string();
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN CERTIFICATE"),
        "{text}"
    );
    assert_eq!(list(&d, "ServerCertificates", "ServerCertificate").len(), 1);
    // B10.6: referenced certificates cannot be deleted.
    let id = lb(&mut t).await;
    let (s, b) = t
        .call(
            "CreateLoadBalancerHTTPSListener",
            &[
                ("LoadBalancerId", &id),
                ("ListenerPort", "443"),
                ("BackendServerPort", "80"),
                ("Bandwidth", "-1"),
                ("HealthCheck", "off"),
                ("StickySession", "off"),
                ("ServerCertificateId", &cid),
            ],
        )
        .await;
    assert_eq!(s, 200, "{b}");
    t.err(
        "DeleteServerCertificate",
        &[("ServerCertificateId", &cid)],
        "CertificateAndPrivateKeyIsRefered",
        400,
    )
    .await;
    let (s, b) = t
        .call(
            "CreateLoadBalancerHTTPSListener",
            &[
                ("LoadBalancerId", &id),
                ("ListenerPort", "444"),
                ("BackendServerPort", "80"),
                ("Bandwidth", "-1"),
                ("HealthCheck", "off"),
                ("StickySession", "off"),
                ("ServerCertificateId", "cert-nope"),
            ],
        )
        .await;
    assert_eq!(
        (s, b["Code"].as_str()),
        (404, Some("ServerCertificateId.NotFound")),
        "{b}"
    );
    t.ok(
        "DeleteLoadBalancerListener",
        &[("LoadBalancerId", &id), ("ListenerPort", "443")],
    )
    .await;
    t.ok(
        "SetServerCertificateName",
        &[
            ("ServerCertificateId", &cid),
            ("ServerCertificateName", "renamed"),
        ],
    )
    .await;
    t.ok("DeleteServerCertificate", &[("ServerCertificateId", &cid)])
        .await;
    t.err(
        "DeleteServerCertificate",
        &[("ServerCertificateId", &cid)],
        "ServerCertificateId.NotFound",
        404,
    )
    .await;
    let ca = t
        .ok(
            "UploadCACertificate",
            &[("CACertificate", &cert), ("CACertificateName", "ca")],
        )
        .await;
    let caid = ca["CACertificateId"].as_str().unwrap();
    let d = t
        .ok("DescribeCACertificates", &[("CACertificateId", caid)])
        .await;
    assert_eq!(list(&d, "CACertificates", "CACertificate").len(), 1);
    // The store file holds private keys: owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(t.dir.join("state.redb"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0);
}

/// §1.1: HTTP/1.1 keep-alive, as SDK connection pools use it: many signed calls (each with its
/// own nonce) on one connection, a change made on it visible to the next call.
#[tokio::test]
async fn calls_share_a_kept_alive_connection_s1_1() {
    let t = TestApi::start("keepalive").await.unwrap();
    let mut session = t.client.session();
    let mut names = Vec::new();
    for i in 0..20 {
        let name = format!("k{i}");
        let (s, b) = session
            .call(
                "CreateLoadBalancer",
                &[("RegionId", REGION), ("LoadBalancerName", &name)],
            )
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        names.push(name);
    }
    let (s, all) = session
        .call("DescribeLoadBalancers", &[("RegionId", REGION)])
        .await
        .unwrap();
    assert_eq!(s, 200, "{all}");
    assert_eq!(
        list(&all, "LoadBalancers", "LoadBalancer").len(),
        names.len()
    );
}

#[tokio::test]
async fn signatures_protect_every_call_s1_3() {
    let mut t = TestApi::start("sign").await.unwrap();
    let mut bad = t.client.clone();
    bad.secret = "wrong".into();
    let (s, b) = bad
        .call("CreateLoadBalancer", &[("RegionId", REGION)])
        .await
        .unwrap();
    assert_eq!(
        (s, b["Code"].as_str(), b["Message"].as_str()),
        (400, Some("InternalError"), Some("Illegal sign"))
    );
    bad.key_id = "nobody".into();
    let (s, b) = bad
        .call("CreateLoadBalancer", &[("RegionId", REGION)])
        .await
        .unwrap();
    assert_eq!((s, b["Message"].as_str()), (400, Some("Illegal user")));
    let (s, b) = t
        .client
        .send(
            "GET",
            "/?Action=CreateLoadBalancer&Version=2014-05-15&Format=JSON",
            vec![],
            Default::default(),
        )
        .await
        .unwrap();
    assert_eq!((s, b["Code"].as_str()), (400, Some("MissingParameter")));
    let all = t.ok("DescribeLoadBalancers", &[]).await;
    assert!(
        list(&all, "LoadBalancers", "LoadBalancer").is_empty(),
        "rejected calls changed nothing"
    );
    t.err("NoSuchAction", &[], "UnsupportedOperation", 400)
        .await;
}

#[tokio::test]
async fn xml_is_the_default_format_with_wrapped_lists_s1_5() {
    let t = TestApi::start("xml").await.unwrap();
    let mut params = vec![
        ("Action".to_string(), "DescribeRegions".to_string()),
        ("Version".to_string(), "2014-05-15".to_string()),
    ];
    slb::api::sign::sign_v1(
        "GET",
        &mut params,
        "testid",
        "testsecret",
        "n-xml-1",
        &slb::api::sign::format_timestamp(std::time::SystemTime::now()),
    );
    let q: Vec<String> = params
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                slb::api::sign::percent_encode(k),
                slb::api::sign::percent_encode(v)
            )
        })
        .collect();
    let stream = tokio::net::TcpStream::connect(t.client.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = stream;
    stream
        .write_all(
            format!(
                "GET /?{} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                q.join("&")
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("application/xml"));
    assert!(
        out.contains("<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeRegionsResponse>"),
        "{out}"
    );
    assert!(out.contains("<Regions><Region><LocalName>cn-test</LocalName><RegionId>cn-test</RegionId></Region></Regions>"), "{out}");
}

/// Acknowledged changes survive a restart of the service on the same store.
#[tokio::test]
async fn state_survives_restart() {
    let mut t = TestApi::start("restart").await.unwrap();
    let id = lb(&mut t).await;
    tcp_listener(&mut t, &id, "80", &[("Scheduler", "sch")]).await;
    t.ok(
        "StartLoadBalancerListener",
        &[("LoadBalancerId", &id), ("ListenerPort", "80")],
    )
    .await;
    let before = t
        .ok(
            "DescribeLoadBalancerTCPListenerAttribute",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    let dir = t.stop().await;
    let mut t = TestApi::start_in(dir).await.unwrap();
    let after = t
        .ok(
            "DescribeLoadBalancerTCPListenerAttribute",
            &[("LoadBalancerId", &id), ("ListenerPort", "80")],
        )
        .await;
    let strip = |mut v: Value| {
        v.as_object_mut().unwrap().remove("RequestId");
        v
    };
    assert_eq!(strip(before), strip(after));
}

/// Codes the spec documents (slb-api.md §14, §5.4) that a bad request may get.
const DOCUMENTED: &[&str] = &[
    "MissingParameter",
    "InvalidParameter",
    "UnsupportedParameter",
    "InternalError",
    "ProcessingSameRequest",
    "InvalidLoadBalancerId.NotFound",
    "ListenerNotFound",
    "UnsupportedOperation",
    "InvalidRegionId.NotFound",
    "InvalidWeight.Malformed",
    "InvalidServerId.NotFound",
    "TooManyBackendServers",
    "IpNotAvailable",
    "ListenerAlreadyExists",
    "UnsupportedOperationonfixedprotocalport",
    "InvalidParameter.VServerGroupId",
    // §6 (S1): ACL errors; §11 (S1): rules on a TCP/UDP listener.
    "AclNotExist",
    "Duplicated.AclEntry",
    "IpVersionConflict",
    "ListenerNotSupportRule",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

/// A valid request to break: (action, parameters, required names, numeric names, list names).
type Base<'a> = (
    &'a str,
    Vec<(&'a str, &'a str)>,
    Vec<&'a str>,
    Vec<&'a str>,
    Vec<&'a str>,
);

/// Everything a client can read back, without the per-response RequestId.
async fn snapshot(t: &mut TestApi, lb: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for (action, params) in [
        ("DescribeLoadBalancers", vec![]),
        (
            "DescribeLoadBalancerAttribute",
            vec![("LoadBalancerId", lb)],
        ),
        (
            "DescribeLoadBalancerTCPListenerAttribute",
            vec![("LoadBalancerId", lb), ("ListenerPort", "80")],
        ),
        ("DescribeVServerGroups", vec![("LoadBalancerId", lb)]),
        ("DescribeTags", vec![]),
        // Every resource, rules and ACL entries included.
        ("ExportConfiguration", vec![]),
    ] {
        let mut v = t.ok(action, &params).await;
        v.as_object_mut().unwrap().remove("RequestId");
        out.push(v);
    }
    out
}

/// Thousands of generated bad requests — missing, duplicated, oversized, wrongly typed,
/// non-UTF-8, out-of-range, bad JSON lists, bad signatures, unknown parameters, wrong version
/// or region: every one gets a documented 4xx code, none a 5xx, and the state is unchanged.
#[tokio::test]
async fn malformed_requests_get_documented_4xx_and_change_nothing() {
    let mut t = TestApi::start("malformed").await.unwrap();
    let id = lb(&mut t).await;
    tcp_listener(&mut t, &id, "80", &[]).await;
    let acl = t.ok("CreateAccessControlList", &[("AclName", "a")]).await;
    let acl = acl["AclId"].as_str().unwrap().to_string();
    let g = t
        .ok(
            "CreateVServerGroup",
            &[("LoadBalancerId", &id), ("VServerGroupName", "g")],
        )
        .await;
    let gid = g["VServerGroupId"].as_str().unwrap().to_string();
    t.ok(
        "CreateLoadBalancerHTTPListener",
        &[
            ("LoadBalancerId", &id),
            ("ListenerPort", "8080"),
            ("VServerGroupId", &gid),
            ("Bandwidth", "-1"),
            ("StickySession", "off"),
            ("HealthCheck", "off"),
        ],
    )
    .await;
    let rules = format!(r#"[{{"RuleName":"r","Url":"/a","VServerGroupId":"{gid}"}}]"#);
    let exported = t.ok("ExportConfiguration", &[]).await;
    let exported = exported["Configuration"].as_str().unwrap().to_string();
    let before = snapshot(&mut t, &id).await;
    let servers = r#"[{"ServerId":"10.66.1.9","Port":80}]"#;
    // (action, valid parameters, required names, numeric names, list names)
    let bases: Vec<Base> = vec![
        (
            "CreateLoadBalancerTCPListener",
            vec![
                ("LoadBalancerId", &id),
                ("ListenerPort", "9000"),
                ("BackendServerPort", "80"),
                ("Bandwidth", "-1"),
            ],
            vec!["LoadBalancerId", "ListenerPort", "BackendServerPort"],
            vec![
                "ListenerPort",
                "BackendServerPort",
                "Bandwidth",
                "PersistenceTimeout",
                "HealthyThreshold",
            ],
            vec![],
        ),
        (
            "AddBackendServers",
            vec![
                ("LoadBalancerId", &id),
                ("BackendServers", r#"[{"ServerId":"10.66.1.9"}]"#),
            ],
            vec!["LoadBalancerId", "BackendServers"],
            vec![],
            vec!["BackendServers"],
        ),
        (
            "SetLoadBalancerTCPListenerAttribute",
            vec![
                ("LoadBalancerId", &id),
                ("ListenerPort", "80"),
                ("Scheduler", "rr"),
            ],
            vec!["LoadBalancerId", "ListenerPort"],
            vec!["ListenerPort", "EstablishedTimeout", "HealthCheckInterval"],
            vec![],
        ),
        (
            "CreateVServerGroup",
            vec![
                ("LoadBalancerId", &id),
                ("VServerGroupName", "g"),
                ("BackendServers", servers),
            ],
            vec!["LoadBalancerId", "VServerGroupName"],
            vec![],
            vec!["BackendServers"],
        ),
        (
            "SetLoadBalancerName",
            vec![("LoadBalancerId", &id), ("LoadBalancerName", "n")],
            vec!["LoadBalancerId", "LoadBalancerName"],
            vec![],
            vec![],
        ),
        (
            "AddTags",
            vec![
                ("LoadBalancerId", &id),
                ("Tags", r#"[{"TagKey":"k","TagValue":"v"}]"#),
            ],
            vec!["LoadBalancerId", "Tags"],
            vec![],
            vec!["Tags"],
        ),
        (
            "DeleteLoadBalancerListener",
            vec![("LoadBalancerId", &id), ("ListenerPort", "80")],
            vec!["LoadBalancerId", "ListenerPort"],
            vec!["ListenerPort"],
            vec![],
        ),
        (
            "DeleteLoadBalancer",
            vec![("LoadBalancerId", &id)],
            vec!["LoadBalancerId"],
            vec![],
            vec![],
        ),
        (
            "SetLoadBalancerStatus",
            vec![("LoadBalancerId", &id), ("LoadBalancerStatus", "inactive")],
            vec!["LoadBalancerId", "LoadBalancerStatus"],
            vec![],
            vec![],
        ),
        (
            "AddAccessControlListEntry",
            vec![
                ("AclId", &acl),
                ("AclEntrys", r#"[{"entry":"10.1.0.0/16"}]"#),
            ],
            vec!["AclId", "AclEntrys"],
            vec![],
            vec!["AclEntrys"],
        ),
        (
            "CreateRules",
            vec![
                ("LoadBalancerId", &id),
                ("ListenerPort", "8080"),
                ("RuleList", &rules),
            ],
            vec!["LoadBalancerId", "ListenerPort", "RuleList"],
            vec!["ListenerPort"],
            vec!["RuleList"],
        ),
        (
            "ApplyConfiguration",
            vec![("Configuration", &exported), ("DryRun", "false")],
            vec!["Configuration"],
            vec![],
            vec![],
        ),
    ];
    let bad_numbers = [
        "-7",
        "70000",
        "99999999999999999999",
        "1.5",
        "abc",
        "",
        " ",
        "0x10",
    ];
    let bad_lists = [
        "[",
        "{}",
        "[1,2]",
        "\"x\"",
        "[{\"ServerId\":",
        "[[[]]]",
        "null",
        "[{\"Weight\":\"heavy\",\"ServerId\":\"10.66.1.9\",\"Port\":80}]",
    ];
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let big = "x".repeat(200_000);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for i in 0..3000 {
        let (action, base, required, numeric, lists) = rng.pick(&bases).clone();
        let mut params: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let set = |params: &mut Vec<(String, String)>, k: &str, v: &str| {
            params.retain(|(n, _)| n != k);
            params.push((k.to_string(), v.to_string()));
        };
        let kind = rng.next() % 10;
        let (status, body) = match kind {
            0 => {
                let k = rng.pick(&required);
                params.retain(|(n, _)| n != k);
                t.client.call(action, &refs(&params, REGION)).await.unwrap()
            }
            1 if !numeric.is_empty() => {
                let k = rng.pick(&numeric);
                let v = *rng.pick(&bad_numbers);
                set(&mut params, k, v);
                t.client.call(action, &refs(&params, REGION)).await.unwrap()
            }
            2 if !lists.is_empty() => {
                let k = rng.pick(&lists);
                let v = *rng.pick(&bad_lists);
                set(&mut params, k, v);
                t.client.call(action, &refs(&params, REGION)).await.unwrap()
            }
            3 => {
                set(&mut params, &format!("Bogus{}", rng.next() % 100), "1");
                t.client.call(action, &refs(&params, REGION)).await.unwrap()
            }
            4 => {
                // Oversized: a 200 kB value for a required parameter.
                let k = rng.pick(&required);
                set(&mut params, k, &big);
                t.client
                    .call_form(action, &refs(&params, REGION))
                    .await
                    .unwrap()
            }
            5 => {
                let mut bad = t.client.clone();
                bad.secret = format!("wrong{i}");
                bad.call(action, &refs(&params, REGION)).await.unwrap()
            }
            6 => t
                .client
                .call(action, &refs(&params, "cn-elsewhere"))
                .await
                .unwrap(),
            7 => {
                // Raw, unsigned, with a duplicated parameter and/or a non-UTF-8 byte.
                let raw = match rng.next() % 3 {
                    0 => format!("/?Action={action}&Version=2014-05-15&Format=JSON&LoadBalancerId={id}&LoadBalancerId={id}"),
                    1 => format!("/?Action={action}&Version=2014-05-15&Format=JSON&LoadBalancerName=%FF%FE"),
                    _ => format!("/?Action={action}&Format=JSON&Bad=%G1"),
                };
                t.client
                    .send("GET", &raw, vec![], Default::default())
                    .await
                    .unwrap()
            }
            8 => {
                // A body that is not a form, and an invalid Format.
                t.client
                    .send(
                        "POST",
                        &format!("/?Action={action}&Format=YAML"),
                        vec![(
                            "content-type".into(),
                            "application/x-www-form-urlencoded".into(),
                        )],
                        bytes_of(&[0xff, 0x00, 0x25]),
                    )
                    .await
                    .unwrap()
            }
            _ => {
                // A type mismatch on a string parameter: a JSON list where a scalar belongs.
                set(&mut params, "LoadBalancerId", "[{\"a\":1}]");
                t.client.call(action, &refs(&params, REGION)).await.unwrap()
            }
        };
        let code = body["Code"].as_str().unwrap_or("<none>").to_string();
        assert!(
            (400..500).contains(&status),
            "#{i} {action} kind {kind}: {status} {body}"
        );
        assert!(
            DOCUMENTED.contains(&code.as_str()),
            "#{i} {action} kind {kind}: undocumented {code}: {body}"
        );
        *counts.entry(code).or_default() += 1;
    }
    eprintln!("malformed-input run: {counts:?}");
    assert_eq!(
        snapshot(&mut t, &id).await,
        before,
        "bad requests changed the state"
    );
}

fn refs<'a>(params: &'a [(String, String)], region: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut v: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.push(("RegionId", region));
    v
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}
