# Google's Python client nacks every delivery (unary ModifyAckDeadline 0): each nack is a
# delivery attempt, and the fifth sends the message to the dead-letter topic.
import json, threading
from google.cloud import pubsub_v1
from google.pubsub_v1.types import DeadLetterPolicy

project = "py-dead-letter"
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "source")
dlq = publisher.topic_path(project, "dead")
sub = subscriber.subscription_path(project, "source-sub")
dlq_sub = subscriber.subscription_path(project, "dead-sub")
publisher.create_topic(name=topic)
publisher.create_topic(name=dlq)
subscriber.create_subscription(request={"name": dlq_sub, "topic": dlq})
subscriber.create_subscription(request={
    "name": sub, "topic": topic,
    "dead_letter_policy": DeadLetterPolicy(dead_letter_topic=dlq, max_delivery_attempts=5)})
publisher.publish(topic, b"poison", origin="test").result()

attempts, lock = [], threading.Lock()
def callback(message):
    with lock:
        attempts.append(message.delivery_attempt)
    message.nack()
future = subscriber.subscribe(sub, callback=callback)
copy = None
for _ in range(100):
    pulled = subscriber.pull(request={"subscription": dlq_sub, "max_messages": 1,
                                      "return_immediately": True}, timeout=10)
    if pulled.received_messages:
        copy = pulled.received_messages[0].message
        break
    threading.Event().wait(0.2)
threading.Event().wait(1)
future.cancel()
print(json.dumps({"attempts": attempts,
                  "dead_letter": None if copy is None else {
                      "data": copy.data.decode(), "attributes": dict(copy.attributes)}}))
