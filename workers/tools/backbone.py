"""Helpers for trying a worker by hand against a running `rig up` until the rig's runner does it:
publish a plan's workload the way the SuiteX producer does (produce.py), then read back what
the ledger, events.merged, events.dlq and the primary database hold (collect.py), as the
history and snapshot files rig-verify's checker reads (rig/verify/src/history.rs).

These record only what the producer and the stores see: the deliveries, acks and nacks come
from our Pub/Sub service's history once it records them.
"""

import hashlib
import json
import os
import sys
import time

import pymysql
from google.cloud import pubsub_v1

ITEM_ATTRIBUTE = "rig_item"


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"{name} is not set: source the file `rig up --env-file` wrote, and set the "
                 f"BACKBONE_* names (docs/bring-your-own-worker.md)")
    return value


def now_ms():
    return int(time.time() * 1000)


def _one_number_type(value):
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _one_number_type(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_one_number_type(v) for v in value]
    return value


def canonical_json(text):
    """rig_verify::plan::canonical_json: keys sorted, no insignificant whitespace, 500.0 as 500."""
    return json.dumps(_one_number_type(json.loads(text)), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def payload_digest(text):
    return hashlib.sha256(canonical_json(text).encode("utf-8")).hexdigest()


def tap_names():
    run = env("RIG_VERIFY_RUN", "manual")
    return f"verify-tap-{run}-merged", f"verify-tap-{run}-dlq"


def connect(prefix):
    return pymysql.connect(host=env(prefix + "HOST"), port=int(env(prefix + "PORT")),
                           database=env(prefix + "DATABASE"), user=env(prefix + "USERNAME"),
                           password=env(prefix + "PASSWORD", ""), charset="utf8mb4",
                           autocommit=True, init_command="SET time_zone = '+00:00'")


def primary_state():
    """Checksum and row count of every table of the primary database (DB_*)."""
    conn = connect("DB_")
    with conn.cursor() as cur:
        cur.execute("SHOW TABLES")
        tables = sorted(r[0] for r in cur.fetchall())
        rows, sums = {}, []
        for t in tables:
            cur.execute(f"SELECT COUNT(*) FROM `{t}`")
            rows[t] = cur.fetchone()[0]
            cur.execute(f"CHECKSUM TABLE `{t}`")
            sums.append(f"{t}={cur.fetchone()[1]}")
    conn.close()
    return {"checksum": hashlib.sha256(";".join(sums).encode()).hexdigest()[:16], "rows": rows}


def subscriber():
    return pubsub_v1.SubscriberClient()
