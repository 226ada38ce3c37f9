#!/usr/bin/env bash
# Build the local Docker image crownest/python-node:latest (DESIGN.md §5).
#
# Debian forky (testing: Python 3.14, Node.js 24 LTS) + python3 + nodejs,
# non-root user crownest (uid/gid 10001), /workspace owned by it. No registry
# is needed: the root filesystem is made with debootstrap from the Debian
# mirror configured in this machine's apt sources and loaded with
# `docker import`.
#
#   scripts/build-docker-image.sh [--force] [--method auto|debootstrap|dockerfile]
#                                 [--print-key] [--help]
#
# Methods (see docs/images.md):
#   debootstrap  debootstrap + docker import; needs root, debootstrap (or apt-get
#                to install it) and a Debian mirror in the apt sources
#   dockerfile   docker build of docker/python-node/Dockerfile FROM the base image
#                debian:<suite>-slim, which must be on this host or pullable
#   auto         (default) debootstrap where it can run, else dockerfile, with a note
#
# Caching (see docs/images.md):
#   * key = sha256 over this script, docker/python-node/Dockerfile,
#     docker/python-node/packages.txt, the suite and the architecture;
#   * the image carries LABEL crownest.image-key=<key>; if the tag already has
#     that label the script exits 0 at once ("up to date");
#   * the rootfs tarball is kept in
#     ${CROWNEST_CACHE_DIR:-$HOME/.cache/crownest}/images/<key>.tar, so a build
#     after `docker rmi` is only a `docker import` (no root needed).
#   --force ignores both caches.
#
# Environment:
#   CROWNEST_CACHE_DIR       cache root (default $HOME/.cache/crownest)
#   CROWNEST_IMAGE           image tag (default crownest/python-node:latest)
#   CROWNEST_DEBIAN_SUITE    Debian suite (default forky); a suite the host's
#                            debootstrap has no script for is built with its
#                            `sid` script
#   CROWNEST_DEBIAN_MIRROR   override the mirror read from the apt sources
#   CROWNEST_APT_SOURCES     apt source files to read (default: the system's)
#   CROWNEST_IMAGE_NO_UPDATES=1  skip applying <suite>-updates/-security
#   CROWNEST_DOCKER_BASE     dockerfile method only: base image (build arg
#                            BASE, default debian:<suite>-slim)
set -euo pipefail

SCRIPT_PATH="$(readlink -f -- "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd -- "$(dirname -- "$SCRIPT_PATH")/.." && pwd)"
CTX_DIR="$REPO_ROOT/docker/python-node"
DOCKERFILE="$CTX_DIR/Dockerfile"
PACKAGES_FILE="$CTX_DIR/packages.txt"

IMAGE="${CROWNEST_IMAGE:-crownest/python-node:latest}"
SUITE="${CROWNEST_DEBIAN_SUITE:-forky}"
DOCKER_BASE="${CROWNEST_DOCKER_BASE:-debian:$SUITE-slim}"
CACHE_ROOT="${CROWNEST_CACHE_DIR:-${HOME:-/root}/.cache/crownest}"
IMG_CACHE="$CACHE_ROOT/images"
LABEL_KEY="crownest.image-key"
USER_NAME=crownest
USER_ID=10001

FORCE=0
METHOD=auto
PRINT_KEY=0

log() { printf '[build-docker-image] %s\n' "$*" >&2; }
die() { printf '[build-docker-image] error: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT_PATH"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --force|-f) FORCE=1 ;;
        --method) [ $# -ge 2 ] || die "--method needs an argument"; METHOD="$2"; shift ;;
        --method=*) METHOD="${1#--method=}" ;;
        --print-key) PRINT_KEY=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (try --help)" ;;
    esac
    shift
done
case "$METHOD" in auto|debootstrap|dockerfile) ;; *) die "--method must be auto, debootstrap or dockerfile" ;; esac

[ -f "$DOCKERFILE" ] || die "missing $DOCKERFILE"
[ -f "$PACKAGES_FILE" ] || die "missing $PACKAGES_FILE"

# Packages: strip comments/blank lines, one per line.
PACKAGES="$(sed 's/#.*//' "$PACKAGES_FILE" | tr -s ' \t' '\n\n' | sed '/^$/d')"
[ -n "$PACKAGES" ] || die "$PACKAGES_FILE lists no packages"
INCLUDE="$(printf '%s\n' "$PACKAGES" | paste -sd, -)"

if command -v dpkg >/dev/null 2>&1; then
    ARCH="$(dpkg --print-architecture)"
else
    case "$(uname -m)" in x86_64) ARCH=amd64 ;; aarch64) ARCH=arm64 ;; *) ARCH="$(uname -m)" ;; esac
fi

# ---------------------------------------------------------------- cache key
# The build method is deliberately not part of the key: both methods produce
# the same image contract from the same inputs.
KEY="$({
    printf 'crownest-image-key v1\nsuite=%s\narch=%s\n' "$SUITE" "$ARCH"
    printf -- '--- script\n';     cat "$SCRIPT_PATH"
    printf -- '--- Dockerfile\n'; cat "$DOCKERFILE"
    printf -- '--- packages\n';   printf '%s\n' "$PACKAGES"
} | sha256sum | cut -d' ' -f1)"

if [ "$PRINT_KEY" = 1 ]; then printf '%s\n' "$KEY"; exit 0; fi

command -v docker >/dev/null 2>&1 || die "docker CLI not found"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon"

image_key() { docker image inspect --format "{{ index .Config.Labels \"$LABEL_KEY\" }}" "$IMAGE" 2>/dev/null || true; }
image_id()  { docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true; }

report() {
    local id size
    id="$(image_id)"
    size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
    log "$1: $IMAGE key=${KEY:0:16}... size=$((size / 1024 / 1024))MiB"
    printf '%s\n' "$id"
}

if [ "$FORCE" = 0 ] && [ "$(image_key)" = "$KEY" ]; then
    report "up to date"
    exit 0
fi

mkdir -p "$IMG_CACHE"
# Serialise concurrent builds (several engineers/tests may call this at once).
exec 9>"$IMG_CACHE/.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
    # Someone else may have finished the same build while we waited.
    if [ "$FORCE" = 0 ] && [ "$(image_key)" = "$KEY" ]; then
        report "up to date"
        exit 0
    fi
fi

OLD_ID="$(image_id)"
CACHE_TAR="$IMG_CACHE/$KEY.tar"
WORK_DIR=""
ROOTFS=""

# Unmount anything still mounted below $ROOTFS. Returns non-zero if some mount
# cannot be removed, in which case nothing is deleted.
unmount_below() {
    local root="$1" mp
    [ -n "$root" ] && [ -d "$root" ] || return 0
    # Deepest first.
    while read -r mp; do
        umount "$mp" 2>/dev/null || umount -l "$mp" 2>/dev/null || true
    done < <(awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r)
    ! awk -v r="$root" '$2 == r || index($2, r "/") == 1 { found = 1 } END { exit !found }' /proc/mounts
}

cleanup() {
    local rc=$?
    set +e
    if [ -n "$WORK_DIR" ] && [ -d "$WORK_DIR" ]; then
        if unmount_below "$WORK_DIR"; then
            rm -rf --one-file-system -- "$WORK_DIR"
        else
            log "warning: mounts remain below $WORK_DIR; not deleting it"
        fi
    fi
    rm -f -- "$CACHE_TAR.tmp.$$"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

IMPORT_CHANGES=(
    --change "USER $USER_ID:$USER_ID"
    --change 'WORKDIR /workspace'
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8'
    --change 'CMD ["/bin/sh"]'
    --change "LABEL $LABEL_KEY=$KEY"
)

import_tar() {
    docker import "${IMPORT_CHANGES[@]}" \
        --message "crownest/python-node ($SUITE, key $KEY)" \
        - "$IMAGE" < "$1" >/dev/null
}

finish() {
    local new_id
    new_id="$(image_id)"
    [ "$(image_key)" = "$KEY" ] || die "image $IMAGE does not carry $LABEL_KEY=$KEY after the build"
    # Drop the previous, now untagged, image if nothing uses it (best effort).
    if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$new_id" ]; then
        docker rmi "$OLD_ID" >/dev/null 2>&1 || true
    fi
    report "$1"
    exit 0
}

# Print "URI<TAB>SUITE" for every enabled `deb` source in the given apt source
# files. Handles one-line (.list) and deb822 (.sources) formats.
apt_source_entries() {
    local f
    for f in "$@"; do
        [ -r "$f" ] || continue
        case "$f" in
            *.sources)
                awk '
                    function flush(   i, j, nu, ns, u, s, t) {
                        if (en != "no" && en != "false" && types ~ /(^|[ \t])deb([ \t]|$)/) {
                            nu = split(uris, u, /[ \t]+/); ns = split(suites, s, /[ \t]+/)
                            for (i = 1; i <= nu; i++) for (j = 1; j <= ns; j++)
                                if (u[i] != "" && s[j] != "") print u[i] "\t" s[j]
                        }
                        types = uris = suites = last = ""; en = "yes"
                    }
                    BEGIN { en = "yes" }
                    /^[ \t]*#/ { next }
                    /^[ \t]*$/ { flush(); next }
                    /^[ \t]/ {   # continuation line
                        sub(/^[ \t]+/, ""); sub(/[ \t]+$/, "")
                        if (last == "types") types = types " " $0
                        else if (last == "uris") uris = uris " " $0
                        else if (last == "suites") suites = suites " " $0
                        next
                    }
                    {
                        k = tolower($0); sub(/:.*/, "", k)
                        v = $0; sub(/^[^:]*:[ \t]*/, "", v); sub(/[ \t]+$/, "", v)
                        last = k
                        if (k == "types") types = v
                        else if (k == "uris") uris = v
                        else if (k == "suites") suites = v
                        else if (k == "enabled") en = tolower(v)
                    }
                    END { flush() }' "$f"
                ;;
            *)
                sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "$f" |
                    awk '$1 == "deb" && NF >= 3 { print $2 "\t" $3 }'
                ;;
        esac
    done
}

if [ -n "${CROWNEST_APT_SOURCES:-}" ]; then
    # shellcheck disable=SC2206
    SOURCE_FILES=($CROWNEST_APT_SOURCES)
else
    shopt -s nullglob
    SOURCE_FILES=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources)
    shopt -u nullglob
fi
ENTRIES="$(apt_source_entries "${SOURCE_FILES[@]}" | awk -F'\t' '$1 ~ /^https?:\/\//' | sed 's#/*\t#\t#')"

# First URI serving exactly suite $1.
uri_for_suite() { printf '%s\n' "$ENTRIES" | awk -F'\t' -v s="$1" '$2 == s { print $1; exit }'; }
# First URI serving some suite named <release>-$1 (updates, security).
uri_for_suffix() { printf '%s\n' "$ENTRIES" | awk -F'\t' -v x="-$1" 'substr($2, length($2) - length(x) + 1) == x { print $1; exit }'; }

MIRROR="${CROWNEST_DEBIAN_MIRROR:-}"
if [ -z "$MIRROR" ]; then
    MIRROR="$(uri_for_suite "$SUITE")"
fi
if [ -z "$MIRROR" ]; then
    # Host runs another release: take the URI of a plain release suite
    # (not -security/-updates/-backports/-proposed-updates); same archive.
    MIRROR="$(printf '%s\n' "$ENTRIES" |
        awk -F'\t' '$2 !~ /-(security|updates|backports|proposed-updates)$/ && $2 !~ /\// { print $1; exit }')"
fi
MIRROR="${MIRROR%/}"

UPDATES_URI=""; SECURITY_URI=""
if [ "${CROWNEST_IMAGE_NO_UPDATES:-0}" != 1 ]; then
    UPDATES_URI="$(uri_for_suite "$SUITE-updates")"
    SECURITY_URI="$(uri_for_suite "$SUITE-security")"
    # The host may run another release than the image (e.g. a bookworm host building the
    # trixie image): the archive that serves the host's -updates / -security suites serves
    # the image's too.
    [ -n "$UPDATES_URI" ] || UPDATES_URI="$(uri_for_suffix updates)"
    [ -n "$SECURITY_URI" ] || SECURITY_URI="$(uri_for_suffix security)"
fi

# ------------------------------------------------- cached rootfs tarball
# Only a `docker import`: no root needed, whichever method made it.
if [ "$METHOD" != dockerfile ] && [ "$FORCE" = 0 ] && [ -s "$CACHE_TAR" ]; then
    log "importing cached rootfs $CACHE_TAR"
    if import_tar "$CACHE_TAR"; then
        finish "imported from cache"
    fi
    log "warning: import of cached tarball failed; deleting it and rebuilding"
    rm -f -- "$CACHE_TAR"
fi

# ---------------------------------------------------- choosing the method
# Why the debootstrap method cannot run on this machine (empty: it can).
NO_DEBOOTSTRAP=""
why_not() { NO_DEBOOTSTRAP="${NO_DEBOOTSTRAP:+$NO_DEBOOTSTRAP; }$1"; }
[ "$(id -u)" = 0 ] || why_not "it needs root (debootstrap, chroot) and this is uid $(id -u)"
command -v debootstrap >/dev/null 2>&1 || command -v apt-get >/dev/null 2>&1 ||
    why_not "neither debootstrap nor apt-get (to install it) is installed"
[ -n "$MIRROR" ] ||
    why_not "no Debian mirror in ${SOURCE_FILES[*]:-(no apt source files)} (set CROWNEST_DEBIAN_MIRROR)"

if [ "$METHOD" = auto ]; then
    if [ -z "$NO_DEBOOTSTRAP" ]; then
        METHOD=debootstrap
    else
        log "note: the debootstrap method cannot run here ($NO_DEBOOTSTRAP); using --method dockerfile (base image $DOCKER_BASE)"
        METHOD=dockerfile
    fi
fi

# ------------------------------------------------------- registry path
if [ "$METHOD" = dockerfile ]; then
    if ! docker image inspect "$DOCKER_BASE" >/dev/null 2>&1; then
        log "base image $DOCKER_BASE is not on this host: docker pull $DOCKER_BASE"
        if ! docker pull "$DOCKER_BASE" >&2; then
            msg="the dockerfile method needs the base image $DOCKER_BASE, which is not on this host and cannot be pulled."
            msg="$msg Make it available (docker pull where a registry is reachable, or docker load), or set"
            msg="$msg CROWNEST_DOCKER_BASE to a local Debian $SUITE image"
            if [ -n "$NO_DEBOOTSTRAP" ]; then
                msg="$msg. The debootstrap method cannot run either: $NO_DEBOOTSTRAP"
            else
                msg="$msg, or use --method debootstrap"
            fi
            die "$msg"
        fi
    fi
    log "docker build from $DOCKERFILE (BASE=$DOCKER_BASE)"
    docker build --build-arg "BASE=$DOCKER_BASE" --label "$LABEL_KEY=$KEY" -t "$IMAGE" "$CTX_DIR" >&2
    finish "built (dockerfile)"
fi

# ---------------------------------------------------- debootstrap build
[ -z "$NO_DEBOOTSTRAP" ] ||
    die "the debootstrap method cannot run here: $NO_DEBOOTSTRAP. Run it as root on a Debian-like host, or use --method dockerfile (needs the base image $DOCKER_BASE)"

log "mirror $MIRROR (from apt sources), suite $SUITE, arch $ARCH, packages: $INCLUDE"
[ -z "$UPDATES_URI$SECURITY_URI" ] || log "updates: ${UPDATES_URI:-none}  security: ${SECURITY_URI:-none}"

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y --no-install-recommends debootstrap >&2 ||
        { apt-get update >&2 && apt-get install -y --no-install-recommends debootstrap >&2; } ||
        die "cannot install debootstrap"
fi

KEYRING_ARGS=()
for k in /usr/share/keyrings/debian-archive-keyring.gpg /usr/share/keyrings/debian-archive-keyring.pgp; do
    if [ -r "$k" ]; then KEYRING_ARGS=(--keyring="$k"); break; fi
done
[ ${#KEYRING_ARGS[@]} -gt 0 ] || log "warning: debian-archive-keyring not found; debootstrap uses its default"

WORK_DIR="$(mktemp -d "${TMPDIR:-/var/tmp}/crownest-rootfs.XXXXXX")"
ROOTFS="$WORK_DIR/rootfs"
mkdir -p "$ROOTFS"

# The host's debootstrap may predate the suite (bookworm's knows no forky): every
# Debian suite since jessie uses the same script, `sid`, so an unknown suite gets it.
DEBOOTSTRAP_SCRIPT=()
if [ -n "${DEBOOTSTRAP_DIR:-}" ]; then ds_dir="$DEBOOTSTRAP_DIR"
elif [ -x /debootstrap/debootstrap ]; then ds_dir=/debootstrap
else ds_dir=/usr/share/debootstrap; fi
if [ ! -e "$ds_dir/scripts/$SUITE" ]; then
    [ -e "$ds_dir/scripts/sid" ] || die "the host's debootstrap knows neither $SUITE nor sid ($ds_dir/scripts)"
    log "the host's debootstrap has no script for $SUITE: using its sid script"
    DEBOOTSTRAP_SCRIPT=(sid)
fi

log "debootstrap --variant=minbase --include=$INCLUDE $SUITE (log: $WORK_DIR/debootstrap.log)"
if ! debootstrap --variant=minbase --arch="$ARCH" "${KEYRING_ARGS[@]}" \
        --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" "${DEBOOTSTRAP_SCRIPT[@]}" \
        >"$WORK_DIR/debootstrap.log" 2>&1; then
    tail -n 40 "$WORK_DIR/debootstrap.log" >&2
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 40 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed"
fi

# What debootstrap installed from: the suite's Release file (kept by debootstrap in the
# rootfs's apt lists). Its `Suite:` says whether the codename is a rolling suite.
RELEASE_FILE="$(find "$ROOTFS/var/lib/apt/lists" -maxdepth 1 -type f \
    \( -name "*_dists_${SUITE}_Release" -o -name "*_dists_${SUITE}_InRelease" \) | head -n 1)"
release_field() {
    [ -n "$RELEASE_FILE" ] || return 0
    awk -v k="$1:" '$1 == k { sub(/^[^:]*:[ \t]*/, ""); print; exit } /^(MD5Sum|SHA256):/ { exit }' "$RELEASE_FILE"
}
RELEASE_SUITE="$(release_field Suite)"
RELEASE_DATE="$(release_field Date)"
RELEASE_VALID_UNTIL="$(release_field Valid-Until)"
log "$SUITE is Debian ${RELEASE_SUITE:-(unknown suite)}, Release of ${RELEASE_DATE:-(unknown date)}"
if [ -n "$RELEASE_VALID_UNTIL" ] && valid_until="$(date -d "$RELEASE_VALID_UNTIL" +%s 2>/dev/null)" &&
        [ "$valid_until" -lt "$(date +%s)" ]; then
    log "warning: the mirror's $SUITE Release expired on $RELEASE_VALID_UNTIL (Valid-Until): the mirror is stale, the image is built from what it has"
fi
ROLLING=0
case "$RELEASE_SUITE" in testing|unstable|experimental) ROLLING=1 ;; esac

# apt sources inside the image: the same mirrors the host uses (signed by the image's
# own archive keyring: .pgp since trixie, .gpg before).
SIGNED_BY=/usr/share/keyrings/debian-archive-keyring.gpg
[ ! -e "$ROOTFS/usr/share/keyrings/debian-archive-keyring.pgp" ] ||
    SIGNED_BY=/usr/share/keyrings/debian-archive-keyring.pgp
rm -f "$ROOTFS/etc/apt/sources.list"
{
    printf 'Types: deb\nURIs: %s\nSuites: %s%s\nComponents: main\nSigned-By: %s\n' \
        "$MIRROR" "$SUITE" "${UPDATES_URI:+ $SUITE-updates}" "$SIGNED_BY"
    if [ -n "$SECURITY_URI" ]; then
        printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\nSigned-By: %s\n' \
            "${SECURITY_URI%/}" "$SUITE" "$SIGNED_BY"
    fi
} > "$ROOTFS/etc/apt/sources.list.d/debian.sources"
# If -updates lives on another host than the main mirror, list it separately.
if [ -n "$UPDATES_URI" ] && [ "${UPDATES_URI%/}" != "$MIRROR" ]; then
    sed -i "s/^Suites: $SUITE $SUITE-updates\$/Suites: $SUITE/" "$ROOTFS/etc/apt/sources.list.d/debian.sources"
    printf '\nTypes: deb\nURIs: %s\nSuites: %s-updates\nComponents: main\nSigned-By: %s\n' \
        "${UPDATES_URI%/}" "$SUITE" "$SIGNED_BY" >> "$ROOTFS/etc/apt/sources.list.d/debian.sources"
fi

# Run a command in the rootfs with a clean environment (the host's variables,
# e.g. NODE_EXTRA_CA_CERTS, must not leak into the checks).
in_chroot() {
    chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive "$@"
}

if [ "$ROLLING" = 1 ] && [ -n "$UPDATES_URI$SECURITY_URI" ]; then
    # Testing and unstable get their fixes through the suite itself (debootstrap just
    # installed its current packages); their -updates/-security pockets are empty or
    # nearly so, and apt would refuse the whole update if the mirror's Release is past
    # its Valid-Until. Rebuild with --force to pick up newer packages.
    log "$SUITE is a rolling suite ($RELEASE_SUITE): no $SUITE-updates/-security step (debootstrap installed its current packages)"
elif [ -n "$UPDATES_URI$SECURITY_URI" ]; then
    log "applying $SUITE-updates/-security in the chroot"
    printf '#!/bin/sh\nexit 101\n' > "$ROOTFS/usr/sbin/policy-rc.d"
    chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
    mount -t proc proc "$ROOTFS/proc"
    if ! in_chroot /bin/sh -ec '
            apt-get -q update
            apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade
            apt-get clean' >"$WORK_DIR/upgrade.log" 2>&1; then
        tail -n 40 "$WORK_DIR/upgrade.log" >&2
        die "apt-get dist-upgrade in the chroot failed"
    fi
    umount "$ROOTFS/proc"
    rm -f "$ROOTFS/usr/sbin/policy-rc.d"
fi

log "adding user $USER_NAME ($USER_ID) and /workspace"
grep -q "^$USER_NAME:" "$ROOTFS/etc/group" ||
    printf '%s:x:%s:\n' "$USER_NAME" "$USER_ID" >> "$ROOTFS/etc/group"
[ ! -f "$ROOTFS/etc/gshadow" ] || grep -q "^$USER_NAME:" "$ROOTFS/etc/gshadow" ||
    printf '%s:!::\n' "$USER_NAME" >> "$ROOTFS/etc/gshadow"
grep -q "^$USER_NAME:" "$ROOTFS/etc/passwd" ||
    printf '%s:x:%s:%s:CrowNest sandbox user:/workspace:/bin/sh\n' "$USER_NAME" "$USER_ID" "$USER_ID" >> "$ROOTFS/etc/passwd"
[ ! -f "$ROOTFS/etc/shadow" ] || grep -q "^$USER_NAME:" "$ROOTFS/etc/shadow" ||
    printf '%s:!:%s:0:99999:7:::\n' "$USER_NAME" "$(( $(date +%s) / 86400 ))" >> "$ROOTFS/etc/shadow"
install -d -o "$USER_ID" -g "$USER_ID" -m 0755 "$ROOTFS/workspace"

# Sanity check inside the rootfs before shipping it.
in_chroot /usr/bin/python3 -c 'import sys; assert sys.version_info >= (3, 11)' ||
    die "python3 does not run in the new rootfs"
# Node.js: an LTS line (even major) no older than 22 (20 reached its end of life in April 2026).
in_chroot /usr/bin/node -e 'const m = Number(process.versions.node.split(".")[0]); process.exit(m >= 22 && m % 2 === 0 ? 0 : 1)' ||
    die "node does not run in the new rootfs, or is not a Node.js LTS line >= 22 ($(in_chroot /usr/bin/node --version 2>&1 || true))"
# shellcheck disable=SC2086
in_chroot /usr/bin/dpkg-query -W -f '${Package} ${Version}\n' $PACKAGES >"$WORK_DIR/versions.txt"
log "versions: $(tr '\n' ' ' < "$WORK_DIR/versions.txt")"

log "shrinking rootfs"
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/archives/partial/* \
       "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/lib/dpkg/*-old \
       "$ROOTFS"/var/log/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/* \
       "$ROOTFS"/usr/share/man "$ROOTFS"/usr/share/info "$ROOTFS"/usr/share/lintian \
       "$ROOTFS"/usr/share/linda "$ROOTFS"/usr/share/locale \
       "$ROOTFS"/debootstrap "$ROOTFS"/etc/resolv.conf "$ROOTFS"/etc/hostname
mkdir -p "$ROOTFS/var/lib/apt/lists/partial"
# Keep the copyright files (licence notices); drop the rest of /usr/share/doc.
find "$ROOTFS/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete
# (the __pycache__ byte code made by py3compile is kept: the root is read-only
# at run time, so it could not be regenerated and every start would recompile.)
: > "$ROOTFS/etc/machine-id"
# Device nodes are provided by the container runtime.
find "$ROOTFS/dev" -mindepth 1 -delete

log "writing rootfs tarball $CACHE_TAR"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOTFS" -cf "$CACHE_TAR.tmp.$$" .
mv -f -- "$CACHE_TAR.tmp.$$" "$CACHE_TAR"
# Older tarballs belong to stale keys.
find "$IMG_CACHE" -maxdepth 1 -type f -name '*.tar' ! -name "$KEY.tar" \
    -regextype posix-extended -regex '.*/[0-9a-f]{64}\.tar' -delete

log "docker import -> $IMAGE"
import_tar "$CACHE_TAR" || die "docker import failed"
finish "built (debootstrap)"
