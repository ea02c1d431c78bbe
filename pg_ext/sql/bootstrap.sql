-- threadcast's own tables and read functions. The triggers and enable/disable/doctor are Rust.

-- One row per table that threadcast.enable() has set up. The broadcaster reads it to learn the
-- channel and the columns.
CREATE TABLE threadcast.sources (
    source        regclass PRIMARY KEY,
    thread_column name NOT NULL,
    seq_column    name NOT NULL,
    id_column     name NOT NULL,
    channel       text NOT NULL CHECK (channel <> ''),
    payload       text NOT NULL CHECK (payload IN ('full', 'keys')),
    seq_index     name,
    enabled_at    timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE threadcast.sources IS 'Tables whose changes threadcast numbers and announces; written by threadcast.enable()';

-- The last number handed out per thread. Its row lock, taken by the BEFORE trigger and held to
-- commit, is what orders the writers of one thread; rows survive disable() so that a number is
-- never handed out twice.
CREATE TABLE threadcast.counters (
    source   regclass NOT NULL,
    thread   text NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq > 0),
    PRIMARY KEY (source, thread)
);
COMMENT ON TABLE threadcast.counters IS 'Last per-thread sequence number handed out; bumped by the threadcast_seq trigger';

-- Deleted rows keep their delete's number here, so that a client resuming from the table learns
-- of deletes it missed.
CREATE TABLE threadcast.tombstones (
    source     regclass NOT NULL,
    thread     text NOT NULL,
    seq        bigint NOT NULL,
    id         text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source, thread, seq)
);
COMMENT ON TABLE threadcast.tombstones IS 'Deletes of threadcast sources, with the sequence number each delete took';

-- pg_dump keeps the configuration and, above all, the counters: a restored database must not
-- hand out numbers again.
SELECT pg_catalog.pg_extension_config_dump('threadcast.sources', '');
SELECT pg_catalog.pg_extension_config_dump('threadcast.counters', '');
SELECT pg_catalog.pg_extension_config_dump('threadcast.tombstones', '');

-- Table owners may register and renumber their own tables (enable() runs as its caller); nobody
-- else may touch another owner's rows. Writers of a source bump counters through the
-- SECURITY DEFINER triggers, never directly.
CREATE FUNCTION threadcast.owns(tbl regclass) RETURNS boolean
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE') FROM pg_catalog.pg_class c WHERE c.oid = tbl);

ALTER TABLE threadcast.sources ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON threadcast.sources FOR SELECT USING (true);
CREATE POLICY owners_insert ON threadcast.sources FOR INSERT WITH CHECK (threadcast.owns(source));
CREATE POLICY owners_update ON threadcast.sources FOR UPDATE USING (threadcast.owns(source)) WITH CHECK (threadcast.owns(source));
CREATE POLICY owners_delete ON threadcast.sources FOR DELETE USING (threadcast.owns(source));
GRANT SELECT, INSERT, UPDATE, DELETE ON threadcast.sources TO PUBLIC;

ALTER TABLE threadcast.counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY owners_all ON threadcast.counters USING (threadcast.owns(source)) WITH CHECK (threadcast.owns(source));
GRANT SELECT, INSERT, UPDATE ON threadcast.counters TO PUBLIC;

ALTER TABLE threadcast.tombstones ENABLE ROW LEVEL SECURITY;
CREATE POLICY owners_read ON threadcast.tombstones FOR SELECT USING (threadcast.owns(source));
-- Readers of a source's rows (the broadcaster's role) may read its tombstones too.
CREATE POLICY readers_read ON threadcast.tombstones FOR SELECT USING (pg_catalog.has_table_privilege(source, 'SELECT'));
GRANT SELECT ON threadcast.tombstones TO PUBLIC;

CREATE POLICY readers_read ON threadcast.counters FOR SELECT USING (pg_catalog.has_table_privilege(source, 'SELECT'));

GRANT USAGE ON SCHEMA threadcast TO PUBLIC;

-- The registration of one source, or an ERROR that says how to register it.
CREATE FUNCTION threadcast.source(tbl regclass) RETURNS threadcast.sources
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s threadcast.sources;
BEGIN
    SELECT * INTO s FROM threadcast.sources WHERE source = tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'threadcast: table % is not enabled', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('Run SELECT threadcast.enable(%L);', tbl::text);
    END IF;
    RETURN s;
END
$$;

-- The thread column's type: a thread key arrives as text and is cast back to it, so that the
-- (thread, seq) index serves the look-up.
CREATE FUNCTION threadcast.thread_type(s threadcast.sources) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = s.source AND a.attname = s.thread_column);

-- Every change of one thread with after_seq < seq <= until_seq, in seq order: the current row of
-- each reply ('reply'), and each delete ('delete', row NULL). The broadcaster's catch-up and gap
-- repair. Runs as its caller, who needs SELECT on the table.
CREATE FUNCTION threadcast.changes(
    tbl regclass, thread text, after_seq bigint,
    until_seq bigint DEFAULT NULL, max_rows integer DEFAULT 1000)
RETURNS TABLE(seq bigint, kind text, id text, "row" json)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s threadcast.sources := threadcast.source(tbl);
    thread_type text := threadcast.thread_type(s);
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT * FROM (
             SELECT r.%1$I::bigint, ''reply''::text, r.%2$I::text, row_to_json(r)
               FROM %3$s r
              WHERE r.%4$I = $1::%5$s AND r.%1$I > $2 AND ($3 IS NULL OR r.%1$I <= $3)
             UNION ALL
             SELECT t.seq, ''delete''::text, t.id, NULL::json
               FROM threadcast.tombstones t
              WHERE t.source = $4 AND t.thread = $1 AND t.seq > $2 AND ($3 IS NULL OR t.seq <= $3)
         ) c ORDER BY 1 LIMIT $5',
        s.seq_column, s.id_column, tbl, s.thread_column, thread_type)
    USING thread, after_seq, until_seq, tbl, max_rows;
END
$$;

-- The last n replies of one thread, oldest first: what a new widget shows before going live.
CREATE FUNCTION threadcast.latest(tbl regclass, thread text, n integer)
RETURNS TABLE(seq bigint, kind text, id text, "row" json)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s threadcast.sources := threadcast.source(tbl);
    thread_type text := threadcast.thread_type(s);
BEGIN
    RETURN QUERY EXECUTE format(
        'SELECT * FROM (
             SELECT r.%1$I::bigint AS seq, ''reply''::text, r.%2$I::text, row_to_json(r)
               FROM %3$s r
              WHERE r.%4$I = $1::%5$s AND r.%1$I IS NOT NULL
              ORDER BY r.%1$I DESC LIMIT $2
         ) c ORDER BY 1',
        s.seq_column, s.id_column, tbl, s.thread_column, thread_type)
    USING thread, greatest(n, 0);
END
$$;

-- The last number handed out in a thread, 0 before the first change.
CREATE FUNCTION threadcast.current_seq(tbl regclass, thread text) RETURNS bigint
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN coalesce((SELECT c.last_seq FROM threadcast.counters c
                      WHERE c.source = tbl AND c.thread = current_seq.thread), 0);
