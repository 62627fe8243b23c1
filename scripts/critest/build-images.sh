#!/bin/bash
# Builds, fully offline, stand-ins for every image critest v1.37 pulls and pushes them to a
# local registry at $REG (default 127.0.0.1:5000) under the *upstream repository paths*:
# a daemon that mirrors registry.k8s.io, gcr.io and k8s.gcr.io to that registry then pulls
# them under their upstream names, as critest asks for them.
# The image list is cri-tools v1.37 pkg/validate/consts*.go, security_context_linux.go,
# multi_container_linux.go and pkg/framework/util.go.
# Needs: umoci, skopeo, gcc with a static libc (libc6-dev), a running registry at $REG, and
# the busybox rootfs tarball make-rootfs.sh (beside this file) builds; $BB names an existing one.
# usage: REG=127.0.0.1:5000 build-images.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
REG=${REG:-127.0.0.1:5000}
W=$(mktemp -d /tmp/minipod-critest-images.XXXX)
trap 'rm -rf "$W"' EXIT
BB=${BB:-$W/busybox-rootfs.tar.gz}
[ -f "$BB" ] || "$here/make-rootfs.sh" "$BB" >/dev/null
cd "$W"
umoci init --layout oci

# ---- helpers --------------------------------------------------------------
new_from_busybox() {   # $1 = tag in the layout; unpacks an empty image and fills it with the rootfs
  umoci new --image "oci:$1"
  umoci unpack --image "oci:$1" "b-$1" >/dev/null
  tar -xzf "$BB" --strip-components=2 --no-same-owner -C "b-$1/rootfs" bundle/rootfs; rm -f "b-$1/rootfs/.dockerenv"
  # applets as hardlinks, not symlinks: critest MaskedPaths masks /bin/ls, which must not mask busybox
  find "b-$1/rootfs" -type l | while read -r l; do
    if [ "$(basename "$(readlink "$l")")" = busybox ]; then ln -f "b-$1/rootfs/bin/busybox" "$l"; fi; done
  mkdir -p "b-$1/rootfs/"{tmp,var/run,root,proc,sys,dev}
  chmod 1777 "b-$1/rootfs/tmp"
}
repack() { umoci repack --image "oci:$1" "b-$1"; rm -rf "b-$1"; }
cfg() { local t=$1; shift; umoci config --image "oci:$t" --os linux --architecture amd64 --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"; }
push() { skopeo copy -q --dest-tls-verify=false "oci:oci:$1" "docker://$REG/$2"; echo "pushed $2"; }

# fake nginx/httpd (static C, no nginx package needed): exe basename "nginx" => comm "nginx"
# (a busybox sh script would show up as "sh"), re-execs itself so /proc/PID/cmdline reads
# "nginx: master process ..." (the PID-namespace specs look for it), writes
# /var/run/nginx.pid, serves busybox httpd on $PORT (default 80) as a child, exits on TERM.
cat > fake-nginx.c <<'CEOF'
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
static pid_t child;
static void term(int s) { (void)s; if (child > 0) kill(child, SIGTERM); _exit(0); }
int main(int argc, char **argv) {
  const char *title = "nginx: master process nginx -g daemon off;";
  if (argc < 1 || strcmp(argv[0], title) != 0) {
    char *nargv[] = {(char *)title, NULL};
    execv("/proc/self/exe", nargv); perror("execv"); return 1;
  }
  const char *port = getenv("PORT") ? getenv("PORT") : "80";
  const char *banner = getenv("BANNER") ? getenv("BANNER") : "nginx";
  mkdir("/var/run", 0755);
  FILE *f = fopen("/var/run/nginx.pid", "w"); if (f) { fprintf(f, "%d\n", (int)getpid()); fclose(f); }
  mkdir("/usr", 0755); mkdir("/usr/share", 0755); mkdir("/usr/share/nginx", 0755); mkdir("/usr/share/nginx/html", 0755);
  f = fopen("/usr/share/nginx/html/index.html", "a"); if (f) { fputs("<h1>Welcome to nginx!</h1>\n", f); fclose(f); }
  printf("%s listening on %s\n", banner, port); fflush(stdout);
  signal(SIGTERM, term); signal(SIGINT, term);
  child = fork();
  if (child == 0) { execl("/bin/busybox", "httpd", "-f", "-p", port, "-h", "/usr/share/nginx/html", (char *)NULL); _exit(127); }
  int st; while (waitpid(child, &st, 0) < 0) {}
  fprintf(stderr, "httpd exited\n"); return 1;
}
CEOF
gcc -static -O2 -o fake-nginx fake-nginx.c

# nonewprivs stand-in: a setuid-root binary that prints its effective uid; with
# NoNewPrivs set the setuid bit must not take effect.
cat > nnp.c <<'CEOF'
#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }
CEOF
gcc -static -O2 -o nnp nnp.c

# ---- images the runtime/container specs use -------------------------------
new_from_busybox busybox; repack busybox; cfg busybox --config.cmd sh
push busybox e2e-test-images/busybox:1.29-2                       # defaultTestContainerImage

for v in nginx hostnet httpd; do
  new_from_busybox $v
  install -D -m 755 fake-nginx "b-$v/rootfs/usr/sbin/nginx"
  mkdir -p "b-$v/rootfs/usr/share/nginx/html"; echo '<h1>Welcome to nginx!</h1>' > "b-$v/rootfs/usr/share/nginx/html/index.html"
  repack $v
done
cfg nginx   --config.entrypoint /usr/sbin/nginx --config.exposedports 80/tcp
cfg hostnet --config.entrypoint /usr/sbin/nginx --config.env PORT=12003   # webServerHostNetContainerPort
cfg httpd   --config.entrypoint /usr/sbin/nginx --config.env BANNER=httpd
push nginx   e2e-test-images/nginx:1.14-2                          # webServerTestImage + nginxContainerImage
push hostnet k8s-staging-cri-tools/hostnet-nginx-amd64:latest      # hostNetWebServerImage
push httpd   e2e-test-images/httpd:2.4.39-4                        # httpdImage (Multiple Containers)

new_from_busybox nnp
install -D -m 4755 -o 0 -g 0 nnp "b-nnp/rootfs/usr/local/bin/nnp"
repack nnp; cfg nnp --config.entrypoint /usr/local/bin/nnp
push nnp e2e-test-images/nonewprivs:1.3                            # noNewPrivsImage

new_from_busybox pdg
echo 'default-user:x:1000:1000::/home/default-user:/bin/sh' >> b-pdg/rootfs/etc/passwd
echo 'default-user:x:1000:' >> b-pdg/rootfs/etc/group
echo 'group-defined-in-image:x:50000:default-user' >> b-pdg/rootfs/etc/group
repack pdg; cfg pdg --config.user 1000 --config.cmd sh
push pdg k8s-staging-cri-tools/test-image-predefined-group:latest  # SupplementalGroupsPolicy (uid 1000, gid 50000)

# ---- images only the Image Manager / Image*Consistency / Image Volume specs pull
mk_marker() {  # $1 layout tag, $2 marker file name: distinct content (and so digest) per image
  new_from_busybox "$1"; touch "b-$1/rootfs/$2"; repack "$1"; cfg "$1" --config.cmd sh
}
for n in 1 2 3; do mk_marker "t$n" "test-image-$n"; push "t$n" "k8s-staging-cri-tools/test-image-$n:latest"; done
mk_marker tlatest test-image-latest; push tlatest k8s-staging-cri-tools/test-image-latest:latest
mk_marker ttag test-image-tag
push ttag k8s-staging-cri-tools/test-image-tag:test; push ttag k8s-staging-cri-tools/test-image-tag:all
mk_marker ttags same-image                                         # three tags, one image
for n in 1 2 3; do push ttags "k8s-staging-cri-tools/test-image-tags:$n"; done
declare -A U=([test-image-user-uid]=1002 [test-image-user-username]=www-data
              [test-image-user-uid-group]=1003:1004 [test-image-user-username-group]=www-data:1004)
for i in "${!U[@]}"; do
  new_from_busybox "$i"; repack "$i"; cfg "$i" --config.user "${U[$i]}" --config.cmd sh
  push "$i" "k8s-staging-cri-tools/$i:latest"
done
# pause: a shell loop that exits on TERM (the real pause is a static binary doing the same).
new_from_busybox pause; repack pause; cfg pause --config.entrypoint /bin/sh --config.entrypoint -c --config.entrypoint 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
push pause pause:3.9          # serves both registry.k8s.io/pause:3.9 and k8s.gcr.io/pause:3.9
# NOT reproducible offline: k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2... (its
# digest is fixed upstream), so critest.sh skips 'public image with digest'.
curl -s "http://$REG/v2/_catalog"; echo
