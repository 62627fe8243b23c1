//! A container's cgroup limits as the CRI's `LinuxContainerResources` gives them, and
//! their OCI `linux.resources` form, which the runtime applies at create and again
//! when they are updated on a running container.

use std::collections::BTreeMap;

use oci_spec::runtime::LinuxResources;

/// Limits; `None` (or empty) leaves the setting as the kernel has it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Relative CPU weight (v1 `cpu.shares`, 2..262144).
    pub cpu_shares: Option<u64>,
    /// CPU time per period, in microseconds.
    pub cpu_quota: Option<i64>,
    pub cpu_period: Option<u64>,
    /// CPUs and memory nodes the container may use (`0-1,3`).
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Bytes of memory.
    pub memory_limit: Option<i64>,
    /// Bytes of memory plus swap (-1: unlimited swap).
    pub memory_swap: Option<i64>,
    /// Page size (`2MB`, `1GB`) to a limit in bytes.
    pub hugepages: BTreeMap<String, u64>,
    /// cgroup v2 files to write as given (`memory.high` -> `max`).
    pub unified: BTreeMap<String, String>,
    /// Processes and threads.
    pub pids: Option<i64>,
}

impl Resources {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// The OCI `linux.resources` JSON for these limits (no devices).
    pub fn to_oci_json(&self) -> serde_json::Value {
        let mut r = serde_json::Map::new();
        let mut cpu = serde_json::Map::new();
        let put = |m: &mut serde_json::Map<String, serde_json::Value>, k: &str, v: Option<serde_json::Value>| {
            if let Some(v) = v {
                m.insert(k.into(), v);
            }
        };
        put(&mut cpu, "shares", self.cpu_shares.map(Into::into));
        put(&mut cpu, "quota", self.cpu_quota.map(Into::into));
        put(&mut cpu, "period", self.cpu_period.map(Into::into));
        put(&mut cpu, "cpus", self.cpuset_cpus.clone().map(Into::into));
        put(&mut cpu, "mems", self.cpuset_mems.clone().map(Into::into));
        if !cpu.is_empty() {
            r.insert("cpu".into(), cpu.into());
        }
        let mut memory = serde_json::Map::new();
        put(&mut memory, "limit", self.memory_limit.map(Into::into));
        put(&mut memory, "swap", self.memory_swap.map(Into::into));
        if !memory.is_empty() {
            r.insert("memory".into(), memory.into());
        }
        if let Some(p) = self.pids {
            r.insert("pids".into(), serde_json::json!({ "limit": p }));
        }
        if !self.hugepages.is_empty() {
            let limits: Vec<serde_json::Value> =
                self.hugepages.iter().map(|(size, limit)| serde_json::json!({ "pageSize": size, "limit": limit })).collect();
            r.insert("hugepageLimits".into(), limits.into());
        }
        if !self.unified.is_empty() {
            r.insert("unified".into(), serde_json::to_value(&self.unified).unwrap_or_default());
        }
        serde_json::Value::Object(r)
    }

    /// The OCI type, for applying to a running container's cgroup.
    pub fn to_oci(&self) -> Result<LinuxResources, String> {
        serde_json::from_value(self.to_oci_json()).map_err(|e| format!("resources do not form an OCI linux.resources: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_become_oci_resources() {
        let r = Resources {
            cpu_shares: Some(512),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpuset_cpus: Some("0".into()),
            memory_limit: Some(64 << 20),
            hugepages: [("2MB".to_string(), 4 << 20)].into(),
            ..Default::default()
        };
        let oci = r.to_oci().unwrap();
        assert_eq!(oci.cpu().as_ref().and_then(|c| c.shares()), Some(512));
        assert_eq!(oci.cpu().as_ref().and_then(|c| c.cpus().clone()).as_deref(), Some("0"));
        assert_eq!(oci.memory().as_ref().and_then(|m| m.limit()), Some(64 << 20));
        assert_eq!(oci.hugepage_limits().as_ref().map(|h| h.len()), Some(1));
        assert!(Resources::default().is_empty());
        assert_eq!(Resources::default().to_oci_json(), serde_json::json!({}));
    }
}
