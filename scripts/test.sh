#!/usr/bin/env bash
# Installs what the tests need and runs every test (as root: real namespaces, cgroups
# and mounts; each test works in its own state dir and cleans up after itself).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace "$@"
