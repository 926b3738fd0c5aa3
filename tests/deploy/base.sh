#!/usr/bin/env bash
# Make the Debian 12 base image the deployment tests build on, when no image registry can be
# reached: `debootstrap --variant=minbase bookworm` from the machine's own apt mirror (read from
# /etc/apt/sources.list{,.d/*} at run time), then `podman import`. Cached twice: the image stays
# in podman's storage, and the root file system tarball is kept under the cache directory, so a
# machine whose podman storage was wiped imports it again in seconds.
#   tests/deploy/base.sh            -> prints the image name (default localhost/dsw-base:bookworm)
#   DSW_DEPLOY_CACHE=DIR            cache directory (default ${XDG_CACHE_HOME:-$HOME/.cache}/dagster-sqs-worker)
#   DSW_BASE_IMAGE=NAME             image name to create (or to use as is when it exists)
#   DSW_BASE_REBUILD=1              debootstrap again even when cached
# Progress goes to stderr; stdout is only the image name.
set -euo pipefail

image=${DSW_BASE_IMAGE:-localhost/dsw-base:bookworm}
cache=${DSW_DEPLOY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/dagster-sqs-worker}
tarball=$cache/bookworm-minbase.tar
log() { echo "base: $*" >&2; }

# The first Debian mirror apt uses for bookworm (deb822 "URIs:" of a stanza whose Suites has
# bookworm, or a one-line "deb URI bookworm ..." entry). Security and third-party repositories
# are not mirrors of the main archive and are skipped.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk 'BEGIN{RS=""; FS="\n"}
             { uris=""; suites=""; types="";
               for (i = 1; i <= NF; i++) {
                 if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                 if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                 if ($i ~ /^Types:/)  { types = $i }
               }
               if (types ~ /deb( |$)/ && (" " suites " ") ~ / bookworm /) { split(uris, u, " "); print u[1]; exit } }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) while ($i !~ /\]$/) i++; if ($2 ~ /^\[/) i++;
                           if ($(i + 1) == "bookworm") { print $i; exit } }' "$f"
    done
}

if [ "${DSW_BASE_REBUILD:-0}" != 1 ] && podman image exists "$image"; then
    log "$image is cached in podman's storage"
    echo "$image"
    exit 0
fi

mkdir -p "$cache"
if [ "${DSW_BASE_REBUILD:-0}" = 1 ] || [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap is not installed" >&2; exit 1; }
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    mirror=$(apt_mirror | sed -n 1p)
    [ -n "$mirror" ] || { log "no bookworm mirror found in /etc/apt/sources.list*"; exit 1; }
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    log "debootstrap --variant=minbase bookworm from $mirror (first time only)"
    t0=$SECONDS
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 || {
        tail -n 20 "$cache/debootstrap.log" >&2
        exit 1
    }
    # apt inside the image uses the machine's sources and its Acquire settings (e.g. a mirror
    # snapshot whose Release files are past Valid-Until), nothing else from the machine.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        rm -f "$root/etc/apt/sources.list"
        cp /etc/apt/sources.list.d/debian.sources "$root/etc/apt/sources.list.d/"
    fi
    for f in /etc/apt/apt.conf.d/*; do
        [ -f "$f" ] && grep -q '^Acquire::' "$f" && cp "$f" "$root/etc/apt/apt.conf.d/"
    done
    # Keep images small: no apt lists or caches, no docs or locales beyond what minbase has.
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" --numeric-owner -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    log "debootstrap took $((SECONDS - t0)) s; root file system $(du -sh "$tarball" | cut -f1)"
fi
log "podman import $tarball -> $image"
podman import --change 'CMD ["/bin/bash"]' "$tarball" "$image" >/dev/null
echo "$image"
