#!/usr/bin/env bash
# Installs what minipod needs on a Debian machine (run as root). Idempotent.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root: minipod creates namespaces, cgroups and mounts" >&2
    exit 1
fi

# busybox-static: the root filesystems tests and the demo build for themselves.
# runc, crun: the runtimes the benchmark compares against.
# iproute2, procps: inspecting what tests leave behind.
# util-linux (flock), bsdutils (script): a lock held by another process, and a terminal for
# the `exec -it` tests.
# nftables, conntrack: the node firewall (the tests run it inside their own namespaces).
# iptables, containernetworking-plugins: the CNI chain the netstack benchmark compares against.
# protobuf-compiler: protoc, which the CRI bindings (k8s-cri) are generated with.
# libseccomp-dev, pkg-config: the seccomp filters containers get are compiled by libseccomp.
# iputils-ping: `ping -M do -s`, which the overlay tests probe the path MTU with (busybox's
# ping cannot forbid fragmenting).
packages=(busybox-static runc crun iproute2 procps nftables conntrack util-linux bsdutils iptables containernetworking-plugins ca-certificates protobuf-compiler libseccomp-dev pkg-config iputils-ping)
# Installs the Debian packages given that are missing (scripts/critest.sh uses it too).
apt_install() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup.sh: installing ${missing[*]}"
        apt-get -o Acquire::Retries=5 update -qq
        DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=5 install -y -qq "${missing[@]}" >/dev/null
    fi
}
apt_install "${packages[@]}"

if ! command -v cargo >/dev/null; then
    for dir in /root/.cargo/bin "$HOME/.cargo/bin"; do
        [ -x "$dir/cargo" ] && export PATH="$dir:$PATH"
    done
fi
if ! command -v cargo >/dev/null; then
    echo "setup.sh: no cargo found: install Rust 1.88 or newer (rustup) and run this again" >&2
    exit 1
fi

# The real crictl drives the CRI server in the end-to-end tests.
CRICTL_VERSION=v1.37.0
export PATH="$PATH:/usr/local/go/bin:/root/go/bin"
if ! [ -x /root/go/bin/crictl ]; then
    if ! command -v go >/dev/null; then
        echo "setup.sh: no go found: install Go (only to build crictl) and run this again" >&2
        exit 1
    fi
    echo "setup.sh: installing crictl $CRICTL_VERSION (go install)"
    GOBIN=/root/go/bin go install "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
fi

# Debian's docker-registry serves the pull tests on loopback. Unpacked, not installed:
# the package would start a registry service on port 5000.
REGISTRY_DIR=/opt/minipod-test/docker-registry
if ! [ -x "$REGISTRY_DIR/usr/bin/docker-registry" ]; then
    echo "setup.sh: unpacking docker-registry into $REGISTRY_DIR"
    tmp=$(mktemp -d)
    (cd "$tmp" && { apt-get -o Acquire::Retries=5 download docker-registry >/dev/null 2>&1 || { apt-get -o Acquire::Retries=5 update -qq && apt-get -o Acquire::Retries=5 download docker-registry >/dev/null; }; })
    mkdir -p "$REGISTRY_DIR"
    dpkg-deb -x "$tmp"/docker-registry_*.deb "$REGISTRY_DIR"
    rm -rf "$tmp"
fi
