<?php

/*
 * Scenario 2 of the epic: Laravel writes to the event store through the
 * secondary `event_store` connection without interfering with the primary
 * tenant database.
 *
 *   DB_EVENT_STORE_HOST/PORT/DATABASE/USERNAME/PASSWORD  worker (sync_worker) credentials
 *   DB_HOST/PORT/DATABASE/USERNAME/PASSWORD              primary tenant credentials
 *   php laravel/bin/scenario2.php [N=200]
 *
 * The EventStore model writes N events (random UUID event_ids, NetSuite-shaped
 * payloads). Interleaved with them the primary `mysql` connection runs its own
 * transactions on table tenant_orders (created if absent): every round inserts
 * rows with event writes between the inserts, one round in four is rolled back,
 * the others commit, and SELECTs are timed after each round. The last events are
 * written while a primary transaction holds row locks and an uncommitted row.
 *
 * stdout: one JSON object (see laravel/README.md), "ok" true only when every
 * entry of "checks" is true; exit 1 when a check fails, 2 on an error.
 */

require __DIR__.'/bootstrap.php';

use App\Models\EventStore;
use Illuminate\Database\Schema\Blueprint;

rig_require_env(['DB_EVENT_STORE_', 'DB_']);
$config = rig_boot();
$capsule = rig_capsule();

$n = (int) ($argv[1] ?? 200);
if ($n < 2) {
    rig_fail('N must be an integer >= 2');
}

$primary = $capsule->getConnection('mysql');
$store = $capsule->getConnection('event_store');
$primaryDb = getenv('DB_DATABASE');
$runId = rig_uuid4(); // tags this run's tenant rows, so reruns on the same database stay exact

$ms = fn (int $t0): float => (hrtime(true) - $t0) / 1e6;
$tables = fn (): array => array_map(
    fn ($r) => $r->t,
    $primary->select('select table_name as t from information_schema.tables where table_schema = ? order by table_name', [$primaryDb])
);

$written = [];      // event_id => payload
$writeEvent = function (int $i) use (&$written): void {
    [$account, $type, $aggregateId, $payload] = rig_netsuite_event($i);
    $eventId = rig_uuid4();
    EventStore::create([
        'account_id' => $account,
        'event_id' => $eventId,
        'aggregate_type' => $type,
        'aggregate_id' => $aggregateId,
        'payload' => $payload,
    ]);
    $written[$eventId] = $payload;
};

$insertOrder = function (string $ref, float $amount) use ($primary, $runId): void {
    $primary->insert('insert into tenant_orders (run_id, order_ref, amount) values (?, ?, ?)', [$runId, $ref, $amount]);
};

$timedSelects = function () use ($primary, $runId, $ms): array {
    $t = hrtime(true);
    $primary->select('select count(*) as c, coalesce(sum(amount), 0) as s from tenant_orders where run_id = ?', [$runId]);
    $a = $ms($t);
    $t = hrtime(true);
    $primary->select('select id, order_ref, amount from tenant_orders order by id desc limit 20');
    $b = $ms($t);

    return [$a, $b];
};

// --- Primary: its own table, and a baseline with no event traffic -------------------------
$tablesBefore = $tables();
$schema = $primary->getSchemaBuilder();
if (! $schema->hasTable('tenant_orders')) {
    $schema->create('tenant_orders', function (Blueprint $t) {
        $t->id();
        $t->uuid('run_id')->index();
        $t->string('order_ref', 64);
        $t->decimal('amount', 12, 2);
        $t->timestamp('created_at')->useCurrent();
    });
}
$store->getPdo(); // both connections open before anything is timed

$baseline = [];
for ($k = 0; $k < 20; $k++) {
    array_push($baseline, ...$timedSelects());
}

// --- Interleaved: event writes inside and between primary transactions -------------------
$lockPhaseEvents = max(1, min(20, intdiv($n, 10)));
$interleaved = $n - $lockPhaseEvents;
$perRound = 5;
$expectedRefs = [];
$rolledBackRefs = [];
$committed = 0;
$rolledBack = 0;
$latencies = [];
$t0 = hrtime(true);
for ($i = 0, $round = 0; $i < $interleaved; $round++) {
    $refs = [];
    $primary->beginTransaction();
    $ref = sprintf('SO-%d-0', $round);
    $insertOrder($ref, 10 + $round);
    $refs[] = $ref;
    for ($j = 1; $j <= $perRound && $i < $interleaved; $j++, $i++) {
        $writeEvent($i);                       // event write while the primary transaction is open
        $ref = sprintf('SO-%d-%d', $round, $j);
        $insertOrder($ref, 10 + $round + $j / 100);
        $refs[] = $ref;
    }
    if ($round % 4 === 1) {
        $primary->rollBack();
        $rolledBack++;
        array_push($rolledBackRefs, ...$refs);
    } else {
        $primary->commit();
        $committed++;
        array_push($expectedRefs, ...$refs);
    }
    array_push($latencies, ...$timedSelects());
}
$interleavedSeconds = $ms($t0) / 1000;

// --- Event writes while a primary transaction holds locks on its own table ----------------
$capsule->addConnection($config['connections']['mysql'], 'mysql_observer');
$observer = $capsule->getConnection('mysql_observer');
$store->statement('set session innodb_lock_wait_timeout = 5'); // a block would fail fast, not hang

$lockRef = 'SO-LOCKED';
$primary->beginTransaction();
$insertOrder($lockRef, 99.99);
$primary->select('select id from tenant_orders where run_id = ? for update', [$runId]);
$t = hrtime(true);
$lockErrors = [];
for ($i = $interleaved; $i < $n; $i++) {
    try {
        $writeEvent($i);
    } catch (Throwable $e) {
        $lockErrors[] = rig_db_error($e);
    }
}
$lockWriteMs = $ms($t);
$hiddenFromOthers = (int) $observer->selectOne('select count(*) as c from tenant_orders where run_id = ? and order_ref = ?', [$runId, $lockRef])->c === 0;
$ownRowVisible = (int) $primary->selectOne('select count(*) as c from tenant_orders where run_id = ? and order_ref = ?', [$runId, $lockRef])->c === 1;
$stillOpen = $primary->transactionLevel() === 1 && $primary->getPdo()->inTransaction();
$primary->commit();
$expectedRefs[] = $lockRef;
$committed++;
$visibleAfterCommit = (int) $observer->selectOne('select count(*) as c from tenant_orders where run_id = ? and order_ref = ?', [$runId, $lockRef])->c === 1;

// --- Verification -------------------------------------------------------------------------
$eventIds = array_keys($written);
$counted = 0;
foreach (array_chunk($eventIds, 1000) as $chunk) {
    $counted += EventStore::whereIn('event_id', $chunk)->count();
}
$probeId = $eventIds[intdiv(count($eventIds), 2)];
$probe = EventStore::where('event_id', $probeId)->first();
$payloadRoundTrip = $probe !== null && is_array($probe->payload) && $probe->payload == $written[$probeId];

$foundRefs = array_map(fn ($r) => $r->order_ref, $primary->select('select order_ref from tenant_orders where run_id = ? order by order_ref', [$runId]));
$sortedExpected = $expectedRefs;
sort($sortedExpected, SORT_STRING);
$sortedFound = $foundRefs;
sort($sortedFound, SORT_STRING);
$rolledBackFound = count(array_intersect($rolledBackRefs, $foundRefs));

$tablesAfter = $tables();
$newTables = array_values(array_diff($tablesAfter, $tablesBefore));
$eventStoreTablesVisible = (int) $primary->selectOne("select count(*) as c from information_schema.tables where table_name = 'event_store'")->c;
$eventIdColumns = (int) $primary->selectOne("select count(*) as c from information_schema.columns where table_schema = ? and column_name = 'event_id'", [$primaryDb])->c;
$eventIdsOnPrimary = 0;
foreach (array_chunk($eventIds, 500) as $chunk) {
    $eventIdsOnPrimary += (int) $primary->table('tenant_orders')->whereIn('order_ref', $chunk)->orWhereIn('run_id', $chunk)->count();
}

// Worker credentials against the primary database must be refused at connect time.
$workerCfg = $config['connections']['mysql'];
$workerCfg['username'] = getenv('DB_EVENT_STORE_USERNAME');
$workerCfg['password'] = getenv('DB_EVENT_STORE_PASSWORD');
$capsule->addConnection($workerCfg, 'worker_on_primary');
$workerOnPrimary = ['denied' => false, 'error_code' => null, 'sqlstate' => null, 'message' => null];
try {
    $capsule->getConnection('worker_on_primary')->getPdo();
} catch (Throwable $e) {
    $workerOnPrimary = ['denied' => true] + rig_db_error($e);
}
$capsule->getDatabaseManager()->purge('worker_on_primary');

$p50 = rig_percentile($latencies, 50);
$p99 = rig_percentile($latencies, 99);

$checks = [
    'events_counted_via_event_store' => $counted === $n,
    'payload_round_trip' => $payloadRoundTrip,
    'primary_rows_equal_committed' => $sortedFound === $sortedExpected,
    'primary_has_no_rolled_back_rows' => $rolledBackFound === 0,
    'primary_has_no_event_store_table' => ! in_array('event_store', $tablesAfter, true) && $eventStoreTablesVisible === 0,
    'primary_has_no_event_columns_or_rows' => $eventIdColumns === 0 && $eventIdsOnPrimary === 0,
    'primary_gained_only_tenant_orders' => array_diff($newTables, ['tenant_orders']) === [],
    'events_written_while_primary_holds_locks' => $lockErrors === [],
    'primary_uncommitted_row_hidden_from_other_sessions' => $hiddenFromOthers,
    'primary_transaction_intact_after_event_writes' => $stillOpen && $ownRowVisible && $visibleAfterCommit,
    'primary_select_p99_under_1000ms' => $p99 < 1000.0,
    'worker_cannot_connect_to_primary' => $workerOnPrimary['denied'],
];
$failed = array_keys(array_filter($checks, fn ($ok) => ! $ok));

rig_emit([
    'scenario' => 2,
    'ok' => $failed === [],
    'events' => [
        'requested' => $n,
        'written' => count($written),
        'counted_via_event_store' => $counted,
        'payload_round_trip' => $payloadRoundTrip,
    ],
    'primary' => [
        'transactions_committed' => $committed,
        'transactions_rolled_back' => $rolledBack,
        'rows_committed' => count($expectedRefs),
        'rows_found' => count($foundRefs),
        'rolled_back_rows_found' => $rolledBackFound,
        'interleaved_seconds' => round($interleavedSeconds, 3),
        'select_latency_ms' => [
            'samples' => count($latencies),
            'p50' => round($p50, 3),
            'p99' => round($p99, 3),
            'max' => round(max($latencies), 3),
            'baseline_p50' => round(rig_percentile($baseline, 50), 3),
            'baseline_p99' => round(rig_percentile($baseline, 99), 3),
        ],
    ],
    'isolation' => [
        'tables_before' => $tablesBefore,
        'tables_after' => $tablesAfter,
        'event_store_tables_visible_to_primary' => $eventStoreTablesVisible,
        'event_id_columns_on_primary' => $eventIdColumns,
        'event_ids_found_on_primary' => $eventIdsOnPrimary,
    ],
    'open_primary_transaction' => [
        'events_written' => $n - $interleaved - count($lockErrors),
        'event_write_errors' => $lockErrors,
        'event_writes_ms' => round($lockWriteMs, 3),
        'uncommitted_row_hidden_from_other_sessions' => $hiddenFromOthers,
        'still_open_after_event_writes' => $stillOpen,
        'committed_row_visible_after' => $visibleAfterCommit,
    ],
    'worker_on_primary' => $workerOnPrimary,
    'checks' => $checks,
    'failed' => $failed,
]);

if ($failed !== []) {
    fwrite(STDERR, 'scenario2.php: failed checks: '.implode(', ', $failed).PHP_EOL);
    exit(1);
}
