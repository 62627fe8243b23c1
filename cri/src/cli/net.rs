//! `minipod net`: networks for people (create, ls, inspect, rm, gc).

use super::OutputFormat;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use minipod_runtime::netstack::{IfName, NetworkConfig, NetworkName, Node};

#[derive(Args, Debug)]
pub struct NetArgs {
    /// The node's network namespace (a pinned namespace file); the current one by default.
    #[arg(long, global = true)]
    netns: Option<PathBuf>,
    #[command(subcommand)]
    command: NetCommand,
}

#[derive(Subcommand, Debug)]
enum NetCommand {
    /// Create a network (a bridge holds its gateway; members are routed).
    Create(CreateArgs),
    /// List networks.
    #[command(visible_alias = "list")]
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a network's settings and members (addresses, published ports) as JSON.
    Inspect { name: NetworkName },
    /// Remove a network without members, and its bridge.
    Rm { name: NetworkName },
    /// Remove members whose network namespace no longer exists, and what they left.
    Gc,
    /// Join this node to other nodes over a VXLAN overlay: pods of every node reach
    /// each other by address.
    #[command(subcommand)]
    Overlay(OverlayCommand),
}

#[derive(Subcommand, Debug)]
enum OverlayCommand {
    /// Carry NETWORK (whose subnet is this node's pod subnet) over a VXLAN device on
    /// the uplink; its MTU must be at most the uplink's less 50.
    Join {
        network: NetworkName,
        /// The link the tunnel's packets leave through.
        #[arg(long)]
        uplink: IfName,
        /// This node's address on the uplink, which peers send to.
        #[arg(long)]
        address: Ipv4Addr,
        /// The VXLAN network identifier, the same on every node of the cluster.
        #[arg(long, default_value_t = 1)]
        vni: u32,
    },
    /// Add (or update) a peer node: its underlay address and its pod subnet.
    AddPeer {
        address: Ipv4Addr,
        #[arg(long)]
        pod_cidr: ipnetwork_arg::Cidr,
    },
    /// Take a peer away: its route, neighbour and forwarding entries go.
    RmPeer { address: Ipv4Addr },
    /// Leave the overlay: the VXLAN device and every peer entry go.
    Leave,
    /// This node's overlay and peers as JSON.
    Show,
}

#[derive(Args, Debug)]
struct CreateArgs {
    name: NetworkName,
    /// IPv4 subnet, e.g. 10.89.0.0/24.
    #[arg(long)]
    subnet: ipnetwork_arg::Cidr,
    /// Bridge interface name (at most 15 bytes), which holds the gateway and gives the network its interface group; the network name by default.
    #[arg(long)]
    bridge: Option<IfName>,
    /// Gateway address; the subnet's first host address by default.
    #[arg(long)]
    gateway: Option<Ipv4Addr>,
    /// MTU; the default-route link's by default.
    #[arg(long)]
    mtu: Option<u32>,
    /// No traffic in or out of the network except published ports.
    #[arg(long)]
    internal: bool,
    /// Do not masquerade traffic leaving the network.
    #[arg(long)]
    no_masquerade: bool,
}

/// The subnet argument, parsed with a clear message.
mod ipnetwork_arg {
    #[derive(Debug, Clone)]
    pub struct Cidr(pub String);

    impl std::str::FromStr for Cidr {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let (addr, prefix) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR: write it as 10.89.0.0/24"))?;
            addr.parse::<std::net::Ipv4Addr>().map_err(|e| format!("{s:?}: {e}"))?;
            prefix.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(|| format!("{s:?}: the prefix must be 0-32"))?;
            Ok(Cidr(s.to_string()))
        }
    }
}

pub fn net(root: &Path, a: NetArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let node = Node::new(root, a.netns.as_deref())?;
    rt.block_on(async {
        match a.command {
            NetCommand::Create(c) => {
                let bridge = match c.bridge {
                    Some(b) => b,
                    None => IfName::new(c.name.as_str()).context("the network name is too long for a bridge name: pass --bridge")?,
                };
                let mut cfg = NetworkConfig::new(c.name, bridge, c.subnet.0.parse()?);
                cfg.gateway = c.gateway;
                cfg.mtu = c.mtu;
                cfg.internal = c.internal;
                cfg.masquerade = !c.no_masquerade;
                let made = node.create_network(cfg).await?;
                for problem in node.problems(&made.name)? {
                    eprintln!("minipod: warning: {problem}");
                }
                println!("{}", made.name);
            }
            NetCommand::Ls { output } => {
                let nets = node.networks()?;
                if output == OutputFormat::Json {
                    println!("{}", serde_json::to_string_pretty(&nets)?);
                } else {
                    println!("{:<20} {:<16} {:<18} {:<16} {:>7}", "NAME", "BRIDGE", "SUBNET", "GATEWAY", "MEMBERS");
                    for n in nets {
                        let members = node.members(&n.name)?.len();
                        println!(
                            "{:<20} {:<16} {:<18} {:<16} {members:>7}",
                            n.name,
                            n.bridge,
                            n.subnet.to_string(),
                            n.gateway().to_string()
                        );
                    }
                }
            }
            NetCommand::Inspect { name } => {
                let cfg =
                    node.network(&name)?.ok_or_else(|| anyhow::anyhow!("network {name} does not exist: `minipod net ls` lists them"))?;
                let members = node.members(&name)?;
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "network": cfg, "group": format!("{:#x}", cfg.group()), "members": members })
                    )?
                );
                for problem in node.problems(&name)? {
                    eprintln!("minipod: warning: {problem}");
                }
            }
            NetCommand::Rm { name } => {
                node.remove_network(&name).await?;
            }
            NetCommand::Overlay(o) => match o {
                OverlayCommand::Join { network, uplink, address, vni } => {
                    let rec = node.join_overlay(&network, vni, &uplink, address).await?;
                    println!("{} (VNI {}, MTU {})", rec.spec.device()?, rec.spec.vni, rec.mtu);
                }
                OverlayCommand::AddPeer { address, pod_cidr } => {
                    let peer = minipod_runtime::netstack::overlay::OverlayPeer { underlay: address, subnet: pod_cidr.0.parse()? };
                    node.add_overlay_peer(peer).await?;
                }
                OverlayCommand::RmPeer { address } => node.remove_overlay_peer(address).await?,
                OverlayCommand::Leave => node.leave_overlay().await?,
                OverlayCommand::Show => println!("{}", serde_json::to_string_pretty(&node.overlay()?)?),
            },
            NetCommand::Gc => {
                // Without the pod layer, a member is alive while its namespace exists.
                let mut live = HashSet::new();
                for n in node.networks()? {
                    for m in node.members(&n.name)? {
                        if m.netns.exists() {
                            live.insert(m.owner);
                        }
                    }
                }
                let report = node.gc(&live).await?;
                for (net, owner) in &report.members {
                    println!("detached {owner} from {net}");
                }
                for (net, ip) in &report.addresses {
                    println!("freed {ip} in {net}");
                }
                for link in &report.links {
                    println!("deleted stray veth {link}");
                }
                for net in &report.networks {
                    println!("finished removing network {net}");
                }
                for (net, owner) in &report.unwired {
                    println!("member {owner} of {net} has lost its host link: stop its pod (minipod gc does) or detach it");
                }
                for file in &report.files {
                    println!("removed temporary file {}", file.display());
                }
                for (what, e) in &report.failures {
                    eprintln!("minipod: {what}: {}", minipod_runtime::error_chain(e));
                }
                if !report.failures.is_empty() {
                    return Ok(1);
                }
            }
        }
        Ok::<i32, anyhow::Error>(0)
    })
}
