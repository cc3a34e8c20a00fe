#!/usr/bin/env python3
"""Reads back what a run left: every ledger row, what reached events.merged and events.dlq
(through the tap subscriptions produce.py made), the primary database's state, and writes
OUT_DIR/snapshot.json for rig-verify's checker.

    python3 workers/tools/collect.py OUT_DIR [--quiet-seconds 3]
"""

import argparse
import json
import pathlib
import time

from google.api_core import exceptions

import backbone


def drain(subscriber, path, quiet):
    """Every message on a tap subscription until it stays quiet for `quiet` seconds."""
    messages, last = [], time.monotonic()
    while time.monotonic() - last < quiet:
        try:
            response = subscriber.pull(request={"subscription": path, "max_messages": 1000},
                                       timeout=2, retry=None)
        except exceptions.DeadlineExceeded:
            # A pull on an empty subscription waits for messages until its deadline.
            continue
        if not response.received_messages:
            time.sleep(0.2)
            continue
        last = time.monotonic()
        for r in response.received_messages:
            m = r.message
            messages.append({"message_id": m.message_id, "ordering_key": m.ordering_key,
                             "attributes": dict(m.attributes), "data_bytes": len(m.data),
                             "received_at_ms": backbone.now_ms()})
        subscriber.acknowledge(request={"subscription": path,
                                        "ack_ids": [r.ack_id for r in response.received_messages]})
    return messages


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--quiet-seconds", type=float, default=3.0)
    args = parser.parse_args()
    out = pathlib.Path(args.out)
    project = backbone.env("GOOGLE_CLOUD_PROJECT")
    subscriber = backbone.subscriber()
    merged_tap, dlq_tap = (subscriber.subscription_path(project, n) for n in backbone.tap_names())
    merged = drain(subscriber, merged_tap, args.quiet_seconds)
    dead = drain(subscriber, dlq_tap, args.quiet_seconds)
    conn = backbone.connect("DB_EVENT_STORE_")
    ledger = []
    with conn.cursor() as cur:
        cur.execute("SELECT id, event_id, account_id, aggregate_type, aggregate_id, payload, "
                    "DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%sZ') FROM event_store ORDER BY id")
        for row in cur.fetchall():
            payload = row[5]
            try:
                digest = backbone.payload_digest(payload)
            except ValueError:
                digest = "not-json"
            ledger.append({"id": row[0], "event_id": row[1], "account_id": row[2],
                           "aggregate_type": row[3], "aggregate_id": row[4],
                           "payload_sha256": digest, "payload_bytes": len(payload.encode()),
                           "created_at": row[6]})
    history_lines = (out / "history.jsonl").read_text().splitlines()
    started = json.loads(history_lines[1])["at_ms"] if len(history_lines) > 1 else backbone.now_ms()
    snapshot = {"version": 1, "ledger": ledger, "merged": merged, "dead_letters": dead,
                "primary": {"before": json.loads((out / "primary-before.json").read_text()),
                            "after": backbone.primary_state()},
                "timings": {"started_at_ms": started, "ended_at_ms": backbone.now_ms()}}
    (out / "snapshot.json").write_text(json.dumps(snapshot))
    print(f"{len(ledger)} rows, {len(merged)} on merged, {len(dead)} dead letters")


if __name__ == "__main__":
    main()
