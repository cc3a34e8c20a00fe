<?php

use Illuminate\Database\Migrations\Migration;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Support\Facades\DB;
use Illuminate\Support\Facades\Schema;

/*
 * The event store ledger on the dedicated `event_store` connection.
 *
 * Must leave exactly the table (SHOW CREATE TABLE) and triggers that the sqlx
 * migrations in the repository's migrations/ directory create; the parity check
 * in laravel/tests/verify-local.sh compares both.
 *
 * Run it with a DDL-capable user (CREATE, ALTER, INDEX, DROP, TRIGGER on the
 * events database), never with sync_worker, which holds only SELECT and INSERT.
 */
return new class extends Migration
{
    /**
     * The database connection that should be used by the migration.
     *
     * @var string
     */
    protected $connection = 'event_store';

    public function up()
    {
        Schema::connection('event_store')->create('event_store', function (Blueprint $table) {
            $table->id();
            $table->string('account_id');
            $table->uuid('event_id')->unique();
            $table->string('aggregate_type');
            $table->string('aggregate_id');
            $table->json('payload');
            $table->timestamp('created_at');

            $table->index(['account_id', 'aggregate_type', 'aggregate_id']);
        });

        // The ledger is append-only, whoever asks (same triggers as the SQL migration
        // 20261127000002_event_store_append_only.sql). On Cloud SQL with binary logging
        // this needs the flag log_bin_trust_function_creators=on.
        $db = DB::connection('event_store');
        $db->unprepared(
            "CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store FOR EACH ROW\n"
            ."    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'event_store is append-only: UPDATE is refused'"
        );
        $db->unprepared(
            "CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store FOR EACH ROW\n"
            ."    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'event_store is append-only: DELETE is refused'"
        );
    }

    public function down()
    {
        $db = DB::connection('event_store');
        $db->unprepared('DROP TRIGGER IF EXISTS event_store_no_update');
        $db->unprepared('DROP TRIGGER IF EXISTS event_store_no_delete');

        Schema::connection('event_store')->dropIfExists('event_store');
    }
};
