# Google's Python client on an ordered subscription: ten messages on key "k", "k:3" nacked
# once, every other delivery acknowledged. The client acknowledges and nacks with unary
# Acknowledge / ModifyAckDeadline(0) calls while its StreamingPull stays open.
# Prints {"deliveries": [...]} in arrival order.
import json, threading
from google.cloud import pubsub_v1

project = "py-ordered-nack"
publisher = pubsub_v1.PublisherClient(
    publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "ordered-topic")
sub = subscriber.subscription_path(project, "ordered-sub")
publisher.create_topic(name=topic)
subscriber.create_subscription(request={
    "name": sub, "topic": topic, "enable_message_ordering": True, "ack_deadline_seconds": 10})
for i in range(10):
    publisher.publish(topic, f"k:{i}".encode(), ordering_key="k").result()

deliveries, lock, done = [], threading.Lock(), threading.Event()
state = {"nacked": False}

def callback(message):
    data = message.data.decode()
    with lock:
        deliveries.append(data)
        if data == "k:3" and not state["nacked"]:
            state["nacked"] = True
            message.nack()
        else:
            message.ack()
        if deliveries.count("k:3") >= 2:
            last = len(deliveries) - 1 - deliveries[::-1].index("k:3")
            if all(f"k:{i}" in deliveries[last:] for i in range(4, 10)):
                done.set()

future = subscriber.subscribe(sub, callback=callback)
done.wait(30)
future.cancel()
print(json.dumps({"deliveries": deliveries}))
