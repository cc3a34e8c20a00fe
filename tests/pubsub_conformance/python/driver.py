# The conformance suite's Python column: Google's Python client (google-cloud-pubsub) doing
# what a check asks, reporting what it observed as one JSON object on its last line. The
# resources exist already (the Rust side creates and removes them); this only publishes,
# subscribes, acknowledges and nacks as an application would. The spec comes on stdin:
#
#   {"command": "stream", "topic": ..., "subscription": ..., "publish": [{"data", "key",
#    "attributes"}], "policy": {"nack": {DATA: TIMES}, "nack_all": bool, "hold_seconds": S, "max_messages": N, "until_acked": N}, "limit": S, "quiet": S,
#    "dead_letter_subscription": NAME}
#   {"command": "exactly_once", "topic": ..., "subscription": ..., "stale_subscription": ...}
#
# The client talks to PUBSUB_EMULATOR_HOST when it is set, to Google otherwise.
import json
import sys
import threading
import time

from google.api_core import exceptions
from google.cloud import pubsub_v1


def publish(spec):
    messages = spec.get("publish", [])
    if not messages:
        return []
    ordered = any(m.get("key") for m in messages)
    publisher = pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=ordered))
    futures = [
        publisher.publish(spec["topic"], m["data"].encode(), ordering_key=m.get("key", ""),
                          **m.get("attributes", {}))
        for m in messages
    ]
    return [f.result(timeout=30) for f in futures]


def pull_one(subscriber, subscription, within):
    until = time.monotonic() + within
    while time.monotonic() < until:
        got = subscriber.pull(request={"subscription": subscription, "max_messages": 10,
                                       "return_immediately": True}, timeout=10)
        if got.received_messages:
            ids = [r.ack_id for r in got.received_messages]
            subscriber.acknowledge(request={"subscription": subscription, "ack_ids": ids})
            m = got.received_messages[0].message
            return {"data": m.data.decode(), "key": m.ordering_key,
                    "attributes": dict(m.attributes)}
        time.sleep(0.2)
    return None


def stream(spec):
    subscriber = pubsub_v1.SubscriberClient()
    policy = spec.get("policy", {})
    nacks = dict(policy.get("nack", {}))
    nack_all = policy.get("nack_all", False)
    hold = policy.get("hold_seconds", 0)
    until_acked = policy.get("until_acked")
    lock, done = threading.Lock(), threading.Event()
    start = time.monotonic()
    state = {"last": start, "holding": 0, "max_holding": 0}
    deliveries, acked = [], []

    def callback(message):
        data = message.data.decode()
        with lock:
            state["holding"] += 1
            state["max_holding"] = max(state["max_holding"], state["holding"])
            state["last"] = time.monotonic()
            deliveries.append({"data": data, "key": message.ordering_key, "attempt": message.delivery_attempt,
                               "at": round(time.monotonic() - start, 3),
                               "attributes": dict(message.attributes)})
            nack = nack_all or nacks.get(data, 0) > 0
            if nack and not nack_all:
                nacks[data] -= 1
        if hold:
            time.sleep(hold)
        with lock:
            state["holding"] -= 1
            if nack:
                message.nack()
            else:
                message.ack()
                if data not in acked:
                    acked.append(data)
                if until_acked and len(acked) >= until_acked:
                    done.set()

    flow = pubsub_v1.types.FlowControl(max_messages=policy["max_messages"]) \
        if "max_messages" in policy else pubsub_v1.types.FlowControl()
    future = subscriber.subscribe(spec["subscription"], callback=callback, flow_control=flow)
    ids = publish(spec)
    limit, quiet = spec.get("limit", 20), spec.get("quiet", spec.get("limit", 20))
    ended = "limit"
    while True:
        now = time.monotonic()
        if done.is_set():
            ended = "done"
            break
        if now - start > limit:
            break
        with lock:
            idle = now - state["last"]
        if idle > quiet:
            ended = "quiet"
            break
        time.sleep(0.05)
    # Acks and nacks leave in the background: give them a moment before the stream goes.
    time.sleep(0.5)
    future.cancel()
    try:
        future.result(timeout=10)
    except Exception:
        pass
    result = {"deliveries": deliveries, "acked": acked, "max_holding": state["max_holding"],
              "message_ids": ids, "ended": ended}
    if spec.get("dead_letter_subscription"):
        result["dead_letter"] = pull_one(subscriber, spec["dead_letter_subscription"], 20)
    return result


def exactly_once(spec):
    subscriber = pubsub_v1.SubscriberClient()
    publish(spec)
    result = {"deliveries": [], "ack": None}

    def callback(message):
        result["deliveries"].append(message.data.decode())
        try:
            message.ack_with_response().result(timeout=10)
            result["ack"] = "SUCCESS"
        except Exception as e:  # the exception's type says which failure
            result["ack"] = f"{type(e).__name__}: {e}"

    future = subscriber.subscribe(spec["subscription"], callback=callback)
    time.sleep(13)
    future.cancel()
    stale_sub = spec["stale_subscription"]
    first = subscriber.pull(request={"subscription": stale_sub, "max_messages": 1}, timeout=20)
    stale = first.received_messages[0].ack_id
    time.sleep(11)
    fresh = None
    until = time.monotonic() + 20
    while fresh is None and time.monotonic() < until:
        again = subscriber.pull(request={"subscription": stale_sub, "max_messages": 1,
                                         "return_immediately": True}, timeout=20)
        if again.received_messages:
            fresh = again.received_messages[0].ack_id
        else:
            time.sleep(0.2)
    try:
        subscriber.acknowledge(request={"subscription": stale_sub, "ack_ids": [stale]})
        result["stale_ack"] = "accepted"
    except exceptions.InvalidArgument:
        result["stale_ack"] = "INVALID_ARGUMENT"
    if fresh is None:
        result["fresh_ack"] = "not redelivered"
    else:
        subscriber.acknowledge(request={"subscription": stale_sub, "ack_ids": [fresh]})
        result["fresh_ack"] = "accepted"
    return result


def main():
    spec = json.load(sys.stdin)
    commands = {"stream": stream, "exactly_once": exactly_once}
    print(json.dumps(commands[spec["command"]](spec)))


if __name__ == "__main__":
    main()
