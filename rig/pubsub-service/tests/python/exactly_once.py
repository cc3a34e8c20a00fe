# Exactly-once delivery through Google's Python client: the acknowledgement's result is a
# success, the acknowledged message is not redelivered, and an expired ack id is refused.
import json, time
from google.api_core import exceptions
from google.cloud import pubsub_v1

project = "py-exactly-once"
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "eo-topic")
sub = subscriber.subscription_path(project, "eo-sub")
stale_sub = subscriber.subscription_path(project, "eo-stale")
publisher.create_topic(name=topic)
for s in (sub, stale_sub):
    subscriber.create_subscription(request={"name": s, "topic": topic,
                                            "enable_exactly_once_delivery": True,
                                            "ack_deadline_seconds": 10})
publisher.publish(topic, b"once").result()
result = {"deliveries": [], "ack": None}
def callback(message):
    result["deliveries"].append(message.data.decode())
    try:
        message.ack_with_response().result(timeout=10)
        result["ack"] = "SUCCESS"
    except Exception as e:
        result["ack"] = f"{type(e).__name__}: {e}"
future = subscriber.subscribe(sub, callback=callback)
time.sleep(13)
future.cancel()
first = subscriber.pull(request={"subscription": stale_sub, "max_messages": 1}, timeout=10)
stale = first.received_messages[0].ack_id
time.sleep(11)
again = subscriber.pull(request={"subscription": stale_sub, "max_messages": 1}, timeout=20)
fresh = again.received_messages[0].ack_id
try:
    subscriber.acknowledge(request={"subscription": stale_sub, "ack_ids": [stale]})
    result["stale_ack"] = "accepted"
except exceptions.InvalidArgument:
    result["stale_ack"] = "INVALID_ARGUMENT"
subscriber.acknowledge(request={"subscription": stale_sub, "ack_ids": [fresh]})
result["fresh_ack"] = "accepted"
print(json.dumps(result))
