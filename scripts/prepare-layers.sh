#!/usr/bin/env bash
# prepare-layers.sh [-v] FIXTURE_DIR OUT_DIR
#
# Turns the git-friendly layer fixture (see layers-fixture/README.md) into
# two ready-to-mount copies:
#
#   OUT_DIR/oci/{app,update,base}     OCI form: ".wh.NAME" / ".wh..wh..opq"
#                                     files kept as they are
#   OUT_DIR/kernel/{app,update,base}  kernel overlayfs form: whiteouts are 0/0
#                                     character devices, opaque directories
#                                     carry trusted.overlay.opaque=y
#
# Both copies have the manifest applied (hard links, modes, owners, xattrs,
# special files, ...) and identical, deterministic mtimes, so that entries
# visible through a mount stat the same whichever form is mounted.
# OUT_DIR is recreated on every run. Needs root (chown, mknod, trusted.*
# xattrs), coreutils and setfattr. Prints nothing on success unless -v.
set -euo pipefail
umask 022
export LC_ALL=C

LAYERS=(app update base) # lowerdir order, top first
# Per-layer base for the deterministic mtimes (2022, 2021 and 2020-01-01).
declare -A EPOCH=([app]=1640995200 [update]=1609459200 [base]=1577836800)

verbose=0
die() { echo "prepare-layers: $*" >&2; exit 1; }
log() { if ((verbose)); then echo "prepare-layers: $*" >&2; fi; }

args=()
for a in "$@"; do
    case $a in
        -v) verbose=1 ;;
        -h | --help) sed -n '2,17s/^# \{0,1\}//p' "$0"; exit 0 ;;
        -*) die "unknown option $a" ;;
        *) args+=("$a") ;;
    esac
done
((${#args[@]} == 2)) || die "usage: prepare-layers.sh [-v] FIXTURE_DIR OUT_DIR"
fixture=$(realpath -e -- "${args[0]}") || die "no fixture dir ${args[0]}"
out=${args[1]}
manifest=$fixture/manifest
[[ -f $manifest ]] || die "$manifest: missing"
for l in "${LAYERS[@]}"; do [[ -d $fixture/$l ]] || die "$fixture/$l: missing"; done
((EUID == 0)) || die "must run as root (chown, mknod, trusted.* xattrs)"
command -v setfattr >/dev/null || die "setfattr not found (Debian package: attr)"

# ---------------------------------------------------------------- OUT_DIR
# Refuse to wipe anything that is not (an empty dir or) an earlier output.
if [[ -e $out ]]; then
    [[ -d $out ]] || die "$out exists and is not a directory"
    for e in "$out"/* "$out"/.[!.]* "$out"/..?*; do
        [[ -e $e || -L $e ]] || continue
        case ${e##*/} in oci | kernel) ;; *) die "refusing to wipe $out: unexpected entry ${e##*/}" ;; esac
    done
    rm -rf --one-file-system -- "$out"
fi
mkdir -p -- "$out/oci" "$out/kernel"
out=$(realpath -e -- "$out")
oci=$out/oci
kern=$out/kernel

# ---------------------------------------------------------------- OCI copy
for l in "${LAYERS[@]}"; do
    log "copying $l"
    cp -R -- "$fixture/$l" "$oci/$l"
    # Normalise what a checkout leaves to chance: owner, modes (git keeps
    # only the executable bit).
    chown -hR 0:0 -- "$oci/$l"
    find "$oci/$l" -type d -exec chmod 0755 {} +
    find "$oci/$l" -type f -perm -u+x -exec chmod 0755 {} +
    find "$oci/$l" -type f ! -perm -u+x -exec chmod 0644 {} +
done

# ---------------------------------------------------------------- manifest
# A manifest path: LAYER/relative/path, no "..", no absolute paths. Sets P to
# its location in the OCI copy (a function printing it would hide a die()
# inside a command substitution).
mp() {
    [[ $1 == */* && ${1%%/*} =~ ^(app|update|base)$ ]] || die "manifest:$lineno: bad path '$1' (must start with a layer)"
    [[ /$1/ != */../* && /$1/ != */./* ]] || die "manifest:$lineno: bad path '$1'"
    P=$oci/$1
}
need() { (($# - 1 == $1)) || die "manifest:$lineno: '$op' takes $1 argument(s)"; }

lineno=0
while IFS= read -r line || [[ -n $line ]]; do
    lineno=$((lineno + 1))
    [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
    read -r -a f <<<"$line"
    op=${f[0]}
    set -- "${f[@]:1}"
    log "manifest:$lineno: $line"
    case $op in
        dir) need 1 "$@"; mp "$1"; mkdir -p -- "$P" ;;
        link)
            need 2 "$@"
            [[ ${1%%/*} == "${2%%/*}" ]] || die "manifest:$lineno: hard link across layers"
            mp "$1"; src=$P; mp "$2"
            ln -- "$src" "$P" ;;
        fifo) need 1 "$@"; mp "$1"; mkfifo -- "$P" ;;
        mknod)
            need 4 "$@"
            [[ $2 == [cb] ]] || die "manifest:$lineno: mknod type must be c or b"
            mp "$1"; mknod -- "$P" "$2" "$3" "$4" ;;
        gen)
            need 2 "$@"
            [[ $2 =~ ^[0-9]+$ ]] || die "manifest:$lineno: bad size '$2'"
            mp "$1"
            # 29-byte numbered lines: a read at a wrong offset never matches.
            seq -f '%08.0f strata fixture line' 1 $((($2 + 28) / 29)) >"$P"
            truncate -s "$2" -- "$P" ;;
        deep)
            need 4 "$@"
            [[ $2 =~ ^[0-9]+$ && $3 =~ ^[0-9]+$ && $2 -ge 4 && $2 -le 255 ]] || die "manifest:$lineno: bad deep arguments"
            [[ $4 != */* ]] || die "manifest:$lineno: deep FILE must be a plain name"
            mp "$1"
            mkdir -p -- "$P"
            # cd step by step: relative names stay short whatever OUT_DIR is.
            (
                cd -- "$P"
                pad=$(printf "%$(($2 - 3))s" '' | tr ' ' d)
                for ((i = 1; i <= $3; i++)); do
                    seg=$(printf '%02d-%s' "$i" "$pad")
                    mkdir -p -- "$seg"
                    cd -- "$seg"
                done
                printf 'bottom of the deep chain in %s\n' "${1%%/*}" >"$4"
            ) ;;
        chown) need 2 "$@"; mp "$2"; chown -h -- "$1" "$P" ;;
        chmod)
            need 2 "$@"
            [[ $1 =~ ^[0-7]{3,4}$ ]] || die "manifest:$lineno: bad mode '$1'"
            mp "$2"; chmod -- "$1" "$P" ;;
        xattr) need 3 "$@"; mp "$1"; setfattr -h -n "$2" -v "$3" -- "$P" ;;
        *) die "manifest:$lineno: unknown operation '$op'" ;;
    esac
done <"$manifest"

# ---------------------------------------------------------------- mtimes
# Deterministic, distinct per entry (with nanoseconds), one epoch per layer.
for l in "${LAYERS[@]}"; do
    log "setting mtimes in $l"
    (
        cd -- "$oci/$l"
        i=0
        find . -print0 | sort -z | while IFS= read -r -d '' p; do
            printf -v ts '@%d.%09d' $((EPOCH[$l] + i * 3607)) $(((i * 7919 + 1) * 1000003 % 1000000000))
            touch -h -c -d "$ts" -- "$p"
            i=$((i + 1))
        done
    )
done

# ---------------------------------------------------------------- kernel twin
for l in "${LAYERS[@]}"; do
    log "converting $l to the kernel form"
    cp -dR --preserve=mode,ownership,timestamps,links,xattr -- "$oci/$l" "$kern/$l"
    (
        cd -- "$kern/$l"
        ref=../../oci/$l # the OCI twin, relative: deep paths stay < PATH_MAX
        # Opaque markers first, then plain whiteouts.
        find . -name '.wh..wh..opq' -print0 | while IFS= read -r -d '' w; do
            [[ -f $w ]] || die "$l/${w#./}: opaque marker is not a regular file"
            setfattr -n trusted.overlay.opaque -v y -- "${w%/*}"
            rm -- "$w"
        done
        find . -name '.wh.*' -print0 | while IFS= read -r -d '' w; do
            dir=${w%/*} name=${w##*/.wh.}
            [[ $name != .wh.* ]] || die "$l/${w#./}: unsupported aufs meta file"
            [[ -n $name && -f $w ]] || die "$l/${w#./}: bad whiteout"
            if [[ -d $dir/$name && ! -L $dir/$name ]]; then
                # Whited out and recreated in the same layer: the whiteout
                # hides only the lower layers, i.e. the directory is opaque.
                setfattr -n trusted.overlay.opaque -v y -- "$dir/$name"
            elif [[ -e $dir/$name || -L $dir/$name ]]; then
                : # a non-directory already hides everything below it
            else
                mknod -- "$dir/$name" c 0 0
                chown -h 0:0 -- "$dir/$name"
                touch -h -c -r "$w" -- "$dir/$name"
            fi
            rm -- "$w"
        done
        # Creating/removing entries touched the parents: restore every dir.
        find . -type d -print0 | while IFS= read -r -d '' d; do
            touch -h -c -r "$ref/$d" -- "$d"
        done
        if [[ -n $(find . -name '.wh.*' -print -quit) ]]; then die "$l: .wh. entries left in kernel form"; fi
    )
done
log "done: $out"
