-- The triggers run as the extension's owner, so that a writer of a source table needs no rights
-- on threadcast.counters or threadcast.tombstones. Their queries are schema-qualified throughout.
ALTER FUNCTION threadcast.assign_seq() SECURITY DEFINER;
ALTER FUNCTION threadcast.notify() SECURITY DEFINER;
