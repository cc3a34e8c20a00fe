# The rig's fault labels changed over gRPC (UpdateSubscription, mask "labels") on a live
# subscription: the duplicate fault starts at once and stops when the labels go.
import json
from google.cloud import pubsub_v1
from google.protobuf import field_mask_pb2

project = "py-faults"
publisher = pubsub_v1.PublisherClient()
subscriber = pubsub_v1.SubscriberClient()
topic = publisher.topic_path(project, "faulty")
sub = subscriber.subscription_path(project, "faulty-sub")
publisher.create_topic(name=topic)
subscriber.create_subscription(request={"name": sub, "topic": topic})
def labels(values):
    subscriber.update_subscription(request={
        "subscription": {"name": sub, "labels": values},
        "update_mask": field_mask_pb2.FieldMask(paths=["labels"])})
def pull_and_ack():
    got = subscriber.pull(request={"subscription": sub, "max_messages": 10,
                                   "return_immediately": True}, timeout=10)
    ids = [m.ack_id for m in got.received_messages]
    if ids:
        subscriber.acknowledge(request={"subscription": sub, "ack_ids": ids})
    return [m.message.data.decode() for m in got.received_messages]
publisher.publish(topic, b"m").result()
labels({"rig-fault-duplicate-permille": "1000"})
rounds = [pull_and_ack(), pull_and_ack()]
labels({})
rounds += [pull_and_ack(), pull_and_ack()]
print(json.dumps({"rounds": rounds,
                  "labels": dict(subscriber.get_subscription(subscription=sub).labels)}))
