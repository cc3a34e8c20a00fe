# A callback slower than the ack deadline: Google's Python client extends the lease with
# unary ModifyAckDeadline calls, so the message is not redelivered before it is acked.
import json, threading, time
from google.cloud import pubsub_v1

project = "py-lease"
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "slow")
sub = subscriber.subscription_path(project, "slow-sub")
publisher.create_topic(name=topic)
subscriber.create_subscription(request={"name": sub, "topic": topic, "ack_deadline_seconds": 10})
publisher.publish(topic, b"slow").result()
deliveries, lock, done = [], threading.Lock(), threading.Event()
def callback(message):
    with lock:
        deliveries.append(message.data.decode())
    time.sleep(14)
    message.ack()
    done.set()
future = subscriber.subscribe(sub, callback=callback)
done.wait(40)
time.sleep(2)
future.cancel()
print(json.dumps({"deliveries": deliveries}))
