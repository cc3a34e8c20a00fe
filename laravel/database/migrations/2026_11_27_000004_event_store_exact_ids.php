<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Support\Facades\DB;

/*
 * Aggregate identities compare exactly (`Coll`, `coll` and `Coll ` are three aggregates): a
 * binary collation without padding on the three id columns. Twin of the sqlx migration
 * migrations/20261127000004_event_store_exact_ids.sql; tests/laravel_parity.rs checks both
 * leave the same table. MySQL 8.4 calls the collation utf8mb4_0900_bin, MariaDB
 * utf8mb4_nopad_bin.
 *
 * A plain statement rather than Blueprint's ->change(), which needs doctrine/dbal and cannot
 * pick the collation by server.
 */
return new class extends Migration
{
    protected $connection = 'event_store';

    public function up()
    {
        $db = DB::connection('event_store');
        $version = $db->selectOne('SELECT VERSION() AS v')->v;
        $collation = str_contains($version, 'MariaDB') ? 'utf8mb4_nopad_bin' : 'utf8mb4_0900_bin';
        $column = fn (string $name) => "MODIFY $name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE $collation NOT NULL";
        $db->statement('ALTER TABLE event_store '.implode(', ', array_map($column, ['account_id', 'aggregate_type', 'aggregate_id'])));
    }

    public function down()
    {
        $db = DB::connection('event_store');
        $column = fn (string $name) => "MODIFY $name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci NOT NULL";
        $db->statement('ALTER TABLE event_store '.implode(', ', array_map($column, ['account_id', 'aggregate_type', 'aggregate_id'])));
    }
};
