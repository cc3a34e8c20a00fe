<?php

namespace App\Models;

use Illuminate\Database\Eloquent\Model;

/**
 * One immutable row of the NetSuite sync ledger.
 *
 * Lives on the dedicated event store instance (connection `event_store`), never
 * on the primary tenant database. The table is append-only: the worker user only
 * holds SELECT and INSERT, and BEFORE UPDATE/DELETE triggers refuse changes even
 * from privileged users, so never call save() on a loaded row, update() or delete().
 */
class EventStore extends Model
{
    /** @var string */
    protected $connection = 'event_store';

    /** @var string */
    protected $table = 'event_store';

    /** Rows are never updated: there is no updated_at column. */
    const UPDATED_AT = null;

    /** @var array<int, string> */
    protected $fillable = [
        'account_id',
        'event_id',
        'aggregate_type',
        'aggregate_id',
        'payload',
        'created_at',
    ];

    /** @var array<string, string> */
    protected $casts = [
        'payload' => 'array',
        'created_at' => 'datetime',
    ];
}
