<?php

/*
 * Eloquent baseline for the event store append rate: one EventStore::create()
 * (one INSERT, autocommit) per event, through the `event_store` connection.
 *
 *   DB_EVENT_STORE_HOST/PORT/DATABASE/USERNAME/PASSWORD (worker credentials)
 *   php laravel/bin/bench_eloquent.php [N=5000]
 *
 * stdout: {"events": N, "seconds": s, "events_per_sec": r}
 * Fails (non-zero) unless all N rows are then counted through the connection.
 */

require __DIR__.'/bootstrap.php';

use App\Models\EventStore;
use Illuminate\Support\Carbon;

rig_require_env(['DB_EVENT_STORE_']);
rig_boot();

$n = (int) ($argv[1] ?? 5000);
if ($n < 1) {
    rig_fail('N must be a positive integer');
}

// Build the events first so only the inserts are timed.
$rows = [];
for ($i = 0; $i < $n; $i++) {
    [$account, $type, $aggregateId, $payload] = rig_netsuite_event($i);
    $rows[] = [
        'account_id' => $account,
        'event_id' => rig_uuid4(),
        'aggregate_type' => $type,
        'aggregate_id' => $aggregateId,
        'payload' => $payload,
    ];
}

// Connect before the clock starts.
EventStore::query()->getConnection()->getPdo();

$t0 = hrtime(true);
foreach ($rows as $row) {
    $row['created_at'] = Carbon::now();
    EventStore::create($row);
}
$seconds = (hrtime(true) - $t0) / 1e9;

$stored = 0;
foreach (array_chunk(array_column($rows, 'event_id'), 1000) as $chunk) {
    $stored += EventStore::whereIn('event_id', $chunk)->count();
}
if ($stored !== $n) {
    rig_fail("wrote $n events but counted $stored back", 1);
}

rig_emit([
    'events' => $n,
    'seconds' => round($seconds, 3),
    'events_per_sec' => round($n / $seconds, 1),
]);
