//! Garbage collection: members, ports and host links of owners that are gone.

use super::*;

/// What [`Node::gc`] removed, and what it could not.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Members detached because their owner is gone.
    pub members: Vec<(NetworkName, OwnerId)>,
    /// Addresses freed that no member record held.
    pub addresses: Vec<(NetworkName, IpAddr)>,
    /// Host veth ends deleted that no record named.
    pub links: Vec<String>,
    /// Temporary record files of writers that died before renaming them into place.
    pub files: Vec<std::path::PathBuf>,
    /// Networks whose removal a crash cut short, now removed.
    pub networks: Vec<NetworkName>,
    /// Members of live owners whose host veth is gone (deleted by hand, or with a
    /// namespace someone removed): recorded as attached, and passing no traffic. Left
    /// for the owner's layer to stop or repair.
    pub unwired: Vec<(NetworkName, OwnerId)>,
    /// What could not be cleaned (what was tried, why it failed); the rest was.
    pub failures: Vec<(String, NetworkError)>,
}

impl GcReport {
    /// Whether nothing was left to clean.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
            && self.addresses.is_empty()
            && self.links.is_empty()
            && self.files.is_empty()
            && self.networks.is_empty()
            && self.unwired.is_empty()
            && self.failures.is_empty()
    }
}

fn is_host_ifname(name: &str) -> bool {
    name.len() == 12 && name.starts_with("mp") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl Node {
    /// Removes everything owned by owners not in `live`: what a crashed process left.
    /// For each network: members whose owner is gone are detached (ports withdrawn,
    /// veth deleted, address freed, record removed); addresses allocated without a
    /// member record (a crash mid-attach) are freed, as are half-written address files
    /// and temporary records of writers that died; and host veths of this node that no
    /// record names are deleted. Returns what was removed.
    pub async fn gc(&self, live: &std::collections::HashSet<OwnerId>) -> Result<GcReport, NetworkError> {
        self.gc_with(|o| live.contains(o), true).await
    }

    /// [`Node::gc`] asking `is_live` about each owner when it is met, so that an owner
    /// made while this runs (whose record appears before its attachment) is kept.
    /// Without `stray_links`, host veths that no record of this state dir names are
    /// left alone: on a node that other state dirs share, they may be theirs.
    pub async fn gc_with(&self, is_live: impl Fn(&OwnerId) -> bool, stray_links: bool) -> Result<GcReport, NetworkError> {
        let mut report = GcReport::default();
        (report.networks, report.failures) = self.finish_cut_short_removals().await;
        // Links first: an attach that starts after this snapshot allocates its address
        // (and so shows in the state read below) before it makes its veth.
        let node = Netlink::open(&self.netns)?;
        let links = node.link_names().await?;
        let mut known_ifnames = std::collections::HashSet::new();
        let mut unwired = Vec::new();
        // One failure (a veth the kernel refuses to delete, an unreadable record) must
        // not keep the rest from being cleaned: it is reported and gc goes on. But a
        // record that could not be read may be a live pod's: then no link counts as
        // stray, as a veth's name does not say which network it is of.
        let mut unread = false;
        for cfg in self.networks()? {
            let dir = self.net_dir(&cfg.name);
            for d in [dir.join("members"), dir] {
                let (removed, failed) = record::remove_dead_temps(&d);
                report.files.extend(removed);
                report.failures.extend(failed.into_iter().map(|(p, e)| (format!("removing {}", p.display()), state_err(&p)(e))));
            }
            let members = match self.members(&cfg.name) {
                Ok(m) => m,
                Err(e) => {
                    report.failures.push((format!("reading the members of {}", cfg.name), e));
                    unread = true;
                    vec![]
                }
            };
            for m in members {
                // Handled here either way: not a stray in the link snapshot below.
                known_ifnames.insert(m.host_ifname.clone());
                if is_live(&m.owner) {
                    if !links.contains(&m.host_ifname) {
                        unwired.push((cfg.name.clone(), m.owner, m.host_ifname));
                    }
                    continue;
                }
                match self.detach(&cfg.name, &m.owner).await {
                    Ok(()) => report.members.push((cfg.name.clone(), m.owner)),
                    Err(e) => report.failures.push((format!("detaching {} from {}", m.owner, cfg.name), e)),
                }
            }
            for pool in std::iter::once(self.ipam(&cfg)).chain(self.ipam6(&cfg)) {
                match pool.repair() {
                    Ok(freed) => report.addresses.extend(freed.into_iter().map(|ip| (cfg.name.clone(), ip))),
                    Err(e) => report.failures.push((format!("repairing the addresses of {}", cfg.name), e.into())),
                }
                let owners = match pool.owners() {
                    Ok(o) => o,
                    Err(e) => {
                        report.failures.push((format!("reading the addresses of {}", cfg.name), e.into()));
                        unread = true;
                        continue;
                    }
                };
                for (owner, ip) in owners {
                    known_ifnames.insert(host_ifname(&cfg.name, &owner));
                    if is_live(&owner) {
                        continue;
                    }
                    match self.detach(&cfg.name, &owner).await {
                        Ok(()) => report.addresses.push((cfg.name.clone(), ip)),
                        Err(e) => report.failures.push((format!("freeing {ip} of {owner} in {}", cfg.name), e)),
                    }
                }
            }
        }
        // Looked at again: a member attached since the snapshot has its veth now.
        if !unwired.is_empty() {
            let now = node.link_names().await?;
            report.unwired =
                unwired.into_iter().filter(|(_, _, ifname)| !now.contains(ifname)).map(|(net, owner, _)| (net, owner)).collect();
        }
        // Host ends are named `mp` + hash; any not accounted for is a leftover.
        for name in links.into_iter().filter(|_| stray_links && !unread) {
            if is_host_ifname(&name) && !known_ifnames.contains(&name) {
                match self.unwire(&name).await {
                    Ok(()) => report.links.push(name),
                    Err(e) => report.failures.push((format!("deleting stray veth {name}"), e)),
                }
            }
        }
        Ok(report)
    }
}
