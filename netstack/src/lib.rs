//! minipod's node networking (not built yet).
//!
//! This crate will attach network namespaces to bridge networks inside a node
//! namespace: veth pairs, IPv4/IPv6 address management, an nftables `inet minipod`
//! table for masquerade, isolation and published ports, and an embedded DNS server
//! for pod names. It knows nothing about containers: it takes a namespace handle and
//! an owner id. Today it is an empty crate that fixes the workspace layout; see the
//! netstack issue for the plan.
