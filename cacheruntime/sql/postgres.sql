-- cacheruntime's cache tables for PostgreSQL.
--
-- The backend runs this itself on first use (inside a transaction holding
-- an advisory lock, so many processes can start at once); apply it from your
-- own migrations instead and set `auto_create(false)` (or `?auto_create=false`)
-- if your schema is managed elsewhere. For another table name (`app.web_cache`
-- included), take the DDL from `cacheruntime::backends::sql::ddl`, which
-- names the tables and the index for it (an index name has no schema).

-- Entries. `COLLATE "C"` makes key order bytewise, so a prefix is an index
-- range (`key >= 'author:42:' AND key < 'author:42;'`).
CREATE TABLE IF NOT EXISTS cache_entries (
    key        TEXT COLLATE "C" PRIMARY KEY,
    value      BYTEA  NOT NULL,
    expires_at BIGINT NOT NULL,           -- ms since the Unix epoch, database clock
    epoch      BIGINT NOT NULL DEFAULT 0  -- invalidation epoch its miss saw
);
CREATE INDEX IF NOT EXISTS cache_entries_expires_at ON cache_entries (expires_at);

-- The newest invalidation of each prefix, and of each deleted key (the key
-- followed by U+0001). An entry whose epoch is older than a row naming one
-- of its prefixes or itself is never served.
CREATE TABLE IF NOT EXISTS cache_entries_invalidations (
    prefix TEXT COLLATE "C" PRIMARY KEY,
    epoch  BIGINT NOT NULL,
    at     BIGINT NOT NULL                -- ms since the Unix epoch
);

-- The invalidation epoch: row 1, bumped by every invalidation and delete;
-- row 2, the floor: the newest invalidation the sweep has removed (writes
-- under an older epoch are refused, entries with one are never served).
-- Both start from the database's clock in microseconds, so epochs keep
-- growing when the rows or the tables are created anew (a ticket from
-- before is then under the floor).
CREATE TABLE IF NOT EXISTS cache_entries_epoch (
    id    INT PRIMARY KEY,
    epoch BIGINT NOT NULL
);
INSERT INTO cache_entries_epoch (id, epoch)
    VALUES (1, (extract(epoch from clock_timestamp()) * 1000000)::bigint)
    ON CONFLICT (id) DO NOTHING;
INSERT INTO cache_entries_epoch (id, epoch)
    SELECT 2, epoch FROM cache_entries_epoch WHERE id = 1
    ON CONFLICT (id) DO NOTHING;

-- Dog-pile locks: one row per held lock, expiring on its own.
CREATE TABLE IF NOT EXISTS cache_entries_locks (
    key        TEXT COLLATE "C" PRIMARY KEY,
    token      BYTEA  NOT NULL,
    expires_at BIGINT NOT NULL
);
