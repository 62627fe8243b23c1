//! `minipod doctor`: the node's network checked as people otherwise do it by hand, and
//! `minipod doctor flow A B:PORT` for one connection between two pods.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use minipod_runtime::netstack::doctor::{Finding, Verdict};
use minipod_runtime::netstack::{Node, Proto};

use super::OutputFormat;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// The node's network namespace (a pinned namespace file); the current one by default.
    #[arg(long, global = true)]
    netns: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = OutputFormat::Table, global = true)]
    output: OutputFormat,
    #[command(subcommand)]
    command: Option<DoctorCommand>,
}

#[derive(Subcommand, Debug)]
enum DoctorCommand {
    /// Whether a connection from pod FROM to TO:PORT can pass, and what stops it
    /// (pods by name or address).
    Flow {
        from: String,
        /// POD:PORT or ADDRESS:PORT.
        to: String,
        /// The connection is UDP (TCP by default).
        #[arg(long)]
        udp: bool,
    },
}

/// The address of pod `name` (or `name` itself, an address), from the pods' records.
fn address(root: &Path, name: &str) -> anyhow::Result<Ipv4Addr> {
    if let Ok(ip) = name.parse() {
        return Ok(ip);
    }
    let dir = root.join("pods");
    for e in std::fs::read_dir(&dir).map(|d| d.flatten().collect::<Vec<_>>()).unwrap_or_default() {
        let Ok(pod) = minipod_runtime::netstack::record::read_json::<minipod_runtime::pod::PodRecord>(&e.path().join("pod.json")) else {
            continue;
        };
        if pod.name == name || pod.id.as_str() == name {
            return pod.ip().ok_or_else(|| anyhow::anyhow!("pod {name} has no address (it is {})", pod.status));
        }
    }
    anyhow::bail!("no pod {name} under {}: give a pod name of `minipod pod ls` or an address", dir.display())
}

pub fn doctor(root: &Path, a: DoctorArgs) -> anyhow::Result<i32> {
    let node = Node::new(root, a.netns.as_deref())?;
    let findings: Vec<Finding> = match a.command {
        None => {
            let mut all = node.doctor()?;
            all.extend(minipod_runtime::pod::doctor::resolver_findings(root, a.netns.as_deref(), &node));
            all
        }
        Some(DoctorCommand::Flow { from, to, udp }) => {
            let (to, port) =
                to.rsplit_once(':').ok_or_else(|| anyhow::anyhow!("{to:?}: write the destination as POD:PORT or ADDRESS:PORT"))?;
            let port: u16 = port.parse().map_err(|_| anyhow::anyhow!("{port:?} is not a port of 1 to 65535"))?;
            let proto = if udp { Proto::Udp } else { Proto::Tcp };
            node.doctor_flow(address(root, &from)?, address(root, to)?, proto, port)?
        }
    };
    if a.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        let width = findings.iter().map(|f| f.check.len()).max().unwrap_or(5).max(5);
        println!("{:<width$}  {:<7} FOUND", "CHECK", "RESULT");
        for f in &findings {
            println!("{:<width$}  {:<7} {}", f.check, f.verdict, f.found);
            if let (Some(fix), true) = (&f.fix, f.verdict != Verdict::Pass) {
                println!("{:<width$}  {:<7} fix: {fix}", "", "");
            }
        }
    }
    Ok(i32::from(findings.iter().any(|f| f.verdict == Verdict::Fail)))
}
