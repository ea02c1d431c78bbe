-- threadcast's own tables and SQL functions. The triggers, enable/disable/doctor/repair and the
-- privileged helpers that bump counters and write tombstones are Rust.
--
-- Security model (docs/security.md): nothing here runs another role's code with the extension
-- owner's rights. The only SECURITY DEFINER functions are the small helpers that touch
-- threadcast's own tables; each pins search_path, and none is executable by PUBLIC: only the
-- extension's C code calls them. Every name is schema-qualified and every operator on a
-- user-visible type is written OPERATOR(pg_catalog.x).

-- CREATE EXTENSION uses a schema named threadcast when one exists already. One that another role
-- made first could hold objects planted for us: refuse it.
DO $$
DECLARE
    owner oid := (SELECT n.nspowner FROM pg_catalog.pg_namespace n
                   WHERE n.oid OPERATOR(pg_catalog.=) '@extschema@'::pg_catalog.regnamespace);
    creators text := (SELECT pg_catalog.string_agg(a.grantee::pg_catalog.regrole::text, ', ')
                        FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
                        JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) a.grantee
                       WHERE n.oid OPERATOR(pg_catalog.=) '@extschema@'::pg_catalog.regnamespace
                         AND a.privilege_type OPERATOR(pg_catalog.=) 'CREATE'
                         AND a.grantee OPERATOR(pg_catalog.<>) owner
                         AND NOT r.rolsuper);
BEGIN
    IF NOT (SELECT r.rolsuper OR r.rolname OPERATOR(pg_catalog.=) CURRENT_USER
              FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) owner) THEN
        RAISE EXCEPTION 'threadcast: schema @extschema@ already exists and belongs to role %', owner::pg_catalog.regrole
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Objects in it could run with the extension owner''s rights. Drop or rename that schema, then run CREATE EXTENSION threadcast again.';
    END IF;
    IF creators IS NOT NULL THEN
        RAISE EXCEPTION 'threadcast: roles % may create objects in schema @extschema@', creators
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Revoke CREATE on schema @extschema@ from them, then run CREATE EXTENSION threadcast again.';
    END IF;
END
$$;

-- One row per table that threadcast.enable() has set up; written only by enable() and disable().
-- The broadcaster reads it to learn the channel and the columns.
CREATE TABLE @extschema@.sources (
    source        regclass PRIMARY KEY,
    thread_column name NOT NULL,
    seq_column    name NOT NULL,
    id_column     name NOT NULL,
    channel       text NOT NULL CHECK (channel OPERATOR(pg_catalog.<>) ''),
    payload       text NOT NULL CHECK (payload IN ('full', 'keys')),
    enabled_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Whether enable() created the (thread, seq) unique index, so that disable() drops it. The
    -- index itself is found in the catalog, never named by a value stored here.
    owns_index    boolean NOT NULL DEFAULT false
);
COMMENT ON TABLE @extschema@.sources IS 'Tables whose changes threadcast numbers and announces; written by threadcast.enable()';

-- The last number handed out per thread. Its row lock, taken by the BEFORE trigger and held to
-- commit, is what orders the writers of one thread; rows survive disable() so that a number is
-- never handed out twice.
CREATE TABLE @extschema@.counters (
    source   regclass NOT NULL,
    thread   text NOT NULL,
    last_seq bigint NOT NULL CHECK (last_seq OPERATOR(pg_catalog.>) 0),
    PRIMARY KEY (source, thread)
);
COMMENT ON TABLE @extschema@.counters IS 'Last per-thread sequence number handed out; bumped by the threadcast_seq trigger';

-- Deletes ('D') and truncations ('T') keep their number here, so that a client resuming from
-- the table learns of them.
CREATE TABLE @extschema@.tombstones (
    source     regclass NOT NULL,
    thread     text NOT NULL,
    seq        bigint NOT NULL,
    id         text NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    kind       "char" NOT NULL DEFAULT 'D' CHECK (kind IN ('D', 'T')),
    PRIMARY KEY (source, thread, seq)
);
COMMENT ON TABLE @extschema@.tombstones IS 'Deletes and truncations of threadcast sources, with the sequence number each took';

-- The keys that sign every notification (HMAC-SHA256). Readable only by the extension's owner
-- and the roles threadcast.grant_listen() names; never dumped by pg_dump, so a restored database
-- signs with a key of its own.
CREATE TABLE @extschema@.keys (
    kid        integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    secret     bytea NOT NULL CHECK (pg_catalog.octet_length(secret) OPERATOR(pg_catalog.=) 32),
    created_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Set when a newer key took over; a retired key still verifies until rotate_key() drops it.
    retired_at timestamptz
);
COMMENT ON TABLE @extschema@.keys IS 'Keys that sign threadcast notifications; see threadcast.rotate_key() and threadcast.grant_listen()';
REVOKE ALL ON @extschema@.keys FROM PUBLIC;

-- pg_dump keeps the configuration and, above all, the counters: a restored database must not
-- hand out numbers again.
SELECT pg_catalog.pg_extension_config_dump('@extschema@.sources', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.counters', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.tombstones', '');

GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;
GRANT SELECT ON @extschema@.sources TO PUBLIC;

-- A column of a table by name, as the catalog spells it, or an ERROR: the read functions quote
-- what the catalog says, not what a stored value says.
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

-- The registration of one source, or an ERROR that says how to register it.
CREATE FUNCTION @extschema@.source(tbl regclass) RETURNS @extschema@.sources
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

-- The thread column's type: a thread key arrives as text and is cast back to it, so that the
-- (thread, seq) index serves the look-up.
CREATE FUNCTION @extschema@.thread_type(s @extschema@.sources) RETURNS text
    LANGUAGE sql STABLE STRICT PARALLEL SAFE
    RETURN (SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a
             WHERE a.attrelid OPERATOR(pg_catalog.=) s.source AND a.attname OPERATOR(pg_catalog.=) s.thread_column);

-- Whether the caller may learn of a thread of a source: it may read the table, and when
-- row-level security applies to it there, it can see at least one row of the thread. This keeps
-- tenants under RLS from listing each other's thread keys, numbers and deleted ids. It runs as
-- the caller, so the table's policies are the caller's.
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

-- Counters and tombstones: read through RLS, written only by the privileged helpers.
ALTER TABLE @extschema@.counters ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_threads ON @extschema@.counters FOR SELECT
    USING (@extschema@.thread_visible(source, thread));
GRANT SELECT ON @extschema@.counters TO PUBLIC;

ALTER TABLE @extschema@.tombstones ENABLE ROW LEVEL SECURITY;
CREATE POLICY visible_threads ON @extschema@.tombstones FOR SELECT
    USING (@extschema@.thread_visible(source, thread));
GRANT SELECT ON @extschema@.tombstones TO PUBLIC;

-- Every change of one thread with after_seq < seq <= until_seq, in seq order: the current row of
-- each reply ('reply'), each delete ('delete', row NULL) and each truncation ('reset', id empty).
-- The broadcaster's catch-up and gap repair. Runs as its caller, who needs SELECT on the table.
CREATE FUNCTION @extschema@.changes(
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

-- The last n replies of one thread, oldest first: what a new widget shows before going live.
CREATE FUNCTION @extschema@.latest(tbl regclass, thread text, n integer)
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

-- The last number handed out in a thread, 0 before the first change (or when the caller may not
-- see the thread: the counters' row-level security applies).
CREATE FUNCTION @extschema@.current_seq(tbl regclass, thread text) RETURNS bigint
    LANGUAGE sql STABLE STRICT
    SET search_path = pg_catalog, pg_temp
    RETURN coalesce((SELECT c.last_seq FROM @extschema@.counters c
                                 WHERE c.source OPERATOR(pg_catalog.=) tbl
                                   AND c.thread OPERATOR(pg_catalog.=) current_seq.thread), 0);

-- Lets a role verify notifications (the broadcaster's): SELECT on threadcast.keys. Runs as its
-- caller, so only a role that may grant on threadcast.keys (its owner, a superuser) can use it.
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
