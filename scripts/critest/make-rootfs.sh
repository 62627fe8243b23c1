#!/bin/bash
# Builds the busybox rootfs tarball build-images.sh starts every image from (bundle/rootfs/...),
# from Debian packages only, so it works offline (apt is reachable, Docker Hub is not):
# - the *dynamic* busybox (package busybox, not busybox-static): its sh execs applets through
#   PATH, which critest's MaskedPaths spec needs (it masks /bin/ls and expects `ls` to fail);
#   the static one runs applets in-process and never sees the mask;
# - the libraries it (and ipcs) link against, found with ldd;
# - util-linux's ipcs: the IPC-namespace specs run `ipcs -m`, which busybox lacks;
# - a small pgrep stand-in: the PID-namespace specs run `sh -c "pgrep sleep"`, which busybox's
#   Debian build lacks;
# - /etc/passwd and /etc/group with the users the image specs name (www-data, nobody).
# usage: [DEB_DIR=dir] make-rootfs.sh OUT.tar.gz  (DEB_DIR: where busybox_*.deb was
# downloaded already, as critest.sh does before it enters a namespace with no way out)
set -euo pipefail
OUT=${1:?usage: make-rootfs.sh OUT.tar.gz}
w=$(mktemp -d); trap 'rm -rf "$w"' EXIT
if ls "${DEB_DIR:-/nonexistent}"/busybox_*.deb >/dev/null 2>&1; then
    cp "$DEB_DIR"/busybox_*.deb "$w/"
else
    (cd "$w" && { apt-get -o Acquire::Retries=5 download busybox >/dev/null 2>&1 \
        || { apt-get -o Acquire::Retries=5 update -qq && apt-get -o Acquire::Retries=5 download busybox >/dev/null; }; })
fi
(cd "$w" && dpkg-deb -x busybox_*.deb deb)
r=$w/bundle/rootfs; mkdir -p "$r"/{bin,sbin,usr/bin,usr/sbin,lib64,lib/x86_64-linux-gnu,etc,tmp,var/run,root,proc,sys,dev,home}
cp "$w/deb/bin/busybox" "$r/bin/busybox"
# Applets as hard links, not symlinks: masking /bin/ls must not mask busybox itself.
for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -f "$r/bin/busybox" "$r/bin/$a"; done
cp /usr/bin/ipcs "$r/usr/bin/ipcs"
for f in $(ldd "$r/bin/busybox" /usr/bin/ipcs | awk '/=>/{print $3} /ld-linux/{print $1}' | sort -u); do
  cp -L "$f" "$r$f" 2>/dev/null || cp -L "$f" "$r/lib/x86_64-linux-gnu/"
done
cat > "$r/usr/bin/pgrep" <<'SH'
#!/bin/sh
# pgrep stand-in: pgrep PATTERN prints the pids whose comm matches PATTERN
[ -n "$1" ] || exit 2
found=1
for d in /proc/[0-9]*; do
  c=$(cat "$d/comm" 2>/dev/null) || continue
  if echo "$c" | grep -q -- "$1"; then echo "${d#/proc/}"; found=0; fi
done
exit $found
SH
chmod 755 "$r/usr/bin/pgrep"; chmod 1777 "$r/tmp"
printf 'root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n' > "$r/etc/passwd"
printf 'root:x:0:\nwww-data:x:33:\nnogroup:x:65534:\n' > "$r/etc/group"
tar -C "$w" -czf "$OUT" bundle
echo "$OUT"
