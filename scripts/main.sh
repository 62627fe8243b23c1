#!/usr/bin/env bash
# The main job on embedded defaults: install, build, and run a busybox container that
# minipod builds for itself (state under /run/minipod, bundle under /var/lib/minipod).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p minipod-cri
exec ./target/release/minipod demo "$@"
