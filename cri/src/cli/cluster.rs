//! `minipod cluster`: N nodes on this machine over a VXLAN overlay, kept until removed,
//! with pods made on each by the pod commands on that node's state root and namespace,
//! and Services and NetworkPolicies applied to all its nodes at once.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use minipod_runtime::embed::{Cluster, DEFAULT_CLUSTER_CIDR, DEFAULT_CLUSTER_DIR, DEFAULT_VNI};

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// Where clusters live.
    #[arg(long, global = true, default_value = DEFAULT_CLUSTER_DIR)]
    dir: PathBuf,
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Make N nodes (each a node namespace with a /24 of the cluster CIDR), an underlay
    /// and the overlay between them; prints how to run pods on each.
    Create {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = DEFAULT_VNI)]
        vni: u32,
        #[arg(long, default_value = DEFAULT_CLUSTER_CIDR)]
        cluster_cidr: String,
        /// The image store the nodes' pods use.
        #[arg(long, default_value = minipod_runtime::image::DEFAULT_DIR)]
        images: PathBuf,
    },
    /// The clusters under --dir.
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a cluster: every pod of its nodes, the nodes, the underlay.
    Rm { cluster: PathBuf },
    /// Apply Services, EndpointSlices and NetworkPolicies (YAML or JSON, `-` for
    /// stdin) on every node of a cluster, as its API server would: a Service gets one
    /// cluster IP with endpoints on every node, a policy's peers are pods of any node.
    Apply {
        cluster: PathBuf,
        #[arg(short = 'f', long)]
        filename: PathBuf,
    },
    /// Delete what a file names from every node of a cluster.
    Delete {
        cluster: PathBuf,
        #[arg(short = 'f', long)]
        filename: PathBuf,
    },
}

/// A cluster by its name under `dir`, or by its path.
fn cluster_path(dir: &std::path::Path, cluster: PathBuf) -> PathBuf {
    if cluster.is_absolute() {
        cluster
    } else {
        dir.join(cluster)
    }
}

pub fn cluster(a: ClusterArgs) -> anyhow::Result<i32> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        match a.command {
            ClusterCommand::Create { nodes, vni, cluster_cidr, images } => {
                let cluster =
                    Cluster::builder().nodes(nodes).vni(vni).cluster_cidr(&cluster_cidr).dir(&a.dir).image_dir(&images).open().await?;
                println!("{:<6} {:<16} {:<18} {:<44} NETNS", "NODE", "ADDRESS", "POD CIDR", "ROOT");
                for n in cluster.nodes() {
                    let root = cluster.dir().join(format!("node-{}", n.index()));
                    println!(
                        "{:<6} {:<16} {:<18} {:<44} {}",
                        n.index(),
                        n.address(),
                        n.pod_cidr().to_string(),
                        root.display(),
                        n.netns().display()
                    );
                }
                if let Some(n) = cluster.nodes().first() {
                    let root = cluster.dir().join(format!("node-{}", n.index()));
                    println!(
                        "pods on node 0: minipod --root {} pod --netns {} --images {} run NAME --network cluster",
                        root.display(),
                        n.netns().display(),
                        images.display()
                    );
                }
                println!("{}", cluster.keep()?.display());
            }
            ClusterCommand::Ls => {
                for c in Cluster::list(&a.dir) {
                    println!("{}", c.display());
                }
            }
            ClusterCommand::Rm { cluster } => {
                Cluster::remove_kept(&cluster_path(&a.dir, cluster)).await?;
            }
            ClusterCommand::Apply { cluster, filename } => {
                let text = super::service::read_text(&filename)?;
                let cluster = Cluster::attach(&cluster_path(&a.dir, cluster)).await?;
                for (key, change) in cluster.apply_yaml(&text).await.with_context(|| format!("in {}", filename.display()))? {
                    println!("{key} {change}");
                }
            }
            ClusterCommand::Delete { cluster, filename } => {
                let text = super::service::read_text(&filename)?;
                let cluster = Cluster::attach(&cluster_path(&a.dir, cluster)).await?;
                for key in cluster.delete_yaml(&text).await.with_context(|| format!("in {}", filename.display()))? {
                    println!("{key} deleted");
                }
            }
        }
        Ok::<i32, anyhow::Error>(0)
    })
}
