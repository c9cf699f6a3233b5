#!/usr/bin/env bash
# Builds a container image of the remexec daemons with no registry: a root file system holding
# the binary (and remexec-supervisor beside it), the shared libraries it loads (as ldd lists them), /tmp and the action user, on
# top of BASE (default: scratch, which is enough for a scheduler; a worker that runs actions
# with the process backend needs their tools, e.g. BASE=remexec-toolchain:latest from
# .ci/test-image).
#
# Usage: build-image.sh BINARY TAG [BASE]
#   e.g. build-image.sh target/release/remexec remexec:latest
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 BINARY TAG [BASE]" >&2; exit 2; }
binary="$1" tag="$2" base="${3:-scratch}"
[[ -x "$binary" ]] || { echo "$0: $binary is not an executable" >&2; exit 1; }

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/etc" "$root/data"
chmod 1777 "$root/tmp"
cp "$binary" "$root/usr/local/bin/remexec"
# The small supervisor the process backend starts for each action, when it was built beside
# the binary (else `remexec supervise` is used, which starts about 1 ms slower).
supervisor="$(dirname "$binary")/remexec-supervisor"
[[ -x "$supervisor" ]] && cp "$supervisor" "$root/usr/local/bin/remexec-supervisor"
# The libraries and the loader, each at its real path, with the host's top-level symlinks
# (a merged /usr's /lib -> usr/lib) so that the paths the binary asks for resolve, and a
# base image's own layout is kept.
for lib in $(ldd "$binary" | grep -o '/[^ ]*' | sort -u); do
  top="/$(echo "$lib" | cut -d/ -f2)"
  if [[ -L "$top" && ! -e "$root$top" ]]; then
    ln -s "$(readlink "$top")" "$root$top"
  fi
  real="$(readlink -f "$lib")"
  mkdir -p "$root$(dirname "$real")"
  cp "$real" "$root$real"
  # The name the binary asks for, where it differs from the real path (/lib64's loader).
  link="$(readlink -f "$(dirname "$lib")")/$(basename "$lib")"
  if [[ "$link" != "$real" ]]; then
    mkdir -p "$root$(dirname "$link")"
    ln -sf "$real" "$root$link"
  fi
done
# root, and the unprivileged user a worker started as root runs actions as.
cat > "$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
remexec-action:x:990:990:remexec actions:/nonexistent:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
PASSWD
cat > "$root/etc/group" <<'GROUP'
root:x:0:
remexec-action:x:990:
nogroup:x:65534:
GROUP
cat > "$context/Dockerfile" <<DOCKERFILE
FROM $base
COPY rootfs/ /
ENTRYPOINT ["/usr/local/bin/remexec"]
DOCKERFILE
docker build --quiet -t "$tag" "$context" >/dev/null
echo "$tag"
