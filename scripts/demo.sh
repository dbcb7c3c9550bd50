#!/usr/bin/env bash
# Mounts the bundled fixture layers (layers-fixture/, top first: app, update,
# base) with strata and prints the merged tree, then unmounts.
#   scripts/demo.sh            the OCI form (.wh. whiteouts), as container tools unpack it
#   scripts/demo.sh --kernel   the kernel form (0/0 char devices, opaque xattrs)
# Needs root (or a user allowed to mount FUSE) and /dev/fuse.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
form=oci
[ "${1:-}" = "--kernel" ] && form=kernel
bin=${STRATA_BIN:-$root/target/release/strata}
if [ -z "${STRATA_BIN:-}" ]; then
  cargo build --release --quiet --manifest-path "$root/Cargo.toml"
fi

work=$(mktemp -d /tmp/strata-demo.XXXXXX)
cleanup() {
  cd /
  if mountpoint -q "$work/merged" 2>/dev/null; then
    fusermount3 -u "$work/merged" 2>/dev/null || umount "$work/merged"
  fi
  rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/prepare-layers.sh" "$root/layers-fixture" "$work/layers"
l="$work/layers/$form"
mkdir "$work/merged"
"$bin" -o "lowerdir=$l/app:$l/update:$l/base" "$work/merged"
echo "strata: lowerdir=app:update:base ($form form) mounted on $work/merged"
cd "$work/merged"
find . -mindepth 1 \( -type l -printf '%M %5u %5g %7s  %p -> %l\n' \) -o -printf '%M %5u %5g %7s  %p\n' \
  | sort -k5 | cut -c1-160
