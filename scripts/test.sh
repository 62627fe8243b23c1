#!/usr/bin/env bash
# Installs what the tests need and runs every test (as root: real namespaces, cgroups
# and mounts; each test works in its own state dir and cleans up after itself), then
# the Kubernetes CRI validation suite (critest) against `minipod serve`, gated on
# scripts/critest/must-pass.txt. Arguments go to `cargo test` and skip critest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# Tests that cannot run on this node (a cgroup v1 check on a cgroup v2 node, a device
# the node lacks) say so here; none passes by returning early.
export MINIPOD_TEST_SKIPS="${TMPDIR:-/tmp}/minipod-skips.$$"
rm -rf "$MINIPOD_TEST_SKIPS"
report_skips() {
    if [ -d "$MINIPOD_TEST_SKIPS" ]; then
        echo "tests not run on this node, and why:"
        cat "$MINIPOD_TEST_SKIPS"/*
        rm -rf "$MINIPOD_TEST_SKIPS"
    else
        echo "tests not run on this node: none"
    fi
}
trap report_skips EXIT
cargo test --workspace "$@"
if [ "$#" -eq 0 ]; then
    MINIPOD=target/debug/minipod bash scripts/critest.sh
    # The Streaming specs once more over WebSocket (crictl --transport websocket's and
    # kubectl's path); the same must-pass lines gate them.
    MINIPOD=target/debug/minipod FOCUS='Streaming' REPORT_DIR=/opt/minipod-test/critest/report-websocket \
        bash scripts/critest.sh --websocket-exec --websocket-attach --websocket-portforward
fi
