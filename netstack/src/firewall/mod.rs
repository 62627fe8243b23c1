//! The `inet minipod` nftables table. Its rules are fixed and match on sets and maps:
//! networks add elements (their interface group, CIDR, gateway, same-network pair),
//! published ports add map elements. Nothing here lists or rewrites the ruleset; every change is one
//! `nft -f -` transaction, run inside the node namespace.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::names::OwnerId;
use crate::network::config::NetworkConfig;

mod libnft;
mod policy;
mod service;
pub use policy::{AddrRange, NodePolicies, PolicyPort, PolicyRule, PolicyRules};
pub(crate) use service::{read_services, HEADLESS_PREFIX};
pub use service::{ServiceDns, ServicePort, VirtualService, HAIRPIN_MARK};

/// A firewall change failed.
#[derive(Debug, thiserror::Error)]
pub enum FirewallError {
    #[error("running nft ({what}): {stderr}")]
    Nft { what: String, stderr: String },
    #[error("running nft: is the nftables package installed? (apt-get install nftables)")]
    NoNft(#[source] std::io::Error),
    #[error("host port {proto}/{port}{} is already published by {holder}", host_ip.map(|ip| format!(" on {ip}")).unwrap_or_default())]
    PortTaken { proto: Proto, port: u16, host_ip: Option<Ipv4Addr>, holder: String },
    #[error("node port {proto}/{port} of service {service} is published by {holder} as a host port: give the service another nodePort, or leave it out")]
    NodePortPublished { proto: Proto, port: u16, service: String, holder: String },
    #[error(
        "the port record {path} cannot be read: restore it, or remove it to give up its ports (then withdraw them from the \
         ports4, hostports4 and ports6 maps with `nft delete element inet minipod MAP {{ KEY }}`)"
    )]
    BadRecord {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("firewall state {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A host port forwarded to a member of a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub proto: Proto,
    /// Port on the node.
    pub host_port: u16,
    /// Only traffic to this node address; any local address when unset.
    pub host_ip: Option<Ipv4Addr>,
    /// Port inside the member.
    pub container_port: u16,
}

/// The conntrack mark bit of a connection made to a node port (nft 1.0.6 cannot match
/// a connection's original port against a set of protocol and port in `inet`).
pub const NODEPORT_CT_MARK: u32 = 0x8000;

/// The empty set that marks the table's layout (see [`Firewall::ensure`]).
const TABLE_VERSION: &str = "version_6";

/// Members' host ends and the bridges are in their network's interface group, which
/// the rules match on: a network adds its group, not each link.
///
/// `guard` runs before anything else sees a member's packet. Host ends let 127/8
/// through (route_localnet, which the node's 127.0.0.1:hostPort needs), so a member
/// could otherwise reach the node's localhost services (the CVE-2020-8558 class); and
/// a member may only send from addresses routed to its own link (strict reverse path,
/// whatever the node's rp_filter says), so it cannot pose as another pod or the node.
/// Members' IPv6 multicast (duplicate address detection, MLD reports) is not for the
/// node, which tells them every MAC they need and routes no multicast: the kernel
/// would look each packet up among one multicast route per IPv6 link before dropping
/// it, a cost that grows with the number of members.
///
/// Services (virtual IPs, see [`VirtualService`]) are the `services4` verdict map, a
/// chain per port and per endpoint, and `no_endpoints4`, whose packets from members are
/// rejected in `guard`, before routing (which may know no route to a virtual IP); their
/// traffic passes between networks, and only a hairpin connection (marked
/// [`HAIRPIN_MARK`] by its endpoint chain) is SNATed, so that endpoints see their
/// clients' own addresses. A NodePort is `nodeports4` (protocol and port on any of the
/// node's IPv4 addresses, to the same port chain), `nodeport_keys4` (its connections
/// get [`NODEPORT_CT_MARK`], whose DNATed traffic passes between networks too) and
/// `no_endpoint_nodeports4` (rejected from anyone). A NodePort connection from outside
/// the node's networks whose endpoint is outside them too (on another node, through
/// the overlay) is masqueraded, as kube-proxy does, so that the reply comes back
/// through this node to be un-DNATed; one to a local endpoint keeps its client's address.
///
/// NetworkPolicy is the `policy_*` maps and base chains (see [`NodePolicies`]), which
/// run before `forward` and can only drop.
const TABLE: &str = r#"
table inet minipod {
	set version_6 { type mark; }
	set groups { type devgroup; }
	set internal_groups { type devgroup; }
	set group_pairs { type devgroup . devgroup; }
	set nets4 { type ipv4_addr; flags interval; }
	set masq_nets4 { type ipv4_addr; flags interval; }
	set nets6 { type ipv6_addr; flags interval; }
	set masq_nets6 { type ipv6_addr; flags interval; }
	map gateways4 { type ipv4_addr : ipv4_addr; flags interval; }
	map gateways6 { type ipv6_addr : ipv6_addr; flags interval; }
	map ports4 { type inet_proto . inet_service : ipv4_addr . inet_service; }
	map hostports4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
	map ports6 { type inet_proto . inet_service : ipv6_addr . inet_service; }
	set service_ips4 { type ipv4_addr; }
	map services4 { type ipv4_addr . inet_proto . inet_service : verdict; }
	set no_endpoints4 { type ipv4_addr . inet_proto . inet_service; }
	map nodeports4 { type inet_proto . inet_service : verdict; }
	set nodeport_keys4 { type inet_proto . inet_service; }
	set no_endpoint_nodeports4 { type inet_proto . inet_service; }
	map policy_ingress4 { type ipv4_addr : verdict; }
	map policy_egress4 { type ipv4_addr : verdict; }
	map policy_ingress6 { type ipv6_addr : verdict; }
	map policy_egress6 { type ipv6_addr : verdict; }
	chain policy_egress {
		type filter hook forward priority -2; policy accept;
		ct state established,related accept
		ip saddr vmap @policy_egress4
		ip6 saddr vmap @policy_egress6
	}
	chain policy_egress_node {
		type filter hook input priority -2; policy accept;
		ct state established,related accept
		ip saddr vmap @policy_egress4
		ip6 saddr vmap @policy_egress6
	}
	chain policy_ingress {
		type filter hook forward priority -1; policy accept;
		ct state established,related accept
		ip daddr vmap @policy_ingress4
		ip6 daddr vmap @policy_ingress6
	}
	chain guard {
		type filter hook prerouting priority raw; policy accept;
		meta iifgroup @groups ip daddr 127.0.0.0/8 drop
		meta iifgroup @groups ip6 daddr ff00::/8 drop
		meta iifgroup @groups fib saddr . iif oif 0 drop
		meta iifgroup @groups ip daddr . meta l4proto . th dport @no_endpoints4 reject
		fib daddr type local meta nfproto ipv4 meta l4proto . th dport @no_endpoint_nodeports4 reject
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept
		ct original ip daddr @service_ips4 ct status dnat accept
		ct status dnat ct mark & 0x00008000 == 0x00008000 accept
		meta iifgroup . meta oifgroup @group_pairs accept
		meta iifgroup @groups meta oifgroup @groups drop
		meta iifgroup @internal_groups drop
		meta oifgroup @internal_groups drop
		meta iifgroup @groups accept
		meta oifgroup @groups ct status dnat accept
		meta oifgroup @groups drop
	}
	chain nat_dispatch {
		ip daddr . meta l4proto . th dport vmap @services4
		fib daddr type local meta nfproto ipv4 meta l4proto . th dport @nodeport_keys4 ct mark set ct mark | 0x00008000
		fib daddr type local meta nfproto ipv4 meta l4proto . th dport vmap @nodeports4
		fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @hostports4
		fib daddr type local dnat ip to meta l4proto . th dport map @ports4
		fib daddr type local dnat ip6 to meta l4proto . th dport map @ports6
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		jump nat_dispatch
	}
	chain output {
		type nat hook output priority -100; policy accept;
		jump nat_dispatch
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ct status dnat ct original ip daddr != @service_ips4 ip saddr @nets4 snat ip to ip daddr map @gateways4
		meta mark & 0x00004000 == 0x00004000 snat ip to ip daddr map @gateways4
		ct status dnat ip saddr 127.0.0.0/8 snat ip to ip daddr map @gateways4
		ct status dnat ip6 saddr @nets6 snat ip6 to ip6 daddr map @gateways6
		ct status dnat ct mark & 0x00008000 == 0x00008000 ip saddr != @nets4 ip daddr != @nets4 masquerade
		ip saddr @masq_nets4 meta oifgroup != @groups masquerade
		ip6 saddr @masq_nets6 meta oifgroup != @groups masquerade
	}
}
"#;

/// The firewall of one node.
pub struct Firewall {
    netns: PathBuf,
    state_dir: PathBuf,
    ensured: std::sync::atomic::AtomicBool,
    /// The in-process nftables context and the namespace (device, inode) it was
    /// opened in: a namespace pinned anew at the same path gets a new one.
    session: std::sync::Mutex<Option<((u64, u64), libnft::Session)>>,
}

#[derive(Serialize, Deserialize)]
struct Reservation {
    proto: Proto,
    host_port: u16,
    host_ip: Option<Ipv4Addr>,
    target: Ipv4Addr,
    /// The member's IPv6 address on a dual-stack network: the port is published on
    /// the node's IPv6 addresses too (unless bound to an IPv4 host address).
    #[serde(default)]
    target6: Option<Ipv6Addr>,
    container_port: u16,
}

impl Firewall {
    /// The firewall of the node namespace at `netns`, with state under `state_dir`.
    pub fn new(netns: &Path, state_dir: &Path) -> Self {
        Self { netns: netns.to_path_buf(), state_dir: state_dir.join("firewall"), ensured: Default::default(), session: Default::default() }
    }

    /// Runs `script` through libnftables in this process; None when it cannot be
    /// (no library, or the namespace cannot be entered), and the `nft` command is run.
    fn nft_in_process(&self, script: &str) -> Option<Result<(), String>> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&self.netns).ok()?;
        let id = (meta.dev(), meta.ino());
        let mut slot = self.session.lock().ok()?;
        if slot.as_ref().is_none_or(|(had, _)| *had != id) {
            let ns = crate::netns::Netns::open(&self.netns).ok()?;
            *slot = Some((id, ns.run(libnft::Session::open).ok()??));
        }
        slot.as_mut().map(|(_, s)| s.run(script))
    }

    fn nft(&self, script: &str, what: &str) -> Result<(), FirewallError> {
        if let Some(done) = self.nft_in_process(script) {
            return done.map_err(|stderr| FirewallError::Nft { what: what.to_string(), stderr: stderr.trim().replace('\n', " ") });
        }
        let mut child = Command::new("nsenter")
            .arg(format!("--net={}", self.netns.display()))
            .args(["nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(FirewallError::NoNft)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(script.as_bytes()).map_err(FirewallError::NoNft)?;
        }
        let out = child.wait_with_output().map_err(FirewallError::NoNft)?;
        if out.status.success() {
            return Ok(());
        }
        Err(FirewallError::Nft { what: what.to_string(), stderr: String::from_utf8_lossy(&out.stderr).trim().replace('\n', " ") })
    }

    fn lock(&self) -> Result<Flock<std::fs::File>, FirewallError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| FirewallError::State { path, source }
        };
        std::fs::create_dir_all(self.state_dir.join("ports")).map_err(err(&self.state_dir))?;
        let path = self.state_dir.join("lock");
        let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(err(&path))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| FirewallError::State { path, source: e.into() })
    }

    /// Makes sure the table is there and current, with this state dir's elements in it.
    /// Done once per `Firewall`; other processes wait on the lock meanwhile. A missing
    /// table (flushed by someone, or never made) or one an older minipod made is built
    /// anew in one transaction with the elements of the `recorded` networks and of every
    /// published port; a current one gets them added again (adding is idempotent), in
    /// case a minipod with another state dir on the same node rebuilt it.
    pub fn ensure(&self, recorded: impl FnOnce() -> Vec<NetworkConfig>) -> Result<(), FirewallError> {
        if self.ensured.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(());
        }
        let _lock = self.lock()?;
        let mut elements = String::new();
        for cfg in recorded() {
            elements.push_str(&network_elements("add", &cfg));
        }
        for (owner, records) in self.reservations()? {
            match records {
                Ok(records) => records.iter().for_each(|r| elements.push_str(&r.elements("add"))),
                Err(e) => tracing::warn!("the ports of {owner} are not published again: {e}"),
            }
        }
        for svc in self.recorded_services() {
            elements.push_str(&service::script(None, Some(&svc)));
        }
        elements.push_str(&policy::script(&NodePolicies::default(), &self.recorded_policies()));
        // The table's version is the name of an empty set in it: a table without this
        // one is older (or newer) than this minipod. Change both with any rule.
        if self.nft(&format!("list set inet minipod {TABLE_VERSION}"), "checking the table").is_err() {
            // `add` first so that `delete` cannot fail on a missing table.
            let script = format!("add table inet minipod\ndelete table inet minipod\n{TABLE}{elements}");
            self.nft(&script, "creating table inet minipod")?;
        } else if !elements.is_empty() && self.nft(&elements, "adding this node's networks and ports again").is_err() {
            // One element that clashes (a port another state dir published meanwhile)
            // fails the batch: add the rest one by one, and say which could not be.
            for line in elements.lines() {
                if let Err(e) = self.nft(line, "adding an element again") {
                    tracing::warn!("not restored: {e}");
                }
            }
        }
        self.ensured.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Every owner's published ports as recorded, or why they cannot be read.
    fn reservations(&self) -> Result<Vec<(String, OwnerPorts)>, FirewallError> {
        let dir = self.state_dir.join("ports");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(FirewallError::State { path: dir, source }),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let path = e.path();
            let Some(owner) = path.file_stem().and_then(|s| s.to_str()) else { continue };
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let records = read_record(&path);
            out.push((owner.to_string(), records));
        }
        Ok(out)
    }

    /// Chains of other tables that hook forward with a drop policy, as `family table
    /// chain`. Such a policy drops pod traffic whatever our table accepts (nftables
    /// runs every base chain of a hook; a drop anywhere is final).
    pub fn forward_droppers(&self) -> Vec<String> {
        let out = Command::new("nsenter").arg(format!("--net={}", self.netns.display())).args(["nft", "list", "ruleset"]).output();
        let Ok(out) = out else { return vec![] };
        let text = String::from_utf8_lossy(&out.stdout);
        let mut found = Vec::new();
        let (mut table, mut chain) = (String::new(), String::new());
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("table ") {
                table = rest.trim_end_matches(" {").to_string();
            } else if let Some(rest) = line.strip_prefix("chain ") {
                chain = rest.trim_end_matches(" {").to_string();
            } else if line.contains("hook forward") && line.contains("policy drop") && table != "inet minipod" {
                found.push(format!("{table} {chain}"));
            }
        }
        found
    }

    /// Adds a network's elements: its group, its CIDR, the pair that lets its members
    /// talk to each other, and masquerade or isolation as configured.
    /// Call [`Firewall::ensure`] first.
    pub fn add_network(&self, cfg: &NetworkConfig) -> Result<(), FirewallError> {
        let _lock = self.lock()?;
        self.nft(&network_elements("add", cfg), &format!("adding network {}", cfg.name))
    }

    /// Removes a network's elements; missing ones are fine.
    pub fn remove_network(&self, cfg: &NetworkConfig) -> Result<(), FirewallError> {
        let _lock = self.lock()?;
        let script = network_elements("delete", cfg);
        if self.nft(&script, "removing network elements").is_ok() {
            return Ok(());
        }
        // One missing element fails the whole batch: remove the rest one by one.
        for line in script.lines() {
            let _ = self.nft(line, "removing a network element");
        }
        Ok(())
    }

    /// Publishes `ports` of `owner` (at `target`, and at `target6` for the node's IPv6
    /// addresses on a dual-stack network) in one batch; refuses a host port another
    /// owner holds, and reserves nothing if any is taken.
    pub fn publish(
        &self,
        owner: &OwnerId,
        target: Ipv4Addr,
        target6: Option<Ipv6Addr>,
        ports: &[PortMapping],
    ) -> Result<(), FirewallError> {
        if ports.is_empty() {
            return Ok(());
        }
        let _lock = self.lock()?;
        let dir = self.state_dir.join("ports");
        for p in ports {
            if let Some(holder) = self.holder(p)? {
                return Err(FirewallError::PortTaken { proto: p.proto, port: p.host_port, host_ip: p.host_ip, holder });
            }
        }
        // The reservation first: if nft then fails it is removed again, whereas nft
        // elements without a reservation would never be withdrawn.
        let owner_file = dir.join(format!("{owner}.json"));
        let records: Vec<Reservation> = ports
            .iter()
            .map(|p| Reservation {
                proto: p.proto,
                host_port: p.host_port,
                host_ip: p.host_ip,
                target,
                target6: target6.filter(|_| p.host_ip.is_none()),
                container_port: p.container_port,
            })
            .collect();
        // Whole or not at all: a half-written record (a full /run) would read as
        // corrupt and block every later publish.
        crate::record::write_json(&owner_file, &records, crate::record::Durability::Atomic)
            .map_err(|source| FirewallError::State { path: owner_file.clone(), source })?;
        let script: String = records.iter().map(|r| r.elements("add")).collect();
        if let Err(e) = self.nft(&script, &format!("publishing ports of {owner}")) {
            let _ = std::fs::remove_file(&owner_file);
            return Err(e);
        }
        Ok(())
    }

    /// Which owner holds the host port `p` would take, if any (a port on "any address"
    /// clashes with every address, and the other way round).
    fn holder(&self, p: &PortMapping) -> Result<Option<String>, FirewallError> {
        let clash = |r: &Reservation| {
            r.proto == p.proto && r.host_port == p.host_port && (r.host_ip.is_none() || p.host_ip.is_none() || r.host_ip == p.host_ip)
        };
        for (owner, records) in self.reservations()? {
            // A record that cannot be read may hold this very port: refuse rather than
            // publish it twice.
            if records?.iter().any(clash) {
                return Ok(Some(owner));
            }
        }
        // A NodePort service's port is on every address of the node: the same DNAT.
        let by_service =
            self.recorded_services().into_iter().find(|s| s.ports.iter().any(|q| q.proto == p.proto && q.node_port == Some(p.host_port)));
        Ok(by_service.map(|s| format!("NodePort service {}", s.owner)))
    }

    /// The owner of a published host port that a node port of `svc` (one `old` did not
    /// have already) would clash with: a node port is on every address of the node.
    pub(super) fn node_port_holder(
        &self,
        old: Option<&service::VirtualService>,
        svc: &service::VirtualService,
    ) -> Result<Option<(Proto, u16, String)>, FirewallError> {
        let new: Vec<(Proto, u16)> = svc
            .ports
            .iter()
            .filter_map(|p| p.node_port.map(|np| (p.proto, np)))
            .filter(|np| old.is_none_or(|o| !o.ports.iter().any(|q| q.node_port.map(|n| (q.proto, n)) == Some(*np))))
            .collect();
        if new.is_empty() {
            return Ok(None);
        }
        for (owner, records) in self.reservations()? {
            let Ok(records) = records else { continue };
            if let Some(&(proto, port)) = new.iter().find(|(proto, port)| records.iter().any(|r| r.proto == *proto && r.host_port == *port))
            {
                return Ok(Some((proto, port, owner)));
            }
        }
        Ok(None)
    }

    /// Withdraws every port `owner` published and forgets the flows that used them
    /// (an established UDP flow would otherwise keep reaching the old member).
    pub fn unpublish(&self, owner: &OwnerId) -> Result<(), FirewallError> {
        let _lock = self.lock()?;
        let owner_file = self.state_dir.join("ports").join(format!("{owner}.json"));
        if !owner_file.exists() {
            return Ok(());
        }
        let records = match read_record(&owner_file) {
            Ok(r) => r,
            Err(e) => {
                // Its elements cannot be known: say so, and keep the record aside
                // rather than letting it block this owner's detach and every publish.
                let aside = owner_file.with_extension("json.unreadable");
                tracing::warn!("{e}; kept as {} and not withdrawn", aside.display());
                return std::fs::rename(&owner_file, &aside).map_err(|source| FirewallError::State { path: owner_file, source });
            }
        };
        let script: String = records.iter().map(|r| r.elements("delete")).collect();
        if self.nft(&script, "withdrawing ports").is_err() {
            for line in script.lines() {
                let _ = self.nft(line, "withdrawing a port");
            }
        }
        let targets = records
            .iter()
            .flat_map(|r| std::iter::once((r, "ipv4", r.target.to_string())).chain(r.target6.map(|t| (r, "ipv6", t.to_string()))));
        for (r, family, target) in targets {
            // `conntrack` exits 1 when there was nothing to delete; both are fine.
            let _ = Command::new("nsenter")
                .arg(format!("--net={}", self.netns.display()))
                // Only this member's flows: other pods' outbound flows to the same
                // port number must survive.
                .args([
                    "conntrack",
                    "-D",
                    "-f",
                    family,
                    "-p",
                    &r.proto.to_string(),
                    "--orig-port-dst",
                    &r.host_port.to_string(),
                    "--reply-src",
                    &target,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        std::fs::remove_file(&owner_file).map_err(|source| FirewallError::State { path: owner_file, source })
    }
}

/// One owner's recorded ports, or why they cannot be read.
type OwnerPorts = Result<Vec<Reservation>, FirewallError>;

fn read_record(path: &Path) -> Result<Vec<Reservation>, FirewallError> {
    crate::record::read_json(path).map_err(|source| FirewallError::BadRecord { path: path.to_path_buf(), source })
}

/// A network's elements, as lines of an nft script: map elements with their values
/// for `add`, keys only for `delete`.
fn network_elements(verb: &str, cfg: &NetworkConfig) -> String {
    let g = cfg.group();
    let value = |v: &dyn std::fmt::Display| if verb == "add" { format!(" : {v}") } else { String::new() };
    let mut s = format!(
        "{verb} element inet minipod groups {{ {g:#x} }}\n{verb} element inet minipod group_pairs {{ {g:#x} . {g:#x} }}\n\
         {verb} element inet minipod nets4 {{ {net} }}\n{verb} element inet minipod gateways4 {{ {net}{} }}\n",
        value(&cfg.gateway()),
        net = cfg.subnet,
    );
    if let (Some(v6), Some(gw6)) = (cfg.subnet6, cfg.gateway6()) {
        s.push_str(&format!(
            "{verb} element inet minipod nets6 {{ {v6} }}\n{verb} element inet minipod gateways6 {{ {v6}{} }}\n",
            value(&gw6)
        ));
    }
    if cfg.internal {
        s.push_str(&format!("{verb} element inet minipod internal_groups {{ {g:#x} }}\n"));
    } else if cfg.masquerade {
        s.push_str(&format!("{verb} element inet minipod masq_nets4 {{ {} }}\n", cfg.subnet));
        if let Some(v6) = cfg.subnet6 {
            s.push_str(&format!("{verb} element inet minipod masq_nets6 {{ {v6} }}\n"));
        }
    }
    s
}

impl Reservation {
    /// The map elements of this port, as lines of an nft script: with their targets
    /// for `add`, keys only for `delete`.
    fn elements(&self, verb: &str) -> String {
        let (proto, port, to) = (self.proto, self.host_port, self.container_port);
        let value = |t: &dyn std::fmt::Display| if verb == "add" { format!(" : {t} . {to}") } else { String::new() };
        let mut s = match self.host_ip {
            Some(ip) => format!("{verb} element inet minipod hostports4 {{ {ip} . {proto} . {port}{} }}\n", value(&self.target)),
            None => format!("{verb} element inet minipod ports4 {{ {proto} . {port}{} }}\n", value(&self.target)),
        };
        if let Some(t6) = self.target6 {
            s.push_str(&format!("{verb} element inet minipod ports6 {{ {proto} . {port}{} }}\n", value(&t6)));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::{IfName, NetworkName};

    #[test]
    fn the_table_carries_the_version_ensure_checks_for() {
        assert!(TABLE.contains(&format!("set {TABLE_VERSION} {{ type mark; }}")));
        assert!(TABLE.contains(&format!("ct mark set ct mark | {NODEPORT_CT_MARK:#010x}")));
        assert!(TABLE.contains(&format!("ct mark & {NODEPORT_CT_MARK:#010x} == {NODEPORT_CT_MARK:#010x} accept")));
    }

    #[test]
    fn scripts_name_only_typed_values() {
        let mut cfg = NetworkConfig::new(NetworkName::new("n").unwrap(), IfName::new("br-n").unwrap(), "10.3.0.0/24".parse().unwrap());
        let g = cfg.group();
        let add = network_elements("add", &cfg);
        assert!(add.contains(&format!("group_pairs {{ {g:#x} . {g:#x} }}")) && add.contains("masq_nets4 { 10.3.0.0/24 }"), "{add}");
        assert!(add.contains("gateways4 { 10.3.0.0/24 : 10.3.0.1 }"), "{add}");
        assert!(network_elements("delete", &cfg).contains("delete element inet minipod gateways4 { 10.3.0.0/24 }\n"));
        cfg.internal = true;
        let add = network_elements("add", &cfg);
        assert!(add.contains(&format!("internal_groups {{ {g:#x} }}")) && !add.contains("masq_nets4"), "{add}");
        let mut r = Reservation {
            proto: Proto::Udp,
            host_port: 5353,
            host_ip: Some("127.0.0.1".parse().unwrap()),
            target: "10.3.0.2".parse().unwrap(),
            target6: None,
            container_port: 53,
        };
        assert_eq!(r.elements("add"), "add element inet minipod hostports4 { 127.0.0.1 . udp . 5353 : 10.3.0.2 . 53 }\n");
        assert_eq!(r.elements("delete"), "delete element inet minipod hostports4 { 127.0.0.1 . udp . 5353 }\n");
        (r.host_ip, r.target6) = (None, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            r.elements("add"),
            "add element inet minipod ports4 { udp . 5353 : 10.3.0.2 . 53 }\nadd element inet minipod ports6 { udp . 5353 : fd00::2 . 53 }\n"
        );
    }
}
