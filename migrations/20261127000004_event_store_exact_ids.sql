-- Aggregate identities compare exactly: `Coll`, `coll` and `Coll ` are three aggregates (three
-- ordering keys on Pub/Sub), so the ledger must not fold case or ignore trailing spaces when a
-- stream is read. That needs a binary collation without padding, which the two engines name
-- differently: MySQL 8.4 `utf8mb4_0900_bin`, MariaDB `utf8mb4_nopad_bin` (both `utf8mb4_bin`s
-- are PAD SPACE). The same file runs on both, choosing by the server it finds. The Laravel
-- twin is laravel/database/migrations/2026_11_27_000004_event_store_exact_ids.php.
SET @exact_ids_collation = IF(VERSION() LIKE '%MariaDB%', 'utf8mb4_nopad_bin', 'utf8mb4_0900_bin');
SET @exact_ids = CONCAT(
    'ALTER TABLE event_store',
    ' MODIFY account_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE ', @exact_ids_collation, ' NOT NULL,',
    ' MODIFY aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE ', @exact_ids_collation, ' NOT NULL,',
    ' MODIFY aggregate_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE ', @exact_ids_collation, ' NOT NULL'
);
PREPARE exact_ids FROM @exact_ids;
EXECUTE exact_ids;
DEALLOCATE PREPARE exact_ids;
