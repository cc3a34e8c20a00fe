#!/usr/bin/env python3
"""Publishes a rig-verify plan's workload to events.raw the way the SuiteX producer does: one
ordering key per aggregate, payloads above 256 KiB through the bucket (claim check), producer
retries as second publishes of the same event, poison built from fixtures/bad/ (its README
says how). Writes the history's header and one annotated publish record per message.

    python3 workers/tools/produce.py PLAN.json OUT_DIR [--items N]

Before publishing it creates tap subscriptions on events.merged and events.dlq (collect.py
drains them) and records the primary database's state.
"""

import argparse
import hashlib
import json
import os
import pathlib
import sys

from google.api_core import exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

import backbone

ROOT = pathlib.Path(__file__).resolve().parents[2]


def build_payload(item, aggregate, record):
    """rig_verify::plan::payload."""
    value = json.loads(record)
    value["id"] = aggregate["aggregate_id"]
    value["recordType"] = aggregate["aggregate_type"]
    value["revision"] = item["revision"]
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if item.get("claim_bytes"):
        target = item["claim_bytes"]
        overhead = len(',"attachment":""')
        pad = max(0, target - len(text.encode()) - overhead)
        text = text[:-1] + ',"attachment":"' + "x" * pad + '"}'
    return text


def hex_bytes(text):
    return bytes.fromhex(text)


def corpus_body(spec):
    if "data" in spec:
        return spec["data"].encode()
    if "data_hex" in spec:
        return hex_bytes(spec["data_hex"])
    if "data_parts" in spec:
        return b"".join(part.encode() * count for part, count in spec["data_parts"])
    return None


def expand(text, event_id, bucket):
    return (text.replace("{EVENT_ID_UPPER}", event_id.upper())
            .replace("{EVENT_ID_SIMPLE}", event_id.replace("-", ""))
            .replace("{EVENT_ID}", event_id).replace("{BUCKET}", bucket))


def header_attributes(item, aggregate):
    return {"event_id": item["event_id"], "account_id": aggregate["account_id"],
            "aggregate_type": aggregate["aggregate_type"],
            "aggregate_id": aggregate["aggregate_id"], "created_at": item["created_at"]}


def claim_check(bucket_client, bucket, item, aggregate, payload):
    def segment(s):
        return "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else
                       "".join(f"%{b:02X}" for b in c.encode()) for c in s)
    obj = "events/{}/{}/{}/{}.json".format(segment(aggregate["account_id"]),
                                           segment(aggregate["aggregate_type"]),
                                           segment(aggregate["aggregate_id"]), item["event_id"])
    data = payload.encode()
    bucket_client.bucket(bucket).blob(obj).upload_from_string(data, content_type="application/json")
    return {"payload_ref": f"gs://{bucket}/{obj}", "payload_sha256": hashlib.sha256(data).hexdigest(),
            "payload_size": str(len(data))}


def poison_message(spec, case, item, aggregate, record, bucket_client, bucket):
    """The case's message, built on a valid event of its aggregate (tests/reliability.rs)."""
    payload = build_payload(item, aggregate, record)
    data, attributes = payload.encode(), header_attributes(item, aggregate)
    ordering_key = "{account_id}:{aggregate_type}:{aggregate_id}".format(**aggregate)
    claim = spec.get("claim")
    if claim is not None:
        uploaded = claim.get("upload")
        uploaded = uploaded.encode() if isinstance(uploaded, str) else (
            hex_bytes(claim["upload_hex"]) if "upload_hex" in claim else None)
        obj = claim.get("object") or f"events/bad/{case}/{item['event_id']}.json"
        content = uploaded if uploaded is not None else data
        ref_bucket = claim.get("bucket") or bucket
        sha = (hashlib.sha256(claim["sha256_of"].encode()).hexdigest() if "sha256_of" in claim
               else hashlib.sha256(content).hexdigest())
        if uploaded is not None:
            bucket_client.bucket(bucket).blob(obj).upload_from_string(uploaded)
        attributes.update(payload_ref=f"gs://{ref_bucket}/{obj}", payload_sha256=sha,
                          payload_size=str(len(content)))
        data = b""
        for attribute, key in (("payload_size", "size"), ("payload_sha256", "sha256"),
                               ("payload_ref", "ref")):
            if key in claim:
                attributes[attribute] = expand(claim[key], item["event_id"], bucket)
        for name in claim.get("remove_claim", []):
            attributes.pop(name, None)
        if "inline" in claim:
            data = claim["inline"].encode()
    body = corpus_body(spec)
    if body is not None:
        data = body
    for name, value in spec.get("set", {}).items():
        attributes[name] = expand(value, item["event_id"], bucket)
    for name in spec.get("remove", []):
        attributes.pop(name, None)
    if "ordering_key" in spec:
        ordering_key = spec["ordering_key"]
    return data, attributes, ordering_key


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("plan")
    parser.add_argument("out")
    parser.add_argument("--items", type=int, default=None, help="publish only the first N items")
    args = parser.parse_args()
    plan = json.loads(pathlib.Path(args.plan).read_text())
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    project = backbone.env("GOOGLE_CLOUD_PROJECT")
    bucket = backbone.env("BACKBONE_PAYLOAD_BUCKET")
    raw_topic = os.environ.get("BACKBONE_RAW_TOPIC", "events.raw")
    merged, dlq = backbone.env("BACKBONE_MERGED_TOPIC"), backbone.env("BACKBONE_DEAD_LETTER_TOPIC")
    records = {p.stem: p.read_text() for p in (ROOT / "fixtures/netsuite").glob("*.json")}
    corpus = {p.stem: json.loads(p.read_text()) for p in (ROOT / "fixtures/bad").glob("*.json")}

    subscriber = pubsub_v1.SubscriberClient()
    for name, topic in zip(backbone.tap_names(), (merged, dlq)):
        try:
            subscriber.create_subscription(request={
                "name": subscriber.subscription_path(project, name),
                "topic": subscriber.topic_path(project, topic), "ack_deadline_seconds": 60})
        except exceptions.AlreadyExists:
            pass
    (out / "primary-before.json").write_text(json.dumps(backbone.primary_state()))

    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
    topic = publisher.topic_path(project, raw_topic)
    gcs = storage.Client(project=project, credentials=AnonymousCredentials())
    header = {"version": 1, "seed": plan["seed"], "raw_topic": raw_topic,
              "raw_subscription": backbone.env("BACKBONE_RAW_SUBSCRIPTION"),
              "merged_topic": merged, "dead_letter_topic": dlq,
              "max_delivery_attempts": int(backbone.env("BACKBONE_MAX_DELIVERY_ATTEMPTS", "5")),
              "drain_bound_ms": plan["settle"]["drain_bound_ms"],
              "worker": os.environ.get("RIG_VERIFY_WORKER")}
    items = plan["items"][: args.items]
    pending, refused = [], []
    for item in items:
        aggregate = plan["aggregates"][item["aggregate"]]
        record = records[aggregate["aggregate_type"]]
        key = "{account_id}:{aggregate_type}:{aggregate_id}".format(**aggregate)
        annotation = {"item": item["n"], "event_id": item["event_id"], "aggregate": aggregate}
        if item.get("poison"):
            spec = corpus[item["poison"]]
            data, attributes, key = poison_message(spec, item["poison"], item, aggregate, record, gcs, bucket)
            annotation["poison"] = {"case": item["poison"], "why": spec["why"]}
        else:
            payload = build_payload(item, aggregate, record)
            attributes = header_attributes(item, aggregate)
            if item.get("claim_bytes"):
                attributes.update(claim_check(gcs, bucket, item, aggregate, payload))
                data = b""
                annotation["claim_checked"] = True
            else:
                data = payload.encode()
            annotation["payload_sha256"] = backbone.payload_digest(payload)
            annotation["payload_bytes"] = len(payload.encode())
            if item.get("retry_of") is not None:
                annotation["retry_of"] = item["retry_of"]
        attributes[backbone.ITEM_ATTRIBUTE] = str(item["n"])
        annotation["ordering_key"] = key
        if item.get("poison"):
            # Alone in its publish request: a request is refused whole, neighbours included.
            for earlier, _ in pending:
                earlier.result(timeout=60)
        future = publisher.publish(topic, data, ordering_key=key, **attributes)
        if item.get("poison"):
            # Some cases break Pub/Sub's own limits (an attribute over 1,024 bytes) and are
            # refused at publish: they never reach a worker, so they are not in the history.
            try:
                future.result(timeout=60)
            except exceptions.GoogleAPICallError as e:
                publisher.resume_publish(topic, key)
                refused.append(item["poison"])
                print(f"item {item['n']} ({item['poison']}) refused at publish: {e.message}", file=sys.stderr)
                continue
        pending.append((future, annotation))
    with open(out / "history.jsonl", "w") as history:
        history.write(json.dumps(header) + "\n")
        for seq, (future, annotation) in enumerate(pending, start=1):
            message_id = future.result(timeout=60)
            record = {"seq": seq, "at_ms": backbone.now_ms(), "kind": "publish", "topic": raw_topic,
                      "message_id": message_id, **annotation}
            history.write(json.dumps(record) + "\n")
    publisher.stop()
    print(f"published {len(pending)} items to {raw_topic}, {len(refused)} refused at publish",
          file=sys.stderr)


if __name__ == "__main__":
    main()
