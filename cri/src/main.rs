//! `minipod`: the runc-compatible OCI verbs (and, as the CRI server grows, the daemon).

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
