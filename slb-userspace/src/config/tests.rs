//! Tests name the rule they prove (slb-behaviour.md) in their name or a comment.

use std::collections::BTreeMap;

use super::*;

const REGISTRY: &str = r#"
[[Servers]]
ServerId = "web-1"
Address = "10.0.0.1"

[[Servers]]
ServerId = "web-2"
Address = "10.0.0.2"

[[Servers]]
ServerId = "web6"
Address = "fd00::1"

[[Acls]]
AclId = "nacl-4"
AclEntrys = [ { entry = "192.0.2.0/24" } ]

[[Acls]]
AclId = "nacl-6"
AddressIPVersion = "ipv6"
"#;

const LB: &str = r#"
[[LoadBalancers]]
LoadBalancerId = "lb-1"
Address = "10.0.100.1"
BackendServers = [ { ServerId = "web-1" } ]

[[LoadBalancers.VServerGroups]]
VServerGroupId = "rsp-1"
BackendServers = [ { ServerId = "web-1", Port = 81 } ]

[[LoadBalancers.MasterSlaveServerGroups]]
MasterSlaveServerGroupId = "rsp-ms"
MasterSlaveBackendServers = [ { ServerId = "web-1", Port = 80 }, { ServerId = "web-2", Port = 80, ServerType = "Slave" } ]
"#;

/// The registry plus one load balancer whose top-level keys are `fields`.
fn lb(fields: &str) -> String {
    format!("{REGISTRY}\n[[LoadBalancers]]\n{fields}\n")
}

/// The standard instance plus one listener per entry of `listeners` (each the listener's keys).
fn listeners(listeners: &[&str]) -> String {
    let mut text = format!("{REGISTRY}{LB}");
    for l in listeners {
        text.push_str("\n[[LoadBalancers.Listeners]]\n");
        text.push_str(l);
        text.push('\n');
    }
    text
}

fn tcp(extra: &str) -> String {
    listeners(&[&format!(
        "ListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 8080\n{extra}"
    )])
}

fn http(extra: &str) -> String {
    listeners(&[&format!(
        "ListenerProtocol = \"http\"\nListenerPort = 80\nBackendServerPort = 8080\nStickySession = \"off\"\nHealthCheck = \"on\"\n{extra}"
    )])
}

fn ok(text: &str) -> Config {
    match parse(text, "t.toml") {
        Ok(c) => c,
        Err(e) => panic!("expected success, got:\n{e}\n--- input ---\n{text}"),
    }
}

fn errors(text: &str) -> Vec<Located> {
    match parse(text, "t.toml") {
        Err(ConfigError::Invalid { errors }) => errors,
        other => panic!("expected validation errors, got {other:?}\n--- input ---\n{text}"),
    }
}

/// Asserts exactly one error with this path suffix and code; returns it.
fn single(text: &str, path_suffix: &str, code: ApiCode) -> Located {
    let errs = errors(text);
    assert_eq!(
        errs.len(),
        1,
        "expected one error, got:\n{}",
        errs.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    let e = errs.into_iter().next().unwrap();
    assert!(
        e.issue.path.ends_with(path_suffix),
        "path {} does not end with {path_suffix}",
        e.issue.path
    );
    assert_eq!(e.issue.code, code, "{e}");
    e
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in text")
        + 1
}

fn first_listener(c: &Config) -> &Listener {
    &c.load_balancers[0].listeners[0]
}

#[test]
fn example_file_parses_and_resolves_members() {
    let c = ok(include_str!("example.toml"));
    assert_eq!(c.agent.interfaces, vec!["cl0", "be1"]);
    assert_eq!(c.agent.xdp_mode, XdpMode::Native);
    assert_eq!(c.servers.len(), 3);
    assert_eq!(
        c.acls[0].entries[1].entry,
        "198.51.100.7/32".parse().unwrap()
    );
    assert_eq!(c.load_balancers.len(), 2);
    let lb = &c.load_balancers[0];
    assert_eq!(lb.listeners.len(), 4);
    let [tcp, udp, http, https] = [
        &lb.listeners[0],
        &lb.listeners[1],
        &lb.listeners[2],
        &lb.listeners[3],
    ];
    assert_eq!(
        tcp.acl,
        Some(ListenerAcl {
            acl_id: "nacl-office".into(),
            acl_type: AclType::White
        })
    );
    assert_eq!(tcp.access_control.as_ref().map(Vec::len), Some(2));
    assert!(
        matches!(tcp.health_check.probe, Probe::Http(ref p) if p.uri == "/health" && p.http_codes == vec![HttpCodeClass::Http2xx, HttpCodeClass::Http3xx])
    );
    assert_eq!(tcp.health_check.connect_port, None); // -520 = backend port (B8.7)
    assert_eq!(udp.scheduler, Scheduler::Qch);
    assert_eq!(http.http.as_ref().unwrap().forward_port, Some(443));
    assert_eq!(
        http.http.as_ref().unwrap().sticky_session,
        StickySession::Server {
            cookie: "JSESSIONID".into()
        }
    );
    assert_eq!(
        https
            .http
            .as_ref()
            .unwrap()
            .tls
            .as_ref()
            .unwrap()
            .tls_cipher_policy,
        TlsCipherPolicy::Tls12
    );
    assert_eq!(https.bandwidth, Some(100));

    // B4.1: default group on BackendServerPort, IP-literal ServerId resolved directly.
    let m = c.listener_members(lb, tcp);
    assert_eq!(
        m.iter()
            .map(|m| (m.addr.to_string(), m.port, m.weight))
            .collect::<Vec<_>>(),
        vec![
            ("10.77.1.2".into(), 8080, 100),
            ("10.77.2.2".into(), 8080, 100)
        ]
    );
    // B4.2: VServerGroup members on their own ports.
    let m = c.listener_members(lb, http);
    assert_eq!(
        m.iter().map(|m| (m.port, m.weight)).collect::<Vec<_>>(),
        vec![(8080, 100), (8081, 50)]
    );
    // B4.5: master/slave roles.
    let m = c.listener_members(lb, udp);
    assert_eq!(
        m.iter().map(|m| m.role).collect::<Vec<_>>(),
        vec![MemberRole::Master, MemberRole::Slave]
    );
    assert_eq!(c.load_balancers[1].status, InstanceStatus::Inactive);
}

#[test]
fn load_reads_a_file_and_reports_missing_files() {
    let path = std::env::temp_dir().join(format!("slb-config-test-{}.toml", std::process::id()));
    std::fs::write(&path, tcp("")).unwrap();
    let c = load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(first_listener(&c).listener_port, 80);
    assert!(matches!(load(&path), Err(ConfigError::Io { .. })));
}

#[test]
fn defaults_b3_11_b5_1_b8_12_b12_3() {
    let c = ok(&tcp(""));
    let l = first_listener(&c);
    assert_eq!(l.status, ListenerStatus::Running); // B3.11
    assert_eq!(l.scheduler, Scheduler::Wrr); // B5.1
    assert_eq!(l.established_timeout, 900); // B12.3
    assert_eq!(l.persistence_timeout, 0); // B6.1
    assert_eq!(l.bandwidth, None);
    assert_eq!(l.group, GroupRef::Default);
    assert_eq!(l.acl, None); // B7.1 default off
    assert_eq!(l.access_control, None); // B7.8 default close
    let h = &l.health_check; // B8.1, B8.12
    assert!(h.enabled);
    assert_eq!(
        (
            h.healthy_threshold,
            h.unhealthy_threshold,
            h.timeout,
            h.interval
        ),
        (3, 3, 5, 2)
    );
    assert_eq!(h.probe, Probe::Tcp); // B8.3
    assert_eq!(c.agent, Agent::default());
}

// ---- errors carry file, line, path and code -------------------------------------------------

#[test]
fn syntax_error_has_file_and_line() {
    let text = "[Agent]\nXdpMode = \"native\"\nPinPath = \n";
    match parse(text, "bad.toml") {
        Err(ConfigError::Syntax { file, line, .. }) => {
            assert_eq!(file, "bad.toml");
            assert_eq!(line, 3);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_type_has_line_path_and_code() {
    let text =
        listeners(&["ListenerProtocol = \"tcp\"\nListenerPort = \"80\"\nBackendServerPort = 8080"]);
    let e = single(&text, "", ApiCode::InvalidParameter);
    assert_eq!(e.file, "t.toml");
    assert_eq!(e.issue.path, "LoadBalancers[0].Listeners[0].ListenerPort");
    assert_eq!(e.line, line_of(&text, "ListenerPort = \"80\""));
    assert!(e.issue.message.contains("expected an integer"), "{e}");
}

#[test]
fn out_of_range_is_rejected_not_clamped_b1_2() {
    let text = tcp("EstablishedTimeout = 901");
    let e = single(&text, "", ApiCode::InvalidParameter);
    assert_eq!(
        e.issue.path,
        "LoadBalancers[0].Listeners[0].EstablishedTimeout"
    );
    assert_eq!(e.issue.rule, Some("B12.3"));
    assert_eq!(e.line, line_of(&text, "EstablishedTimeout"));
    single(
        &tcp("EstablishedTimeout = 9"),
        "EstablishedTimeout",
        ApiCode::InvalidParameter,
    );
    assert_eq!(
        first_listener(&ok(&tcp("EstablishedTimeout = 10"))).established_timeout,
        10
    );
}

#[test]
fn unknown_key_has_line_path_and_code() {
    let text = tcp("Schedular = \"wrr\"");
    let e = single(&text, "", ApiCode::UnsupportedParameter);
    assert_eq!(e.issue.path, "LoadBalancers[0].Listeners[0].Schedular");
    assert_eq!(e.line, line_of(&text, "Schedular"));
    // Unknown keys are rejected everywhere, also at the top level and in [Agent].
    single("Bogus = 1\n", "Bogus", ApiCode::UnsupportedParameter);
    single(
        "[Agent]\nInterface = [\"x\"]\n",
        "Agent.Interface",
        ApiCode::UnsupportedParameter,
    );
}

#[test]
fn parameter_of_another_protocol_is_rejected() {
    let e = single(&tcp("Gzip = \"on\""), "Gzip", ApiCode::UnsupportedParameter);
    assert!(
        e.issue.message.contains("does not apply to tcp listeners"),
        "{e}"
    );
}

#[test]
fn reserved_udp_ports_b12_5() {
    let text =
        listeners(&["ListenerProtocol = \"udp\"\nListenerPort = 4789\nBackendServerPort = 53"]);
    let e = single(&text, "", ApiCode::InvalidParameter);
    assert_eq!(e.issue.path, "LoadBalancers[0].Listeners[0].ListenerPort");
    assert_eq!(e.issue.rule, Some("B12.5"));
    assert_eq!(e.line, line_of(&text, "ListenerPort = 4789"));
    assert_eq!(e.column, 16);
    assert_eq!(
        e.to_string(),
        format!("t.toml:{}:16: LoadBalancers[0].Listeners[0].ListenerPort: InvalidParameter (B12.5): UDP port 4789 is reserved", e.line)
    );
    for port in [250, 4790] {
        single(
            &listeners(&[&format!(
                "ListenerProtocol = \"udp\"\nListenerPort = {port}\nBackendServerPort = 53"
            )]),
            "ListenerPort",
            ApiCode::InvalidParameter,
        );
    }
    // Neighbours and other protocols are fine.
    ok(&listeners(&[
        "ListenerProtocol = \"udp\"\nListenerPort = 4788\nBackendServerPort = 53",
    ]));
    ok(&listeners(&[
        "ListenerProtocol = \"tcp\"\nListenerPort = 4789\nBackendServerPort = 53",
    ]));
}

#[test]
fn one_listener_per_port_whatever_protocol_b3_7() {
    let text = listeners(&[
        "ListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 80",
        "ListenerProtocol = \"udp\"\nListenerPort = 80\nBackendServerPort = 80",
    ]);
    let e = single(&text, "", ApiCode::ListenerAlreadyExists);
    assert_eq!(e.issue.path, "LoadBalancers[0].Listeners[1].ListenerPort");
    assert_eq!(e.issue.rule, Some("B3.7"));
    let second = text.match_indices("ListenerPort = 80").nth(1).unwrap().0;
    assert_eq!(e.line, text[..second].matches('\n').count() + 1);
    ok(&listeners(&[
        "ListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 80",
        "ListenerProtocol = \"udp\"\nListenerPort = 81\nBackendServerPort = 80",
    ]));
}

#[test]
fn same_vip_and_port_across_instances_b3_7() {
    let text = format!(
        "{}\n[[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 80\n\
         [[LoadBalancers]]\nLoadBalancerId = \"lb-2\"\nAddress = \"10.0.100.1\"\n\
         [[LoadBalancers.Listeners]]\nListenerProtocol = \"tcp\"\nListenerPort = 80\nBackendServerPort = 80\n",
        lb("LoadBalancerId = \"lb-1\"\nAddress = \"10.0.100.1\"")
    );
    single(
        &text,
        "LoadBalancers[1].Listeners[0].ListenerPort",
        ApiCode::ListenerAlreadyExists,
    );
}

// ---- listener parameters --------------------------------------------------------------------

#[test]
fn switches_take_on_off_only_b1_1() {
    let e = single(
        &tcp("AclStatus = \"yes\""),
        "AclStatus",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.issue.rule, Some("B1.1"));
    single(&http("Gzip = \"ON\""), "Gzip", ApiCode::InvalidParameter);
    assert!(
        !first_listener(&ok(&http("Gzip = \"off\"")))
            .http
            .as_ref()
            .unwrap()
            .gzip
    );
    // SynProxy is the documented exception: enable/disable.
    single(
        &tcp("SynProxy = \"on\""),
        "SynProxy",
        ApiCode::InvalidParameter,
    );
    assert!(
        first_listener(&ok(&tcp("SynProxy = \"enable\"")))
            .tcp
            .as_ref()
            .unwrap()
            .syn_proxy
    );
}

#[test]
fn backend_server_port_required_without_group_b1_4_b4_2() {
    let e = single(
        &listeners(&["ListenerProtocol = \"tcp\"\nListenerPort = 80"]),
        "BackendServerPort",
        ApiCode::MissingParameter,
    );
    assert_eq!(e.issue.rule, Some("B1.4"));
    let c = ok(&listeners(&[
        "ListenerProtocol = \"tcp\"\nListenerPort = 80\nVServerGroupId = \"rsp-1\"",
    ]));
    assert_eq!(
        first_listener(&c).group,
        GroupRef::VServerGroup("rsp-1".into())
    );
    let c = ok(&listeners(&[
        "ListenerProtocol = \"udp\"\nListenerPort = 80\nMasterSlaveServerGroupId = \"rsp-ms\"",
    ]));
    assert_eq!(
        first_listener(&c).group,
        GroupRef::MasterSlave("rsp-ms".into())
    );
}

#[test]
fn port_range_b3_8() {
    for bad in ["ListenerPort = 0", "ListenerPort = 65536"] {
        let e = single(
            &listeners(&[&format!(
                "ListenerProtocol = \"tcp\"\n{bad}\nBackendServerPort = 1"
            )]),
            "ListenerPort",
            ApiCode::InvalidParameter,
        );
        assert_eq!(e.issue.rule, Some("B3.8"));
    }
    single(
        &listeners(&["ListenerProtocol = \"tcp\"\nListenerPort = 1\nBackendServerPort = 65536"]),
        "BackendServerPort",
        ApiCode::InvalidParameter,
    );
    ok(&listeners(&[
        "ListenerProtocol = \"tcp\"\nListenerPort = 1\nBackendServerPort = 65535",
    ]));
}

#[test]
fn at_most_50_listeners_b3_9() {
    let make = |n: u16| {
        let ls: Vec<String> = (1..=n)
            .map(|p| {
                format!("ListenerProtocol = \"tcp\"\nListenerPort = {p}\nBackendServerPort = 80")
            })
            .collect();
        listeners(&ls.iter().map(String::as_str).collect::<Vec<_>>())
    };
    assert_eq!(ok(&make(50)).load_balancers[0].listeners.len(), 50);
    let e = single(&make(51), "", ApiCode::VipTooManyListeners);
    assert_eq!(e.issue.path, "LoadBalancers[0].Listeners[50]");
}

#[test]
fn scheduler_values_b5_1_b5_7() {
    single(
        &tcp("Scheduler = \"lc\""),
        "Scheduler",
        ApiCode::InvalidParameter,
    );
    // qch is UDP only.
    let e = single(
        &tcp("Scheduler = \"qch\""),
        "Scheduler",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.issue.rule, Some("B5.7"));
    ok(&listeners(&["ListenerProtocol = \"udp\"\nListenerPort = 53\nBackendServerPort = 53\nScheduler = \"qch\""]));
    // No consistent hash on HTTP/HTTPS; rr/wlc are fine.
    single(
        &http("Scheduler = \"sch\""),
        "Scheduler",
        ApiCode::InvalidParameter,
    );
    assert_eq!(
        first_listener(&ok(&http("Scheduler = \"wlc\""))).scheduler,
        Scheduler::Wlc
    );
    assert_eq!(
        first_listener(&ok(&tcp("Scheduler = \"tch\""))).scheduler,
        Scheduler::Tch
    );
}

#[test]
fn persistence_timeout_range_b6_1() {
    assert_eq!(
        first_listener(&ok(&tcp("PersistenceTimeout = 3600"))).persistence_timeout,
        3600
    );
    single(
        &tcp("PersistenceTimeout = 3601"),
        "PersistenceTimeout",
        ApiCode::InvalidParameter,
    );
    single(
        &tcp("PersistenceTimeout = -1"),
        "PersistenceTimeout",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn bandwidth_minus_one_or_1_to_5120_b13_2() {
    assert_eq!(first_listener(&ok(&tcp("Bandwidth = -1"))).bandwidth, None);
    assert_eq!(
        first_listener(&ok(&tcp("Bandwidth = 5120"))).bandwidth,
        Some(5120)
    );
    single(
        &tcp("Bandwidth = 0"),
        "Bandwidth",
        ApiCode::InvalidParameter,
    );
    single(
        &tcp("Bandwidth = 5121"),
        "Bandwidth",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn group_references_b4_3_b4_4() {
    // B4.3: exclusive.
    let e = single(
        &tcp("VServerGroupId = \"rsp-1\"\nMasterSlaveServerGroupId = \"rsp-ms\""),
        "MasterSlaveServerGroupId",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.issue.rule, Some("B4.3"));
    // B4.4: no master/slave group on HTTP/HTTPS, by either parameter.
    single(
        &http("MasterSlaveServerGroupId = \"rsp-ms\""),
        "MasterSlaveServerGroupId",
        ApiCode::InvalidParameterVServerGroupId,
    );
    single(
        &http("VServerGroupId = \"rsp-ms\""),
        "VServerGroupId",
        ApiCode::InvalidParameterVServerGroupId,
    );
    // The group must exist in the same instance ("RS Pool doesn't exist.").
    single(
        &tcp("VServerGroupId = \"rsp-nope\""),
        "VServerGroupId",
        ApiCode::RsPoolNotFound,
    );
    single(
        &tcp("MasterSlaveServerGroupId = \"rsp-1\""),
        "MasterSlaveServerGroupId",
        ApiCode::RsPoolNotFound,
    );
}

#[test]
fn acl_binding_b7_1_b7_5() {
    let c = ok(&tcp(
        "AclStatus = \"on\"\nAclId = \"nacl-4\"\nAclType = \"black\"",
    ));
    assert_eq!(
        first_listener(&c).acl,
        Some(ListenerAcl {
            acl_id: "nacl-4".into(),
            acl_type: AclType::Black
        })
    );
    // B7.1: on requires AclId and AclType.
    single(
        &tcp("AclStatus = \"on\"\nAclType = \"white\""),
        "AclId",
        ApiCode::MissingParameter,
    );
    single(
        &tcp("AclStatus = \"on\"\nAclId = \"nacl-4\""),
        "AclType",
        ApiCode::MissingParameter,
    );
    single(
        &tcp("AclStatus = \"on\"\nAclId = \"nacl-x\"\nAclType = \"white\""),
        "AclId",
        ApiCode::AclNotExist,
    );
    // B7.5: an IPv6 ACL on an IPv4 VIP.
    single(
        &tcp("AclStatus = \"on\"\nAclId = \"nacl-6\"\nAclType = \"white\""),
        "AclId",
        ApiCode::IpVersionConflict,
    );
    // B1.3: with AclStatus off the other parameters are ignored.
    assert_eq!(
        first_listener(&ok(&tcp("AclStatus = \"off\"\nAclId = \"nacl-x\""))).acl,
        None
    );
}

#[test]
fn legacy_white_list_b7_8_b7_9() {
    let c = ok(&tcp(
        "AccessControlStatus = \"open_white_list\"\nSourceItems = \"1.1.1.1, 10.0.0.0/8\"",
    ));
    assert_eq!(
        first_listener(&c).access_control,
        Some(vec![
            "1.1.1.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap()
        ])
    );
    // B7.8: open with an empty list admits nobody, which is a valid state.
    assert_eq!(
        first_listener(&ok(&tcp("AccessControlStatus = \"open_white_list\""))).access_control,
        Some(vec![])
    );
    for bad in ["0.0.0.0", "0.0.0.0/0", "10.0.0.0/8,::/0", "1.1.1.300"] {
        let e = single(
            &tcp(&format!(
                "AccessControlStatus = \"open_white_list\"\nSourceItems = \"{bad}\""
            )),
            "SourceItems",
            ApiCode::InvalidParameter,
        );
        assert_eq!(e.issue.rule, Some("B7.9"));
    }
    single(
        &tcp("AccessControlStatus = \"open\""),
        "AccessControlStatus",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn health_check_ranges_b8_11() {
    for (key, lo, hi) in [
        ("HealthyThreshold", 2, 10),
        ("UnhealthyThreshold", 2, 10),
        ("HealthCheckTimeout", 1, 300),
        ("HealthCheckInterval", 1, 50),
    ] {
        ok(&tcp(&format!("{key} = {lo}")));
        ok(&tcp(&format!("{key} = {hi}")));
        let e = single(
            &tcp(&format!("{key} = {}", lo - 1)),
            key,
            ApiCode::InvalidParameter,
        );
        assert_eq!(e.issue.rule, Some("B8.11"));
        single(
            &tcp(&format!("{key} = {}", hi + 1)),
            key,
            ApiCode::InvalidParameter,
        );
    }
    single(
        &tcp("HealthCheckConnectPort = 0"),
        "HealthCheckConnectPort",
        ApiCode::InvalidParameter,
    );
    assert_eq!(
        first_listener(&ok(&tcp("HealthCheckConnectPort = 9000")))
            .health_check
            .connect_port,
        Some(9000)
    );
}

#[test]
fn health_check_syntax_b8_16() {
    let e = single(
        &http("HealthCheckURI = \"health\""),
        "HealthCheckURI",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.issue.rule, Some("B8.16"));
    single(
        &http(&format!("HealthCheckURI = \"/{}\"", "a".repeat(80))),
        "HealthCheckURI",
        ApiCode::InvalidParameter,
    );
    ok(&http(&format!("HealthCheckURI = \"/{}\"", "a".repeat(79))));
    single(
        &http("HealthCheckDomain = \"a_b.com\""),
        "HealthCheckDomain",
        ApiCode::InvalidParameter,
    );
    single(
        &http("HealthCheckHttpCode = \"http_2xx,http_6xx\""),
        "HealthCheckHttpCode",
        ApiCode::InvalidParameter,
    );
    // B1.3: with HealthCheck off the check parameters are accepted and ignored.
    let c = ok(&listeners(&["ListenerProtocol = \"http\"\nListenerPort = 80\nBackendServerPort = 80\nStickySession = \"off\"\nHealthCheck = \"off\"\nHealthCheckURI = \"bad\""]));
    assert!(!first_listener(&c).health_check.enabled); // B8.2
}

#[test]
fn http11_health_check_needs_domain_b8_17() {
    single(
        &http("HealthCheckHttpVersion = \"http1.1\""),
        "HealthCheckDomain",
        ApiCode::MissingParamHealthCheckDomain,
    );
    ok(&http(
        "HealthCheckHttpVersion = \"http1.1\"\nHealthCheckDomain = \"example.com\"",
    ));
    single(
        &http("HealthCheckHttpVersion = \"http2\""),
        "HealthCheckHttpVersion",
        ApiCode::InvalidParameterHealthCheckHttpVersion,
    );
}

#[test]
fn udp_health_check_payloads_b8_13() {
    let udp = |extra: &str| {
        listeners(&[&format!(
            "ListenerProtocol = \"udp\"\nListenerPort = 53\nBackendServerPort = 53\n{extra}"
        )])
    };
    ok(&udp(&format!("HealthCheckReq = \"{}\"", "a".repeat(500))));
    single(
        &udp(&format!("HealthCheckReq = \"{}\"", "a".repeat(501))),
        "HealthCheckReq",
        ApiCode::InvalidParameter,
    );
    single(
        &udp("HealthCheckExp = \"a b\""),
        "HealthCheckExp",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn sticky_session_b6_2_b6_5() {
    single(&listeners(&["ListenerProtocol = \"http\"\nListenerPort = 80\nBackendServerPort = 80\nHealthCheck = \"off\""]), "StickySession", ApiCode::MissingParameter);
    let on = |extra: &str| {
        listeners(&[&format!("ListenerProtocol = \"http\"\nListenerPort = 80\nBackendServerPort = 80\nHealthCheck = \"off\"\nStickySession = \"on\"\n{extra}")])
    };
    single(&on(""), "StickySessionType", ApiCode::MissingParameter);
    single(
        &on("StickySessionType = \"insert\""),
        "CookieTimeout",
        ApiCode::MissingParameter,
    );
    let e = single(
        &on("StickySessionType = \"server\""),
        "Cookie",
        ApiCode::MissingParameter,
    );
    assert!(
        e.issue
            .message
            .contains("The input parameter Cookie that is mandatory"),
        "{e}"
    ); // B1.4
    single(
        &on("StickySessionType = \"insert\"\nCookieTimeout = 86401"),
        "CookieTimeout",
        ApiCode::InvalidParameter,
    );
    ok(&on("StickySessionType = \"insert\"\nCookieTimeout = 86400"));
    ok(&on("StickySessionType = \"insert\"\nCookieTimeout = 1"));
    for bad in ["$abc", "a;b", "a b", ""] {
        single(
            &on(&format!(
                "StickySessionType = \"server\"\nCookie = \"{bad}\""
            )),
            "Cookie",
            ApiCode::InvalidParameter,
        );
    }
    ok(&on(&format!(
        "StickySessionType = \"server\"\nCookie = \"{}\"",
        "c".repeat(200)
    )));
    // B1.3: sticky parameters ignored while StickySession=off.
    ok(&http("CookieTimeout = 999999\nCookie = \"$bad\""));
}

#[test]
fn l7_timeouts_b1_2() {
    let e = single(
        &http("IdleTimeout = 61"),
        "IdleTimeout",
        ApiCode::InvalidParameterIdleTimeout,
    );
    assert_eq!(e.issue.code.as_str(), "InvalidParameter.IdleTimeout");
    single(
        &http("RequestTimeout = 181"),
        "RequestTimeout",
        ApiCode::InvalidParameterRequestTimeout,
    );
    let c = ok(&http("IdleTimeout = 60\nRequestTimeout = 180"));
    let h = first_listener(&c).http.clone().unwrap();
    assert_eq!((h.idle_timeout, h.request_timeout), (60, 180));
}

#[test]
fn https_requires_certificate_and_redirect_needs_https_target_b9_19() {
    let https = "ListenerProtocol = \"https\"\nListenerPort = 443\nBackendServerPort = 80\nStickySession = \"off\"\nHealthCheck = \"off\"";
    single(
        &listeners(&[https]),
        "ServerCertificateId",
        ApiCode::MissingParameter,
    );
    single(
        &listeners(&[&format!(
            "{https}\nServerCertificateId = \"c\"\nTLSCipherPolicy = \"tls_1_3\""
        )]),
        "TLSCipherPolicy",
        ApiCode::InvalidParameter,
    );
    let redirect = "ListenerProtocol = \"http\"\nListenerPort = 80\nStickySession = \"off\"\nHealthCheck = \"off\"\nBackendServerPort = 80\nListenerForward = \"on\"\nForwardPort = 443";
    single(
        &listeners(&[redirect]),
        "Listeners[0].ForwardPort",
        ApiCode::InvalidParameter,
    );
    ok(&listeners(&[
        redirect,
        &format!("{https}\nServerCertificateId = \"c\""),
    ]));
}

#[test]
fn description_rule_section_14() {
    ok(&tcp("Description = \"tcp_80/a-b.c\""));
    ok(&tcp("Description = \"监听\""));
    single(
        &tcp("Description = \"a b\""),
        "Description",
        ApiCode::InvalidParameter,
    );
    single(
        &tcp(&format!("Description = \"{}\"", "a".repeat(257))),
        "Description",
        ApiCode::InvalidParameter,
    );
}

// ---- groups and members ---------------------------------------------------------------------

const LB_HEAD: &str = "LoadBalancerId = \"lb-1\"\nAddress = \"10.0.100.1\"";

#[test]
fn weights_0_to_100_b4_7() {
    let c = ok(&lb(&format!("{LB_HEAD}\nBackendServers = [ {{ ServerId = \"web-1\", Weight = 0 }}, {{ ServerId = \"web-2\", Weight = 100 }}, {{ ServerId = \"10.0.0.9\" }} ]")));
    let weights: Vec<u8> = c.load_balancers[0]
        .backend_servers
        .iter()
        .map(|s| s.weight)
        .collect();
    assert_eq!(weights, vec![0, 100, 100]); // default 100
    for bad in [101, -1] {
        let e = single(
            &lb(&format!(
                "{LB_HEAD}\nBackendServers = [ {{ ServerId = \"web-1\", Weight = {bad} }} ]"
            )),
            "",
            ApiCode::InvalidWeightMalformed,
        );
        assert_eq!(e.issue.path, "LoadBalancers[0].BackendServers[0].Weight");
        assert_eq!(e.issue.rule, Some("B4.7"));
    }
}

#[test]
fn duplicate_server_first_occurrence_wins_b4_10() {
    let c = ok(&lb(&format!(
        "{LB_HEAD}\nBackendServers = [ {{ ServerId = \"web-1\", Weight = 10 }}, {{ ServerId = \"web-2\" }}, {{ ServerId = \"web-1\", Weight = 20 }} ]\n\
         [[LoadBalancers.VServerGroups]]\nVServerGroupId = \"rsp-1\"\n\
         BackendServers = [ {{ ServerId = \"web-1\", Port = 80, Weight = 1 }}, {{ ServerId = \"web-1\", Port = 81 }}, {{ ServerId = \"web-1\", Port = 80, Weight = 2 }} ]"
    )));
    let lb = &c.load_balancers[0];
    assert_eq!(
        lb.backend_servers,
        vec![
            BackendServer {
                server_id: "web-1".into(),
                weight: 10
            },
            BackendServer {
                server_id: "web-2".into(),
                weight: 100
            }
        ]
    );
    let g: Vec<(u16, u8)> = lb.vserver_groups[0]
        .backend_servers
        .iter()
        .map(|s| (s.port, s.weight))
        .collect();
    assert_eq!(g, vec![(80, 1), (81, 100)]);
}

#[test]
fn server_id_must_resolve_and_match_vip_family() {
    let e = single(
        &lb(&format!(
            "{LB_HEAD}\nBackendServers = [ {{ ServerId = \"vm-233\" }} ]"
        )),
        "BackendServers[0].ServerId",
        ApiCode::InvalidServerIdNotFound,
    );
    assert_eq!(e.issue.code.as_str(), "InvalidServerId.NotFound");
    // No 4<->6 translation: an IPv6 backend behind an IPv4 VIP is refused, by registry or literal.
    single(
        &lb(&format!(
            "{LB_HEAD}\nBackendServers = [ {{ ServerId = \"web6\" }} ]"
        )),
        "ServerId",
        ApiCode::InvalidParameter,
    );
    single(
        &lb(&format!(
            "{LB_HEAD}\nBackendServers = [ {{ ServerId = \"fd00::9\" }} ]"
        )),
        "ServerId",
        ApiCode::InvalidParameter,
    );
    ok(&lb("LoadBalancerId = \"lb-6\"\nAddress = \"fd00::100\"\nBackendServers = [ { ServerId = \"web6\" }, { ServerId = \"fd00::9\" } ]"));
}

#[test]
fn vserver_group_member_needs_port_b4_2() {
    let text = lb(&format!("{LB_HEAD}\n[[LoadBalancers.VServerGroups]]\nVServerGroupId = \"rsp-1\"\nBackendServers = [ {{ ServerId = \"web-1\" }} ]"));
    single(
        &text,
        "VServerGroups[0].BackendServers[0].Port",
        ApiCode::MissingParameter,
    );
}

#[test]
fn master_slave_group_shape_b4_5() {
    let group = |members: &str| {
        lb(&format!("{LB_HEAD}\n[[LoadBalancers.MasterSlaveServerGroups]]\nMasterSlaveServerGroupId = \"rsp-ms\"\nMasterSlaveBackendServers = [ {members} ]"))
    };
    let m = "{ ServerId = \"web-1\", Port = 80 }";
    let s = "{ ServerId = \"web-2\", Port = 80, ServerType = \"Slave\" }";
    // ServerType defaults to Master, so the slave may come first.
    let c = ok(&group(&format!("{s}, {m}")));
    let g = &c.load_balancers[0].master_slave_groups[0];
    assert_eq!(
        (g.master.server_id.as_str(), g.slave.server_id.as_str()),
        ("web-1", "web-2")
    );
    // Exactly two members.
    let e = single(
        &group(m),
        "MasterSlaveBackendServers",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.issue.rule, Some("B4.5"));
    single(
        &group(&format!(
            "{m}, {s}, {{ ServerId = \"10.0.0.7\", Port = 80, ServerType = \"Slave\" }}"
        )),
        "MasterSlaveBackendServers",
        ApiCode::InvalidParameter,
    );
    // Two members without ServerType are two masters.
    single(
        &group(&format!("{m}, {{ ServerId = \"web-2\", Port = 80 }}")),
        "MasterSlaveBackendServers",
        ApiCode::InvalidParameter,
    );
    // Same {ServerId, Port} twice; the same server on another port is fine.
    single(
        &group(&format!(
            "{m}, {{ ServerId = \"web-1\", Port = 80, ServerType = \"Slave\" }}"
        )),
        "MasterSlaveBackendServers",
        ApiCode::InvalidParameter,
    );
    ok(&group(&format!(
        "{m}, {{ ServerId = \"web-1\", Port = 81, ServerType = \"Slave\" }}"
    )));
    single(
        &group(&format!(
            "{m}, {{ ServerId = \"web-2\", Port = 80, ServerType = \"slave\" }}"
        )),
        "ServerType",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn ids_are_unique_in_the_file() {
    let two = format!("{}\n[[LoadBalancers]]\n{LB_HEAD}\n", lb(LB_HEAD));
    single(
        &two,
        "LoadBalancers[1].LoadBalancerId",
        ApiCode::InvalidParameter,
    );
    let groups = lb(&format!(
        "{LB_HEAD}\n[[LoadBalancers.VServerGroups]]\nVServerGroupId = \"rsp-1\"\n\
         [[LoadBalancers.MasterSlaveServerGroups]]\nMasterSlaveServerGroupId = \"rsp-1\"\n\
         MasterSlaveBackendServers = [ {{ ServerId = \"web-1\", Port = 80 }}, {{ ServerId = \"web-2\", Port = 80, ServerType = \"Slave\" }} ]"
    ));
    single(
        &groups,
        "MasterSlaveServerGroups[0].MasterSlaveServerGroupId",
        ApiCode::InvalidParameter,
    );
    single(
        &format!("{REGISTRY}\n[[Acls]]\nAclId = \"nacl-4\"\n"),
        "Acls[2].AclId",
        ApiCode::InvalidParameter,
    );
    single(
        &format!("{REGISTRY}\n[[Servers]]\nServerId = \"web-1\"\nAddress = \"10.0.0.5\"\n"),
        "Servers[3].ServerId",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn acl_entries_are_cidrs_of_the_acl_version() {
    let acl = |v: &str, e: &str| {
        format!("[[Acls]]\nAclId = \"nacl-x\"\nAddressIPVersion = \"{v}\"\nAclEntrys = [ {{ entry = \"{e}\" }} ]\n")
    };
    assert_eq!(
        ok(&acl("ipv6", "2001:db8::1/64")).acls[0].entries[0].entry,
        "2001:db8::/64".parse().unwrap()
    );
    single(
        &acl("ipv4", "10.0.0.0/33"),
        "Acls[0].AclEntrys[0].entry",
        ApiCode::InvalidParameter,
    );
    single(
        &acl("ipv4", "2001:db8::/32"),
        "AclEntrys[0].entry",
        ApiCode::IpVersionConflict,
    );
    single(
        &acl("ipv5", "10.0.0.0/8"),
        "AddressIPVersion",
        ApiCode::InvalidParameter,
    );
    single("[[Acls]]\nAclId = \"a\"\nAclEntrys = [ { entry = \"10.0.0.1\" }, { entry = \"10.0.0.1/32\" } ]\n", "AclEntrys[1].entry", ApiCode::DuplicatedAclEntry);
}

#[test]
fn load_balancer_fields_section_14() {
    let name = |n: &str| lb(&format!("{LB_HEAD}\nLoadBalancerName = \"{n}\""));
    ok(&name(&"a".repeat(80)));
    ok(&name("a-b/c.d_e"));
    single(
        &name(&"a".repeat(81)),
        "LoadBalancerName",
        ApiCode::InvalidParameter,
    );
    single(&name("a b"), "LoadBalancerName", ApiCode::InvalidParameter);
    single(
        &lb("LoadBalancerId = \"lb-1\"\nAddress = \"10.0.0\""),
        "Address",
        ApiCode::IpNotAvailable,
    );
    single(
        &lb("LoadBalancerId = \"lb-1\""),
        "Address",
        ApiCode::MissingParameter,
    );
    single(
        &lb(&format!("{LB_HEAD}\nLoadBalancerStatus = \"paused\"")),
        "LoadBalancerStatus",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn agent_section() {
    let c =
        ok("[Agent]\nXdpMode = \"generic\"\nFlowTableSize = 1024\nPersistTableSize = 16777216\n");
    assert_eq!(
        (
            c.agent.xdp_mode,
            c.agent.flow_table_size,
            c.agent.persist_table_size
        ),
        (XdpMode::Generic, 1024, 16_777_216)
    );
    single(
        "[Agent]\nFlowTableSize = 1023\n",
        "Agent.FlowTableSize",
        ApiCode::InvalidParameter,
    );
    single(
        "[Agent]\nPersistTableSize = 16777217\n",
        "Agent.PersistTableSize",
        ApiCode::InvalidParameter,
    );
    single(
        "[Agent]\nInterfaces = [\"a\", 1]\n",
        "Agent.Interfaces[1]",
        ApiCode::InvalidParameter,
    );
}

#[test]
fn every_issue_is_reported_not_just_the_first() {
    let errs = errors(&tcp(
        "Scheduler = \"x\"\nBandwidth = 0\nHealthyThreshold = 1",
    ));
    let paths: Vec<&str> = errs
        .iter()
        .map(|e| e.issue.path.rsplit('.').next().unwrap())
        .collect();
    assert_eq!(paths, vec!["Scheduler", "Bandwidth", "HealthyThreshold"]);
}

// ---- checks without TOML --------------------------------------------------------------------

/// A query-string-like source: every value is a string, as the HTTP API will receive them.
struct Query(BTreeMap<String, String>, std::collections::HashSet<String>);

impl Params for Query {
    type Object = Query;
    fn string(&mut self, name: &str) -> Result<Option<String>, Issue> {
        self.1.insert(name.into());
        Ok(self.0.get(name).cloned())
    }
    fn integer(&mut self, name: &str) -> Result<Option<i64>, Issue> {
        self.1.insert(name.into());
        self.0
            .get(name)
            .map(|v| {
                v.parse().map_err(|_| {
                    Issue::new(name, ApiCode::InvalidParameter, None, "not an integer")
                })
            })
            .transpose()
    }
    fn boolean(&mut self, name: &str) -> Result<Option<bool>, Issue> {
        self.1.insert(name.into());
        Ok(self.0.get(name).map(|v| v == "true"))
    }
    fn objects(&mut self, name: &str) -> Result<Option<Vec<Query>>, Issue> {
        self.1.insert(name.into());
        Ok(None)
    }
    fn skip(&mut self, name: &str) {
        self.1.insert(name.into());
    }
    fn unread(&self) -> Vec<String> {
        self.0
            .keys()
            .filter(|k| !self.1.contains(*k))
            .cloned()
            .collect()
    }
}

#[test]
fn listener_check_works_on_query_parameters_b12_5() {
    let query = |pairs: &[(&str, &str)]| {
        Query(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            Default::default(),
        )
    };
    let ctx = ListenerContext {
        vip: "10.0.0.1".parse().unwrap(),
        vserver_groups: &[],
        master_slave_groups: &[],
        acls: &[],
    };
    let l = check_listener(
        &mut query(&[
            ("ListenerProtocol", "udp"),
            ("ListenerPort", "53"),
            ("BackendServerPort", "53"),
        ]),
        ctx,
    )
    .unwrap();
    assert_eq!(l.protocol, Protocol::Udp);
    let issues = check_listener(
        &mut query(&[
            ("ListenerProtocol", "udp"),
            ("ListenerPort", "4790"),
            ("BackendServerPort", "53"),
        ]),
        ctx,
    )
    .unwrap_err();
    assert_eq!(
        issues,
        vec![Issue::new(
            "ListenerPort",
            ApiCode::InvalidParameter,
            Some("B12.5"),
            "UDP port 4790 is reserved"
        )]
    );
    // B3.7 on already-validated listeners, as the API will do before adding one.
    let issues = check_listener_set(&[(0, &l), (1, &l)]);
    assert_eq!(issues[0].code, ApiCode::ListenerAlreadyExists);
}

/// The exporter is the inverse of the reader: example file → model → TOML → the same model, with
/// every listener kind, group kind, ACL and registry entry of the example (state store and
/// `slb export` rely on this).
#[test]
fn export_round_trips_the_example_file() {
    let c = ok(include_str!("example.toml"));
    let text = export::to_toml(&c.servers, &c.acls, &c.load_balancers);
    let back = ok(&text);
    assert_eq!(back.servers, c.servers);
    assert_eq!(back.acls, c.acls);
    assert_eq!(back.load_balancers, c.load_balancers, "{text}");
    // And once more: the export of the export is byte-identical.
    assert_eq!(
        export::to_toml(&back.servers, &back.acls, &back.load_balancers),
        text
    );
}

/// B1.5 groundwork: a request's parameters overlay the exported ones, so an omitted parameter
/// keeps its stored value and a given one replaces it.
#[test]
fn param_map_overlay_keeps_omitted_values_b1_5() {
    let c = ok(include_str!("example.toml"));
    let lb = &c.load_balancers[0];
    let l = &lb.listeners[0];
    let mut stored = export::listener(l);
    let mut request = ParamMap::new();
    request.set_str("Scheduler", "rr");
    stored.overlay(&request);
    let ctx = ListenerContext {
        vip: lb.address,
        vserver_groups: &lb.vserver_groups,
        master_slave_groups: &lb.master_slave_groups,
        acls: &c.acls,
    };
    let changed = check_listener(&mut stored, ctx).expect("valid");
    assert_eq!(changed.scheduler, Scheduler::Rr);
    assert_eq!(changed.listener_port, l.listener_port);
    assert_eq!(changed.health_check, l.health_check);
}

/// §1.7: list parameters arrive as JSON text; numbers given as strings are accepted.
#[test]
fn param_map_reads_json_lists_with_string_numbers() {
    let mut p = ParamMap::new();
    p.set_str(
        "BackendServers",
        r#"[{"ServerId":"10.0.0.9","Weight":"40"},{"ServerId":"10.0.0.8","Weight":7}]"#,
    );
    let servers = BTreeMap::new();
    let ctx = MemberContext {
        servers: &servers,
        vip: "10.0.100.1".parse().unwrap(),
    };
    let mut list = p.objects("BackendServers").unwrap().unwrap();
    let a = check_backend_server(&mut list[0], ctx).unwrap();
    let b = check_backend_server(&mut list[1], ctx).unwrap();
    assert_eq!((a.weight, b.weight), (40, 7));
    for bad in ["{", "{}", "[1]", "[{\"ServerId\":null}]", "[[]]"] {
        let mut p = ParamMap::new();
        p.set_str("BackendServers", bad);
        assert!(p.objects("BackendServers").is_err(), "{bad}");
    }
}

/// `[Api]`: loopback by default, plain HTTP unless both TLS files are named, the documented
/// file locations, and bad values named with their line.
#[test]
fn api_section_defaults_and_errors() {
    let c = ok("[Api]\n");
    let api = c.agent.api.expect("[Api] present");
    assert_eq!(api.listen, "127.0.0.1:8600".parse().unwrap());
    assert_eq!(
        api.keys_file,
        std::path::PathBuf::from("/etc/slb/access-keys.toml")
    );
    assert_eq!(
        api.state_path,
        std::path::PathBuf::from("/var/lib/slb/state.redb")
    );
    assert!(api.vip_pool.is_empty());
    assert_eq!(ok("").agent.api, None);
    let text = "[Api]\nListen = \"127.0.0.1:9000\"\nVipPool = [\"10.0.0.0/24\", \"nope\"]\n";
    let e = single(text, "Api.VipPool[1]", ApiCode::InvalidParameter);
    assert_eq!(e.line, line_of(text, "VipPool"));
    let e = single(
        "[Api]\nListen = \"localhost\"\n",
        "Api.Listen",
        ApiCode::InvalidParameter,
    );
    assert_eq!(e.line, 2);
    assert_eq!(api_tls_of(""), None);
    let tls = api_tls_of("TlsCertificate = \"/c.pem\"\nTlsPrivateKey = \"/k.pem\"\n").unwrap();
    assert_eq!(tls.certificate, std::path::PathBuf::from("/c.pem"));
    assert_eq!(tls.private_key, std::path::PathBuf::from("/k.pem"));
    single(
        "[Api]\nTlsCertificate = \"/etc/slb/api.pem\"\n",
        "Api.TlsPrivateKey",
        ApiCode::MissingParameter,
    );
    single(
        "[Api]\nTlsPrivateKey = \"/etc/slb/api.key\"\n",
        "Api.TlsCertificate",
        ApiCode::MissingParameter,
    );
    single(
        "[Api]\nTls = true\n",
        "Api.Tls",
        ApiCode::UnsupportedParameter,
    );
}

fn api_tls_of(keys: &str) -> Option<ApiTls> {
    ok(&format!("[Api]\n{keys}")).agent.api.expect("[Api]").tls
}

fn rules(list: &str) -> String {
    http(&format!("Rules = [ {list} ]"))
}

/// B11.2: a rule names a Domain and/or a Url and a group of its instance; names and
/// (Domain, Url) pairs are unique per listener; rule ids unique in the file.
#[test]
fn forwarding_rules_b11_2() {
    let c = ok(&rules(
        r#"{ RuleId = "rule-a", RuleName = "a", Domain = "*.example.com", VServerGroupId = "rsp-1" },
           { RuleId = "rule-b", RuleName = "b", Url = "/img", VServerGroupId = "rsp-1" }"#,
    ));
    let http = first_listener(&c).http.as_ref().unwrap();
    assert_eq!(http.rules.len(), 2);
    assert_eq!(http.rules[0].domain.as_deref(), Some("*.example.com"));
    assert_eq!(http.rules[1].url.as_deref(), Some("/img"));

    let neither = r#"{ RuleId = "rule-a", RuleName = "a", VServerGroupId = "rsp-1" }"#;
    single(
        &rules(neither),
        "Rules[0].Domain",
        ApiCode::MissingParameter,
    );
    let bad_domain =
        r#"{ RuleId = "rule-a", RuleName = "a", Domain = "-x.com", VServerGroupId = "rsp-1" }"#;
    single(
        &rules(bad_domain),
        "Rules[0].Domain",
        ApiCode::InvalidParameter,
    );
    let bad_url =
        r#"{ RuleId = "rule-a", RuleName = "a", Url = "/a b", VServerGroupId = "rsp-1" }"#;
    single(&rules(bad_url), "Rules[0].Url", ApiCode::InvalidParameter);
    let long_url = format!(
        r#"{{ RuleId = "rule-a", RuleName = "a", Url = "/{}", VServerGroupId = "rsp-1" }}"#,
        "a".repeat(80)
    );
    single(&rules(&long_url), "Rules[0].Url", ApiCode::InvalidParameter);
    let max_url = format!(
        r#"{{ RuleId = "rule-a", RuleName = "a", Url = "/{}", VServerGroupId = "rsp-1" }}"#,
        "a".repeat(79)
    );
    ok(&rules(&max_url));
    let no_group = r#"{ RuleId = "rule-a", RuleName = "a", Url = "/a", VServerGroupId = "rsp-x" }"#;
    single(
        &rules(no_group),
        "Rules[0].VServerGroupId",
        ApiCode::RsPoolNotFound,
    );
    let ms_group =
        r#"{ RuleId = "rule-a", RuleName = "a", Url = "/a", VServerGroupId = "rsp-ms" }"#;
    single(
        &rules(ms_group),
        "Rules[0].VServerGroupId",
        ApiCode::RsPoolNotFound,
    );
    let same_name = r#"{ RuleId = "rule-a", RuleName = "a", Url = "/a", VServerGroupId = "rsp-1" },
                       { RuleId = "rule-b", RuleName = "a", Url = "/b", VServerGroupId = "rsp-1" }"#;
    single(
        &rules(same_name),
        "Rules[1].RuleName",
        ApiCode::InvalidParameter,
    );
    let same_match = r#"{ RuleId = "rule-a", RuleName = "a", Domain = "A.com", Url = "/a", VServerGroupId = "rsp-1" },
                        { RuleId = "rule-b", RuleName = "b", Domain = "a.com", Url = "/a", VServerGroupId = "rsp-1" }"#;
    single(
        &rules(same_match),
        "Rules[1].Domain",
        ApiCode::InvalidParameter,
    );
    let same_id = r#"{ RuleId = "rule-a", RuleName = "a", Url = "/a", VServerGroupId = "rsp-1" },
                     { RuleId = "rule-a", RuleName = "b", Url = "/b", VServerGroupId = "rsp-1" }"#;
    single(
        &rules(same_id),
        "Rules[1].RuleId",
        ApiCode::InvalidParameter,
    );
    // B11.1: only HTTP/HTTPS listeners carry rules.
    let on_tcp = tcp(
        r#"Rules = [ { RuleId = "rule-a", RuleName = "a", Url = "/a", VServerGroupId = "rsp-1" } ]"#,
    );
    single(&on_tcp, "Rules", ApiCode::UnsupportedParameter);
}

/// B10.14/B10.15: domain extensions only on HTTPS, with a valid and per-listener unique domain.
#[test]
fn domain_extensions_b10_15() {
    let https = |ext: &str| {
        listeners(&[&format!(
            "ListenerProtocol = \"https\"\nListenerPort = 443\nBackendServerPort = 8080\nStickySession = \"off\"\nHealthCheck = \"off\"\nServerCertificateId = \"cert-1\"\nDomainExtensions = [ {ext} ]"
        )])
    };
    let c = ok(&https(
        r#"{ DomainExtensionId = "de-1", Domain = "www.example.com", ServerCertificateId = "cert-2" },
           { DomainExtensionId = "de-2", Domain = "*.market.example.com", ServerCertificateId = "cert-3" }"#,
    ));
    let tls = first_listener(&c)
        .http
        .as_ref()
        .unwrap()
        .tls
        .as_ref()
        .unwrap();
    assert_eq!(tls.domain_extensions[1].domain, "*.market.example.com");
    for bad in ["*example.com", "exa_mple.com", "a..b", "**.a.com", ""] {
        let text = https(&format!(
            r#"{{ DomainExtensionId = "de-1", Domain = "{bad}", ServerCertificateId = "cert-2" }}"#
        ));
        let code = if bad.is_empty() {
            ApiCode::MissingParameter
        } else {
            ApiCode::InvalidParameter
        };
        single(&text, "DomainExtensions[0].Domain", code);
    }
    let twice = r#"{ DomainExtensionId = "de-1", Domain = "a.com", ServerCertificateId = "cert-2" },
                   { DomainExtensionId = "de-2", Domain = "A.com", ServerCertificateId = "cert-3" }"#;
    single(
        &https(twice),
        "DomainExtensions[1].Domain",
        ApiCode::InvalidParameter,
    );
    let on_http = http(
        r#"DomainExtensions = [ { DomainExtensionId = "de-1", Domain = "a.com", ServerCertificateId = "c" } ]"#,
    );
    single(&on_http, "DomainExtensions", ApiCode::UnsupportedParameter);
}
