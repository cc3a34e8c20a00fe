#!/usr/bin/env bash
# A running compose stack of the backbone, provisioned from the Terraform like `rig up`'s:
#
#   compose/up.sh [-e ENV] > backbone.env    # builds the images if needed, starts the stack,
#   . backbone.env                           # provisions it, prints the `export` lines, exits
#   compose/up.sh down                       # removes the stack (containers and volumes)
#
# The stack keeps running after this script exits (unlike `rig up`, nothing supervises it):
# remove it with `compose/up.sh down`. Starting it again replaces the previous stack, since
# provisioning expects fresh databases. Ports: RIG_COMPOSE_PUBSUB_PORT (18085),
# RIG_COMPOSE_GCS_PORT (14443), RIG_COMPOSE_EVENT_STORE_PORT (13306),
# RIG_COMPOSE_PRIMARY_PORT (13307). Images: see compose/images.sh (RIG_*_IMAGE overrides).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PROJECT="${RIG_COMPOSE_PROJECT:-backbone-rig}"

# Our own Pub/Sub service unless RIG_PUBSUB=google-emulator, as on every target.
files=(-f "$HERE/compose.yaml")
pubsub_image=pubsub-emulator
if [ "${RIG_PUBSUB:-pubsub-service}" = pubsub-service ]; then
    files+=(-f "$HERE/compose.pubsub-service.yaml")
    pubsub_image=pubsub-service
fi
compose() {
    if docker compose version >/dev/null 2>&1; then docker compose -p "$PROJECT" "${files[@]}" "$@"
    else docker-compose -p "$PROJECT" "${files[@]}" "$@"; fi
}

# The image variables and a root password must be set for compose to read the file at all.
placeholders() {
    export RIG_MYSQL_IMAGE="${RIG_MYSQL_IMAGE:-unused}" RIG_FAKE_GCS_IMAGE="${RIG_FAKE_GCS_IMAGE:-unused}" \
        RIG_PUBSUB_EMULATOR_IMAGE="${RIG_PUBSUB_EMULATOR_IMAGE:-unused}" \
        RIG_PUBSUB_SERVICE_IMAGE="${RIG_PUBSUB_SERVICE_IMAGE:-unused}" \
        RIG_MYSQL_ROOT_PASSWORD="${RIG_MYSQL_ROOT_PASSWORD:-unused}"
}

if [ "${1:-}" = down ]; then
    placeholders
    compose down -v --remove-orphans >&2
    exit 0
fi

while IFS='=' read -r name value; do
    export "$name=$value"
done < <("$HERE/images.sh" mysql fake-gcs "$pubsub_image")
RIG_MYSQL_ROOT_PASSWORD="$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export RIG_MYSQL_ROOT_PASSWORD
placeholders

echo "compose: replacing any previous $PROJECT stack" >&2
compose down -v --remove-orphans >/dev/null 2>&1 || true
compose up -d >&2

rig=(cargo run -q --bin rig --)
if [ -n "${RIG_BIN:-}" ]; then rig=("$RIG_BIN"); fi
(cd "$HERE/.." && "${rig[@]}" provision --wait-for-services 180 "$@" \
    --pubsub "http://127.0.0.1:${RIG_COMPOSE_PUBSUB_PORT:-18085}" \
    --storage "http://127.0.0.1:${RIG_COMPOSE_GCS_PORT:-14443}" \
    --event-store-db "127.0.0.1:${RIG_COMPOSE_EVENT_STORE_PORT:-13306}" \
    --primary-db "127.0.0.1:${RIG_COMPOSE_PRIMARY_PORT:-13307}")
echo "compose: stack $PROJECT is up; remove it with compose/up.sh down" >&2
