<?php

/*
 * Runs the event store migration's up() on the `event_store` connection.
 *
 *   DB_EVENT_STORE_HOST=... DB_EVENT_STORE_PORT=... DB_EVENT_STORE_DATABASE=events \
 *   DB_EVENT_STORE_USERNAME=<DDL-capable migration user> DB_EVENT_STORE_PASSWORD=... \
 *   php laravel/bin/migrate.php [MIGRATION_FILE...]
 *
 * The credentials must be able to CREATE/ALTER/INDEX the table and create
 * TRIGGERs: an admin or migration user, never sync_worker (SELECT/INSERT only).
 * MIGRATION_FILEs default to every file in database/migrations/, in name order
 * (the parity check passes deliberately altered sets to prove the comparison can
 * fail).
 *
 * stdout: {"migrated": true}
 */

require __DIR__.'/bootstrap.php';

rig_require_env(['DB_EVENT_STORE_']);
rig_boot();

$files = array_slice($argv, 1);
if ($files === []) {
    $files = glob(dirname(__DIR__).'/database/migrations/*.php');
    sort($files);
}
foreach ($files as $file) {
    if (! is_file($file)) {
        rig_fail("migration file not found: $file");
    }
    $migration = require $file;
    if (! is_object($migration) || ! method_exists($migration, 'up')) {
        rig_fail("not a migration: $file");
    }
    $migration->up();
}

rig_emit(['migrated' => true]);
