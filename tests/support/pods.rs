//! Pods from the embedding API on a private node, with a busybox rootfs, and a check
//! that nothing of a test's runtime is left on the machine.

use std::path::{Path, PathBuf};

use minipod_runtime::embed::{Minipod, MinipodBuilder};

use super::Harness;

pub struct PodEnv {
    pub h: Harness,
    pub rootfs: PathBuf,
}

impl PodEnv {
    pub fn new(name: &str) -> Self {
        let h = Harness::new(name);
        let rootfs = h.base.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        minipod_runtime::busybox::build_rootfs(&rootfs).expect("busybox rootfs (apt-get install busybox-static)");
        PodEnv { h, rootfs }
    }

    pub fn root(&self) -> &Path {
        &self.h.root
    }

    /// A runtime on this test's state root and image store, on a private node.
    pub fn builder(&self) -> MinipodBuilder {
        Minipod::builder().state_dir(&self.h.root).image_dir(self.h.base.join("images")).private_node()
    }

    pub async fn open(&self) -> Minipod {
        self.builder().open().await.expect("open minipod")
    }

    /// Nothing of any runtime on this root is left: pods, name indexes, containers,
    /// private nodes, instance records, mounts.
    pub fn assert_clean(&self) {
        let root = &self.h.root;
        let entries = |d: &str| -> Vec<String> {
            std::fs::read_dir(root.join(d))
                .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect())
                .unwrap_or_default()
        };
        assert_eq!(entries("pods"), Vec::<String>::new(), "pods left");
        assert_eq!(entries("nodes"), Vec::<String>::new(), "private nodes left");
        assert_eq!(entries("instances"), Vec::<String>::new(), "runtime instances left");
        let names: Vec<String> = std::fs::read_dir(root.join("pods/.names"))
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| !n.starts_with('.')).collect())
            .unwrap_or_default();
        assert_eq!(names, Vec::<String>::new(), "name indexes left in pods/.names");
        let containers: Vec<String> = entries("")
            .into_iter()
            .filter(|n| {
                !["pods", "nodes", "instances", "networks", "network-locks", "firewall", "auto-subnet.lock", "services"]
                    .contains(&n.as_str())
            })
            .collect();
        assert_eq!(containers, Vec::<String>::new(), "containers left");
        assert!(!super::host_mounts_mention(root), "mounts under {} left", root.display());
    }
}

impl Drop for PodEnv {
    /// Pods that the CLI made (and a failed test left) go before the harness removes
    /// the directory: removing it first would take the containers' state, and with it
    /// what finds their cgroups, while the namespace mounts keep it from going.
    fn drop(&mut self) {
        let images = self.h.base.join("images");
        let Some(images) = images.to_str() else { return };
        let listed = self.h.minipod(&["pod", "--images", images, "ls", "-o", "json"]);
        let pods: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
        for id in pods.iter().filter_map(|p| p["id"].as_str()) {
            let _ = self.h.minipod(&["pod", "--images", images, "rm", "--force", id]);
        }
    }
}
