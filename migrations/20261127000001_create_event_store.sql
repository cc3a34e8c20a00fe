-- The event store ledger, exactly as the epic lists it. The column types, key names and order
-- match what Laravel's Blueprint produces for laravel/database/migrations (checked by
-- tests/laravel_parity.rs), so either tool leaves the same table behind.
CREATE TABLE event_store (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    account_id VARCHAR(255) NOT NULL,
    event_id CHAR(36) NOT NULL,
    aggregate_type VARCHAR(255) NOT NULL,
    aggregate_id VARCHAR(255) NOT NULL,
    payload JSON NOT NULL,
    created_at TIMESTAMP NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY event_store_event_id_unique (event_id),
    KEY event_store_account_id_aggregate_type_aggregate_id_index (account_id, aggregate_type, aggregate_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_unicode_ci;
