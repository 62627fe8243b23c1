//! Members: wiring a namespace into a network (veth, address, routes, published
//! ports) and taking it out again.

use super::dns_service::resolv_conf;
use super::*;
use crate::names::is_dns_name;

/// How long attach waits for a new link's ends to pass traffic. The kernel's link
/// watch runs within a second even when not urgent; beyond that its lock is held up by
/// something else, and the link is handed over as it is.
const LINK_READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

impl Node {
    /// Wires `req.netns` to network `name`: an address, a veth pair (the peer created
    /// inside the namespace as `req.ifname`), lo up, and a default route via the
    /// gateway. Everything done is undone if a later step fails.
    pub async fn attach(&self, name: &NetworkName, req: AttachRequest) -> Result<Attachment, NetworkError> {
        // Held shared for the whole attach, so that a network emptied meanwhile by
        // another member's detach is not removed under us.
        let default = NetworkConfig::default_network();
        // The default network is made on first use, under the exclusive lock so that
        // two first attaches do not race to create it; then held shared as above.
        // A detach may remove it again in between: try a few times.
        let mut attempts = 0;
        let (_lock, cfg) = loop {
            if *name == default.name && self.network(name)?.is_none() {
                let _create = self.network_lock(name, FlockArg::LockExclusive).await?;
                if self.network(name)?.is_none() {
                    self.create_network(default.clone()).await?;
                }
            }
            let lock = self.network_lock(name, FlockArg::LockShared).await?;
            match self.network(name)? {
                Some(cfg) => break (lock, cfg),
                None if *name == default.name && attempts < 3 => attempts += 1,
                None => return Err(NetworkError::NoSuchNetwork(name.clone())),
            }
        };
        if let Some(bad) = req.dns_names.iter().find(|n| !is_dns_name(n)) {
            return Err(NetworkError::BadDnsName(bad.clone()));
        }
        if !req.ports.is_empty() && !req.default_route {
            return Err(NetworkError::PortsOffDefaultRoute(name.clone()));
        }
        self.ensure_ready(&cfg).await?;
        let pod = Netns::open(&req.netns)?;
        let ipam = self.ipam(&cfg);
        if let Some(ip) = ipam.address_of(&req.owner)? {
            return Err(NetworkError::AlreadyAttached { owner: req.owner.clone(), name: name.clone(), ip });
        }
        let IpAddr::V4(ip) = ipam.allocate(&req.owner, req.ip.map(IpAddr::V4))? else { unreachable!("an IPv4 pool gives IPv4 addresses") };
        let ipam6 = self.ipam6(&cfg);
        let ip6 = match ipam6.as_ref().map(|p| p.allocate(&req.owner, None)).transpose() {
            Ok(Some(IpAddr::V6(v6))) => Some(v6),
            Ok(_) => None,
            Err(e) => {
                let _ = ipam.release(&req.owner);
                return Err(e.into());
            }
        };
        let release = || {
            let _ = ipam.release(&req.owner);
            if let Some(p) = &ipam6 {
                let _ = p.release(&req.owner);
            }
        };
        let wired = self.wire(&cfg, &req, &pod, ip, ip6).await;
        let attachment = match wired {
            Ok(a) => a,
            Err(e) => {
                release();
                return Err(e);
            }
        };
        let path = self.member_file(name, &req.owner);
        let recorded = self
            .firewall
            .publish(&req.owner, ip, ip6, &req.ports)
            .map_err(NetworkError::from)
            .and_then(|()| record::write_json(&path, &attachment, Durability::Atomic).map_err(state_err(&path)));
        if let Err(e) = recorded {
            let _ = self.firewall.unpublish(&req.owner);
            let _ = self.unwire(&attachment.host_ifname).await;
            release();
            return Err(e);
        }
        // Joining a network someone else created: serve it from here too.
        self.serve_dns_for(&cfg)?;
        if cfg.dns {
            self.records.add(name, &attachment.dns_names, attachment.ip.into());
            if let Some(v6) = attachment.ip6 {
                self.records.add(name, &attachment.dns_names, v6.into());
            }
        }
        Ok(attachment)
    }

    async fn wire(
        &self,
        cfg: &NetworkConfig,
        req: &AttachRequest,
        pod: &Netns,
        ip: Ipv4Addr,
        ip6: Option<Ipv6Addr>,
    ) -> Result<Attachment, NetworkError> {
        let node = Netlink::open(&self.netns)?;
        let host_ifname = host_ifname(&cfg.name, &req.owner);
        let mtu = cfg.mtu.unwrap_or(1500);
        let gateway = cfg.gateway();
        let mac = veth::member_mac(ip);
        let spec = veth::VethSpec {
            host: &host_ifname,
            pod,
            peer: req.ifname.as_str(),
            peer_mac: mac,
            mtu,
            group: cfg.group(),
            ipv6: ip6.is_some(),
        };
        // No look-up first: the create fails on a clash, and only then is it worth
        // asking which end clashed.
        let pair = match veth::create(&node, &self.netns, &spec).await {
            Ok(pair) => pair,
            Err(e) => {
                return Err(match e.errno() {
                    Some(libc::EEXIST) if node.link(&host_ifname).await.ok().flatten().is_some() => NetworkError::LinkClash(host_ifname),
                    _ => e.into(),
                });
            }
        };
        // The node reaches the member through its own link, and knows its MAC.
        let host = pair.host;
        let mut node_side: Vec<BoxFuture<'_, Result<(), NetlinkError>>> = vec![
            node.up(host, format!("setting {host_ifname} up")).boxed(),
            node.add_host_route(ip.into(), host, gateway.into(), format!("routing {ip} to {host_ifname}")).boxed(),
            node.add_neighbour(host, ip.into(), mac, format!("adding {ip}'s MAC on {host_ifname}")).boxed(),
        ];
        if let (Some(v6), Some(gw6)) = (ip6, cfg.gateway6()) {
            node_side.push(node.add_host_route(v6.into(), host, gw6.into(), format!("routing {v6} to {host_ifname}")).boxed());
            node_side.push(node.add_neighbour(host, v6.into(), mac, format!("adding {v6}'s MAC on {host_ifname}")).boxed());
        }
        // The member has its address with the network's prefix, but no route to the
        // prefix on its link: everything, its own subnet too, goes via the gateway,
        // whose MAC (the host end's) it is told.
        let inside = async {
            let nl = Netlink::open(pod)?;
            let (index, ifname) = (pair.peer, &req.ifname);
            // Loopback is the first link of every namespace: index 1.
            let mut steps: Vec<BoxFuture<'_, Result<(), NetlinkError>>> = vec![nl.up(1, "setting lo up in the pod").boxed()];
            if ip6.is_none() {
                // IPv4-only network: no IPv6 neighbour traffic from this interface.
                steps.push(nl.no_ipv6_addresses(index, format!("turning IPv6 addresses off on {ifname}")).boxed());
            }
            let prefix = cfg.subnet.prefix();
            steps.push(nl.add_address(index, ip.into(), prefix, false, format!("adding {ip} to {ifname}")).boxed());
            steps.push(nl.up(index, format!("setting {ifname} up")).boxed());
            steps.push(nl.add_neighbour(index, gateway.into(), veth::HOST_MAC, format!("adding the gateway's MAC on {ifname}")).boxed());
            let dest = (!req.default_route).then_some(IpNetwork::V4(cfg.subnet));
            steps.push(nl.add_route_via(dest, gateway.into(), index, format!("routing via {gateway} on {ifname}")).boxed());
            if let (Some(v6), Some(gw6), Some(net6)) = (ip6, cfg.gateway6(), cfg.subnet6) {
                steps.push(nl.add_address(index, v6.into(), net6.prefix(), false, format!("adding {v6} to {ifname}")).boxed());
                steps.push(
                    nl.add_neighbour(index, gw6.into(), veth::HOST_MAC, format!("adding the IPv6 gateway's MAC on {ifname}")).boxed(),
                );
                let dest = (!req.default_route).then_some(IpNetwork::V6(net6));
                steps.push(nl.add_route_via(dest, gw6.into(), index, format!("routing via {gw6} on {ifname}")).boxed());
            }
            Netlink::pipelined(steps).await?;
            Ok(nl)
        };
        // Both sides at once: they are different namespaces, and their requests are
        // independent until the first packet.
        let (node_done, inside_done) = futures::future::join(Netlink::pipelined(node_side), inside).await;
        // The member may send as soon as this returns, and be answered: both ends
        // must pass traffic by then, which they can only once both are up.
        let ready = match node_done.and(inside_done) {
            Ok(nl) => {
                let (node_end, pod_end) = futures::future::join(
                    node.until_passing_traffic(host, &host_ifname, LINK_READY_WITHIN),
                    nl.until_passing_traffic(pair.peer, req.ifname.as_str(), LINK_READY_WITHIN),
                )
                .await;
                node_end.and(pod_end)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = ready {
            let _ = self.unwire(&host_ifname).await;
            // The only request of these that can clash is a route to the member.
            if e.errno() == Some(libc::EEXIST) {
                return Err(NetworkError::AddressRouted { network: cfg.name.clone(), ip: ip.into() });
            }
            return Err(e.into());
        }
        Ok(Attachment {
            network: cfg.name.clone(),
            owner: req.owner.clone(),
            ip,
            prefix: cfg.subnet.prefix(),
            gateway,
            ip6,
            mtu,
            host_ifname,
            ifname: req.ifname.clone(),
            netns: req.netns.clone(),
            ports: req.ports.clone(),
            dns_names: req.dns_names.clone(),
            resolv_conf: resolv_conf(cfg),
        })
    }

    pub(super) async fn unwire(&self, host_ifname: &str) -> Result<(), NetworkError> {
        let node = Netlink::open(&self.netns)?;
        if let Some(link) = node.link(host_ifname).await? {
            node.delete_link(link.header.index, &format!("deleting {host_ifname}")).await?;
        }
        Ok(())
    }

    /// Undoes [`Node::attach`]: deletes the veth (its peer goes with it), frees the
    /// address, forgets the member. Works when the member's namespace is gone, and
    /// when there is nothing to undo.
    pub async fn detach(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Ok(()) };
        // The member's routes go with its veth.
        self.unwire(&host_ifname(name, owner)).await?;
        self.forget(&cfg, owner).await
    }

    /// Detach for a member whose namespace is about to be destroyed: withdraws its
    /// ports, frees its address and forgets it, but leaves the veth to the kernel,
    /// which deletes it in the background once the namespace goes (a synchronous
    /// delete costs ~25 ms here). If the namespace lives on, [`Node::gc`] deletes
    /// the veth later.
    pub async fn detach_released(&self, name: &NetworkName, owner: &OwnerId) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Ok(()) };
        // The routes to the member go now, not with its veth, whose namespace may be
        // held on for a while: its address may be handed out again at once. Only the
        // routes through its own link (a route to the same address elsewhere is not
        // ours), and before the address is freed, so that no new holder's is taken.
        let node = Netlink::open(&self.netns)?;
        if let Some(link) = node.link(&host_ifname(name, owner)).await? {
            let addresses = [self.ipam(&cfg).address_of(owner)?, self.ipam6(&cfg).map(|p| p.address_of(owner)).transpose()?.flatten()];
            for ip in addresses.into_iter().flatten() {
                node.delete_host_route(ip, link.header.index, format!("deleting the route to {ip} of {owner}")).await?;
            }
        }
        self.forget(&cfg, owner).await
    }

    /// The bookkeeping half of a detach: ports withdrawn, addresses freed, the member's
    /// record and names gone, an emptied implicit network removed.
    async fn forget(&self, cfg: &NetworkConfig, owner: &OwnerId) -> Result<(), NetworkError> {
        let name = &cfg.name;
        self.firewall.unpublish(owner)?;
        if let Some(ip) = self.ipam(cfg).release(owner)? {
            self.records.remove(name, ip);
        }
        if let Some(ip6) = self.ipam6(cfg).map(|p| p.release(owner)).transpose()?.flatten() {
            self.records.remove(name, ip6);
        }
        let path = self.member_file(name, owner);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(state_err(&path)(e)),
        }
        if cfg.implicit {
            self.remove_if_unused(name).await?;
        }
        Ok(())
    }
}
