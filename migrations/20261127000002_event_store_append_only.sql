-- The ledger is immutable: rows are appended, never changed or removed, whoever asks.
-- Grants keep the worker to SELECT/INSERT; these triggers also stop privileged users.
-- (TRUNCATE and DROP bypass triggers: only the migration owner holds those rights.)
-- Cloud SQL with binary logging needs the flag log_bin_trust_function_creators=on to create them.
CREATE TRIGGER event_store_no_update BEFORE UPDATE ON event_store FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'event_store is append-only: UPDATE is refused';

CREATE TRIGGER event_store_no_delete BEFORE DELETE ON event_store FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'event_store is append-only: DELETE is refused';
