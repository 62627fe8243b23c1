//! `minipod`: the runc-compatible OCI verbs, pods, networks, images, and `serve`: the
//! CRI daemon that crictl and the kubelet talk to.

mod cli;
mod server;
mod streaming;
mod winsize;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
