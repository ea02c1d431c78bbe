-- threadcast 0.1.0 -> 0.2.0: the security release (docs/security.md).
--
-- - No other role's code runs with the extension owner's rights: the triggers become SECURITY
--   INVOKER; only small helpers that touch threadcast's own tables are SECURITY DEFINER, with a
--   pinned search_path and no EXECUTE for PUBLIC.
-- - Table owners can no longer write threadcast.sources, counters or tombstones; enable() and
--   disable() write them through the helpers. sources.seq_index (a name that disable() pasted
--   into SQL) gives way to owns_index: the index is found in the catalog.
-- - Notifications are signed (payload version 2) with a key in threadcast.keys.
-- - Counters and tombstones show a role only the threads it can see under the table's RLS.
-- - TRUNCATE announces a reset per thread; repair() and doctor() handle promoted replicas.
--
-- Every enabled table is enabled again at the end, with its registered settings passed as
-- values, so that its triggers take their new form.

-- A function of sources' row type (a SQL-standard body) pins its columns; made again below.
DROP FUNCTION @extschema@.thread_type(@extschema@.sources);

-- threadcast.sources: written only by enable() and disable().
DROP POLICY everyone_reads ON @extschema@.sources;
DROP POLICY owners_insert ON @extschema@.sources;
DROP POLICY owners_update ON @extschema@.sources;
DROP POLICY owners_delete ON @extschema@.sources;
ALTER TABLE @extschema@.sources DISABLE ROW LEVEL SECURITY;
REVOKE INSERT, UPDATE, DELETE ON @extschema@.sources FROM PUBLIC;
ALTER TABLE @extschema@.sources ADD COLUMN owns_index boolean NOT NULL DEFAULT false;
-- Only whether an index was recorded is kept; its stored name, which a table owner could set
-- to anything under 0.1.0, is never read.
UPDATE @extschema@.sources SET owns_index = seq_index IS NOT NULL;
ALTER TABLE @extschema@.sources DROP COLUMN seq_index;

-- Counters and tombstones: readable through RLS by thread visibility, written by helpers only.
DROP POLICY owners_all ON @extschema@.counters;
DROP POLICY readers_read ON @extschema@.counters;
REVOKE INSERT, UPDATE, DELETE ON @extschema@.counters FROM PUBLIC;
DROP POLICY owners_read ON @extschema@.tombstones;
DROP POLICY readers_read ON @extschema@.tombstones;
REVOKE INSERT, UPDATE, DELETE ON @extschema@.tombstones FROM PUBLIC;
DROP FUNCTION @extschema@.owns(regclass);
ALTER TABLE @extschema@.tombstones ADD COLUMN kind "char" NOT NULL DEFAULT 'D' CHECK (kind IN ('D', 'T'));
COMMENT ON TABLE @extschema@.tombstones IS 'Deletes and truncations of threadcast sources, with the sequence number each took';

CREATE TABLE @extschema@.keys (
    kid        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret     bytea NOT NULL CHECK (pg_catalog.octet_length(secret) OPERATOR(pg_catalog.=) 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Set when a newer key took over; a retired key still verifies until rotate_key() drops it.
    retired_at timestamptz
);
COMMENT ON TABLE @extschema@.keys IS 'Keys that sign threadcast notifications; see threadcast.rotate_key() and threadcast.grant_listen()';
REVOKE ALL ON @extschema@.keys FROM PUBLIC;

CREATE FUNCTION @extschema@.column_name(tbl regclass, col name) RETURNS name
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found name := (SELECT a.attname FROM pg_catalog.pg_attribute a
                    WHERE a.attrelid OPERATOR(pg_catalog.=) tbl AND a.attname OPERATOR(pg_catalog.=) col
                      AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped);
BEGIN
    IF found IS NULL THEN
        RAISE EXCEPTION 'threadcast: column % of % is gone', pg_catalog.quote_ident(col), tbl
            USING ERRCODE = 'undefined_column',
                  HINT = pg_catalog.format('Run SELECT threadcast.enable(%L);', tbl::text);
    END IF;
    RETURN found;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.source(tbl regclass) RETURNS @extschema@.sources
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s @extschema@.sources;
BEGIN
    SELECT * INTO s FROM @extschema@.sources WHERE source OPERATOR(pg_catalog.=) tbl;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'threadcast: table % is not enabled', tbl
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = pg_catalog.format('Run SELECT threadcast.enable(%L);', tbl::text);
    END IF;
    RETURN s;
END
$$;

CREATE FUNCTION @extschema@.thread_type(s @extschema@.sources) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) s.source AND a.attname OPERATOR(pg_catalog.=) s.thread_column);

CREATE FUNCTION @extschema@.thread_visible(src regclass, thread text) RETURNS boolean
    LANGUAGE plpgsql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s @extschema@.sources;
    visible boolean;
BEGIN
    IF NOT pg_catalog.has_table_privilege(src, 'SELECT') THEN
        RETURN false;
    END IF;
    IF NOT pg_catalog.row_security_active(src) THEN
        RETURN true;
    END IF;
    SELECT * INTO s FROM @extschema@.sources WHERE source OPERATOR(pg_catalog.=) src;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    EXECUTE pg_catalog.format('SELECT EXISTS (SELECT 1 FROM %s r WHERE r.%I OPERATOR(pg_catalog.=) $1::%s)',
                              src, @extschema@.column_name(src, s.thread_column), @extschema@.thread_type(s))
        INTO visible USING thread;
    RETURN visible;
END
$$;

CREATE POLICY visible_threads ON @extschema@.counters FOR SELECT
    USING (@extschema@.thread_visible(source, thread));
CREATE POLICY visible_threads ON @extschema@.tombstones FOR SELECT
    USING (@extschema@.thread_visible(source, thread));

CREATE OR REPLACE FUNCTION @extschema@.changes(
    tbl regclass, thread text, after_seq bigint,
    until_seq bigint DEFAULT NULL, max_rows integer DEFAULT 1000)
RETURNS TABLE(seq bigint, kind text, id text, "row" json)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s @extschema@.sources := @extschema@.source(tbl);
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT * FROM (
             SELECT r.%1$I::pg_catalog.int8, ''reply''::pg_catalog.text, r.%2$I::pg_catalog.text, pg_catalog.row_to_json(r)
               FROM %3$s r
              WHERE r.%4$I OPERATOR(pg_catalog.=) $1::%5$s AND r.%1$I OPERATOR(pg_catalog.>) $2
                AND ($3 IS NULL OR r.%1$I OPERATOR(pg_catalog.<=) $3)
             UNION ALL
             SELECT t.seq, CASE t.kind WHEN ''T'' THEN ''reset'' ELSE ''delete'' END, t.id, NULL::pg_catalog.json
               FROM @extschema@.tombstones t
              WHERE t.source OPERATOR(pg_catalog.=) $4 AND t.thread OPERATOR(pg_catalog.=) $1
                AND t.seq OPERATOR(pg_catalog.>) $2 AND ($3 IS NULL OR t.seq OPERATOR(pg_catalog.<=) $3)
         ) c ORDER BY 1 LIMIT $5',
        @extschema@.column_name(tbl, s.seq_column), @extschema@.column_name(tbl, s.id_column), tbl,
        @extschema@.column_name(tbl, s.thread_column), @extschema@.thread_type(s))
    USING thread, after_seq, until_seq, tbl, max_rows;
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.latest(tbl regclass, thread text, n integer)
RETURNS TABLE(seq bigint, kind text, id text, "row" json)
    LANGUAGE plpgsql STABLE
    SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    s @extschema@.sources := @extschema@.source(tbl);
BEGIN
    RETURN QUERY EXECUTE pg_catalog.format(
        'SELECT * FROM (
             SELECT r.%1$I::pg_catalog.int8 AS seq, ''reply''::pg_catalog.text, r.%2$I::pg_catalog.text, pg_catalog.row_to_json(r)
               FROM %3$s r
              WHERE r.%4$I OPERATOR(pg_catalog.=) $1::%5$s AND r.%1$I IS NOT NULL
              ORDER BY r.%1$I DESC LIMIT $2
         ) c ORDER BY 1',
        @extschema@.column_name(tbl, s.seq_column), @extschema@.column_name(tbl, s.id_column), tbl,
        @extschema@.column_name(tbl, s.thread_column), @extschema@.thread_type(s))
    USING thread, greatest(n, 0);
END
$$;

CREATE OR REPLACE FUNCTION @extschema@.current_seq(tbl regclass, thread text) RETURNS bigint
    LANGUAGE sql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
    RETURN coalesce((SELECT c.last_seq FROM @extschema@.counters c
                                 WHERE c.source OPERATOR(pg_catalog.=) tbl
                                   AND c.thread OPERATOR(pg_catalog.=) current_seq.thread), 0);

CREATE FUNCTION @extschema@.grant_listen(r regrole) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('GRANT SELECT ON TABLE @extschema@.keys TO %s', r);
END
$$;

CREATE FUNCTION @extschema@.revoke_listen(r regrole) RETURNS void
    LANGUAGE plpgsql VOLATILE STRICT
    SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE pg_catalog.format('REVOKE SELECT ON TABLE @extschema@.keys FROM %s', r);
END
$$;

-- The privileged helpers: SECURITY DEFINER, search_path pinned, EXECUTE revoked from PUBLIC
-- (sql/finish.sql). The extension's C code calls them directly; they read and write only
-- threadcast's own tables and take every value as a parameter. next_seq() and
-- record_tombstone(), on the trigger's hot path, are Rust (privileged.rs).

-- The current signing key: its id (4 bytes, big-endian) then its 32-byte secret.
CREATE FUNCTION @extschema@.signing_key() RETURNS bytea
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    RETURN (SELECT pg_catalog.int4send(k.kid) OPERATOR(pg_catalog.||) k.secret FROM @extschema@.keys k
             WHERE k.retired_at IS NULL ORDER BY k.kid DESC LIMIT 1);

CREATE FUNCTION @extschema@.register_source(
    src oid, thread_column text, seq_column text, id_column text, channel text,
    payload text, owns_index boolean) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    INSERT INTO @extschema@.sources AS s
           (source, thread_column, seq_column, id_column, channel, payload, owns_index)
    VALUES (src::pg_catalog.regclass, thread_column, seq_column, id_column, channel, payload, owns_index)
    ON CONFLICT (source) DO UPDATE SET thread_column = excluded.thread_column,
        seq_column = excluded.seq_column, id_column = excluded.id_column,
        channel = excluded.channel, payload = excluded.payload,
        owns_index = excluded.owns_index OR s.owns_index;
END;

CREATE FUNCTION @extschema@.unregister_source(src oid) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    DELETE FROM @extschema@.sources WHERE source OPERATOR(pg_catalog.=) src::pg_catalog.regclass;
END;

-- Raises counters to at least the given numbers, never lowers one: enable() and repair() bring
-- them up to the numbers a table already holds (after a restore, or on a promoted replica).
CREATE FUNCTION @extschema@.advance_counters(src oid, threads text[], seqs bigint[]) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH raised AS (
        INSERT INTO @extschema@.counters AS c (source, thread, last_seq)
        SELECT src::pg_catalog.regclass, u.thread, u.seq FROM unnest(threads, seqs) AS u(thread, seq)
         WHERE u.seq OPERATOR(pg_catalog.>) 0
        ON CONFLICT (source, thread) DO UPDATE SET last_seq = excluded.last_seq
         WHERE c.last_seq OPERATOR(pg_catalog.<) excluded.last_seq
        RETURNING 1)
    SELECT pg_catalog.count(*) FROM raised;
END;

-- TRUNCATE: every thread of the source takes its next number for a reset, recorded as a 'T'
-- tombstone (older tombstones of the thread are superseded by it and go). Returns
-- [[thread, seq], ...] as JSON for the trigger to announce.
CREATE FUNCTION @extschema@.reset_threads(src oid) RETURNS text
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH bumped AS (
        UPDATE @extschema@.counters c SET last_seq = c.last_seq OPERATOR(pg_catalog.+) 1
         WHERE c.source OPERATOR(pg_catalog.=) src::pg_catalog.regclass
        RETURNING c.thread, c.last_seq),
    dropped AS (
        DELETE FROM @extschema@.tombstones t USING bumped b
         WHERE t.source OPERATOR(pg_catalog.=) src::pg_catalog.regclass
           AND t.thread OPERATOR(pg_catalog.=) b.thread),
    recorded AS (
        INSERT INTO @extschema@.tombstones (source, thread, seq, id, kind)
        SELECT src::pg_catalog.regclass, b.thread, b.last_seq, '', 'T' FROM bumped b)
    SELECT coalesce(pg_catalog.json_agg(pg_catalog.json_build_array(b.thread, b.last_seq)), '[]')::text
      FROM bumped b;
END;

-- The Rust functions new in 0.2.0 (as cargo pgrx schema generates them).
CREATE FUNCTION @extschema@."next_seq"(
	"src" oid,
	"thread" TEXT
) RETURNS bigint
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'next_seq_wrapper';

CREATE FUNCTION @extschema@."record_tombstone"(
	"src" oid,
	"thread" TEXT,
	"seq" bigint,
	"id" TEXT
) RETURNS void
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'record_tombstone_wrapper';

CREATE FUNCTION @extschema@."repair"(
	"tbl" regclass
) RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'repair_wrapper';

CREATE FUNCTION @extschema@."rotate_key"(
	"keep" interval DEFAULT '1 day'
) RETURNS INT
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_key_wrapper';

CREATE FUNCTION @extschema@."truncated"()
	RETURNS TRIGGER
	LANGUAGE c
	AS 'MODULE_PATHNAME', 'truncated_wrapper';

-- The triggers run as the role that writes the table.
ALTER FUNCTION @extschema@.assign_seq() SECURITY INVOKER;
ALTER FUNCTION @extschema@.notify() SECURITY INVOKER;

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

-- Every enabled table, enabled again with the settings it was registered with (passed as values,
-- never as SQL text): its triggers take their 0.2.0 form, with the TRUNCATE trigger. A table that
-- cannot be (its columns changed since) is reported and left as it was.
DO $$
DECLARE
    s record;
BEGIN
    FOR s IN SELECT * FROM @extschema@.sources LOOP
        BEGIN
            PERFORM @extschema@.enable(s.source, s.thread_column, s.channel, s.seq_column, s.payload);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'threadcast: could not upgrade the triggers of %: %', s.source, SQLERRM
                USING HINT = pg_catalog.format('Fix the table, then run SELECT threadcast.enable(%L);', s.source::text);
        END;
    END LOOP;
END
$$;
