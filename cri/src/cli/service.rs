//! `minipod apply -f`, `minipod delete -f`, `minipod svc` and `minipod policy`:
//! Kubernetes Services and NetworkPolicies from YAML or JSON, served and enforced on
//! this node for the pods of the state root.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use clap::{Args, Subcommand};
use minipod_runtime::netstack::{Namespace, PolicyName, ServiceName};
use minipod_runtime::policy::PolicyKey;
use minipod_runtime::service::{self, ServiceKey};

use super::pod::{open, Common};
use super::OutputFormat;

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    common: Common,
    /// The YAML or JSON file, one or several documents; `-` reads stdin.
    #[arg(short = 'f', long)]
    filename: std::path::PathBuf,
}

#[derive(Args, Debug)]
pub struct SvcArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: SvcCommand,
}

#[derive(Subcommand, Debug)]
enum SvcCommand {
    /// List services: of one namespace (default `default`) or, with -A, of all.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short, long, default_value = "default")]
        namespace: Namespace,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a service as JSON, with the endpoints its connections go to now.
    Inspect {
        name: ServiceName,
        #[arg(short, long, default_value = "default")]
        namespace: Namespace,
    },
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    #[command(flatten)]
    common: Common,
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// List network policies: of one namespace (default `default`) or, with -A, of all.
    #[command(visible_alias = "list")]
    Ls {
        #[arg(short, long, default_value = "default")]
        namespace: Namespace,
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Show a policy as JSON, with the pods it selects now.
    Inspect {
        name: PolicyName,
        #[arg(short, long, default_value = "default")]
        namespace: Namespace,
    },
}

/// The text of `file`, or of stdin for `-`.
pub(super) fn read_text(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

fn read_documents(file: &Path) -> anyhow::Result<Vec<service::Document>> {
    service::parse(&read_text(file)?).with_context(|| format!("in {}", file.display()))
}

/// `minipod apply -f FILE`: prints `KIND/NAME created|configured|unchanged` per object,
/// as kubectl does.
pub fn apply(root: &Path, a: ApplyArgs) -> anyhow::Result<i32> {
    let docs = read_documents(&a.filename)?;
    let pods = open(root, &a.common)?;
    for (key, change) in pods.apply(&docs)? {
        println!("{key} {change}");
    }
    Ok(0)
}

/// `minipod delete -f FILE`.
pub fn delete(root: &Path, common: &Common, file: &Path) -> anyhow::Result<i32> {
    let docs = read_documents(file)?;
    let pods = open(root, common)?;
    for key in pods.delete(&docs)? {
        println!("{key} deleted");
    }
    Ok(0)
}

pub fn svc(root: &Path, a: SvcArgs) -> anyhow::Result<i32> {
    let pods = open(root, &a.common)?;
    match a.command {
        SvcCommand::Ls { namespace, all_namespaces, output } => {
            let all = pods.services((!all_namespaces).then_some(&namespace))?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            println!("{:<16}{:<24}{:<16}{:<20}{:<12}SELECTOR", "NAMESPACE", "NAME", "CLUSTER-IP", "PORT(S)", "ENDPOINTS");
            for s in all {
                let ports: Vec<String> = s
                    .ports
                    .iter()
                    .map(|p| {
                        let node = p.node_port.map(|n| format!(":{n}")).unwrap_or_default();
                        format!("{}{node}/{}", p.port, p.protocol.to_string().to_uppercase())
                    })
                    .collect();
                let endpoints = pods.endpoints(&s)?.len();
                println!(
                    "{:<16}{:<24}{:<16}{:<20}{:<12}{}",
                    s.key.namespace,
                    s.key.name,
                    s.cluster_ip.map_or_else(|| "None".to_string(), |ip| ip.to_string()),
                    ports.join(","),
                    endpoints,
                    s.selector
                );
            }
        }
        SvcCommand::Inspect { name, namespace } => {
            let s = pods.service(&ServiceKey { namespace, name })?;
            let endpoints = pods.endpoints(&s)?;
            // Where each port goes: a port by name may be another number on each pod.
            let ports: Vec<serde_json::Value> = pods
                .port_endpoints(&s)?
                .iter()
                .map(|p| {
                    let to: Vec<String> = p.endpoints.iter().map(ToString::to_string).collect();
                    serde_json::json!({ "port": p.port, "protocol": p.proto, "name": p.name, "endpoints": to })
                })
                .collect();
            let slices: Vec<String> = pods
                .endpoint_slices(Some(&s.key.namespace))?
                .into_iter()
                .filter(|e| e.service == s.key.name)
                .map(|e| e.key.name.to_string())
                .collect();
            let out = serde_json::json!({ "service": s, "endpoints": endpoints, "ports": ports, "endpoint_slices": slices });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
    }
    Ok(0)
}

pub fn policy(root: &Path, a: PolicyArgs) -> anyhow::Result<i32> {
    let pods = open(root, &a.common)?;
    match a.command {
        PolicyCommand::Ls { namespace, all_namespaces, output } => {
            let all = pods.network_policies((!all_namespaces).then_some(&namespace))?;
            if output == OutputFormat::Json {
                println!("{}", serde_json::to_string_pretty(&all)?);
                return Ok(0);
            }
            println!("{:<16}{:<32}{:<24}{:<10}{:<10}PODS", "NAMESPACE", "NAME", "POD-SELECTOR", "INGRESS", "EGRESS");
            let live = pods.pods()?;
            for p in all {
                let rules = |r: &Option<Vec<_>>| r.as_ref().map_or_else(|| "-".to_string(), |r: &Vec<_>| format!("{} rules", r.len()));
                let selected = live.iter().filter(|pod| p.selects(pod)).count();
                println!(
                    "{:<16}{:<32}{:<24}{:<10}{:<10}{}",
                    p.key.namespace,
                    p.key.name,
                    p.pod_selector.to_string(),
                    rules(&p.ingress),
                    rules(&p.egress),
                    selected
                );
            }
        }
        PolicyCommand::Inspect { name, namespace } => {
            let p = pods.network_policy(&PolicyKey { namespace, name })?;
            let live = pods.pods()?;
            let selected: Vec<serde_json::Value> = live
                .iter()
                .filter(|pod| p.selects(pod))
                .map(|pod| serde_json::json!({ "name": pod.name, "namespace": pod.namespace, "ip": pod.ip() }))
                .collect();
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "policy": p, "selected": selected }))?);
        }
    }
    Ok(0)
}
