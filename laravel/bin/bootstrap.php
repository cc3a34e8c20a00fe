<?php

/*
 * Minimal bootstrap for running the Laravel event store pieces outside a full
 * Laravel application: Illuminate's Capsule, the DB/Schema facades and the
 * App\Models namespace, configured from laravel/config/database.php.
 *
 * Configuration comes ONLY from these environment variables:
 *   DB_EVENT_STORE_HOST, DB_EVENT_STORE_PORT, DB_EVENT_STORE_DATABASE,
 *   DB_EVENT_STORE_USERNAME, DB_EVENT_STORE_PASSWORD   (connection `event_store`)
 *   DB_HOST, DB_PORT, DB_DATABASE, DB_USERNAME, DB_PASSWORD (connection `mysql`)
 * Every other variable the config file mentions (DATABASE_URL, DB_SOCKET, ...)
 * is deliberately ignored here, so a stray DATABASE_URL in the caller's
 * environment can never redirect a connection.
 *
 * Scripts print one JSON object on stdout; diagnostics go to stderr and any
 * error exits non-zero.
 */

declare(strict_types=1);

error_reporting(E_ALL & ~E_DEPRECATED & ~E_USER_DEPRECATED);
ini_set('display_errors', 'stderr');
ini_set('log_errors', '0');

const RIG_ENV_VARS = [
    'DB_EVENT_STORE_HOST', 'DB_EVENT_STORE_PORT', 'DB_EVENT_STORE_DATABASE',
    'DB_EVENT_STORE_USERNAME', 'DB_EVENT_STORE_PASSWORD',
    'DB_HOST', 'DB_PORT', 'DB_DATABASE', 'DB_USERNAME', 'DB_PASSWORD',
];

if (! function_exists('env')) {
    /**
     * Stand-in for Laravel's env() helper (which needs vlucas/phpdotenv). Reads
     * only the whitelisted variables above from the process environment.
     */
    function env($key, $default = null)
    {
        if (! in_array($key, RIG_ENV_VARS, true)) {
            return $default instanceof Closure ? $default() : $default;
        }
        $value = getenv($key);
        if ($value === false) {
            return $default instanceof Closure ? $default() : $default;
        }
        switch (strtolower($value)) {
            case 'true': case '(true)': return true;
            case 'false': case '(false)': return false;
            case 'empty': case '(empty)': return '';
            case 'null': case '(null)': return null;
        }
        return $value;
    }
}

if (! function_exists('database_path')) {
    function database_path($path = '')
    {
        return dirname(__DIR__).'/database'.($path !== '' ? '/'.$path : '');
    }
}

function rig_fail(string $message, int $code = 2): void
{
    fwrite(STDERR, basename($_SERVER['argv'][0] ?? 'script').': '.$message.PHP_EOL);
    exit($code);
}

set_exception_handler(function (Throwable $e) {
    rig_fail(get_class($e).': '.$e->getMessage());
});

// A Laravel app's vendor/ (if this directory sits in one) wins over the Debian packages.
$vendor = dirname(__DIR__).'/vendor/autoload.php';
if (is_file($vendor)) {
    require_once $vendor;
} elseif (stream_resolve_include_path('Illuminate/Database/autoload.php')) {
    require_once 'Illuminate/Database/autoload.php';
} else {
    rig_fail('Illuminate database components not found (Debian: apt-get install php-illuminate-database)');
}

// App\ => laravel/app/ (what composer's PSR-4 entry does in a Laravel app).
spl_autoload_register(function (string $class) {
    if (strncmp($class, 'App\\', 4) === 0) {
        $file = dirname(__DIR__).'/app/'.str_replace('\\', '/', substr($class, 4)).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

use Illuminate\Container\Container;
use Illuminate\Database\Capsule\Manager as Capsule;
use Illuminate\Support\Facades\Facade;

/**
 * Check that the variables for the given prefixes are present. PASSWORD may be
 * empty but must be set.
 *
 * @param string[] $prefixes e.g. ['DB_EVENT_STORE_', 'DB_']
 */
function rig_require_env(array $prefixes): void
{
    $missing = [];
    foreach ($prefixes as $prefix) {
        foreach (['HOST', 'PORT', 'DATABASE', 'USERNAME'] as $k) {
            $v = getenv($prefix.$k);
            if ($v === false || $v === '') {
                $missing[] = $prefix.$k;
            }
        }
        if (getenv($prefix.'PASSWORD') === false) {
            $missing[] = $prefix.'PASSWORD';
        }
    }
    if ($missing) {
        rig_fail('missing environment variables: '.implode(', ', $missing));
    }
}

/**
 * Boot Capsule with the `mysql` and `event_store` connections from
 * config/database.php; returns the config array.
 */
function rig_boot(): array
{
    $config = require dirname(__DIR__).'/config/database.php';

    $capsule = new Capsule(new Container());
    foreach (['mysql', 'event_store'] as $name) {
        $capsule->addConnection($config['connections'][$name], $name);
    }
    $capsule->getDatabaseManager()->setDefaultConnection($config['default']);
    $capsule->setAsGlobal();
    $capsule->bootEloquent();

    // DB:: and Schema:: facades, as used by the migration file.
    $app = $capsule->getContainer();
    $app->instance('db', $capsule->getDatabaseManager());
    Facade::setFacadeApplication($app);

    $GLOBALS['rig_capsule'] = $capsule;

    return $config;
}

function rig_capsule(): Capsule
{
    return $GLOBALS['rig_capsule'];
}

function rig_emit(array $result): void
{
    fwrite(STDOUT, json_encode($result, JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION).PHP_EOL);
}

/** RFC 4122 version 4 UUID (ramsey/uuid is not among the Debian packages). */
function rig_uuid4(): string
{
    $b = random_bytes(16);
    $b[6] = chr((ord($b[6]) & 0x0f) | 0x40);
    $b[8] = chr((ord($b[8]) & 0x3f) | 0x80);
    $h = bin2hex($b);

    return substr($h, 0, 8).'-'.substr($h, 8, 4).'-'.substr($h, 12, 4).'-'.substr($h, 16, 4).'-'.substr($h, 20);
}

/** A NetSuite-shaped sync event: [account_id, aggregate_type, aggregate_id, payload]. */
function rig_netsuite_event(int $i): array
{
    static $types = ['salesOrder', 'customer', 'invoice', 'itemFulfillment', 'vendorBill'];
    $account = sprintf('%07d_SB%d', 4_000_000 + ($i % 3), 1 + ($i % 2));
    $type = $types[$i % count($types)];
    $internalId = (string) (10_000 + intdiv($i, 2));
    $lines = [];
    for ($l = 1; $l <= 1 + ($i % 3); $l++) {
        $qty = 1 + (($i + $l) % 5);
        $rate = round(9.99 * $l + ($i % 7), 2);
        $lines[] = [
            'line' => $l,
            'item' => ['id' => (string) (500 + $l), 'refName' => 'SKU-'.(500 + $l)],
            'quantity' => $qty,
            'rate' => $rate,
            'amount' => round($qty * $rate, 2),
        ];
    }
    $payload = [
        'recordType' => $type,
        'id' => $internalId,
        'operation' => $i % 4 === 0 ? 'create' : 'update',
        'fields' => [
            'tranId' => strtoupper(substr($type, 0, 2)).'-'.$internalId,
            'entity' => ['id' => (string) (200 + $i % 50), 'refName' => 'Customer '.(200 + $i % 50)],
            'subsidiary' => ['id' => '1', 'refName' => 'Parent Company'],
            'currency' => ['id' => '1', 'refName' => 'USD'],
            'tranDate' => '2026-11-27',
            'status' => 'Pending Fulfillment',
            'memo' => "Synced from NetSuite \u{2014} caf\u{e9}",
            'total' => array_sum(array_column($lines, 'amount')),
        ],
        'sublists' => ['item' => $lines],
        'meta' => ['source' => 'netsuite', 'trigger' => 'afterSubmit', 'sequence' => $i],
    ];

    return [$account, $type, $internalId, $payload];
}

/** Percentile (nearest rank) of a list of numbers. */
function rig_percentile(array $values, float $p): float
{
    if (! $values) {
        return 0.0;
    }
    sort($values);
    $rank = (int) ceil($p / 100 * count($values));

    return (float) $values[max(0, min(count($values) - 1, $rank - 1))];
}

/** MySQL error number and SQLSTATE out of a (wrapped) PDO exception. */
function rig_db_error(Throwable $e): array
{
    $code = null;
    $state = null;
    for ($x = $e; $x !== null; $x = $x->getPrevious()) {
        if ($x instanceof PDOException && is_array($x->errorInfo ?? null) && isset($x->errorInfo[1])) {
            $state = $x->errorInfo[0];
            $code = (int) $x->errorInfo[1];
            break;
        }
    }
    if ($code === null && preg_match('/SQLSTATE\[(\w+)\]\s*(?:\[(\d+)\]|[^:]*:\s*(\d+))/', $e->getMessage(), $m)) {
        $state = $m[1];
        $code = (int) (($m[2] ?? '') !== '' ? $m[2] : ($m[3] ?? 0));
    }

    return ['error_code' => $code, 'sqlstate' => $state, 'message' => $e->getMessage()];
}
