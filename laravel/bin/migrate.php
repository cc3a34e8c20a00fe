<?php

/*
 * Runs the event store migration's up() on the `event_store` connection.
 *
 *   DB_EVENT_STORE_HOST=... DB_EVENT_STORE_PORT=... DB_EVENT_STORE_DATABASE=events \
 *   DB_EVENT_STORE_USERNAME=<DDL-capable migration user> DB_EVENT_STORE_PASSWORD=... \
 *   php laravel/bin/migrate.php [MIGRATION_FILE]
 *
 * The credentials must be able to CREATE/ALTER/INDEX the table and create
 * TRIGGERs: an admin or migration user, never sync_worker (SELECT/INSERT only).
 * MIGRATION_FILE defaults to this directory's
 * database/migrations/2026_11_27_000001_create_event_store_table.php (the parity
 * check passes a deliberately altered copy to prove the comparison can fail).
 *
 * stdout: {"migrated": true}
 */

require __DIR__.'/bootstrap.php';

rig_require_env(['DB_EVENT_STORE_']);
rig_boot();

$file = $argv[1] ?? dirname(__DIR__).'/database/migrations/2026_11_27_000001_create_event_store_table.php';
if (! is_file($file)) {
    rig_fail("migration file not found: $file");
}
$migration = require $file;
if (! is_object($migration) || ! method_exists($migration, 'up')) {
    rig_fail("not a migration: $file");
}

$migration->up();

rig_emit(['migrated' => true]);
