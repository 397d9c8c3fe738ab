#!/usr/bin/env bash
# Builds the kernel images the tests use, with no image registry: debootstrap
# makes a Debian root filesystem, `docker import` turns it into a base image and
# `docker build` adds ipykernel from wheels fetched on the host.
#
#   tests/images/build.sh [NAME...]     (default: every folder here with an image.conf)
#
# An image.conf either names a Debian suite and packages (the image starts from a
# debootstrap root filesystem) or a parent image folder (the image adds its
# packages on top of dockerkernel-test/PARENT). A folder with no requirements
# files makes a bare image: the root filesystem alone, with no ipykernel.
#
# Images are tagged dockerkernel-test/NAME and labelled with a hash of their
# inputs (this script, the Dockerfile, the image's folder and its parent's): a
# rerun with the same inputs finds the image and does nothing. Downloads are
# cached in $CACHE.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${DOCKERKERNEL_TEST_CACHE:-/var/cache/dockerkernel-test}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
LOCAL_WHEELS=${DOCKERKERNEL_TEST_WHEELS:-/opt/wheels}
label=org.dockerkernel.test.inputs

log() { printf '[images] %s\n' "$*" >&2; }

inputs_hash() {
    local parent; parent=$(conf "$1" parent)
    (cd "$here" && cat build.sh Dockerfile && find -L "$1" -type f | LC_ALL=C sort | xargs cat \
        && if [ -n "$parent" ]; then inputs_hash "$parent"; fi) | sha256sum | cut -c1-16
}

# conf NAME KEY: one setting of NAME/image.conf.
conf() { (source "$here/$1/image.conf"; eval "echo \"\${$2:-}\""); }

# rootfs SUITE PACKAGES: a cached tarball of a minimal Debian with PACKAGES.
rootfs() {
    local tarball="$CACHE/rootfs-$1-$(echo "$2" | sha256sum | cut -c1-12)-0755.tar"
    if [ ! -s "$tarball" ]; then
        log "debootstrap $1 with $2"
        local dir; dir=$(mktemp -d)
        debootstrap --variant=minbase --include="$2" "$1" "$dir" "$MIRROR" >"$CACHE/debootstrap-$1.log" 2>&1 \
            || { tail -20 "$CACHE/debootstrap-$1.log" >&2; rm -rf "$dir"; return 1; }
        # Trim what a kernel image does not need.
        rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
        # mktemp made the root 0700: Docker hides that, but rootless Podman's users could not enter it.
        chmod 0755 "$dir"
        tar -C "$dir" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

# wheels NAME DIR: the image's pinned Python packages, downloaded into DIR.
wheels() {
    local name=$1 dest=$2 src="$here/$1"
    local cached="$CACHE/wheels-$name-$(cat "$src"/*.txt | sha256sum | cut -c1-12)"
    if [ ! -d "$cached" ]; then
        log "downloading Python packages for $name"
        local tmp="$cached.tmp"; rm -rf "$tmp"
        local links=()  # wheels kept on the machine, such as a CPU build of torch
        if [ -d "$LOCAL_WHEELS" ]; then links=(--find-links "$LOCAL_WHEELS"); fi
        python3 -m pip download -q --no-deps --only-binary=:all: "${pip_target[@]}" "${links[@]}" \
            -d "$tmp" $(for f in "$src"/*requirements.txt; do echo -r "$f"; done) 2> >(grep -v "is ignored: it is neither" >&2)
        if [ -f "$src/sdists.txt" ]; then
            python3 -m pip download -q --no-deps --no-binary=:all: -d "$tmp" -r "$src/sdists.txt" 2> >(grep -v "is ignored: it is neither" >&2)
        fi
        mv "$tmp" "$cached"
    fi
    cp "$cached"/* "$src"/*.txt "$dest"/
}

build() {
    local name=$1 image="dockerkernel-test/$1" hash
    hash=$(inputs_hash "$name")
    if [ "$(docker image inspect -f "{{index .Config.Labels \"$label\"}}" "$image" 2>/dev/null)" = "$hash" ]; then
        log "$image is up to date"
        return
    fi
    # shellcheck source=/dev/null
    local suite packages parent="" python pip_target; source "$here/$name/image.conf"
    local base ctx
    if ! ls "$here/$name"/*requirements.txt >/dev/null 2>&1; then
        # A bare image: the root filesystem as it is, Python without ipykernel or pip.
        docker import --change "LABEL $label=$hash" --change "CMD [\"$python\"]" \
            "$(rootfs "$suite" "$packages")" "$image" >/dev/null
        docker image prune -f --filter "label=$label" >/dev/null
        log "$image built ($(docker run --rm "$image" "$python" --version 2>&1))"
        return
    fi
    if [ -n "$parent" ]; then
        build "$parent"
        base="dockerkernel-test/$parent"
    else
        base="dockerkernel-test/rootfs-$name:$hash"
        docker import "$(rootfs "$suite" "$packages")" "$base" >/dev/null
    fi
    ctx=$(mktemp -d); mkdir "$ctx/wheels"
    wheels "$name" "$ctx/wheels"
    cp "$here/Dockerfile" "$ctx/"
    log "building $image"
    docker build -q --force-rm --build-arg BASE="$base" --build-arg PYTHON="$python" \
        --label "$label=$hash" -t "$image" "$ctx" >/dev/null \
        2> >(grep -v -E 'legacy builder is deprecated|the buildx component|go/buildx|^\s*$' >&2)
    rm -rf "$ctx"
    if [ -z "$parent" ]; then docker rmi -f "$base" >/dev/null; fi
    # The image this one replaced, now untagged.
    docker image prune -f --filter "label=$label" >/dev/null
    log "$image built ($(docker run --rm "$image" "$python" -c 'import ipykernel; print(ipykernel.__version__)'))"
}

mkdir -p "$CACHE"
if [ $# -eq 0 ]; then
    set -- $(cd "$here" && for d in */image.conf; do echo "${d%/image.conf}"; done)
fi
for name in "$@"; do build "$name"; done
