//! The typed configuration model. Every value here has passed validation; defaults are filled in.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub agent: Agent,
    /// Server registry: `ServerId` → address. A `ServerId` that is an IP literal needs no entry.
    pub servers: BTreeMap<String, IpAddr>,
    pub acls: Vec<Acl>,
    pub load_balancers: Vec<LoadBalancer>,
    pub certificates: Certificates,
}

/// The certificates HTTPS listeners present and trust, by ID: uploaded through the API, or
/// read from the PEM files the configuration file names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Certificates {
    pub server: BTreeMap<String, ServerCertificate>,
    /// CA certificates (PEM) that verify client certificates (B10.9).
    pub ca: BTreeMap<String, String>,
}

/// A certificate chain (leaf first) and its unencrypted private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerCertificate {
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCertificate {
    // The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate").finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub pin_path: PathBuf,
    pub flow_table_size: u32,
    pub persist_table_size: u32,
    pub region_id: String,
    /// `[Api]`: the management API; `None` = the file alone drives the data plane.
    pub api: Option<ApiSection>,
}

/// The management API's settings (`[Api]` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSection {
    /// Address the API listens on; loopback by default.
    pub listen: std::net::SocketAddr,
    /// TOML file of access keys, readable by its owner only.
    pub keys_file: PathBuf,
    /// The redb state store.
    pub state_path: PathBuf,
    /// Where `CreateLoadBalancer` allocates VIPs.
    pub vip_pool: Vec<IpNet>,
    pub zone_ids: Vec<String>,
    /// `Some`: the API is served over TLS.
    pub tls: Option<ApiTls>,
}

/// PEM files of the API listener's TLS (`[Api] TlsCertificate`, `TlsPrivateKey`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

impl Default for Agent {
    fn default() -> Self {
        Agent {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Native,
            pin_path: PathBuf::from("/sys/fs/bpf/slb"),
            flow_table_size: 1_048_576,
            persist_table_size: 262_144,
            region_id: "local".to_string(),
            api: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => IpVersion::V4,
            IpAddr::V6(_) => IpVersion::V6,
        }
    }

    /// The API spelling (`AddressIPVersion`).
    pub fn as_str(self) -> &'static str {
        match self {
            IpVersion::V4 => "ipv4",
            IpVersion::V6 => "ipv6",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub acl_id: String,
    pub name: String,
    pub ip_version: IpVersion,
    pub entries: Vec<AclEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    pub entry: IpNet,
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    pub load_balancer_id: String,
    pub name: String,
    /// The VIP.
    pub address: IpAddr,
    pub status: InstanceStatus,
    /// Default server group (B4.1), duplicates removed (B4.10).
    pub backend_servers: Vec<BackendServer>,
    pub vserver_groups: Vec<VServerGroup>,
    pub master_slave_groups: Vec<MasterSlaveGroup>,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceStatus {
    Active,
    Inactive,
    Locked,
}

/// Member of the default server group: served on the listener's `BackendServerPort`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendServer {
    pub server_id: String,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VServerGroup {
    pub vserver_group_id: String,
    pub name: String,
    /// Duplicated `{ServerId, Port}` removed, first occurrence kept (B4.10).
    pub backend_servers: Vec<GroupServer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupServer {
    pub server_id: String,
    pub port: u16,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MasterSlaveGroup {
    pub master_slave_server_group_id: String,
    pub name: String,
    /// Exactly two members, one of each role (B4.5).
    pub master: GroupServer,
    pub slave: GroupServer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    pub fn is_layer7(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerStatus {
    Running,
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduler {
    Wrr,
    Rr,
    Wlc,
    /// Consistent hash on the source IP.
    Sch,
    /// Consistent hash on the 4-tuple.
    Tch,
    /// Consistent hash on the QUIC connection ID (UDP only).
    Qch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Default,
    VServerGroup(String),
    MasterSlave(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AclType {
    White,
    Black,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerAcl {
    pub acl_id: String,
    pub acl_type: AclType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub protocol: Protocol,
    pub listener_port: u16,
    pub backend_server_port: Option<u16>,
    pub status: ListenerStatus,
    pub scheduler: Scheduler,
    /// Seconds; 0 = off (B6.1). Only meaningful on TCP/UDP.
    pub persistence_timeout: u32,
    /// Seconds (B12.3). Only meaningful on TCP.
    pub established_timeout: u32,
    /// Mbit/s; `None` is the API's `-1` (no per-listener cap, B13.1).
    pub bandwidth: Option<u32>,
    pub group: GroupRef,
    /// `Some` when `AclStatus=on` (B7.1).
    pub acl: Option<ListenerAcl>,
    /// `Some(items)` when `AccessControlStatus=open_white_list` (B7.8); an empty list admits nobody.
    pub access_control: Option<Vec<IpNet>>,
    pub description: String,
    pub health_check: HealthCheck,
    /// TCP-only settings; `Some` exactly on TCP listeners.
    pub tcp: Option<TcpSettings>,
    /// HTTP/HTTPS settings; `Some` exactly on HTTP and HTTPS listeners.
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSettings {
    /// `SynProxy=enable` (B12.4).
    pub syn_proxy: bool,
    /// `ProxyProtocolV2Enabled` (B12.2; parameter name not in docs).
    pub proxy_protocol_v2: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Always true on TCP/UDP (B8.1); `HealthCheck` on HTTP/HTTPS (B8.2).
    pub enabled: bool,
    /// `None` = the member's serving port (unset or `-520`, B8.7).
    pub connect_port: Option<u16>,
    pub healthy_threshold: u8,
    pub unhealthy_threshold: u8,
    /// Seconds (B8.9: the effective timeout is `max(timeout, interval)`).
    pub timeout: u16,
    pub interval: u16,
    pub probe: Probe,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// TCP connect (TCP listener, `HealthCheckType=tcp`, B8.3).
    Tcp,
    /// HTTP request (HTTP/HTTPS listeners, or TCP with `HealthCheckType=http`, B8.4).
    Http(HttpProbe),
    /// UDP datagram probe (B8.13); `None` = send an empty datagram / accept any reply.
    Udp {
        request: Option<String>,
        expect: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpProbe {
    /// `None` = `$_ip`: the backend's address is the Host (B8.4).
    pub domain: Option<String>,
    pub uri: String,
    pub http_codes: Vec<HttpCodeClass>,
    pub method: HealthCheckMethod,
    pub version: HealthCheckHttpVersion,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HttpCodeClass {
    Http2xx,
    Http3xx,
    Http4xx,
    Http5xx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthCheckMethod {
    Head,
    Get,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HealthCheckHttpVersion {
    Http10,
    Http11,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Added-header switches (B9.2–B9.5). X-Forwarded-For itself is always on (B9.1).
    pub xff_slb_ip: bool,
    pub xff_slb_id: bool,
    pub xff_proto: bool,
    pub xff_slb_port: bool,
    pub xff_client_src_port: bool,
    pub sticky_session: StickySession,
    pub gzip: bool,
    pub idle_timeout: u32,
    pub request_timeout: u32,
    /// HTTP only: redirect to the HTTPS listener on this port of the same instance (B9.19).
    pub forward_port: Option<u16>,
    /// HTTPS only.
    pub tls: Option<TlsSettings>,
    /// Forwarding rules (§11), in creation order.
    pub rules: Vec<Rule>,
}

/// A forwarding rule: requests whose host and path match go to its group (B11.3, B11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub rule_id: String,
    pub name: String,
    pub domain: Option<String>,
    pub url: Option<String>,
    pub vserver_group_id: String,
}

/// An extra (domain, certificate) pair of an HTTPS listener, chosen by SNI (B10.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainExtension {
    pub domain_extension_id: String,
    pub domain: String,
    pub server_certificate_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickySession {
    Off,
    /// LB inserts `SERVERID` with this lifetime in seconds (B6.3).
    Insert {
        cookie_timeout: u32,
    },
    /// LB rewrites the backend's cookie of this name (B6.4).
    Server {
        cookie: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub server_certificate_id: String,
    /// `Some` ⇒ mutual TLS.
    pub ca_certificate_id: Option<String>,
    pub enable_http2: bool,
    pub tls_cipher_policy: TlsCipherPolicy,
    pub domain_extensions: Vec<DomainExtension>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsCipherPolicy {
    Tls10,
    Tls11,
    Tls12,
    Tls12Strict,
    Tls12StrictWith13,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberRole {
    Normal,
    Master,
    Slave,
}

/// A resolved member of a listener's server group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub server_id: String,
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u8,
    pub role: MemberRole,
}
