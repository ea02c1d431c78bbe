-- The privileged helpers run as the extension's owner: nobody may call them from SQL. The
-- extension's C code calls them directly (fmgr does not check EXECUTE), after its own checks.
REVOKE EXECUTE ON FUNCTION @extschema@.next_seq(pg_catalog.oid, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.record_tombstone(pg_catalog.oid, text, bigint, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.signing_key() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.register_source(pg_catalog.oid, text, text, text, text, text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.unregister_source(pg_catalog.oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.advance_counters(pg_catalog.oid, text[], bigint[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION @extschema@.reset_threads(pg_catalog.oid) FROM PUBLIC;

-- The first signing key.
SELECT @extschema@.rotate_key();
