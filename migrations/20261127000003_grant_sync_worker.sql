-- The background worker may read and append to the ledger, nothing else. The user itself is
-- created outside migrations (Terraform's google_sql_user in GCP, the rig locally) so that no
-- password ever lives in this repository.
GRANT SELECT, INSERT ON event_store TO 'sync_worker'@'%';
