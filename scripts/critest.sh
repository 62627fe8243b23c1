#!/usr/bin/env bash
# Runs the Kubernetes CRI validation suite (critest, sigs.k8s.io/cri-tools) against
# `minipod serve`, fully offline, and gates on scripts/critest/must-pass.txt.
#
# Run as root (the daemon makes namespaces, cgroups, mounts, veths). What it does:
#  1. installs umoci, skopeo, gcc, libc6-dev (the image builders) if missing;
#  2. builds critest $CRITEST_VERSION from the Go module proxy into $CRITEST_DIR/critest,
#     once (critest is a `go test -c` binary of ./cmd/critest);
#  3. serves a local registry (Debian's docker-registry) on 127.0.0.1:5000 from
#     $CRITEST_DIR/registry, into which scripts/critest/build-images.sh pushes stand-ins for
#     every image critest pulls, under their upstream paths. The images are rebuilt only when
#     build-images.sh or make-rootfs.sh change (a stamp holds their hash);
#  4. starts `minipod serve` in a fresh temp dir, mirroring registry.k8s.io, gcr.io and
#     k8s.gcr.io to that registry; the registry, the daemon and critest share a network
#     namespace this script makes (the Networking specs connect to pods from critest's own
#     namespace), so nothing on the machine's own network changes;
#  5. runs critest, parses its JUnit report, prints the counts and the failed specs;
#  6. at exit, even on failure: stops the daemon and the registry, removes every pod the run
#     left (so no netns, mount, cgroup or process stays), its networks and the temp dir; the
#     bridge, veths and firewall table go with the run's network namespace.
#
# Exit status: non-zero if a spec listed in scripts/critest/must-pass.txt did not pass
# (failed, skipped or missing) or the run itself broke; other failures are only reported.
#
# Environment:
#   MINIPOD=path        the minipod binary (default target/debug/minipod)
#   FOCUS=RE            only specs matching RE (--ginkgo.focus), e.g. '\[k8s\.io\] Security Context'
#   EXTRA_SKIP=RE       skip these specs too (joined to the built-in skip with |)
#   CRITEST_TIMEOUT=D   the whole suite's --ginkgo.timeout (default 40m)
#   CRITEST_REQUEST_TIMEOUT=D  each CRI call's deadline (default 2m, the kubelet's
#                       --runtime-request-timeout; critest's own default is 5m, so one hung
#                       call would cost a spec 5 minutes, and its cleanup 5 more)
#   CRITEST_RECORD=1    rewrite must-pass.txt with the specs that passed in this run
#   REPORT_DIR=dir      where junit.xml, critest.log and minipod.log go
#                       (default /opt/minipod-test/critest/report; emptied first)
#   VERBOSE=1           daemon log at debug level (-vv) instead of info (-v)
# Extra arguments go to critest as they are (e.g. --ginkgo.v).
#
# must-pass.txt: one spec per line, the ginkgo full name as the JUnit report names it without
# its leading "[It] " (for example "[k8s.io] PodSandbox PodSandbox runtime should support
# basic operations on PodSandbox"); blank lines and lines starting with # are ignored.
# A run narrowed by FOCUS, EXTRA_SKIP or extra arguments gates only the listed specs it
# selected, and CRITEST_RECORD=1 records only from a whole run.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

if [ "$(id -u)" != 0 ]; then
    echo "critest.sh: run as root: minipod creates namespaces, cgroups and mounts" >&2
    exit 1
fi

CRITEST_VERSION=v1.37.0
CRITEST_DIR=/opt/minipod-test/critest
CRITEST=$CRITEST_DIR/critest
REGISTRY_STORE=$CRITEST_DIR/registry
REGISTRY_STAMP=$CRITEST_DIR/registry.stamp
REGISTRY_BIN=/opt/minipod-test/docker-registry/usr/bin/docker-registry
REG=127.0.0.1:5000
HERE=$REPO/scripts/critest
MUST_PASS=$HERE/must-pass.txt
REPORT_DIR=${REPORT_DIR:-$CRITEST_DIR/report}
MINIPOD=${MINIPOD:-target/debug/minipod}
case "$MINIPOD" in /*) ;; *) MINIPOD=$REPO/$MINIPOD ;; esac
if ! [ -x "$MINIPOD" ]; then
    echo "critest.sh: no minipod binary at $MINIPOD: build it (cargo build) or set MINIPOD" >&2
    exit 1
fi
log() { echo "critest.sh: $*" >&2; }

# ---- 1. packages ------------------------------------------------------------------------
# What the tests need (scripts/setup.sh: Debian packages, crictl, the unpacked
# docker-registry), and the image builders: umoci, skopeo (OCI layouts, pushed to the
# registry), gcc, libc6-dev (the static fake nginx and nonewprivs binaries), python3 (the
# JUnit report), curl (registry readiness).
source "$REPO/scripts/setup.sh"
apt_install umoci skopeo gcc libc6-dev python3 curl

# ---- 2. critest -------------------------------------------------------------------------
mkdir -p "$CRITEST_DIR"
if ! [ -x "$CRITEST" ]; then
    export PATH="$PATH:/usr/local/go/bin"
    command -v go >/dev/null || { log "no go found: install Go (to build critest) and run this again"; exit 1; }
    log "building critest $CRITEST_VERSION (go test -c ./cmd/critest)"
    mod=$(go mod download -json "sigs.k8s.io/cri-tools@$CRITEST_VERSION" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
    [ -d "$mod" ] || { log "go mod download sigs.k8s.io/cri-tools@$CRITEST_VERSION gave no directory"; exit 1; }
    src=$(mktemp -d /tmp/minipod-critest-src.XXXX)
    # The module cache is read-only: build in a writable copy.
    cp -r "$mod/." "$src"
    chmod -R u+w "$src"
    if ! (cd "$src" && GOFLAGS=-buildvcs=false go test -c \
            -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=${CRITEST_VERSION#v}" \
            -o "$CRITEST.tmp" ./cmd/critest); then
        rm -rf "$src" "$CRITEST.tmp"
        log "building critest failed"
        exit 1
    fi
    rm -rf "$src"
    mv "$CRITEST.tmp" "$CRITEST"
fi

# ---- the busybox package the images are built from ----------------------------------------
# Fetched here, in the host's namespace: the run's own namespace has no way out, and the
# images are built in it (on a machine that has none yet).
DEB_DIR=$CRITEST_DIR/debs
if ! ls "$DEB_DIR"/busybox_*.deb >/dev/null 2>&1; then
    mkdir -p "$DEB_DIR"
    (cd "$DEB_DIR" && { apt-get -o Acquire::Retries=5 download busybox >/dev/null 2>&1 \
        || { apt-get -o Acquire::Retries=5 update -qq && apt-get -o Acquire::Retries=5 download busybox >/dev/null; }; }) \
        || { log "downloading Debian's busybox package failed"; exit 1; }
fi

# ---- a network namespace of the run's own -------------------------------------------------
# Everything from here on (the registry, the daemon, its bridge, veths and nftables table,
# critest, which connects to pods and host ports) lives in a fresh network namespace that
# ends with this script: the machine's own interfaces, routes and firewall are never
# touched, and with no uplink in it no packet can leave (the pods' DNS has no upstream to
# ask). Packages and critest's module come first, from the host's namespace.
if [ -z "${MINIPOD_CRITEST_NETNS:-}" ]; then
    exec unshare --net -- env MINIPOD_CRITEST_NETNS=1 MINIPOD="$MINIPOD" bash "$0" "$@"
fi
ip link set lo up

# ---- state for the run and its cleanup ----------------------------------------------------
T=$(mktemp -d /tmp/minipod-test-critest.XXXX)
R=$T/root
I=$T/images
SOCK=unix://$R/cri.sock
DAEMON_PID=
REGISTRY_PID=
# What existed before this run, so that the cleanup removes only what the run made.
cgroups_before=$T/cgroups.before
find /sys/fs/cgroup -mindepth 2 -type d -path '*/minipod*' 2>/dev/null | sort >"$cgroups_before" || true

stop_pid() {  # $1 pid, $2 what: TERM, wait up to 15 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$2 (pid $pid) did not stop on TERM in 15s: killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

json_field() {  # $1 field: prints it for each object of the JSON list on stdin
    python3 -c 'import json,sys
try: rows = json.load(sys.stdin)
except Exception: rows = []
for r in rows or []:
    v = r.get(sys.argv[1]) if isinstance(r, dict) else None
    if v: print(v)' "$1"
}

cleanup() {
    local rc=$? id n m d
    set +e
    trap - EXIT INT TERM
    if [ -n "$DAEMON_PID" ]; then
        stop_pid "$DAEMON_PID" "minipod serve"
    fi
    # The daemon keeps pods when it stops: remove every pod (and so its containers, netns,
    # veths, mounts, cgroups and processes) with the CLI, then the networks it made.
    if [ -d "$R" ]; then
        for id in $("$MINIPOD" --root "$R" pod --images "$I" ls -o json 2>/dev/null | json_field id); do
            "$MINIPOD" --root "$R" pod --images "$I" rm --force "$id" >/dev/null 2>&1 \
                || log "warning: removing pod $id failed"
        done
        for n in $("$MINIPOD" --root "$R" net ls -o json 2>/dev/null | json_field name); do
            "$MINIPOD" --root "$R" net rm "$n" >/dev/null 2>&1 || log "warning: removing network $n failed"
        done
        "$MINIPOD" --root "$R" net gc >/dev/null 2>&1
    fi
    if [ -n "$REGISTRY_PID" ]; then
        stop_pid "$REGISTRY_PID" "docker-registry"
    fi
    # Cgroups the run made and left empty (deepest first); a parent made by this run too.
    find /sys/fs/cgroup -mindepth 2 -type d -path '*/minipod*' 2>/dev/null | sort -r | while read -r d; do
        grep -qxF "$d" "$cgroups_before" 2>/dev/null && continue
        [ -s "$d/cgroup.procs" ] && { log "warning: cgroup $d still has processes"; continue; }
        rmdir "$d" 2>/dev/null
    done
    # Mounts under the temp dir (a pod's netns pin, rootfs, critest's bind mounts), deepest first.
    for m in $(awk -v t="$T" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
    done
    rm -rf "$T" 2>/dev/null || log "warning: cannot remove $T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 3. registry and images ---------------------------------------------------------------
if ss -Hltn "sport = :5000" 2>/dev/null | grep -q .; then
    log "port 5000 is already in use (by: $(ss -Hltnp 'sport = :5000' | sed -n 's/.*users:((\(.*\)))/\1/p' | head -1)):"
    log "stop it first; this script serves its own registry on $REG"
    exit 1
fi
want_stamp=$(cat "$HERE/build-images.sh" "$HERE/make-rootfs.sh" | sha256sum | cut -d' ' -f1)
rebuild=1
[ -f "$REGISTRY_STAMP" ] && [ "$(cat "$REGISTRY_STAMP")" = "$want_stamp" ] && [ -d "$REGISTRY_STORE" ] && rebuild=0
if [ "$rebuild" = 1 ]; then
    # Images from other builders must not linger under the same names.
    rm -rf "$REGISTRY_STORE" "$REGISTRY_STAMP"
fi
mkdir -p "$REGISTRY_STORE"
cat >"$T/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_STORE
  delete:
    enabled: true
http:
  addr: $REG
EOF
"$REGISTRY_BIN" serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
REGISTRY_PID=$!
for i in $(seq 100); do
    curl -fs "http://$REG/v2/" >/dev/null 2>&1 && break
    if ! kill -0 "$REGISTRY_PID" 2>/dev/null; then
        REGISTRY_PID=
        log "docker-registry exited at start:"; cat "$T/registry.log" >&2; exit 1
    fi
    sleep 0.1
done
curl -fs "http://$REG/v2/" >/dev/null || { log "docker-registry does not answer on $REG"; cat "$T/registry.log" >&2; exit 1; }
if [ "$rebuild" = 1 ]; then
    log "building the test images into $REGISTRY_STORE"
    REG=$REG DEB_DIR=$DEB_DIR "$HERE/build-images.sh" >"$T/build-images.log" 2>&1 \
        || { log "building the images failed:"; tail -n 40 "$T/build-images.log" >&2; exit 1; }
    echo "$want_stamp" >"$REGISTRY_STAMP"
fi

# ---- 4. the daemon ---------------------------------------------------------------------
rm -rf "$REPORT_DIR"
mkdir -p "$REPORT_DIR" "$R" "$I" "$T/tmp"
verbosity=-v
[ "${VERBOSE:-}" = 1 ] && verbosity=-vv
"$MINIPOD" "$verbosity" --root "$R" serve --socket "$SOCK" --images "$I" \
    --registry-mirror registry.k8s.io=$REG --registry-mirror gcr.io=$REG --registry-mirror k8s.gcr.io=$REG \
    >"$REPORT_DIR/minipod.log" 2>&1 &
DAEMON_PID=$!
for i in $(seq 300); do
    [ -S "$R/cri.sock" ] && break
    if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
        DAEMON_PID=
        log "minipod serve exited at start:"; tail -n 20 "$REPORT_DIR/minipod.log" >&2; exit 1
    fi
    sleep 0.1
done
[ -S "$R/cri.sock" ] || { log "minipod serve made no socket at $R/cri.sock in 30s"; exit 1; }

# ---- 5. critest ------------------------------------------------------------------------
# Both endpoints and --config /dev/null: critest otherwise reads /etc/crictl.yaml and takes
# the image endpoint from it. The digest image cannot be reproduced offline; benchmarks are
# not validation. critest v1.37's own --report-dir is accepted but writes nothing: the JUnit
# report comes from ginkgo's --ginkgo.junit-report. TMPDIR puts critest's host-path temp dirs
# (and anything a failed spec leaves mounted there) in the run's temp dir.
SKIP='public image with digest|benchmark'
[ -n "${EXTRA_SKIP:-}" ] && SKIP="$SKIP|$EXTRA_SKIP"
JUNIT=$REPORT_DIR/junit.xml
log "running critest $CRITEST_VERSION against $SOCK (report in $REPORT_DIR)"
start=$(date +%s)
critest_rc=0
TMPDIR=$T/tmp "$CRITEST" --config /dev/null --runtime-endpoint "$SOCK" --image-endpoint "$SOCK" \
    --test-images-file "$HERE/images.yaml" \
    --ginkgo.skip "$SKIP" ${FOCUS:+--ginkgo.focus "$FOCUS"} \
    --ginkgo.no-color --ginkgo.timeout="${CRITEST_TIMEOUT:-40m}" \
    --runtime-service-timeout="${CRITEST_REQUEST_TIMEOUT:-2m}" --image-service-timeout="${CRITEST_REQUEST_TIMEOUT:-2m}" \
    --ginkgo.junit-report "$JUNIT" --report-dir "$REPORT_DIR" "$@" 2>&1 \
    | tee "$REPORT_DIR/critest.log" || critest_rc=$?
log "critest exited with $critest_rc after $(( $(date +%s) - start ))s"

# ---- 6. report and gate ----------------------------------------------------------------
if ! [ -s "$JUNIT" ]; then
    log "critest wrote no JUnit report ($JUNIT): see $REPORT_DIR/critest.log"
    exit 1
fi
filtered=0
if [ -n "${FOCUS:-}${EXTRA_SKIP:-}" ] || [ "$#" -gt 0 ]; then filtered=1; fi
python3 - "$JUNIT" "$MUST_PASS" "${CRITEST_RECORD:-0}" "$filtered" <<'PY'
import sys
import xml.etree.ElementTree as ET

junit, must_pass_file, record, filtered = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
FAILED = {"failed", "timedout", "interrupted", "aborted", "panicked"}


def brief(msg):
    """The failure's lines without gomega's dump of the error value (the {...} block and
    the <*type | 0x...> line): what was expected, and the error got."""
    out, depth = [], 0
    for line in msg.splitlines():
        t = line.strip()
        if depth:
            depth += t.count("{") - t.count("}")
            continue
        if t == "{":
            depth = 1
            continue
        if t.startswith("<*") and t.endswith(":"):
            continue
        if t:
            out.append(t)
    return out


status = {}      # spec name -> passed | failed | skipped
failures = {}    # spec name -> first lines of the failure
interrupted = False  # the suite stopped early (interrupt, --ginkgo.timeout, abort)
unselected = set()  # skipped by --ginkgo.focus/skip (message just "skipped"), not by the spec
for tc in ET.parse(junit).getroot().iter("testcase"):
    name = tc.get("name", "")
    if not name.startswith("[It] "):
        continue   # suite setup nodes ([BeforeSuite], [ReportAfterSuite], ...)
    name = name[len("[It] "):]
    st = tc.get("status", "")
    if st in ("interrupted", "aborted"):
        interrupted = True
    if st in FAILED or tc.find("failure") is not None or tc.find("error") is not None:
        st = "failed"
        el = tc.find("failure")
        if el is None:
            el = tc.find("error")
        msg = (el.get("message") or "").strip() if el is not None else ""
        if not msg and el is not None:
            msg = (el.text or "").strip()
        failures[name] = "\n".join(brief(msg)[:6])
    elif st in ("skipped", "pending") or tc.find("skipped") is not None:
        st = "skipped"
        el = tc.find("skipped")
        if el is not None and (el.get("message") or "").strip() == "skipped":
            unselected.add(name)
    elif st != "passed":
        st = "failed"
        failures[name] = f"status {tc.get('status')!r}"
    status[name] = st
counts = {k: sum(1 for v in status.values() if v == k) for k in ("passed", "failed", "skipped")}
print(f"\ncritest: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped of {len(status)} specs")
if failures:
    print("\nfailed specs:")
    for name in sorted(failures):
        print(f"  - {name}")
        for line in failures[name].splitlines():
            print(f"        {line}")

passed = sorted(n for n, s in status.items() if s == "passed")
if record and filtered:
    print(f"\nnot recording {must_pass_file}: FOCUS, EXTRA_SKIP or extra critest arguments narrowed the run")
    sys.exit(0)
if record and interrupted:
    print(f"\nnot recording {must_pass_file}: the run was interrupted or timed out before its end")
    sys.exit(1)
if record:
    with open(must_pass_file, "w") as f:
        f.write("# Specs scripts/critest.sh requires to pass: one ginkgo full name a line, as the JUnit\n")
        f.write("# report names it without \"[It] \". Rewritten by CRITEST_RECORD=1 scripts/critest.sh.\n")
        for n in passed:
            f.write(n + "\n")
    print(f"\nrecorded {len(passed)} passing specs in {must_pass_file}")
    sys.exit(0)
try:
    with open(must_pass_file) as f:
        must = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]
except FileNotFoundError:
    print(f"\nno {must_pass_file}: nothing is gated (CRITEST_RECORD=1 writes it)")
    sys.exit(0)
if filtered:
    # A narrowed run gates only the listed specs it selected.
    left_out = [n for n in must if n in unselected]
    if left_out:
        print(f"\n{len(left_out)} specs of {must_pass_file} were not selected (FOCUS/EXTRA_SKIP): not gated")
    must = [n for n in must if n not in unselected]
bad = [(n, status.get(n, "missing")) for n in must if status.get(n) != "passed"]
if bad:
    print(f"\nGATE FAILED: {len(bad)} of the {len(must)} specs in {must_pass_file} did not pass:")
    for n, s in bad:
        print(f"  - [{s}] {n}")
    sys.exit(1)
print(f"\ngate: all {len(must)} specs in {must_pass_file} passed")
PY
