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
# The fixture's 3,900-byte deep path is folded into one line.
find . -mindepth 1 -path './deep/*' -prune -o \
  \( -type l -printf '%M %5u %5g %7s  %p -> %l\n' \) -o -printf '%M %5u %5g %7s  %p\n' \
  | sort -k5
echo "(./deep is a chain of $(find deep -type d | wc -l) directories; its file's path is $(find deep -type f | head -1 | wc -c) bytes long)"
echo "$(find . | wc -l) entries in all; .wh. names visible: $(find . -name '.wh.*' | wc -l)"
