#!/usr/bin/env bash
# The main job on embedded defaults: install, build, and run the CRI daemon (state under
# /run/minipod, images under /var/lib/minipod/images, socket /run/minipod/minipod.sock,
# pods on the default network minipod0, 10.88.0.0/16). Stop it with Ctrl-C; pods stay.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
cargo build --release -p minipod-cri
cat <<'USAGE'
minipod: the CRI daemon is starting. From another shell:
  crictl --runtime-endpoint unix:///run/minipod/minipod.sock version
  export CONTAINER_RUNTIME_ENDPOINT=unix:///run/minipod/minipod.sock IMAGE_SERVICE_ENDPOINT=unix:///run/minipod/minipod.sock
  crictl pull REGISTRY/IMAGE:TAG    # or: minipod image import ./some-oci-layout --name busybox:1
  crictl runp pod.json; crictl create POD ctr.json pod.json; crictl start CTR; crictl ps
(crictl is installed at /root/go/bin/crictl.) A one-shot container without the daemon:
  ./target/release/minipod demo
USAGE
exec ./target/release/minipod serve "$@"
