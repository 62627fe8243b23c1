//! The checks people otherwise do by hand when a pod's network is broken, each with
//! what it found, a verdict and the fix: kernel modules, forwarding, the firewall table
//! and its masquerade, other tables' forward drop policies, each network's bridge and
//! DNS server, each member's links, routes and MTU, the overlay's device, peers and
//! their reachability; and for one flow (`from` to `to:port`), whether the two are on
//! one network, routed, and let through by every NetworkPolicy that isolates either.
//!
//! What the kernel holds is read with iproute2's JSON output and `nft` in the node
//! namespace: a diagnosis reads, it changes nothing.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use super::{Attachment, NetworkConfig, NetworkError, Node};
use crate::firewall::{AddrRange, PolicyRule, Proto};
use crate::overlay::vtep_mac;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Verdict::Pass => "pass",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One check: what was looked at, what was found, and what to do if it is not a pass.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub found: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// A check that passed.
pub fn pass(check: impl Into<String>, found: impl Into<String>) -> Finding {
    Finding { check: check.into(), found: found.into(), verdict: Verdict::Pass, fix: None }
}

/// A check that failed, with what would mend it.
pub fn fail(check: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { check: check.into(), found: found.into(), verdict: Verdict::Fail, fix: Some(fix.into()) }
}

/// A check that found something that may be wrong, with what would mend it.
pub fn warn(check: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding { check: check.into(), found: found.into(), verdict: Verdict::Warn, fix: Some(fix.into()) }
}

/// `args` run in the network namespace `ns`: its output if it succeeded.
fn run_in(ns: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("nsenter").arg(format!("--net={}", ns.display())).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// iproute2's JSON answer to `args` in `ns` (an empty list if it failed).
fn ip_json(ns: &Path, args: &[&str]) -> Vec<serde_json::Value> {
    run_in(ns, args).and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok()).unwrap_or_default()
}

fn link(ns: &Path, name: &str) -> Option<serde_json::Value> {
    ip_json(ns, &["ip", "-j", "addr", "show", "dev", name]).into_iter().next()
}

fn is_up(link: &serde_json::Value) -> bool {
    link["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP"))
}

fn mtu(link: &serde_json::Value) -> Option<u64> {
    link["mtu"].as_u64()
}

fn has_addr(link: &serde_json::Value, ip: Ipv4Addr) -> bool {
    link["addr_info"].as_array().is_some_and(|a| a.iter().any(|i| i["local"] == ip.to_string()))
}

fn within(ranges: &Option<Vec<AddrRange>>, ip: Ipv4Addr) -> bool {
    ranges.as_ref().is_none_or(|r| r.iter().any(|r| r.first <= ip && ip <= r.last))
}

impl PolicyRule {
    /// Whether the rule lets a connection between `member` (isolated) and `peer` to
    /// `proto` port `port` through.
    pub fn allows(&self, member: Ipv4Addr, peer: Ipv4Addr, proto: Proto, port: u16) -> bool {
        let to_port =
            self.ports.is_empty() || self.ports.iter().any(|p| p.proto == proto && p.ports.is_none_or(|(a, b)| a <= port && port <= b));
        within(&self.peers, peer) && within(&self.members, member) && to_port
    }
}

impl Node {
    /// Every check of the node, its networks, members and overlay.
    pub fn doctor(&self) -> Result<Vec<Finding>, NetworkError> {
        let ns = self.netns.path().to_path_buf();
        let networks = self.networks()?;
        let overlay = self.overlay()?;
        let mut out = Vec::new();
        let config = kernel_config();
        for (module, symbol, needed) in [
            ("nf_tables", "NF_TABLES", true),
            ("veth", "VETH", true),
            ("vxlan", "VXLAN", overlay.is_some()),
            ("br_netfilter", "BRIDGE_NETFILTER", false),
        ] {
            let check = format!("kernel module {module}");
            let built_in = config.as_deref().is_some_and(|c| c.lines().any(|l| l == format!("CONFIG_{symbol}=y")));
            let loaded = Path::new("/sys/module").join(module).exists();
            out.push(match (loaded || built_in, needed, module) {
                (true, _, _) if built_in => pass(check, "built into the kernel"),
                (true, _, _) => pass(check, "loaded"),
                (false, true, _) => fail(check, "not loaded", format!("modprobe {module}")),
                (false, false, "br_netfilter") => warn(
                    check,
                    "not loaded",
                    "minipod routes its pods and needs none; a bridged CNI on this node would: modprobe br_netfilter",
                ),
                (false, false, _) => {
                    warn(check, "not loaded (no overlay on this node yet)", format!("modprobe {module} before joining an overlay"))
                }
            });
        }
        let forwarding = run_in(&ns, &["cat", "/proc/sys/net/ipv4/ip_forward"]).map(|s| s.trim().to_string());
        out.push(match forwarding.as_deref() {
            Some("1") => pass("IPv4 forwarding", "on"),
            Some(_) if networks.is_empty() => pass("IPv4 forwarding", "off (no network on this node needs it yet)"),
            found => fail(
                "IPv4 forwarding",
                format!("net.ipv4.ip_forward is {}", found.unwrap_or("unreadable")),
                "sysctl -w net.ipv4.ip_forward=1 in the node namespace: without it no pod packet leaves its network",
            ),
        });
        let table = run_in(&ns, &["nft", "list", "table", "inet", "minipod"]);
        match &table {
            Some(_) => out.push(pass("firewall table inet minipod", "present")),
            None if networks.is_empty() => out.push(pass("firewall table inet minipod", "none (no network on this node)")),
            None => out.push(fail(
                "firewall table inet minipod",
                "missing",
                "start any minipod process on this node (the table is rebuilt when one starts)",
            )),
        }
        let masq_needed: Vec<&NetworkConfig> = networks.iter().filter(|n| n.masquerade && !n.internal).collect();
        if let (Some(table), false) = (&table, masq_needed.is_empty()) {
            let rule = table.lines().any(|l| l.contains("ip saddr @masq_nets4") && l.contains("masquerade"));
            out.push(if rule {
                pass("masquerade rule", "postrouting masquerades @masq_nets4")
            } else {
                fail(
                    "masquerade rule",
                    "postrouting has no masquerade rule: pods' traffic leaves with their private addresses",
                    "nft delete table inet minipod, then start minipod again to rebuild it",
                )
            });
        }
        let droppers = self.firewall.forward_droppers();
        out.push(match droppers.first() {
            None => pass("other tables' forward policy", "no other table drops forwarded traffic"),
            Some(_) => {
                let fixes: Vec<String> = networks.iter().flat_map(|n| self.problems(&n.name).unwrap_or_default()).collect();
                fail("other tables' forward policy", format!("{} drop forwarded traffic by policy", droppers.join(", ")), fixes.join("; "))
            }
        });
        for cfg in &networks {
            out.extend(self.network_checks(&ns, cfg, table.as_deref())?);
        }
        if let Some(rec) = &overlay {
            out.extend(self.overlay_checks(&ns, rec, &networks));
        }
        Ok(out)
    }

    fn network_checks(&self, ns: &Path, cfg: &NetworkConfig, table: Option<&str>) -> Result<Vec<Finding>, NetworkError> {
        let mut out = Vec::new();
        let name = &cfg.name;
        let gw = cfg.gateway();
        match link(ns, cfg.bridge.as_str()) {
            Some(l) if is_up(&l) && has_addr(&l, gw) => {
                out.push(pass(format!("network {name}: bridge"), format!("{} up with {gw}", cfg.bridge)))
            }
            Some(_) => out.push(fail(
                format!("network {name}: bridge"),
                format!("{} is down or lacks the gateway {gw}", cfg.bridge),
                format!("ip link set {} up; ip addr add {gw}/{} dev {}", cfg.bridge, cfg.subnet.prefix(), cfg.bridge),
            )),
            None => out.push(fail(
                format!("network {name}: bridge"),
                format!("{} is missing", cfg.bridge),
                "start minipod again: it makes the bridge of a recorded network",
            )),
        }
        if let (true, false, Some(table)) = (cfg.masquerade, cfg.internal, table) {
            let element = table.lines().skip_while(|l| !l.contains("set masq_nets4")).take(6).any(|l| l.contains(&cfg.subnet.to_string()));
            out.push(if element {
                pass(format!("network {name}: masquerade"), format!("{} is masqueraded", cfg.subnet))
            } else {
                fail(
                    format!("network {name}: masquerade"),
                    format!("{} is not in masq_nets4: its pods cannot reach beyond the node", cfg.subnet),
                    format!("nft add element inet minipod masq_nets4 {{ {} }}", cfg.subnet),
                )
            });
        }
        let mut dns_up = false;
        if cfg.dns {
            let hex = format!("{:08X}:0035", u32::from_le_bytes(gw.octets()));
            let udp = run_in(ns, &["cat", "/proc/net/udp"]).unwrap_or_default();
            dns_up = udp.contains(&hex);
            out.push(if dns_up {
                pass(format!("network {name}: DNS"), format!("a server answers on {gw}:53"))
            } else {
                fail(
                    format!("network {name}: DNS"),
                    format!("nothing listens on {gw}:53: pods' resolv.conf points there"),
                    "keep the process that made the pods running (the CRI daemon, or the embedding runtime): it serves their DNS",
                )
            });
        }
        let members = self.members(name)?;
        for m in &members {
            out.extend(member_checks(ns, cfg, m));
            if dns_up {
                out.push(lookup_check(&format!("pod {}: DNS lookup of its name", m.owner), m, gw, m.dns_names.first(), m.ip));
            }
        }
        // A Service's name, from a pod of the network, as its resolver would ask.
        let asker = members.iter().find(|m| m.netns.exists());
        if let (true, Some(m)) = (dns_up, asker) {
            let domain = self.cluster_domain();
            let svc = self.firewall.recorded_services().into_iter().find_map(|s| s.dns.clone().map(|d| (d, s.ip)));
            if let Some((d, ip)) = svc {
                let fqdn = format!("{}.{}.svc.{domain}", d.name, d.namespace);
                out.push(lookup_check(&format!("network {name}: DNS lookup of service {fqdn}"), m, gw, Some(&fqdn), ip));
            }
        }
        Ok(out)
    }

    fn overlay_checks(&self, ns: &Path, rec: &crate::OverlayRecord, networks: &[NetworkConfig]) -> Vec<Finding> {
        let mut out = Vec::new();
        let Ok(device) = rec.spec.device() else { return out };
        match link(ns, device.as_str()) {
            Some(l) if is_up(&l) && mtu(&l) == Some(u64::from(rec.mtu)) => {
                out.push(pass(format!("overlay {device}"), format!("up, VNI {}, MTU {}", rec.spec.vni, rec.mtu)))
            }
            Some(l) if is_up(&l) => out.push(fail(
                format!("overlay {device}"),
                format!("MTU {} where the overlay carries {}", mtu(&l).unwrap_or(0), rec.mtu),
                format!("ip link set {device} mtu {}", rec.mtu),
            )),
            Some(_) => out.push(fail(format!("overlay {device}"), "down", format!("ip link set {device} up"))),
            None => out.push(fail(
                format!("overlay {device}"),
                "missing",
                format!("minipod net overlay join {} --uplink {} --address {}", rec.network, rec.spec.uplink, rec.spec.local),
            )),
        }
        let uplink_mtu = link(ns, rec.spec.uplink.as_str()).and_then(|l| mtu(&l)).unwrap_or(0);
        let needs = u64::from(rec.mtu + crate::overlay::VXLAN_OVERHEAD);
        out.push(if uplink_mtu >= needs {
            pass(
                format!("overlay uplink {}", rec.spec.uplink),
                format!("MTU {uplink_mtu} carries the tunnel's {} and its 50 bytes", rec.mtu),
            )
        } else {
            fail(
                format!("overlay uplink {}", rec.spec.uplink),
                format!("MTU {uplink_mtu}, less than the {needs} the tunnel's {}-byte packets need: they are dropped", rec.mtu),
                format!("ip link set {} mtu {needs}, or join again for the overlay to take the smaller MTU", rec.spec.uplink),
            )
        });
        if let Some(net) = networks.iter().find(|n| n.name == rec.network) {
            let m = net.mtu.unwrap_or(1500);
            out.push(if m <= rec.mtu {
                pass(format!("overlay MTU of {}", net.name), format!("pod links {m} fit the tunnel's {}", rec.mtu))
            } else {
                fail(
                    format!("overlay MTU of {}", net.name),
                    format!("pod links of {m} bytes exceed the tunnel's {}: large packets are dropped", rec.mtu),
                    format!("make network {} again with --mtu {}", net.name, rec.mtu),
                )
            });
        }
        let fdb = run_in(ns, &["bridge", "-j", "fdb", "show", "dev", device.as_str()])
            .and_then(|t| serde_json::from_str::<Vec<serde_json::Value>>(&t).ok())
            .unwrap_or_default();
        for peer in &rec.peers {
            let check = format!("overlay peer {}", peer.underlay);
            let mac = vtep_mac(peer.underlay).iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
            let add = format!("minipod net overlay add-peer {} --pod-cidr {}", peer.underlay, peer.subnet);
            if !fdb.iter().any(|e| e["mac"] == mac && e["dst"] == peer.underlay.to_string()) {
                out.push(fail(&check, format!("no forwarding entry {mac} dst {}", peer.underlay), add));
                continue;
            }
            let routed = ip_json(ns, &["ip", "-j", "route", "show", &peer.subnet.to_string()]).iter().any(|r| r["dev"] == device.as_str());
            if !routed {
                out.push(fail(&check, format!("no route to {} via {device}", peer.subnet), add));
                continue;
            }
            let answered = crate::probe::answers(&self.netns, peer.underlay, std::time::Duration::from_secs(2)).unwrap_or(false);
            out.push(if answered {
                pass(&check, format!("{} reachable, {} routed via {device}", peer.underlay, peer.subnet))
            } else {
                fail(
                    &check,
                    format!("{} does not answer on the underlay", peer.underlay),
                    format!("check the uplink {} and that the peer is up at {}", rec.spec.uplink, peer.underlay),
                )
            });
        }
        out
    }

    /// Whether a connection from `from` to `to` `proto` `port` can pass on this node:
    /// one network (or an overlay peer's subnet), routed, and allowed by every policy
    /// that isolates either end, naming the policies that do not.
    pub fn doctor_flow(&self, from: Ipv4Addr, to: Ipv4Addr, proto: Proto, port: u16) -> Result<Vec<Finding>, NetworkError> {
        let ns = self.netns.path().to_path_buf();
        let mut members = Vec::new();
        for n in self.networks()? {
            members.extend(self.members(&n.name)?);
        }
        let find = |ip: Ipv4Addr| members.iter().find(|m| m.ip == ip);
        let mut out = Vec::new();
        let flow = format!("{from} -> {to}:{port}/{proto}");
        let peer_of = |ip: Ipv4Addr| self.overlay().ok().flatten().filter(|rec| rec.peers.iter().any(|p| p.subnet.contains(ip)));
        match (find(from), find(to)) {
            (None, None) => {
                out.push(fail(
                    "pods",
                    format!("neither {from} nor {to} is a pod of this node"),
                    "run the doctor on the node of one of them",
                ));
                return Ok(out);
            }
            (Some(src), Some(dst)) if dst.network == src.network => out.push(pass("same network", format!("both on {}", src.network))),
            (Some(src), Some(dst)) => out.push(fail(
                "same network",
                format!("{from} is on {} and {to} on {}: networks are isolated from each other", src.network, dst.network),
                "attach both pods to one network (a Service VIP or a published port is reached from every network)",
            )),
            (Some(local), None) | (None, Some(local)) => {
                let other = if find(from).is_some() { to } else { from };
                match peer_of(other) {
                    Some(rec) if rec.network == local.network => {
                        out.push(pass("same network", format!("{other} is a pod of an overlay peer of {}", local.network)))
                    }
                    _ => out.push(warn(
                        "same network",
                        format!("{other} is no pod of this node or its overlay peers"),
                        "traffic between them leaves the node (masqueraded)",
                    )),
                }
            }
        }
        let route = ip_json(&ns, &["ip", "-j", "route", "get", &to.to_string()]);
        match route.first().and_then(|r| r["dev"].as_str()) {
            Some(dev) => out.push(pass("route", format!("{to} via {dev}"))),
            None => out.push(fail(
                "route",
                format!("the node has no route to {to}"),
                "add the peer node (minipod net overlay add-peer) or check the pod is attached",
            )),
        }
        // The path carries the network's MTU unfragmented (within a node or over the
        // overlay), if the destination answers pings at all.
        if let Some(src) = find(from) {
            let mtu = self.network(&src.network)?.and_then(|c| c.mtu).unwrap_or(src.mtu) as usize;
            let within = std::time::Duration::from_secs(2);
            let ns = crate::netns::Netns::open(&src.netns)?;
            if !crate::probe::answers(&ns, to, within)? {
                out.push(warn(
                    "path MTU",
                    format!("{to} does not answer pings from {from}"),
                    "allow ICMP to it (a policy isolating it drops pings), then probe again",
                ));
            } else if crate::probe::fits(&ns, to, mtu, within)? {
                out.push(pass("path MTU", format!("{mtu}-byte packets reach {to} unfragmented")));
            } else {
                out.push(fail(
                    "path MTU",
                    format!("a {mtu}-byte packet from {from} does not reach {to} unfragmented: the path carries less than the network's MTU"),
                    "give the network the path's MTU (over an overlay: the uplink's less 50), and check each link's MTU with minipod doctor",
                ));
            }
        }
        let policies = self.firewall.recorded_policies();
        for (dir, member, peer) in [("egress", from, to), ("ingress", to, from)] {
            if find(member).is_none() {
                continue; // its node's doctor judges it
            }
            let isolating: Vec<(&String, &Vec<PolicyRule>)> = policies
                .0
                .iter()
                .filter(|(_, p)| p.selected.contains(&member.into()))
                .filter_map(|(owner, p)| if dir == "egress" { p.egress.as_ref() } else { p.ingress.as_ref() }.map(|r| (owner, r)))
                .collect();
            let check = format!("network policy ({dir} of {member})");
            if isolating.is_empty() {
                out.push(pass(check, format!("no policy isolates {member} for {dir}")));
                continue;
            }
            match isolating.iter().find(|(_, rules)| rules.iter().any(|r| r.allows(member, peer, proto, port))) {
                Some((owner, _)) => out.push(pass(check, format!("{flow} allowed by {owner}"))),
                None => {
                    let names: Vec<&str> = isolating.iter().map(|(o, _)| o.as_str()).collect();
                    out.push(fail(
                        check,
                        format!("{flow} denied: {member} is isolated for {dir} by {} and no rule of theirs allows it", names.join(", ")),
                        format!("add a {dir} rule for {peer} port {port}/{proto} to one of them, or delete them"),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// The running kernel's configuration (`/proc/config.gz`), if it shows it: what is
/// built in has no entry under /sys/module.
fn kernel_config() -> Option<String> {
    let out = Command::new("zcat").arg("/proc/config.gz").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether the network's DNS server on `gw` answers `name` with `want` to a query
/// from inside `m`'s namespace.
fn lookup_check(check: &str, m: &Attachment, gw: Ipv4Addr, name: Option<&String>, want: Ipv4Addr) -> Finding {
    let Some(name) = name else { return pass(check, "no name to look up") };
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    let got = crate::netns::Netns::open(&m.netns)
        .ok()
        .and_then(|ns| crate::probe::lookup(&ns, std::net::SocketAddr::new(gw.into(), 53), &fqdn, std::time::Duration::from_secs(2)).ok())
        .flatten();
    match got {
        Some(ips) if ips.contains(&want) => pass(check, format!("{name} is {want}")),
        Some(ips) => {
            fail(check, format!("{name} answers {ips:?}, not {want}"), "a stale record: restart the process that serves the network's DNS")
        }
        None => fail(
            check,
            format!("no answer from {gw}:53 for {name}"),
            "check the DNS server's process, and that no policy blocks the pod's UDP 53",
        ),
    }
}

/// A member's links, address, default route and MTU.
fn member_checks(ns: &Path, cfg: &NetworkConfig, m: &Attachment) -> Vec<Finding> {
    let check = format!("pod {} ({})", m.owner, m.ip);
    if !m.netns.exists() {
        return vec![fail(check, format!("its namespace {} is gone", m.netns.display()), "minipod gc (or minipod net gc) detaches it")];
    }
    let host = link(ns, &m.host_ifname);
    let Some(host) = host.filter(is_up) else {
        return vec![fail(
            check,
            format!("its host link {} is missing or down", m.host_ifname),
            "stop and start the pod again: its link is made when it starts",
        )];
    };
    let routed = ip_json(ns, &["ip", "-j", "route", "get", &m.ip.to_string()]).first().and_then(|r| r["dev"].as_str().map(str::to_string));
    if routed.as_deref() != Some(m.host_ifname.as_str()) {
        return vec![fail(
            check,
            format!("the node routes {} via {}, not its link {}", m.ip, routed.unwrap_or_else(|| "nothing".into()), m.host_ifname),
            format!("ip route replace {}/32 dev {}", m.ip, m.host_ifname),
        )];
    }
    let inside = link(&m.netns, m.ifname.as_str());
    let Some(inside) = inside.filter(|l| has_addr(l, m.ip)) else {
        return vec![fail(check, format!("{} inside the pod lacks {}", m.ifname, m.ip), "stop and start the pod again")];
    };
    let default = ip_json(&m.netns, &["ip", "-j", "route", "show", "default"]);
    if default.is_empty() {
        return vec![fail(
            check,
            "no default route: it reaches nothing beyond its network",
            format!("ip route add default via {} dev {} (in the pod)", m.gateway, m.ifname),
        )];
    }
    let want = u64::from(cfg.mtu.unwrap_or(m.mtu));
    let (pod_mtu, host_mtu) = (mtu(&inside).unwrap_or(0), mtu(&host).unwrap_or(0));
    if pod_mtu != want || host_mtu != want {
        return vec![fail(
            check,
            format!("MTU {pod_mtu} in the pod and {host_mtu} on the node where the network has {want}"),
            format!("ip link set {} mtu {want} (in the pod) and ip link set {} mtu {want}", m.ifname, m.host_ifname),
        )];
    }
    vec![pass(check, format!("linked, routed, default route, MTU {want}"))]
}
