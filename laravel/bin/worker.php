<?php

/*
 * The ingest worker as SuiteX would run it (a Laravel job's loop, outside the app here):
 * pull the ordered raw subscription over Pub/Sub's REST API, validate the envelope, fetch a
 * claim-checked payload from the bucket, write the event through the EventStore model on the
 * `event_store` connection (idempotent on event_id), publish it to events.merged with the
 * same ordering key, and only then acknowledge.
 *
 *   transient failure (database, GCS, a publish)   -> nack (modifyAckDeadline 0)
 *   bad input (it can never be stored)             -> publish to events.dlq with a
 *                                                     dead_letter_reason, then acknowledge
 *   a transient failure on the last attempt        -> the same, reason "given up ..."
 *
 * One message at a time, in the order each pull returns them: a key's messages stay in
 * order, and once one fails, later messages of its key are nacked until it is stored.
 *
 * Environment: what `rig up` exports (docs/bring-your-own-worker.md). The primary database
 * (DB_*) is never connected to. Prints READY on stdout before its first pull; SIGTERM or
 * SIGINT stop it after the message in hand (the rest of the pull is nacked).
 *
 *   php laravel/bin/worker.php
 */

declare(strict_types=1);

require __DIR__.'/bootstrap.php';

use App\Models\EventStore;
use Illuminate\Container\Container;
use Illuminate\Database\Capsule\Manager as Capsule;
use Illuminate\Database\QueryException;

const MAX_FIELD_CHARS = 255;
const MAX_JSON_NESTING = 31;
const MAX_PAYLOAD_BYTES = 32 * 1024 * 1024;
const LAST_TIMESTAMP = 2147483647;
const PROBE_ATTRIBUTE = 'backbone_probe';
const HEADERS = ['event_id', 'account_id', 'aggregate_type', 'aggregate_id', 'created_at'];
// Server errors that refuse the data itself (rig/events/event_store/refusal.rs).
const PERMANENT_DB_ERRORS = [1048, 1264, 1265, 1292, 1300, 1366, 1367, 1406, 1411, 1690, 3140, 3141, 3144, 3146, 3157, 3819, 4025];
const PERMANENT_GCS_STATUSES = [400, 404, 410, 411, 412, 413, 414, 416];
/** How long a key waits for a failed message that does not come back (it went to another worker). */
const BLOCK_SECONDS = 615;

final class Bad extends RuntimeException {}
final class Transient extends RuntimeException {}

function need(string $name, ?string $default = null): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        if ($default !== null) {
            return $default;
        }
        rig_fail("$name is not set (see docs/bring-your-own-worker.md)");
    }
    return $value;
}

function say(string $line): void
{
    fwrite(STDERR, date('H:i:s').' worker: '.$line.PHP_EOL);
}

/** One HTTP request with streams; [status, body] (status 0 when nothing answered). */
function http(string $method, string $url, ?array $json = null, array $headers = [], float $timeout = 10.0): array
{
    $token = getenv('GOOGLE_OAUTH_ACCESS_TOKEN');
    if ($token !== false && $token !== '') {
        $headers[] = 'Authorization: Bearer '.$token;
    }
    $options = ['method' => $method, 'timeout' => $timeout, 'ignore_errors' => true, 'header' => $headers];
    if ($json !== null) {
        $options['content'] = json_encode($json, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
        $options['header'][] = 'Content-Type: application/json';
    }
    $body = @file_get_contents($url, false, stream_context_create(['http' => $options]));
    $status = 0;
    foreach ($http_response_header ?? [] as $line) {
        if (preg_match('#^HTTP/\S+ (\d{3})#', $line, $m)) {
            $status = (int) $m[1];
        }
    }
    return [$status, $body === false ? '' : $body];
}

final class PubSub
{
    private string $base;

    public function __construct(private string $project)
    {
        $host = getenv('PUBSUB_EMULATOR_HOST');
        $this->base = ($host !== false && $host !== '' ? 'http://'.$host : 'https://pubsub.googleapis.com').'/v1/projects/'.$project;
    }

    private function call(string $path, array $body, float $timeout = 10.0): array
    {
        [$status, $text] = http('POST', $this->base.$path, $body, [], $timeout);
        if ($status !== 200) {
            throw new Transient("Pub/Sub $path: HTTP $status ".substr($text, 0, 300));
        }
        return json_decode($text, true) ?? [];
    }

    /** Received messages; an empty list when the long poll ends with nothing. */
    public function pull(string $subscription, int $max): array
    {
        [$status, $text] = http('POST', $this->base."/subscriptions/$subscription:pull", ['maxMessages' => $max], [], 10.0);
        if ($status === 0) {
            return [];
        }
        if ($status !== 200) {
            throw new Transient("Pub/Sub pull: HTTP $status ".substr($text, 0, 300));
        }
        return json_decode($text, true)['receivedMessages'] ?? [];
    }

    public function acknowledge(string $subscription, array $ackIds): void
    {
        $this->call("/subscriptions/$subscription:acknowledge", ['ackIds' => $ackIds]);
    }

    public function modifyAckDeadline(string $subscription, array $ackIds, int $seconds): void
    {
        $this->call("/subscriptions/$subscription:modifyAckDeadline", ['ackIds' => $ackIds, 'ackDeadlineSeconds' => $seconds]);
    }

    public function publish(string $topic, string $data, array $attributes, string $orderingKey = ''): string
    {
        $message = ['data' => base64_encode($data), 'attributes' => (object) $attributes];
        if ($orderingKey !== '') {
            $message['orderingKey'] = $orderingKey;
        }
        $ids = $this->call("/topics/$topic:publish", ['messages' => [$message]], 30.0)['messageIds'] ?? [];
        if (! $ids) {
            throw new Transient("Pub/Sub publish to $topic: no message id");
        }
        return $ids[0];
    }
}

function chars(string $s): int
{
    return mb_strlen($s, 'UTF-8');
}

function truncate_utf8(string $s, int $bytes): string
{
    return strlen($s) <= $bytes ? $s : mb_strcut($s, 0, $bytes, 'UTF-8');
}

function ordering_key(string $account, string $type, string $id): string
{
    $key = "$account:$type:$id";
    return strlen($key) <= 1024 ? $key : 'sha256:'.hash('sha256', $key);
}

/** The deepest nesting of arrays/objects, brackets inside strings excluded, no recursion. */
function nesting(string $text): int
{
    $depth = $deepest = 0;
    $inString = $escaped = false;
    $n = strlen($text);
    for ($i = 0; $i < $n; $i++) {
        $c = $text[$i];
        if ($inString) {
            if ($escaped) {
                $escaped = false;
            } elseif ($c === '\\') {
                $escaped = true;
            } elseif ($c === '"') {
                $inString = false;
            }
            continue;
        }
        if ($c === '"') {
            $inString = true;
        } elseif ($c === '[' || $c === '{') {
            $deepest = max($deepest, ++$depth);
        } elseif ($c === ']' || $c === '}') {
            $depth = max(0, $depth - 1);
        }
    }
    return $deepest;
}

function has_infinity($value): bool
{
    $stack = [$value];
    while ($stack) {
        $v = array_pop($stack);
        if (is_float($v) && ! is_finite($v)) {
            return true;
        }
        if (is_array($v)) {
            array_push($stack, ...array_values($v));
        }
    }
    return false;
}

function json_problem(string $payload): ?string
{
    if (strlen($payload) > MAX_PAYLOAD_BYTES) {
        return 'payload is '.strlen($payload).' bytes; the ledger takes at most '.MAX_PAYLOAD_BYTES;
    }
    $depth = nesting($payload);
    if ($depth > MAX_JSON_NESTING) {
        return "payload is not valid JSON for the ledger: nested $depth levels deep, at most ".MAX_JSON_NESTING.' are stored';
    }
    try {
        $value = json_decode($payload, true, MAX_JSON_NESTING + 2, JSON_THROW_ON_ERROR);
    } catch (JsonException $e) {
        return 'payload is not valid JSON: '.$e->getMessage();
    }
    // PHP reads 1e400 as INF; neither engine stores a number beyond a double.
    if (has_infinity($value)) {
        return 'payload is not valid JSON: a number beyond a double';
    }
    return null;
}

/** Epoch seconds (with a fraction) of a strict RFC 3339 time. */
function parse_created_at(string $text): float
{
    if (! preg_match('/^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$/', $text, $m)) {
        throw new Bad("attribute `created_at` is not RFC 3339 (".json_encode($text).')');
    }
    [$y, $mo, $d, $h, $mi, $s] = array_map('intval', array_slice($m, 1, 6));
    $offset = 0;
    if (! in_array($m[8], ['Z', 'z'], true)) {
        if ((int) $m[10] > 23 || (int) $m[11] > 59) {
            throw new Bad("attribute `created_at` is not RFC 3339 (".json_encode($text).'): offset out of range');
        }
        $offset = ($m[9] === '+' ? 1 : -1) * ((int) $m[10] * 3600 + (int) $m[11] * 60);
    }
    if (! checkdate($mo, $d, $y) || $h > 23 || $mi > 59 || $s > 60) {
        throw new Bad("attribute `created_at` is not RFC 3339 (".json_encode($text).'): out of range');
    }
    if ($s === 60) {
        throw new Bad("created_at $text is a leap second, which TIMESTAMP cannot hold");
    }
    $seconds = gmmktime($h, $mi, $s, $mo, $d, $y) - $offset;
    return $seconds + (isset($m[7]) && $m[7] !== '' ? (float) $m[7] : 0.0);
}

function reserved(string $key): bool
{
    return str_starts_with($key, 'dead_letter_') || str_starts_with($key, 'CloudPubSub') || str_starts_with($key, 'goog');
}

final class Worker
{
    private PubSub $pubsub;
    private string $subscription;
    private string $merged;
    private string $deadLetters;
    private int $maxAttempts;
    private string $bucket;
    private string $storage;
    /** ordering key => [failed message id, since] */
    private array $blocked = [];
    public bool $stopping = false;

    public function __construct()
    {
        $this->pubsub = new PubSub(need('GOOGLE_CLOUD_PROJECT'));
        $this->subscription = need('BACKBONE_RAW_SUBSCRIPTION');
        $this->merged = need('BACKBONE_MERGED_TOPIC');
        $this->deadLetters = need('BACKBONE_DEAD_LETTER_TOPIC');
        $this->maxAttempts = (int) need('BACKBONE_MAX_DELIVERY_ATTEMPTS', '5');
        $this->bucket = need('BACKBONE_PAYLOAD_BUCKET');
        $host = getenv('STORAGE_EMULATOR_HOST');
        $this->storage = $host !== false && $host !== '' ? rtrim($host, '/') : 'https://storage.googleapis.com';
    }

    /** The event's columns, the payload included; Bad or Transient otherwise. */
    private function prepare(array $m): array
    {
        $attrs = $m['attributes'] ?? [];
        $get = function (string $name) use ($attrs): string {
            if (! array_key_exists($name, $attrs)) {
                throw new Bad("attribute `$name` is missing");
            }
            return (string) $attrs[$name];
        };
        $eventId = $get('event_id');
        if (! preg_match('/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/', $eventId)) {
            $bare = strtolower(preg_replace('/^(urn:uuid:)|[{}]/i', '', $eventId) ?? '');
            $hex = str_replace('-', '', $bare);
            if (preg_match('/^[0-9a-f]{32}$/', $hex) && strlen($bare) >= 32 && $eventId !== '') {
                throw new Bad('attribute `event_id` is not a UUID in canonical form (lowercase, hyphenated, 36 characters): '.json_encode($eventId));
            }
            throw new Bad('attribute `event_id` is not a UUID ('.json_encode($eventId).')');
        }
        $createdAt = parse_created_at($get('created_at'));
        $data = base64_decode($m['data'] ?? '', true);
        if ($data === false) {
            throw new Bad('the message data is not base64');
        }
        if (array_key_exists('payload_ref', $attrs) && $data !== '') {
            throw new Bad('the message carries both a payload ('.strlen($data).' bytes) and a claim reference `payload_ref`: which one is the event\'s is unknowable');
        }
        if (! array_key_exists('payload_ref', $attrs)) {
            if (preg_match('//u', $data) !== 1) {
                throw new Bad('payload is not UTF-8');
            }
            $payload = $data;
        } else {
            $payload = $this->fetch($attrs, $get);
        }
        $event = [
            'event_id' => $eventId,
            'account_id' => $get('account_id'),
            'aggregate_type' => $get('aggregate_type'),
            'aggregate_id' => $get('aggregate_id'),
            'payload' => $payload,
            'created_at_seconds' => $createdAt,
        ];
        foreach (['account_id', 'aggregate_type', 'aggregate_id'] as $name) {
            $value = $event[$name];
            if (trim($value, " \t\n\r\0\x0B") === '') {
                throw new Bad("$name is empty");
            }
            if (chars($value) > MAX_FIELD_CHARS) {
                throw new Bad("$name is ".chars($value).' characters long; the ledger keeps at most '.MAX_FIELD_CHARS);
            }
            if (str_contains($value, "\0")) {
                throw new Bad("$name contains a NUL character");
            }
        }
        if ($eventId === '00000000-0000-0000-0000-000000000000') {
            throw new Bad('event_id is the nil UUID');
        }
        if (($problem = json_problem($payload)) !== null) {
            throw new Bad($problem);
        }
        $whole = (int) floor($createdAt);
        if ($whole < 1 || $whole > LAST_TIMESTAMP) {
            throw new Bad('created_at '.$attrs['created_at'].' is outside the TIMESTAMP range (1970-01-01T00:00:01Z to 2038-01-19T03:14:07Z); the ledger cannot store it');
        }
        $key = ordering_key($event['account_id'], $event['aggregate_type'], $event['aggregate_id']);
        if (($m['orderingKey'] ?? '') !== $key) {
            throw new Bad('the message\'s ordering key '.json_encode($m['orderingKey'] ?? '').' is not its aggregate\'s ('.json_encode($key).'): its order among the aggregate\'s events would be lost');
        }
        $event['created_at'] = gmdate('Y-m-d H:i:s', $whole);
        return $event;
    }

    private function fetch(array $attrs, callable $get): string
    {
        $ref = $attrs['payload_ref'];
        if (! preg_match('#^gs://([^/]*)/(.*)$#s', $ref, $m)) {
            throw new Bad('attribute `payload_ref` is not a gs:// URI: '.json_encode($ref));
        }
        [$bucket, $object] = [$m[1], $m[2]];
        $sizeText = $get('payload_size');
        if (! preg_match('/^\+?[0-9]+$/', $sizeText)) {
            throw new Bad('attribute `payload_size` is not a size: '.json_encode($sizeText));
        }
        $size = (int) $sizeText;
        $sha = $get('payload_sha256');
        $uri = "gs://$bucket/$object";
        if (! (strlen($bucket) >= 3 && strlen($bucket) <= 222 && preg_match('/^[a-z0-9][a-z0-9._-]*[a-z0-9]$/', $bucket))) {
            throw new Bad('attribute `payload_ref` names no valid bucket: '.json_encode($uri));
        }
        if ($object === '' || strlen($object) > 1024 || strpbrk($object, "\r\n") !== false || $object === '.' || $object === '..' || str_starts_with($object, '.well-known/acme-challenge/')) {
            throw new Bad('attribute `payload_ref` names no valid object (empty, over 1,024 bytes, a line break, `.` or `..`): '.json_encode($uri));
        }
        if (! preg_match('/^[0-9a-f]{64}$/', $sha)) {
            throw new Bad('attribute `payload_sha256` is not 64 lowercase hex digits: '.json_encode($sha));
        }
        if ($size > MAX_PAYLOAD_BYTES) {
            throw new Bad("attribute `payload_size` says $size bytes; the ledger takes at most ".MAX_PAYLOAD_BYTES);
        }
        if ($bucket !== $this->bucket) {
            throw new Bad("claim reference $uri is outside the payload bucket {$this->bucket}");
        }
        // One byte more than claimed: enough to tell the object is larger, never more.
        $url = $this->storage.'/storage/v1/b/'.rawurlencode($bucket).'/o/'.rawurlencode($object).'?alt=media';
        [$status, $data] = http('GET', $url, null, ['Range: bytes=0-'.$size], 5.0);
        if ($status === 404) {
            throw new Bad("payload object $uri does not exist (deleted, expired, or never written)");
        }
        if ($status === 416 && $size > 0) {
            throw new Bad("payload object $uri is 0 bytes, the message says $size");
        }
        if (in_array($status, PERMANENT_GCS_STATUSES, true) && $status !== 416) {
            throw new Bad("GCS refused $uri with HTTP $status");
        }
        if ($status === 416) {
            $data = '';
        } elseif ($status !== 200 && $status !== 206) {
            throw new Transient("reading $uri: HTTP $status");
        }
        if (strlen($data) > $size) {
            throw new Bad("payload object $uri is larger than the $size bytes the message says");
        }
        if (strlen($data) !== $size) {
            throw new Bad("payload object $uri is ".strlen($data)." bytes, the message says $size");
        }
        $digest = hash('sha256', $data);
        if ($digest !== $sha) {
            throw new Bad("payload object $uri has SHA-256 $digest, the message says $sha: it was modified");
        }
        if (preg_match('//u', $data) !== 1) {
            throw new Bad("payload object $uri is not UTF-8");
        }
        return $data;
    }

    /** 'stored' or 'already stored'; Bad for a conflict or a refusal; Transient otherwise. */
    private function append(array $event): string
    {
        $columns = [
            'account_id' => $event['account_id'],
            'event_id' => $event['event_id'],
            'aggregate_type' => $event['aggregate_type'],
            'aggregate_id' => $event['aggregate_id'],
            // Decoded to objects, not arrays, so that {} stays an object when the cast encodes it.
            'payload' => json_decode($event['payload'], false, 512, JSON_BIGINT_AS_STRING),
            'created_at' => $event['created_at'],
        ];
        try {
            EventStore::create($columns);
            return 'stored';
        } catch (QueryException $e) {
            $error = rig_db_error($e);
            if ($error['error_code'] !== 1062) {
                $this->refused($error);
            }
        }
        try {
            $row = EventStore::where('event_id', $event['event_id'])->first();
        } catch (QueryException $e) {
            $this->refused(rig_db_error($e));
        }
        if ($row === null) {
            throw new Transient('event store: a duplicate event_id that cannot be read back');
        }
        $differs = [];
        foreach (['account_id', 'aggregate_type', 'aggregate_id'] as $name) {
            if ($row->getAttribute($name) !== $event[$name]) {
                $differs[] = $name;
            }
        }
        if ($row->payload != json_decode($event['payload'], true)) {
            $differs[] = 'payload';
        }
        if ($row->created_at->format('Y-m-d H:i:s') !== $event['created_at']) {
            $differs[] = 'created_at';
        }
        if ($differs) {
            throw new Bad("conflict: event_id {$event['event_id']} is already stored with another ".implode(', ', $differs).'; nothing overwritten');
        }
        return 'already stored';
    }

    private function refused(array $error): never
    {
        if (in_array($error['error_code'], PERMANENT_DB_ERRORS, true)) {
            throw new Bad("the event store refused it ({$error['error_code']}): {$error['message']}");
        }
        // The connection may be gone (a restarted or frozen server): the next use reconnects.
        Capsule::connection('event_store')->disconnect();
        throw new Transient('event store: '.$error['message']);
    }

    private function publishMerged(array $m, array $event): void
    {
        $attributes = array_filter($m['attributes'] ?? [], fn ($k) => ! reserved((string) $k), ARRAY_FILTER_USE_KEY);
        $attributes = array_merge($attributes, [
            'event_id' => $event['event_id'],
            'account_id' => $event['account_id'],
            'aggregate_type' => $event['aggregate_type'],
            'aggregate_id' => $event['aggregate_id'],
            'created_at' => gmdate('Y-m-d\TH:i:s', (int) floor($event['created_at_seconds'])).'+00:00',
        ]);
        $this->pubsub->publish($this->merged, base64_decode($m['data'] ?? '') ?: '', $attributes, $m['orderingKey'] ?? '');
    }

    private function deadLetter(array $received, string $reason): void
    {
        $m = $received['message'];
        $kept = [];
        foreach ($m['attributes'] ?? [] as $k => $v) {
            $k = (string) $k;
            if ($k !== '' && strlen($k) <= 256 && ! reserved($k)) {
                $kept[$k] = truncate_utf8((string) $v, 1024);
            }
        }
        uksort($kept, fn ($a, $b) => [! in_array($a, HEADERS, true), $a] <=> [! in_array($b, HEADERS, true), $b]);
        $kept = array_slice($kept, 0, 96, true);
        $kept['dead_letter_reason'] = truncate_utf8($reason, 1024);
        $kept['dead_letter_source_subscription'] = $this->subscription;
        $kept['dead_letter_source_message_id'] = $m['messageId'];
        $kept['dead_letter_delivery_attempt'] = (string) ($received['deliveryAttempt'] ?? 1);
        $this->pubsub->publish($this->deadLetters, base64_decode($m['data'] ?? '') ?: '', $kept);
        say("dead-lettered {$m['messageId']}: $reason");
    }

    private function lastAttempt(array $received): bool
    {
        return ($received['deliveryAttempt'] ?? 1) >= $this->maxAttempts;
    }

    private function ack(array $received): void
    {
        $this->pubsub->acknowledge($this->subscription, [$received['ackId']]);
    }

    private function nack(array $received): void
    {
        $this->pubsub->modifyAckDeadline($this->subscription, [$received['ackId']], 0);
    }

    /** Dead-letters with the reason and acks; nacks if even that fails. */
    private function deadLetterAndAck(array $received, string $reason): bool
    {
        try {
            $this->deadLetter($received, $reason);
            $this->ack($received);
            return true;
        } catch (Transient $e) {
            say("dead-lettering {$received['message']['messageId']} failed: ".$e->getMessage());
            $this->nack($received);
            return false;
        }
    }

    private function fail(array $received, string $reason): void
    {
        $key = $received['message']['orderingKey'] ?? '';
        if ($this->lastAttempt($received)) {
            unset($this->blocked[$key]);
            $this->deadLetterAndAck($received, "given up on delivery attempt {$received['deliveryAttempt']} (the subscription's last): $reason");
            return;
        }
        if ($key !== '') {
            $this->blocked[$key] = [$received['message']['messageId'], time()];
        }
        $this->nack($received);
    }

    public function handle(array $received): void
    {
        $m = $received['message'];
        $key = $m['orderingKey'] ?? '';
        if (array_key_exists(PROBE_ATTRIBUTE, $m['attributes'] ?? [])) {
            $this->ack($received);
            return;
        }
        $blocker = $this->blocked[$key] ?? null;
        if ($blocker !== null && $blocker[0] !== $m['messageId'] && time() - $blocker[1] < BLOCK_SECONDS) {
            $reason = "held back behind message {$blocker[0]} of the same ordering key, which had not been stored; dead-lettered rather than stored out of order";
            $this->lastAttempt($received) ? $this->deadLetterAndAck($received, "given up on delivery attempt {$received['deliveryAttempt']}: $reason") : $this->nack($received);
            return;
        }
        try {
            $event = $this->prepare($m);
            $this->append($event);
            $this->publishMerged($m, $event);
        } catch (Bad $e) {
            if ($this->deadLetterAndAck($received, $e->getMessage())) {
                unset($this->blocked[$key]);
            } elseif ($key !== '') {
                $this->blocked[$key] = [$m['messageId'], time()];
            }
            return;
        } catch (Transient $e) {
            say("{$m['messageId']} (attempt ".($received['deliveryAttempt'] ?? 1).'): '.$e->getMessage());
            $this->fail($received, $e->getMessage());
            return;
        }
        unset($this->blocked[$key]);
        $this->ack($received);
    }

    public function run(): int
    {
        fwrite(STDOUT, "READY\n");
        fflush(STDOUT);
        say("pulling {$this->subscription}");
        while (! $this->stopping) {
            try {
                $batch = $this->pubsub->pull($this->subscription, 100);
            } catch (Transient $e) {
                say($e->getMessage());
                sleep(1);
                continue;
            }
            $started = time();
            foreach ($batch as $i => $received) {
                if ($this->stopping) {
                    // Handed back at once, each key in order, instead of after the lease.
                    $rest = array_column(array_slice($batch, $i), 'ackId');
                    $this->pubsub->modifyAckDeadline($this->subscription, $rest, 0);
                    break;
                }
                // A slow batch (claim checks against a slow bucket): keep the rest leased.
                if (time() - $started > 20) {
                    $this->pubsub->modifyAckDeadline($this->subscription, array_column(array_slice($batch, $i), 'ackId'), 60);
                    $started = time();
                }
                try {
                    $this->handle($received);
                } catch (Transient $e) {
                    // An ack or nack that did not reach Pub/Sub: the lease runs out, it comes back.
                    say('settling '.$received['message']['messageId'].': '.$e->getMessage());
                }
            }
        }
        say('stopped');
        return 0;
    }
}

rig_require_env(['DB_EVENT_STORE_']);
// A frozen or vanished event store must fail a statement (a transient failure: nack and
// reconnect), not hang it for mysqlnd's default of a day while the leases run out.
ini_set('mysqlnd.net_read_timeout', '10');
$config = require dirname(__DIR__).'/config/database.php';
// The worker's only connection: the primary (`mysql`, DB_*) is never configured here.
$eventStore = $config['connections']['event_store'];
$eventStore['timezone'] = '+00:00';
$capsule = new Capsule(new Container());
$capsule->addConnection($eventStore, 'event_store');
$capsule->setAsGlobal();
$capsule->bootEloquent();

$worker = new Worker();
pcntl_async_signals(true);
$stop = function (int $signal) use ($worker) {
    say("signal $signal: stopping");
    $worker->stopping = true;
};
pcntl_signal(SIGTERM, $stop);
pcntl_signal(SIGINT, $stop);
exit($worker->run());
