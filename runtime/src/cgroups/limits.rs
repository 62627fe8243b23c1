//! Resource limits: the OCI `linux.resources` section written to a cgroup's files
//! (v1 or v2), and what this host cannot apply, refused by name.

use super::*;

/// Settings of `linux.resources` that minipod does not apply: refused by name, as runc
/// refuses what the host cannot do, rather than dropped.
pub fn check_resources(r: &LinuxResources) -> Result<(), CgroupError> {
    refuse_unsupported(r, is_unified())
}

fn refuse_unsupported(r: &LinuxResources, unified: bool) -> Result<(), CgroupError> {
    let refuse = |setting: &str, why: &str| Err(CgroupError::Unsupported { setting: setting.into(), why: why.into() });
    let memory = r.memory().as_ref();
    if memory.and_then(|m| m.kernel()).is_some() || memory.and_then(|m| m.kernel_tcp()).is_some() {
        return refuse("linux.resources.memory.kernel/kernelTCP", "kernel memory limits are gone from current kernels");
    }
    if unified && memory.and_then(|m| m.swappiness()).is_some() {
        return refuse("linux.resources.memory.swappiness", "cgroup v2 has no per-cgroup swappiness");
    }
    if unified && memory.and_then(|m| m.disable_oom_killer()) == Some(true) {
        return refuse("linux.resources.memory.disableOOMKiller", "cgroup v2 cannot turn the OOM killer off");
    }
    if !unified && r.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return refuse("linux.resources.unified", "the host has cgroup v1; unified settings need cgroup v2");
    }
    if let Some(b) = r.block_io() {
        let devices = [b.weight_device().as_ref().map(|v| v.len()), b.throttle_read_bps_device().as_ref().map(|v| v.len())]
            .into_iter()
            .chain([b.throttle_write_bps_device().as_ref().map(|v| v.len()), b.throttle_read_iops_device().as_ref().map(|v| v.len())])
            .chain([b.throttle_write_iops_device().as_ref().map(|v| v.len())])
            .flatten()
            .sum::<usize>();
        if devices > 0 || b.leaf_weight().is_some() {
            return refuse("linux.resources.blockIO (per-device and leaf settings)", "minipod applies only blockIO.weight");
        }
        if unified && b.weight().is_some() {
            return refuse("linux.resources.blockIO.weight", "minipod applies it on cgroup v1 only");
        }
    }
    if r.network().is_some() {
        return refuse("linux.resources.network", "the net_cls and net_prio hierarchies are not used by minipod");
    }
    if r.rdma().as_ref().is_some_and(|m| !m.is_empty()) {
        return refuse("linux.resources.rdma", "minipod does not manage the rdma controller");
    }
    let cpu = r.cpu().as_ref();
    if cpu.and_then(|c| c.realtime_runtime()).is_some() || cpu.and_then(|c| c.realtime_period()).is_some() {
        return refuse("linux.resources.cpu.realtimeRuntime/realtimePeriod", "minipod does not give containers realtime CPU time");
    }
    Ok(())
}

fn host_has_swap() -> bool {
    fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().find_map(|l| l.strip_prefix("SwapTotal:").map(|v| v.trim().trim_end_matches("kB").trim().to_string())))
        .is_some_and(|v| v != "0")
}

impl Cgroup {
    /// Applies limits to an existing cgroup (a running container's too).
    pub fn update(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        self.apply(r)
    }

    pub(super) fn apply(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        refuse_unsupported(r, self.unified)?;
        let memory = r.memory().as_ref();
        let limit = memory.and_then(|m| m.limit());
        let swap = memory.and_then(|m| m.swap());
        let reservation = memory.and_then(|m| m.reservation());
        let pids = r.pids().map(|p| p.limit());
        let cpu = r.cpu().as_ref();
        let shares = cpu.and_then(|c| c.shares());
        let quota = cpu.and_then(|c| c.quota());
        let period = cpu.and_then(|c| c.period());
        let cpus = cpu.and_then(|c| c.cpus().clone()).filter(|c| !c.is_empty());
        let mems = cpu.and_then(|c| c.mems().clone()).filter(|c| !c.is_empty());
        let max = |v: i64| {
            if v <= 0 {
                "max".to_string()
            } else {
                v.to_string()
            }
        };
        let hugepages = r.hugepage_limits().clone().unwrap_or_default();
        if self.unified {
            if let Some(l) = limit {
                self.write("", "memory.max", max(l))?;
            }
            if let Some(l) = reservation {
                self.write("", "memory.low", l.max(0).to_string())?;
            }
            if let (Some(s), Some(l)) = (swap, limit) {
                // v1 counts memory+swap, v2 swap alone; runc converts the same way.
                let v = if s < 0 { "max".into() } else { (s - l.max(0)).max(0).to_string() };
                if s != 0 && (s != l || host_has_swap()) {
                    self.write("", "memory.swap.max", v)?;
                }
            }
            if let Some(p) = pids {
                self.write("", "pids.max", max(p))?;
            }
            if let Some(s) = shares {
                let weight = 1 + ((s.clamp(2, 262144) - 2) * 9999) / 262142;
                self.write("", "cpu.weight", weight.to_string())?;
            }
            if quota.is_some() || period.is_some() {
                let q = quota.filter(|q| *q > 0).map_or("max".to_string(), |q| q.to_string());
                self.write("", "cpu.max", format!("{q} {}", period.unwrap_or(100_000)))?;
            }
            if let Some(c) = cpus {
                self.write("", "cpuset.cpus", c)?;
            }
            if let Some(m) = mems {
                self.write("", "cpuset.mems", m)?;
            }
            for h in &hugepages {
                self.write("", &format!("hugetlb.{}.max", h.page_size()), h.limit().to_string())?;
            }
            for (k, v) in r.unified().clone().unwrap_or_default() {
                if k.contains('/') || k.starts_with('.') {
                    return Err(CgroupError::Unsupported { setting: format!("unified {k}"), why: "not a cgroup file name".into() });
                }
                self.write("", &k, v)?;
            }
            return Ok(());
        }
        if let Some(l) = limit {
            self.write("memory", "memory.limit_in_bytes", l.to_string())?;
        }
        if let Some(l) = reservation {
            self.write("memory", "memory.soft_limit_in_bytes", l.to_string())?;
        }
        if let Some(s) = swap {
            if self.file("memory", "memory.memsw.limit_in_bytes").is_some_and(|f| f.exists()) {
                self.write("memory", "memory.memsw.limit_in_bytes", s.to_string())?;
            } else if host_has_swap() && s != -1 {
                // Without swap on the host, no swap limit has anything to limit.
                return Err(CgroupError::Unsupported {
                    setting: "memory swap limit".into(),
                    why: "the host has swap but its kernel does not account it (boot with swapaccount=1)".into(),
                });
            }
        }
        if let Some(sw) = memory.and_then(|m| m.swappiness()) {
            self.write("memory", "memory.swappiness", sw.to_string())?;
        }
        if memory.and_then(|m| m.disable_oom_killer()) == Some(true) {
            self.write("memory", "memory.oom_control", "1".into())?;
        }
        if let Some(p) = pids {
            self.write("pids", "pids.max", max(p))?;
        }
        if let Some(s) = shares {
            self.write("cpu", "cpu.shares", s.to_string())?;
        }
        if let Some(p) = period {
            self.write("cpu", "cpu.cfs_period_us", p.to_string())?;
        }
        if let Some(q) = quota {
            self.write("cpu", "cpu.cfs_quota_us", q.to_string())?;
        }
        if let Some(c) = cpus {
            self.write("cpuset", "cpuset.cpus", c)?;
        }
        if let Some(m) = mems {
            self.write("cpuset", "cpuset.mems", m)?;
        }
        for h in &hugepages {
            self.write("hugetlb", &format!("hugetlb.{}.limit_in_bytes", h.page_size()), h.limit().to_string())?;
        }
        if let Some(w) = r.block_io().as_ref().and_then(|b| b.weight()) {
            self.write("blkio", "blkio.weight", w.to_string())?;
        }
        self.apply_v1_devices(r)
    }

    /// The devices hierarchy is v1's only device filter (v2 needs eBPF, not done yet).
    fn apply_v1_devices(&self, r: &LinuxResources) -> Result<(), CgroupError> {
        let Some(rules) = r.devices() else {
            return Ok(());
        };
        for rule in rules {
            let typ = rule.typ().map_or_else(|| "a".to_string(), |t| t.as_str().to_string());
            let node = |n: Option<i64>| n.map_or("*".to_string(), |n| n.to_string());
            let access = rule.access().clone().unwrap_or_else(|| "rwm".into());
            let line = if typ == "a" { "a".to_string() } else { format!("{typ} {}:{} {access}", node(rule.major()), node(rule.minor())) };
            self.write("devices", if rule.allow() { "devices.allow" } else { "devices.deny" }, line)?;
        }
        // The devices every container gets in /dev stay usable whatever the rules said.
        for dev in ["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"] {
            self.write("devices", "devices.allow", dev.to_string())?;
        }
        Ok(())
    }
}
