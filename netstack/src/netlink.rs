//! A route-netlink connection bound to one network namespace.
//!
//! The socket is opened on a thread that entered the namespace (a netlink socket
//! belongs to the namespace it was created in), with the caller's tokio runtime
//! entered so the connection can be driven there. rtnetlink's own namespace helpers
//! fork inside a multi-threaded process and are not used.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::netns::{Netns, NetnsError};

/// A netlink request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("opening a netlink socket in {0}")]
    Socket(String, #[source] std::io::Error),
    #[error("{what}: {source}")]
    Request {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}: no such interface")]
    NoLink(String),
}

impl NetlinkError {
    /// The errno behind a failed request, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn invalid(what: &str, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Request { what: what.to_string(), source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()) }
}

/// A delete of what is not there (no such entry, route or device) is done.
fn gone_is_fine(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if matches!(e.errno(), Some(libc::ENOENT | libc::ESRCH | libc::ENODEV)) => Ok(()),
        other => other,
    }
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |e| {
        let source = match &e {
            rtnetlink::Error::NetlinkError(msg) => msg.to_io(),
            other => std::io::Error::other(other.to_string()),
        };
        NetlinkError::Request { what, source }
    }
}

/// A connection to the kernel's routing subsystem inside one namespace.
pub struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
    /// A socket of the namespace, for the one device request netlink has no
    /// equivalent of here (see [`Netlink::until_passing_traffic`]).
    ioctl: std::os::fd::OwnedFd,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens a connection inside `ns`. Must be called from within a tokio runtime.
    pub fn open(ns: &Netns) -> Result<Self, NetlinkError> {
        let rt = tokio::runtime::Handle::current();
        let where_ = ns.path().display().to_string();
        let (conn, ioctl) = ns.run(move || {
            let _guard = rt.enter();
            let ioctl = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Datagram,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            );
            (rtnetlink::new_connection(), ioctl)
        })?;
        let (conn, handle, _) = conn.map_err(|e| NetlinkError::Socket(where_.clone(), e))?;
        let ioctl = ioctl.map_err(|e| NetlinkError::Socket(where_, e.into()))?;
        let task = tokio::spawn(conn);
        Ok(Self { handle, task, ioctl })
    }

    /// The link called `name`, if it exists.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self.handle.link().get().match_name(name.to_string()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(rtnetlink::Error::NetlinkError(msg)) if msg.to_io().raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(request(format!("looking up {name}"))(e)),
        }
    }

    /// Names of every link in the namespace.
    pub async fn link_names(&self) -> Result<Vec<String>, NetlinkError> {
        let mut links = self.handle.link().get().execute();
        let mut names = Vec::new();
        while let Some(link) = links.try_next().await.map_err(request("listing links"))? {
            names.extend(link.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            }));
        }
        Ok(names)
    }

    /// Every IPv4 address in the namespace with its prefix length.
    pub async fn ipv4_addresses(&self) -> Result<Vec<(Ipv4Addr, u8)>, NetlinkError> {
        use rtnetlink::packet_route::address::AddressAttribute;
        let mut addrs = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(msg) = addrs.try_next().await.map_err(request("listing addresses"))? {
            for a in &msg.attributes {
                if let AddressAttribute::Address(IpAddr::V4(v4)) = a {
                    out.push((*v4, msg.header.prefix_len));
                }
            }
        }
        Ok(out)
    }

    /// The index of link `name`, or an error saying it does not exist.
    pub async fn index(&self, name: &str) -> Result<u32, NetlinkError> {
        self.link(name).await?.map(|l| l.header.index).ok_or_else(|| NetlinkError::NoLink(name.to_string()))
    }

    /// Sends a prepared RTM_NEWLINK (create).
    pub async fn add_link(&self, msg: LinkMessage, what: &str) -> Result<(), NetlinkError> {
        self.handle.link().add(msg).execute().await.map_err(request(what))
    }

    /// Sends a prepared RTM_SETLINK.
    pub async fn set_link(&self, msg: LinkMessage, what: impl Into<String>) -> Result<(), NetlinkError> {
        self.handle.link().set(msg).execute().await.map_err(request(what))
    }

    /// Stops the kernel from giving link `index` any IPv6 address of its own (no
    /// link-local, so no DAD, router solicitation or MLD from it). Over netlink on
    /// purpose: the `disable_ipv6` sysctl runs the whole addrconf teardown, and its
    /// /proc/sys path gets slower with every namespace that has an interface of the
    /// same name (every pod's `eth0`).
    pub async fn no_ipv6_addresses(&self, index: u32, what: impl Into<String>) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode};
        let no_v6 = LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(In6AddrGenMode::None)])]);
        self.set_link(LinkUnspec::new_with_index(index).append_extra_attribute(no_v6).build(), what).await
    }

    /// Queues every request before waiting for any answer, and returns the first
    /// failure. They reach the kernel in the order queued (the connection sends one
    /// when the previous is answered), so a request may rely on the ones before it;
    /// what is saved is a wake-up of the caller per request.
    pub async fn pipelined(requests: Vec<futures::future::BoxFuture<'_, Result<(), NetlinkError>>>) -> Result<(), NetlinkError> {
        // join_all polls them in order, and each sends on its first poll.
        futures::future::join_all(requests).await.into_iter().collect()
    }

    /// Deletes the route to the single address `dest` out of link `index`; none there
    /// is fine.
    pub async fn delete_host_route(&self, dest: IpAddr, index: u32, what: impl Into<String>) -> Result<(), NetlinkError> {
        let what = what.into();
        let len = if dest.is_ipv4() { 32 } else { 128 };
        // Scope "nowhere" matches a route of any scope, as `ip route del` does.
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, len)
            .map_err(|e| invalid(&what, e))?
            .scope(rtnetlink::packet_route::route::RouteScope::NoWhere)
            .output_interface(index)
            .build();
        match self.handle.route().del(route).execute().await.map_err(request(what)) {
            Err(e) if matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => Ok(()),
            other => other,
        }
    }

    /// Waits until link `index` passes traffic: operationally up (and with a queueing
    /// discipline). A veth end set up before its peer is activated only when the
    /// kernel's link watch gets to it, later and under the global network lock, and
    /// until then it drops what it is asked to send: the node's end, set up first as
    /// a rule, dropped the replies to a pod's first packets (1 in 900 under namespace
    /// churn). The link watch sets the operational state in the same step as it
    /// activates the queues, so that state is what is waited for; a slow kernel is no
    /// reason to fail, so after `within` the link is handed over as it is.
    pub async fn until_passing_traffic(&self, index: u32, name: &str, within: std::time::Duration) -> Result<(), NetlinkError> {
        let deadline = std::time::Instant::now() + within;
        let mut pause = std::time::Duration::from_micros(100);
        let mut synced = false;
        loop {
            let mut links = self.handle.link().get().match_index(index).execute();
            let link = links.try_next().await.map_err(request(format!("looking up link {index}")))?;
            let Some(link) = link else { return Err(NetlinkError::NoLink(format!("link {index}"))) };
            let (mut up, mut queued) = (false, false);
            for a in &link.attributes {
                match a {
                    LinkAttribute::OperState(state) => up = *state == rtnetlink::packet_route::link::State::Up,
                    LinkAttribute::Qdisc(q) => queued = q != "noop",
                    _ => {}
                }
            }
            if up && queued {
                return Ok(());
            }
            if !synced {
                // Asking a device for its link state makes the kernel run its pending
                // link watch event there and then (ethtool_op_get_link): no wait.
                synced = true;
                self.link_state(name);
                continue;
            }
            if std::time::Instant::now() >= deadline {
                tracing::warn!(index, "link not passing traffic yet after {within:?}: its first packets may be dropped");
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    /// ETHTOOL_GLINK on `name`; its answer is not needed, only its side effect.
    fn link_state(&self, name: &str) {
        const ETHTOOL_GLINK: u32 = 0x0000_000a;
        #[repr(C)]
        struct EthtoolValue {
            cmd: u32,
            data: u32,
        }
        let mut value = EthtoolValue { cmd: ETHTOOL_GLINK, data: 0 };
        // SAFETY: an all-zero ifreq is valid; the name is copied in bounded by
        // IFNAMSIZ - 1, so it stays NUL-terminated.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (to, from) in ifr.ifr_name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *to = from as libc::c_char;
        }
        ifr.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
        // SAFETY: SIOCETHTOOL reads the ifreq and writes the ethtool_value it points
        // to, both of which live across the call.
        let _ = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.ioctl), libc::SIOCETHTOOL, &mut ifr) };
    }

    /// Sets link `index` up.
    pub async fn up(&self, index: u32, what: impl Into<String>) -> Result<(), NetlinkError> {
        self.set_link(LinkUnspec::new_with_index(index).up().build(), what).await
    }

    /// Deletes link `index`; a link already gone is fine.
    pub async fn delete_link(&self, index: u32, what: &str) -> Result<(), NetlinkError> {
        match self.handle.link().del(index).execute().await.map_err(request(what)) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Adds `addr/prefix` to link `index`; the same address already there is fine.
    /// Without `prefix_route` the kernel adds no route to the prefix: a member reaches
    /// its subnet through the gateway, not on the link. IPv6 addresses skip duplicate
    /// detection: minipod's IPAM already guarantees uniqueness, and a tentative address
    /// would be unusable for about a second.
    pub async fn add_address(
        &self,
        index: u32,
        addr: IpAddr,
        prefix: u8,
        prefix_route: bool,
        what: impl Into<String>,
    ) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
        let mut req = self.handle.address().add(index, addr, prefix);
        let mut flags = AddressFlags::empty();
        if addr.is_ipv6() {
            req.message_mut().header.flags |= AddressHeaderFlags::Nodad;
            flags |= AddressFlags::Nodad;
        }
        if !prefix_route {
            flags |= AddressFlags::Noprefixroute;
        }
        if !flags.is_empty() {
            req.message_mut().attributes.push(AddressAttribute::Flags(flags));
        }
        match req.execute().await.map_err(request(what)) {
            Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
            other => other,
        }
    }

    /// Routes `dest` (everything when `None`) via `gateway` out of link `index`, the
    /// gateway taken as on the link whatever the link's addresses say.
    pub async fn add_route_via(
        &self,
        dest: Option<IpNetwork>,
        gateway: IpAddr,
        index: u32,
        what: impl Into<String>,
    ) -> Result<(), NetlinkError> {
        let what = what.into();
        let (net, prefix) = match (dest, gateway) {
            (Some(d), _) => (d.network(), d.prefix()),
            (None, IpAddr::V4(_)) => (Ipv4Addr::UNSPECIFIED.into(), 0),
            (None, IpAddr::V6(_)) => (std::net::Ipv6Addr::UNSPECIFIED.into(), 0),
        };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(net, prefix)
            .and_then(|r| r.gateway(gateway))
            .map_err(|e| invalid(&what, e))?
            .output_interface(index)
            .onlink()
            .build();
        self.handle.route().add(route).execute().await.map_err(request(what))
    }

    /// Routes the single address `dest` out of link `index`, with `source` as the
    /// node's address towards it. A route to `dest` already there is an error
    /// (EEXIST): the address is someone else's.
    pub async fn add_host_route(&self, dest: IpAddr, index: u32, source: IpAddr, what: impl Into<String>) -> Result<(), NetlinkError> {
        let what = what.into();
        let len = if dest.is_ipv4() { 32 } else { 128 };
        let route = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(dest, len)
            .and_then(|r| r.pref_source(source))
            .map_err(|e| invalid(&what, e))?
            .output_interface(index)
            .scope(rtnetlink::packet_route::route::RouteScope::Link)
            .build();
        self.handle.route().add(route).execute().await.map_err(request(what))
    }

    /// Records that `ip` is at `mac` on link `index`, for good: no ARP or neighbour
    /// discovery for it, and (being permanent) no slot in the kernel's neighbour table,
    /// which is shared by all namespaces and capped by gc_thresh3. Replaces an entry
    /// for `ip` on that link.
    pub async fn add_neighbour(&self, index: u32, ip: IpAddr, mac: [u8; 6], what: impl Into<String>) -> Result<(), NetlinkError> {
        self.handle.neighbours().add(index, ip).link_layer_address(&mac).replace().execute().await.map_err(request(what))
    }

    /// Sends what goes to `mac` on VXLAN device `index` to the remote tunnel end `dst`
    /// (a static forwarding entry, as `bridge fdb replace MAC dev DEV dst DST self
    /// permanent`); replaces one for `mac`.
    pub async fn add_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr, what: impl Into<String>) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::NeighbourFlags;
        let req = self.handle.neighbours().add_bridge(index, &mac).destination(IpAddr::V4(dst)).flags(NeighbourFlags::Own).replace();
        req.execute().await.map_err(request(what))
    }

    /// Deletes the forwarding entry for `mac` on VXLAN device `index`; one that is gone
    /// is fine.
    pub async fn delete_fdb(&self, index: u32, mac: [u8; 6], dst: Ipv4Addr, what: impl Into<String>) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage};
        let mut msg = NeighbourMessage::default();
        msg.header.family = rtnetlink::packet_route::AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(dst)));
        gone_is_fine(self.handle.neighbours().del(msg).execute().await.map_err(request(what)))
    }

    /// Deletes the neighbour entry for `ip` on link `index`; one that is gone is fine.
    pub async fn delete_neighbour(&self, index: u32, ip: Ipv4Addr, what: impl Into<String>) -> Result<(), NetlinkError> {
        use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
        let mut msg = NeighbourMessage::default();
        msg.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        msg.header.ifindex = index;
        msg.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        gone_is_fine(self.handle.neighbours().del(msg).execute().await.map_err(request(what)))
    }

    /// Deletes the route to `dest` out of link `index`; one that is gone is fine.
    pub async fn delete_route(&self, dest: ipnetwork::Ipv4Network, index: u32, what: impl Into<String>) -> Result<(), NetlinkError> {
        let route =
            RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(dest.network(), dest.prefix()).output_interface(index).build();
        gone_is_fine(self.handle.route().del(route).execute().await.map_err(request(what)))
    }

    /// The MTU of link `index`.
    pub async fn link_mtu(&self, name: &str) -> Result<u32, NetlinkError> {
        let link = self.link(name).await?.ok_or_else(|| NetlinkError::NoLink(name.to_string()))?;
        Ok(link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(1500))
    }

    /// The MTU of the link that carries the IPv4 default route, if there is one.
    pub async fn default_route_mtu(&self) -> Result<Option<u32>, NetlinkError> {
        let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut routes = self.handle.route().get(filter).execute();
        while let Some(route) = routes.try_next().await.map_err(request("listing routes"))? {
            if route.header.destination_prefix_length != 0 {
                continue;
            }
            let oif = route.attributes.iter().find_map(|a| match a {
                rtnetlink::packet_route::route::RouteAttribute::Oif(i) => Some(*i),
                _ => None,
            });
            if let Some(index) = oif {
                let mut links = self.handle.link().get().match_index(index).execute();
                if let Some(link) = links.try_next().await.map_err(request("looking up the default route's link"))? {
                    return Ok(link.attributes.iter().find_map(|a| match a {
                        LinkAttribute::Mtu(m) => Some(*m),
                        _ => None,
                    }));
                }
            }
        }
        Ok(None)
    }
}
