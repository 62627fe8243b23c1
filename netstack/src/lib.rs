//! minipod's node networking: routed networks with IPAM for network namespaces.
//!
//! # Model
//!
//! - A **node** is the network namespace that holds the networks: the caller's own by
//!   default, or a throwaway one (tests, multi-node simulations) so that a whole node
//!   runs without touching the host.
//! - A **network** has an IPv4 subnet and gateway ([`NetworkConfig`]) and a bridge that
//!   holds the gateway addresses, recorded under the state dir. `minipod0` on
//!   10.88.0.0/16 is the default: the first attach to it creates it, and it is removed
//!   with its last member. Its links (bridge and members' host ends) share an
//!   interface group ([`NetworkConfig::group`]), which the firewall matches on.
//! - **Attaching** a namespace creates a veth pair whose peer is born inside the
//!   namespace under its final name, gives it an address from the network's
//!   [`ipam::Ipam`], sets lo and the interface up and routes via the gateway. It
//!   returns once both ends pass traffic (a veth end set up before its peer drops
//!   what it sends until the kernel's link watch activates it), so a member's first
//!   packet and the answer to it are not lost. A failed attach undoes what it did;
//!   detach is idempotent and works when the namespace is already gone.
//! - Members are **routed, not bridged**: the host end is a link of its own with a /32
//!   route to the member and a permanent neighbour entry for it; the member has its
//!   address with the network's prefix but no on-link route, and a permanent entry for
//!   the gateway's MAC (`ee:ee:ee:ee:ee:ee`, every host end's). Everything, the
//!   member's own subnet included, goes through the node, which forwards between
//!   members of one network and nowhere else. So attaching costs the same at the
//!   1000th member as at the 1st (a Linux bridge walks all its ports on every port
//!   added), a network has no member limit (a bridge takes 1023 ports), and no member
//!   ever takes a dynamic entry in the kernel's neighbour table, which all namespaces
//!   share (gc_thresh3). Members that a minipod from before this made ports of the
//!   bridge keep working beside routed ones, over IPv4.
//! - This crate knows nothing about containers: it takes a namespace path and an
//!   owner id.
//!
//! - The **firewall** is one nftables `inet minipod` table whose fixed rules match on
//!   sets and maps: a network adds its interface group, CIDR and gateway (masquerade
//!   towards links outside every network, isolation from other networks, no egress
//!   when internal); published ports are map elements for traffic to any local
//!   address (from other hosts, from pods through hairpin, from the node's own
//!   127.0.0.1), whose source is then the target network's gateway where the reply
//!   would otherwise not come back through the node. A member without ports changes
//!   no firewall state. Before anything else, a guard drops what members send to
//!   127/8 (the node's localhost services), from addresses not routed to their own
//!   link (posing as another pod) and to IPv6 multicast. A missing table, or one an
//!   older minipod made, is rebuilt in one transaction from the recorded networks and
//!   ports, at the first attach or network creation of a process.
//! - **Virtual IPs** ([`VirtualService`], [`Node::program_service`]): the firewall
//!   half of Kubernetes Services, as kube-proxy's nftables mode does it: a verdict map
//!   keyed by `VIP . proto . port`, a chain per port choosing an endpoint at random
//!   and one per endpoint that DNATs (and SNATs only a hairpin connection); a port with
//!   no endpoints is refused at once. A change touches only that service's elements
//!   and chains, in one transaction, and an unchanged one runs no `nft`. A port may
//!   also be a NodePort (the same port on every IPv4 address of the node), and a
//!   service may pin each client to its first endpoint (`sessionAffinity: ClientIP`,
//!   a timed set per endpoint). Selecting endpoints from pods' labels is the pod
//!   layer's work (`minipod_runtime::service`).
//! - **Network policy** ([`NodePolicies`], [`Node::program_policies`]): the firewall
//!   half of Kubernetes NetworkPolicy, every selector already resolved to addresses.
//!   Two base chains before `forward` (and one at `input`, for members' traffic to
//!   the node) pass replies and send a new connection to or from an isolated member
//!   through a verdict map to that member's chain, which jumps to the chain of each
//!   policy isolating it (a rule per port, peers in an interval set per rule) and
//!   drops what none accepts. They can only drop: network isolation still applies. A
//!   change touches only the chains, sets and elements of what changed.
//! - **Overlay** ([`overlay`], [`Node::join_overlay`], [`Node::add_overlay_peer`]):
//!   one network of the node carried to the same network of peer nodes over a VXLAN
//!   device (UDP 4789, no learning), each peer a route, a permanent neighbour entry and
//!   a forwarding entry; the device is in the network's interface group, so traffic
//!   between two nodes' pods is traffic within one network to the firewall (never
//!   masqueraded). [`underlay`] makes a simulated underlay for a cluster on one machine.
//! - Firewall changes are sent from this process through libnftables, the library the
//!   `nft` command is built on, loaded at run time (a few tenths of a millisecond for a
//!   change on a small table, against 15-20 ms for an `nft` process); without it, or
//!   with `MINIPOD_NFT_PROCESS` set, the `nft` command runs as before.
//!
//! - **Garbage collection** ([`Node::gc`]) takes the set of live owners and removes
//!   every member, address, published port and host veth of owners that are gone; what
//!   it cannot remove is listed in [`GcReport::failures`] and does not stop the rest.
//!
//! - **DNS** ([`Node::serve_dns`]): a server on each DNS-enabled network's gateway
//!   answers A/PTR for the names members were attached with, only to askers from
//!   that network, and forwards other names to the network's upstreams (the node's
//!   resolv.conf by default). [`Attachment::resolv_conf`] is what the pod should use.
//!   Under the cluster domain ([`Node::set_cluster_domain`], `cluster.local` unless
//!   set) it answers for the node's services: `NAME.NAMESPACE.svc.DOMAIN` A records,
//!   SRV for named ports, PTR for their IPs, NXDOMAIN for the rest of the domain;
//!   services programmed by any process on the same state dir within 100 ms, this
//!   process's at once. The server runs on a thread of its own, so that nothing else
//!   the process does (a firewall change) delays an answer.
//!
//! - **Synchronous callers** ([`BlockingNode`]): the pod layer and the CLI call the
//!   node without a tokio runtime of their own; each call runs on netstack's
//!   [`executor::Executor`], a runtime on one thread, and returns its result.
//!
//! - **Dual-stack**: a network may carry an IPv6 subnet too ([`NetworkConfig::subnet6`]);
//!   members then get an IPv6 address and route, masquerade and AAAA records, and
//!   their published ports (those not bound to an IPv4 host address) answer on the
//!   node's IPv6 addresses too, except `[::1]`, which the kernel does not let be
//!   DNAT'd. A table made by an older minipod gains the IPv6 map and rules in place.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use minipod_netstack::{AttachRequest, Node, NetworkConfig, OwnerId};
//!
//! let node = Node::new("/run/minipod", None)?;
//! let net = node.create_network(NetworkConfig::default_network()).await?;
//! let pod = minipod_netstack::netns::create_pinned("/run/minipod/netns/pod-1".as_ref())?;
//! let req = AttachRequest { dns_names: vec!["pod-1".into()], ..AttachRequest::new(OwnerId::new("pod-1")?, pod.path()) };
//! let wired = node.attach(&net.name, req).await?;
//! println!("pod-1 has {}", wired.ip);
//! # Ok(())
//! # }
//! ```

mod blocking;
mod bridge;
pub mod dns;
pub mod executor;
pub mod firewall;
pub mod ipam;
pub mod names;
pub mod netlink;
pub mod netns;
mod network;
pub mod overlay;
pub mod probe;
pub mod record;
pub mod underlay;
pub use network::doctor;
mod veth;

pub use blocking::BlockingNode;
pub use dns::cluster::{HeadlessService, DEFAULT_CLUSTER_DOMAIN};
pub use firewall::{
    AddrRange, NodePolicies, PolicyPort, PolicyRule, PolicyRules, PortMapping, Proto, ServiceDns, ServicePort, VirtualService,
};
pub use names::{
    is_dns_label, is_dns_name, Alias, ContainerName, Hostname, IfName, NameError, Namespace, NetworkName, OwnerId, PodName, PolicyName,
    PortName, Scope, ServiceName, SliceName,
};
pub use network::{
    host_ifname, recorded_networks, AttachRequest, Attachment, ConfigError, DnsScope, GcReport, NetworkConfig, NetworkError, Node,
    OverlayRecord,
};
