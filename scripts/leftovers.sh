#!/usr/bin/env bash
# What a test run may leave on the machine, seen from the host: `snapshot DIR` records
# it before the run, `check DIR` fails, listing each, if anything was added since: any
# link, address, route or permanent neighbour, nftables table, mount (pinned network
# namespaces included), network namespace held by a process, cgroup of minipod's in any
# hierarchy (v1 controllers and v2), process of minipod's (by name, or by its cgroup),
# and file under /tmp/minipod-*, /run/minipod or /var/lib/minipod (a state dir's empty
# name-index directories included). Only additions count: what the machine itself drops
# meanwhile is none of the tests' doing.
set -euo pipefail
cmd=${1:?usage: leftovers.sh snapshot|check DIR}
dir=${2:?usage: leftovers.sh snapshot|check DIR}

look() {  # one file per kind in $1
    local out=$1
    mkdir -p "$out"
    ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | sort >"$out/links"
    ip -o addr show | awk '{print $2, $4}' | sort >"$out/addresses"
    { ip -4 route show table all; ip -6 route show table all; } 2>/dev/null \
        | sed -E 's/ expires [^ ]+//; s/ (metric|pref) [^ ]+//g' | sort -u >"$out/routes"
    ip neigh show nud permanent 2>/dev/null | sort >"$out/neighbours"
    nft list tables 2>/dev/null | sort >"$out/nftables"
    awk '{print $5}' /proc/self/mountinfo | sort >"$out/mounts"
    lsns -t net -n -o NS 2>/dev/null | sort -u >"$out/netns"
    find /sys/fs/cgroup -type d -path '*minipod*' 2>/dev/null | sort >"$out/cgroups"
    {
        pgrep -a -x minipod || true
        pgrep -a -f 'minipod-test-|minipod-internal-helper' | grep -v leftovers.sh || true
        { grep -l minipod /proc/[0-9]*/cgroup 2>/dev/null || true; } | cut -d/ -f3 | while read -r pid; do
            echo "$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true) (in a minipod cgroup)"
        done
    } | sort -u >"$out/processes"
    find /tmp -maxdepth 1 -name 'minipod-*' 2>/dev/null | sort >"$out/files"
    find /run/minipod /var/lib/minipod 2>/dev/null | sort >>"$out/files" || true
}

case $cmd in
snapshot) rm -rf "$dir" && look "$dir/before" ;;
check)
    look "$dir/after"
    left=0
    for kind in links addresses routes neighbours nftables mounts netns cgroups processes files; do
        added=$(comm -13 "$dir/before/$kind" "$dir/after/$kind")
        if [ -n "$added" ]; then
            left=1
            echo "left behind ($kind):" >&2
            sed 's/^/  /' <<<"$added" | head -20 >&2
        fi
    done
    [ "$left" -eq 0 ] || exit 1
    ;;
*) echo "usage: leftovers.sh snapshot|check DIR" >&2; exit 2 ;;
esac
