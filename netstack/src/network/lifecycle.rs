//! Making and removing networks: validate -> apply -> roll back, and the bridge,
//! sysctls and firewall elements each needs.

use super::*;

/// Where a network's record waits while the network is being removed.
fn removal_record(record: &Path) -> PathBuf {
    record.with_extension("json.removing")
}

fn forward_drop_warning(chain: &str, cfg: &NetworkConfig) -> String {
    let g = cfg.group();
    let fix = if chain == "ip filter FORWARD" {
        format!(
            "iptables -I FORWARD -m devgroup --src-group {g:#x} -j ACCEPT && iptables -I FORWARD -m devgroup --dst-group {g:#x} -j ACCEPT"
        )
    } else {
        format!("nft insert rule {chain} meta iifgroup {g:#x} accept && nft insert rule {chain} meta oifgroup {g:#x} accept")
    };
    format!(
        "{chain} has a forward policy of drop, which drops traffic of network {} whatever minipod allows; to let it through run: {fix}",
        cfg.name
    )
}

impl Node {
    /// Creates network `cfg` (its bridge in the node namespace) or, if a network of
    /// that name exists with the same settings, makes sure its bridge is there.
    pub async fn create_network(&self, mut cfg: NetworkConfig) -> Result<NetworkConfig, NetworkError> {
        cfg.validate()?;
        let nl = Netlink::open(&self.netns)?;
        if cfg.mtu.is_none() {
            cfg.mtu = Some(nl.default_route_mtu().await?.unwrap_or(1500));
        }
        let existing = self.network(&cfg.name)?;
        let is_new = existing.is_none();
        match existing {
            Some(existing) if existing != cfg => {
                return Err(NetworkError::Conflict { name: cfg.name.clone(), what: format!("{} on {}", existing.subnet, existing.bridge) });
            }
            Some(_) => {}
            None => {
                for other in self.networks()? {
                    if other.subnet.overlaps(cfg.subnet) {
                        return Err(NetworkError::Overlap {
                            name: cfg.name.clone(),
                            cidr: cfg.subnet.into(),
                            other: other.name,
                            other_cidr: other.subnet.into(),
                        });
                    }
                    if let (Some(a), Some(b)) = (cfg.subnet6, other.subnet6) {
                        if a.overlaps(b) {
                            return Err(NetworkError::Overlap {
                                name: cfg.name.clone(),
                                cidr: a.into(),
                                other: other.name,
                                other_cidr: b.into(),
                            });
                        }
                    }
                    if other.bridge == cfg.bridge {
                        return Err(NetworkError::BridgeTaken { name: cfg.name.clone(), bridge: cfg.bridge.clone(), other: other.name });
                    }
                    if other.group() == cfg.group() {
                        return Err(NetworkError::GroupTaken {
                            name: cfg.name.clone(),
                            bridge: cfg.bridge.clone(),
                            group: cfg.group(),
                            other: other.name,
                        });
                    }
                }
            }
        }
        let created = match self.prepare(&nl, &cfg).await {
            Ok(created) => created,
            Err((created, e)) => {
                if created {
                    let _ = bridge::remove(&nl, cfg.bridge.as_str()).await;
                }
                return Err(e);
            }
        };
        if let Err(e) = self.configure_network(&cfg, is_new) {
            if created {
                let _ = bridge::remove(&nl, cfg.bridge.as_str()).await;
            }
            return Err(e);
        }
        if let Ok(mut ready) = self.ready.lock() {
            ready.insert(cfg.name.clone());
        }
        for chain in self.firewall.forward_droppers() {
            tracing::warn!(network = %cfg.name, "{}", forward_drop_warning(&chain, &cfg));
        }
        // Served from now on if DNS runs at all (a no-op when it is served already).
        self.serve_dns_for(&cfg)?;
        Ok(cfg)
    }

    /// Problems outside minipod that will break network `name`'s traffic, each with
    /// the fix: another firewall's forward chain with a drop policy (Docker sets one on
    /// iptables' FORWARD).
    pub fn problems(&self, name: &NetworkName) -> Result<Vec<String>, NetworkError> {
        let cfg = self.network(name)?.ok_or_else(|| NetworkError::NoSuchNetwork(name.clone()))?;
        Ok(self.firewall.forward_droppers().iter().map(|chain| forward_drop_warning(chain, &cfg)).collect())
    }

    /// `is_new`: no record of the network existed, so a failure may undo everything;
    /// an existing network's elements and state belong to its members.
    fn configure_network(&self, cfg: &NetworkConfig, is_new: bool) -> Result<(), NetworkError> {
        self.ensure_firewall()?;
        self.firewall.add_network(cfg)?;
        let dir = self.net_dir(&cfg.name);
        let recorded = std::fs::create_dir_all(dir.join("members")).map_err(state_err(&dir)).and_then(|()| {
            let path = dir.join("config.json");
            record::write_json(&path, cfg, Durability::Atomic).map_err(state_err(&path))
        });
        if recorded.is_err() && is_new {
            let _ = self.firewall.remove_network(cfg);
            let _ = std::fs::remove_dir_all(&dir);
        }
        recorded
    }

    /// The network's bridge (made if missing, with its addresses and group) and the
    /// sysctls routing its members needs. On failure, also says whether the bridge was
    /// made by this call.
    async fn prepare(&self, nl: &Netlink, cfg: &NetworkConfig) -> Result<bool, (bool, NetworkError)> {
        let spec = bridge::BridgeSpec {
            name: cfg.bridge.as_str(),
            gateway: cfg.gateway(),
            subnet: cfg.subnet,
            v6: cfg.gateway6().zip(cfg.subnet6.map(|n| n.prefix())),
            mtu: cfg.mtu.unwrap_or(1500),
            group: cfg.group(),
        };
        let created = bridge::ensure(nl, &spec).await.map_err(|e| (false, e.into()))?;
        // Members are routed: forwarding on.
        let mut sysctls = vec![("net.ipv4.ip_forward".to_string(), "1".to_string())];
        if cfg.subnet6.is_some() {
            sysctls.push(("net.ipv6.conf.all.forwarding".into(), "1".into()));
        }
        // For members that an older minipod made ports of the bridge: DNAT of the
        // node's 127.0.0.1 to them, and ARP answers for routed members, which they
        // think are on their link (at once: the default proxy delay is random, up to
        // 0.8 s).
        let br = &cfg.bridge;
        sysctls.push((format!("net.ipv4.conf.{br}.route_localnet"), "1".into()));
        sysctls.push((format!("net.ipv4.neigh.{br}.proxy_delay"), "0".into()));
        sysctls.push((format!("net.ipv4.conf.{br}.proxy_arp"), "1".into()));
        let written =
            self.netns.write_sysctls(&sysctls).map_err(NetworkError::from).and_then(|r| {
                r.map_err(|(key, source)| NetworkError::Sysctl { key, netns: self.netns.path().display().to_string(), source })
            });
        written.map_err(|e| (created, e))?;
        Ok(created)
    }

    /// Once per process and network, before its first attach: the bridge and sysctls
    /// as [`Node::create_network`] leaves them, and the firewall table current. What a
    /// minipod from before routed members, a reboot of the bridge or a flushed
    /// ruleset left is mended here, not only when someone creates the network again.
    pub(super) async fn ensure_ready(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        if self.ready.lock().map(|r| r.contains(&cfg.name)).unwrap_or(false) {
            return Ok(());
        }
        let nl = Netlink::open(&self.netns)?;
        self.prepare(&nl, cfg).await.map_err(|(_, e)| e)?;
        self.ensure_firewall()?;
        if let Ok(mut ready) = self.ready.lock() {
            ready.insert(cfg.name.clone());
        }
        Ok(())
    }

    /// The table, made or brought up to date (with every recorded network's elements)
    /// the first time this process needs it. A record that cannot be read is left
    /// out, and said so, rather than leaving every network without its rules.
    pub(super) fn ensure_firewall(&self) -> Result<(), FirewallError> {
        self.firewall.ensure(|| {
            let names = self.network_names().unwrap_or_else(|e| {
                tracing::warn!("no network's firewall rules are restored: {e}");
                vec![]
            });
            names
                .into_iter()
                .filter_map(|name| match self.network(&name) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        tracing::warn!("the firewall rules of network {name} are not restored: {e}");
                        None
                    }
                })
                .collect()
        })
    }

    /// Removes an implicit network that has no members, unless an attach holds it.
    pub(super) async fn remove_if_unused(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let Some(_lock) = self.try_network_lock(name)? else { return Ok(()) };
        // Whether any member is left, without reading them all: this runs on the pod
        // teardown path of the default network.
        let dir = self.net_dir(name).join("members");
        // A temporary file of a killed writer is no member.
        let mut entries = std::fs::read_dir(&dir).map_err(state_err(&dir))?.flatten();
        if entries.any(|e| !e.file_name().to_str().is_some_and(record::is_temp_name)) {
            return Ok(());
        }
        match self.remove_network_locked(name).await {
            Err(NetworkError::NoSuchNetwork(_)) => Ok(()),
            other => other,
        }
    }

    /// Removes network `name` and its bridge; refuses while it has members.
    pub async fn remove_network(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let _lock = self.network_lock(name, FlockArg::LockExclusive).await?;
        self.remove_network_locked(name).await
    }

    async fn remove_network_locked(&self, name: &NetworkName) -> Result<(), NetworkError> {
        let Some(cfg) = self.network(name)? else { return Err(NetworkError::NoSuchNetwork(name.clone())) };
        let members = self.members(name)?;
        if !members.is_empty() {
            return Err(NetworkError::InUse { name: name.clone(), count: members.len() });
        }
        // The record goes aside first: a process starting meanwhile puts back the
        // firewall elements of every recorded network, and would revive these.
        // The aside record is also the intent: a removal that a crash cuts short is
        // finished by the next gc.
        let record = self.net_dir(name).join("config.json");
        let aside = removal_record(&record);
        std::fs::rename(&record, &aside).map_err(state_err(&record))?;
        if let Err(e) = self.finish_removal(&cfg).await {
            let _ = std::fs::rename(&aside, &record);
            return Err(e);
        }
        Ok(())
    }

    /// The steps of a removal after its record went aside; each may have been done.
    async fn finish_removal(&self, cfg: &NetworkConfig) -> Result<(), NetworkError> {
        let name = &cfg.name;
        self.firewall.remove_network(cfg)?;
        let nl = Netlink::open(&self.netns)?;
        bridge::remove(&nl, cfg.bridge.as_str()).await?;
        if let Ok(mut ready) = self.ready.lock() {
            ready.remove(name);
        }
        self.records.remove_network(name);
        if let Ok(mut dns) = self.dns.lock() {
            if let Some(server) = dns.as_mut() {
                server.stop(name);
            }
        }
        let dir = self.net_dir(name);
        std::fs::remove_dir_all(&dir).map_err(state_err(&dir))
    }

    /// Finishes the removals of networks whose record was set aside by a process that
    /// is gone (nobody holds the network's lock). Returns the networks removed.
    pub(super) async fn finish_cut_short_removals(&self) -> (Vec<NetworkName>, Vec<(String, NetworkError)>) {
        let (mut done, mut failed) = (vec![], vec![]);
        for name in self.network_names().unwrap_or_default() {
            let aside = removal_record(&self.net_dir(&name).join("config.json"));
            if !aside.exists() {
                continue;
            }
            let finished = async {
                let Some(_lock) = self.try_network_lock(&name)? else { return Ok(false) };
                if !aside.exists() {
                    return Ok(false);
                }
                if self.network(&name)?.is_some() {
                    // Made again since (an implicit network on its next attach): the
                    // aside record is stale, and the bridge is the new network's.
                    std::fs::remove_file(&aside).map_err(state_err(&aside))?;
                    return Ok(false);
                }
                let cfg: NetworkConfig = record::read_json(&aside).map_err(state_err(&aside))?;
                self.finish_removal(&cfg).await.map(|()| true)
            };
            match finished.await {
                Ok(true) => done.push(name),
                Ok(false) => {}
                Err(e) => failed.push((format!("finishing the removal of network {name}"), e)),
            }
        }
        (done, failed)
    }

    /// The first /24 of `pool` that no network of this node and no address on the
    /// node overlaps (its own links, other state roots' bridges on a shared node).
    pub async fn free_subnet(&self, pool: Ipv4Network) -> Result<Option<Ipv4Network>, NetworkError> {
        let mut taken: Vec<Ipv4Network> = self.networks()?.into_iter().map(|n| n.subnet).collect();
        let present = Netlink::open(&self.netns)?.ipv4_addresses().await?;
        taken.extend(present.into_iter().filter_map(|(ip, prefix)| Ipv4Network::new(ip, prefix).ok()));
        let count = 1u32.checked_shl(u32::from(24u8.saturating_sub(pool.prefix()))).unwrap_or(0);
        Ok((0..count)
            .filter_map(|i| Ipv4Network::new(Ipv4Addr::from(u32::from(pool.network()).wrapping_add(i << 8)), 24).ok())
            .find(|s| pool.contains(s.network()) && !taken.iter().any(|t| t.overlaps(*s))))
    }
}
