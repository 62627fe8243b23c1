#!/usr/bin/env bash
# Installs what the tests need and runs every test (as root: real namespaces, cgroups
# and mounts; each test works in its own state dir and cleans up after itself), then
# the Kubernetes CRI validation suite (critest) against `minipod serve`, gated on
# scripts/critest/must-pass.txt. Arguments go to `cargo test` and skip critest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo test --workspace "$@"
if [ "$#" -eq 0 ]; then
    MINIPOD=target/debug/minipod bash scripts/critest.sh
    # The Streaming specs once more over WebSocket (crictl --transport websocket's and
    # kubectl's path); the same must-pass lines gate them.
    MINIPOD=target/debug/minipod FOCUS='Streaming' REPORT_DIR=/opt/minipod-test/critest/report-websocket \
        bash scripts/critest.sh --websocket-exec --websocket-attach --websocket-portforward
fi
