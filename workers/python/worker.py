#!/usr/bin/env python3
"""The ingest worker of the event backbone, written the way a team on Google's Python client
would write it: stream-pull the ordered raw subscription, validate the envelope, fetch a
claim-checked payload from the bucket, append the event to the ledger idempotently, publish it
to events.merged with the same ordering key, and only then ack.

  transient failure (database, GCS, a publish)   -> nack (Pub/Sub redelivers it)
  bad input (it can never be stored)             -> publish to events.dlq with a
                                                    dead_letter_reason, then ack
  a transient failure on the last attempt        -> the same, reason "given up ..."

Per-key order is kept here too: once a message of key K fails, later messages of K are nacked
until it is stored (Pub/Sub may hand them over before the failed one's redelivery).

Configuration is the environment `rig up` exports (docs/bring-your-own-worker.md). It prints
READY on stdout once its stream is open, and stops cleanly on SIGTERM or SIGINT.

    pip install -r workers/python/requirements.txt
    python3 workers/python/worker.py
"""

import calendar
import hashlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import uuid

import pymysql
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import pubsub_v1, storage

log = logging.getLogger("worker")

# What the ledger can hold (rig/events/event_store/storable.rs): the stricter of MySQL 8.4 and
# MariaDB, so an accepted event is never refused by the database afterwards.
MAX_FIELD_CHARS = 255
MAX_JSON_NESTING = 31
MAX_PAYLOAD_BYTES = 32 * 1024 * 1024
FIRST_TIMESTAMP, LAST_TIMESTAMP = 1, 2**31 - 1
MAX_ATTRIBUTE_KEY_BYTES, MAX_ATTRIBUTE_VALUE_BYTES, MAX_ATTRIBUTES = 256, 1024, 100
HEADERS = ["event_id", "account_id", "aggregate_type", "aggregate_id", "created_at"]
PROBE_ATTRIBUTE = "backbone_probe"
# Server errors that refuse the data itself (rig/events/event_store/refusal.rs): retrying the
# same INSERT gets the same answer. Everything else is the database's trouble: retry.
PERMANENT_DB_ERRORS = {1048, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1690,
                       3140, 3141, 3144, 3146, 3157, 3819, 4025}
DUPLICATE_KEY = 1062
# HTTP statuses that answer for the object itself (rig/events/claim_check.rs).
PERMANENT_GCS_STATUSES = {400, 404, 410, 411, 412, 413, 414, 416}
RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$")


class Bad(Exception):
    """Bad input: it can never be stored. Dead-lettered with this reason."""


class Transient(Exception):
    """A failure a retry may cure. Nacked."""


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"worker: {name} is not set (see docs/bring-your-own-worker.md)")
    return value


# --- the envelope -------------------------------------------------------------------------

def ordering_key(account_id, aggregate_type, aggregate_id):
    key = f"{account_id}:{aggregate_type}:{aggregate_id}"
    if len(key.encode()) <= 1024:
        return key
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_created_at(text):
    """Epoch seconds (with a fraction) of a strict RFC 3339 time; leap seconds are refused."""
    m = RFC3339.match(text)
    if not m:
        raise Bad(f"attribute `created_at` is not RFC 3339 ({text!r})")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if m.group(8) not in ("Z", "z"):
        sign = 1 if m.group(9) == "+" else -1
        off_h, off_m = int(m.group(10)), int(m.group(11))
        if off_h > 23 or off_m > 59:
            raise Bad(f"attribute `created_at` is not RFC 3339 ({text!r}): offset out of range")
        offset = sign * (off_h * 3600 + off_m * 60)
    else:
        offset = 0
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 60):
        raise Bad(f"attribute `created_at` is not RFC 3339 ({text!r}): out of range")
    if second == 60:
        raise Bad(f"created_at {text} is a leap second, which TIMESTAMP cannot hold")
    try:
        seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset
        time.gmtime(seconds)
    except (ValueError, OverflowError):
        raise Bad(f"attribute `created_at` is not RFC 3339 ({text!r})")
    fraction = float(m.group(7)) if m.group(7) else 0.0
    return seconds + fraction


def nesting(text):
    """The deepest nesting of arrays/objects, brackets inside strings excluded, no recursion."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def _refuse_constant(name):
    raise ValueError(f"{name} is not JSON")


def _finite(text):
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text} is beyond a double")
    return value


def _lone_surrogate(value):
    """Whether a parsed document holds a lone UTF-16 surrogate (neither engine stores it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if any(0xD800 <= ord(c) <= 0xDFFF for c in v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def json_problem(payload):
    if len(payload.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD_BYTES:
        return f"payload is {len(payload)} bytes; the ledger takes at most {MAX_PAYLOAD_BYTES}"
    depth = nesting(payload)
    if depth > MAX_JSON_NESTING:
        return (f"payload is not valid JSON for the ledger: nested {depth} levels deep, "
                f"at most {MAX_JSON_NESTING} are stored")
    try:
        value = json.loads(payload, parse_constant=_refuse_constant, parse_float=_finite)
    except (ValueError, RecursionError) as e:
        return f"payload is not valid JSON: {e}"
    if _lone_surrogate(value):
        return "payload is not valid JSON: a lone UTF-16 surrogate escape"
    return None


def check_claim(bucket, obj, size, sha256):
    uri = f"gs://{bucket}/{obj}"
    bucket_ok = (3 <= len(bucket) <= 222 and re.fullmatch(r"[a-z0-9._-]+", bucket)
                 and bucket[0].isalnum() and bucket[-1].isalnum())
    if not bucket_ok:
        raise Bad(f"attribute `payload_ref` names no valid bucket: {uri!r}")
    if (not obj or len(obj.encode()) > 1024 or "\r" in obj or "\n" in obj or obj in (".", "..")
            or obj.startswith(".well-known/acme-challenge/")):
        raise Bad(f"attribute `payload_ref` names no valid object (empty, over 1,024 bytes, "
                  f"a line break, `.` or `..`): {uri!r}")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise Bad(f"attribute `payload_sha256` is not 64 lowercase hex digits: {sha256!r}")
    if size > MAX_PAYLOAD_BYTES:
        raise Bad(f"attribute `payload_size` says {size} bytes; the ledger takes at most "
                  f"{MAX_PAYLOAD_BYTES}")


def decode(message):
    """The event's headers and where its payload is, as rig/events/envelope.rs reads them."""
    attrs = message.attributes

    def get(name):
        if name not in attrs:
            raise Bad(f"attribute `{name}` is missing")
        return attrs[name]

    event_id = get("event_id")
    try:
        parsed = uuid.UUID(event_id)
    except ValueError as e:
        raise Bad(f"attribute `event_id` is not a UUID ({event_id!r}): {e}")
    # One spelling end to end, so the ledger and events.merged carry the same text.
    if str(parsed) != event_id:
        raise Bad(f"attribute `event_id` is not a UUID in canonical form (lowercase, hyphenated, "
                  f"36 characters, e.g. {parsed}): {event_id!r}")
    created_at = parse_created_at(get("created_at"))
    ref = attrs.get("payload_ref")
    if ref is not None and message.data:
        raise Bad(f"the message carries both a payload ({len(message.data)} bytes) and a claim "
                  f"reference `payload_ref`: which one is the event's is unknowable")
    if ref is None:
        try:
            payload, claim = message.data.decode("utf-8"), None
        except UnicodeDecodeError as e:
            raise Bad(f"payload is not UTF-8: {e}")
    else:
        m = re.fullmatch(r"gs://([^/]*)/(.*)", ref, re.S)
        if not m:
            raise Bad(f"attribute `payload_ref` is not a gs:// URI: {ref!r}")
        size_text = get("payload_size")
        if not re.fullmatch(r"\+?[0-9]+", size_text):
            raise Bad(f"attribute `payload_size` is not a size: {size_text!r}")
        claim = (m.group(1), m.group(2), int(size_text), get("payload_sha256"))
        check_claim(*claim)
        payload = None
    return {
        "event_id": event_id,
        "account_id": get("account_id"),
        "aggregate_type": get("aggregate_type"),
        "aggregate_id": get("aggregate_id"),
        "created_at": created_at,
    }, payload, claim


def validate(event, message):
    for name in ("account_id", "aggregate_type", "aggregate_id"):
        value = event[name]
        if not value.strip():
            raise Bad(f"{name} is empty")
        if len(value) > MAX_FIELD_CHARS:
            raise Bad(f"{name} is {len(value)} characters long; the ledger keeps at most "
                      f"{MAX_FIELD_CHARS}")
        if "\0" in value:
            raise Bad(f"{name} contains a NUL character")
    if event["event_id"] == "00000000-0000-0000-0000-000000000000":
        raise Bad("event_id is the nil UUID")
    problem = json_problem(event["payload"])
    if problem:
        raise Bad(problem)
    seconds = math.floor(event["created_at"])
    if not FIRST_TIMESTAMP <= seconds <= LAST_TIMESTAMP:
        raise Bad(f"created_at {message.attributes['created_at']} is outside the TIMESTAMP range "
                  f"(1970-01-01T00:00:01Z to 2038-01-19T03:14:07Z); the ledger cannot store it")
    key = ordering_key(event["account_id"], event["aggregate_type"], event["aggregate_id"])
    if message.ordering_key != key:
        raise Bad(f"the message's ordering key {message.ordering_key!r} is not its aggregate's "
                  f"({key!r}): its order among the aggregate's events would be lost")


def ledger_time(seconds):
    """created_at as the ledger keeps it: whole seconds, UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(math.floor(seconds)))


def rfc3339(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(math.floor(seconds)))


def truncate_utf8(text, limit):
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def reserved(key):
    return key.startswith(("dead_letter_", "CloudPubSub", "goog"))


# --- the worker ---------------------------------------------------------------------------

class Worker:
    def __init__(self):
        self.project = env("GOOGLE_CLOUD_PROJECT")
        self.subscription_name = env("BACKBONE_RAW_SUBSCRIPTION")
        self.merged_topic_name = env("BACKBONE_MERGED_TOPIC")
        self.dead_letter_topic_name = env("BACKBONE_DEAD_LETTER_TOPIC")
        self.max_attempts = int(env("BACKBONE_MAX_DELIVERY_ATTEMPTS", "5"))
        self.bucket = env("BACKBONE_PAYLOAD_BUCKET")
        if env("DB_EVENT_STORE_CONNECTION", "mysql") != "mysql":
            sys.exit("worker: DB_EVENT_STORE_CONNECTION must be mysql")
        self.db = dict(host=env("DB_EVENT_STORE_HOST"), port=int(env("DB_EVENT_STORE_PORT")),
                       database=env("DB_EVENT_STORE_DATABASE"),
                       user=env("DB_EVENT_STORE_USERNAME"),
                       password=env("DB_EVENT_STORE_PASSWORD", ""))
        self.local = threading.local()
        self.publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
        self.merged_topic = self.publisher.topic_path(self.project, self.merged_topic_name)
        self.dead_letter_topic = self.publisher.topic_path(self.project, self.dead_letter_topic_name)
        if os.environ.get("STORAGE_EMULATOR_HOST"):
            self.storage = storage.Client(project=self.project, credentials=AnonymousCredentials())
        else:
            self.storage = storage.Client(project=self.project)
        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = self.subscriber.subscription_path(self.project, self.subscription_name)
        # Per ordering key: the message id that failed, and since when (see `handle`).
        self.blocked = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    # The ledger ------------------------------------------------------------------------

    def connection(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = pymysql.connect(**self.db, charset="utf8mb4", autocommit=True,
                                   connect_timeout=5, read_timeout=10, write_timeout=10,
                                   init_command="SET time_zone = '+00:00'")
            self.local.conn = conn
        return conn

    def drop_connection(self):
        conn = getattr(self.local, "conn", None)
        self.local.conn = None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def append(self, event):
        """'stored' or 'already stored'; Bad for a conflict or a refusal, Transient otherwise."""
        try:
            with self.connection().cursor() as cur:
                try:
                    cur.execute(
                        "INSERT INTO event_store (account_id, event_id, aggregate_type, "
                        "aggregate_id, payload, created_at) VALUES (%s, %s, %s, %s, %s, %s)",
                        (event["account_id"], event["event_id"], event["aggregate_type"],
                         event["aggregate_id"], event["payload"], ledger_time(event["created_at"])))
                    return "stored"
                except pymysql.err.IntegrityError as e:
                    if e.args[0] != DUPLICATE_KEY:
                        raise
                cur.execute("SELECT account_id, aggregate_type, aggregate_id, payload, "
                            "DATE_FORMAT(created_at, '%%Y-%%m-%%d %%H:%%i:%%s') "
                            "FROM event_store WHERE event_id = %s", (event["event_id"],))
                row = cur.fetchone()
        except pymysql.err.MySQLError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else None
            if code in PERMANENT_DB_ERRORS:
                raise Bad(f"the event store refused it ({code}): {e.args[1:]}")
            self.drop_connection()
            raise Transient(f"event store: {e}")
        if row is None:
            raise Transient("event store: a duplicate event_id that cannot be read back")
        differs = [name for name, stored in zip(
            ("account_id", "aggregate_type", "aggregate_id"), row[:3]) if stored != event[name]]
        if json.loads(row[3]) != json.loads(event["payload"]):
            differs.append("payload")
        if row[4] != ledger_time(event["created_at"]):
            differs.append("created_at")
        if differs:
            raise Bad(f"conflict: event_id {event['event_id']} is already stored with another "
                      f"{', '.join(differs)}; nothing overwritten")
        return "already stored"

    # The bucket ------------------------------------------------------------------------

    def fetch(self, bucket, obj, size, sha256):
        uri = f"gs://{bucket}/{obj}"
        if bucket != self.bucket:
            raise Bad(f"claim reference {uri} is outside the payload bucket {self.bucket}")
        blob = self.storage.bucket(bucket).blob(obj)
        try:
            # One byte more than claimed: enough to tell that the object is larger, never more.
            data = blob.download_as_bytes(start=0, end=size, retry=None, timeout=5, checksum=None)
        except gexc.NotFound:
            raise Bad(f"payload object {uri} does not exist (deleted, expired, or never written)")
        except gexc.GoogleAPICallError as e:
            if getattr(e, "code", None) in PERMANENT_GCS_STATUSES:
                raise Bad(f"GCS refused {uri} with HTTP {e.code}: {e}")
            raise Transient(f"reading {uri}: {e}")
        except Exception as e:  # connection refused, timeouts: the bucket is unavailable
            raise Transient(f"reading {uri}: {e}")
        if len(data) > size:
            raise Bad(f"payload object {uri} is larger than the {size} bytes the message says")
        if len(data) != size:
            raise Bad(f"payload object {uri} is {len(data)} bytes, the message says {size}")
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:
            raise Bad(f"payload object {uri} has SHA-256 {digest}, the message says {sha256}: "
                      f"it was modified")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise Bad(f"payload object {uri} is not UTF-8: {e}")

    # Pub/Sub ---------------------------------------------------------------------------

    def publish_merged(self, message, event):
        attributes = {k: v for k, v in message.attributes.items() if not reserved(k)}
        attributes.update(event_id=event["event_id"], account_id=event["account_id"],
                          aggregate_type=event["aggregate_type"],
                          aggregate_id=event["aggregate_id"], created_at=rfc3339(event["created_at"]))
        try:
            self.publisher.publish(self.merged_topic, message.data,
                                   ordering_key=message.ordering_key, **attributes).result(timeout=30)
        except Exception as e:
            # The client pauses a key after a failed publish; the redelivery must find it open.
            self.publisher.resume_publish(self.merged_topic, message.ordering_key)
            raise Transient(f"publishing to {self.merged_topic_name}: {e}")

    def dead_letter(self, message, reason):
        kept = sorted(((k, v) for k, v in message.attributes.items()
                       if k and len(k.encode()) <= MAX_ATTRIBUTE_KEY_BYTES and not reserved(k)),
                      key=lambda kv: (kv[0] not in HEADERS, kv[0]))[:MAX_ATTRIBUTES - 4]
        attributes = {k: truncate_utf8(v, MAX_ATTRIBUTE_VALUE_BYTES) for k, v in kept}
        attributes.update(
            dead_letter_reason=truncate_utf8(reason, MAX_ATTRIBUTE_VALUE_BYTES),
            dead_letter_source_subscription=self.subscription_name,
            dead_letter_source_message_id=message.message_id,
            dead_letter_delivery_attempt=str(message.delivery_attempt or 1))
        self.publisher.publish(self.dead_letter_topic, message.data, **attributes).result(timeout=30)
        log.info("dead-lettered %s: %s", message.message_id, reason)

    # One delivery ----------------------------------------------------------------------

    def prepare(self, message):
        """The event to append, or Bad / Transient."""
        event, payload, claim = decode(message)
        event["payload"] = payload if claim is None else self.fetch(*claim)
        validate(event, message)
        return event

    def process(self, message):
        event = self.prepare(message)
        outcome = self.append(event)
        self.publish_merged(message, event)
        return outcome

    def last_attempt(self, message):
        return (message.delivery_attempt or 1) >= self.max_attempts

    def give_up(self, message, reason):
        """The last attempt: dead-letter it ourselves, with the reason, instead of nacking."""
        try:
            self.dead_letter(message, f"given up on delivery attempt {message.delivery_attempt} "
                                      f"(the subscription's last): {reason}")
            message.ack()
        except Exception as e:
            log.warning("dead-lettering %s failed: %s", message.message_id, e)
            message.nack()

    def handle(self, message):
        if PROBE_ATTRIBUTE in message.attributes:
            message.ack()
            return
        if self.stopping.is_set():
            message.nack()
            return
        key = message.ordering_key
        with self.lock:
            blocker = self.blocked.get(key)
        if blocker and blocker[0] != message.message_id and time.monotonic() - blocker[1] < 615:
            reason = (f"held back behind message {blocker[0]} of the same ordering key, which had "
                      f"not been stored; dead-lettered rather than stored out of order")
            if self.last_attempt(message):
                self.give_up(message, reason)
            else:
                message.nack()
            return
        try:
            outcome = self.process(message)
        except Bad as e:
            try:
                self.dead_letter(message, str(e))
            except Exception as dl:
                log.warning("dead-lettering %s failed: %s", message.message_id, dl)
                self.fail(message, f"dead-lettering failed: {dl}")
                return
            self.succeed(message)
            return
        except Transient as e:
            log.warning("%s (attempt %s): %s", message.message_id, message.delivery_attempt, e)
            self.fail(message, str(e))
            return
        except Exception as e:
            log.exception("unexpected failure on %s", message.message_id)
            self.fail(message, f"unexpected: {e}")
            return
        log.debug("%s %s", outcome, message.message_id)
        self.succeed(message)

    def succeed(self, message):
        with self.lock:
            self.blocked.pop(message.ordering_key, None)
        message.ack()

    def fail(self, message, reason):
        if self.last_attempt(message):
            with self.lock:
                self.blocked.pop(message.ordering_key, None)
            self.give_up(message, reason)
            return
        if message.ordering_key:
            with self.lock:
                self.blocked[message.ordering_key] = (message.message_id, time.monotonic())
        message.nack()

    def run(self):
        # Leases extended 10 s at a time (the client's default is a minute): a crashed worker's
        # messages, and on the ordered subscription every later message of their keys, come
        # back to its replacement after 10 s. The client keeps extending while one is in hand.
        flow = pubsub_v1.types.FlowControl(max_messages=200, max_duration_per_lease_extension=10)
        future = self.subscriber.subscribe(self.subscription, callback=self.handle,
                                           flow_control=flow, await_callbacks_on_shutdown=True)
        print("READY", flush=True)
        log.info("pulling %s", self.subscription)

        def stop(signum, _frame):
            log.info("signal %s: stopping", signum)
            self.stopping.set()
            future.cancel()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        try:
            # Woken twice a second: Python runs a signal handler only on the main thread, and
            # a SIGTERM the kernel hands to one of the client's threads waits until the main
            # thread wakes (measured: a SIGTERM ignored for 15 s while the worker went on).
            while True:
                try:
                    future.result(timeout=0.5)
                    break
                except TimeoutError:
                    continue
        except Exception as e:
            if not self.stopping.is_set():
                log.error("the stream failed: %s", e)
                return 1
        finally:
            self.subscriber.close()
            self.publisher.stop()
        log.info("stopped")
        return 0


def main(worker_class=Worker):
    logging.basicConfig(level=os.environ.get("WORKER_LOG", "INFO"), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("google").setLevel(logging.WARNING)
    return worker_class().run()


if __name__ == "__main__":
    sys.exit(main())
