-- cacheruntime's cache tables for SQLite (see postgres.sql for the
-- meaning of each table). SQLite compares TEXT bytewise by default, so a
-- prefix is a primary-key range.
CREATE TABLE IF NOT EXISTS cache_entries (
    key        TEXT    PRIMARY KEY,
    value      BLOB    NOT NULL,
    expires_at INTEGER NOT NULL,
    epoch      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_entries_expires_at ON cache_entries (expires_at);

CREATE TABLE IF NOT EXISTS cache_entries_invalidations (
    prefix TEXT    PRIMARY KEY,
    epoch  INTEGER NOT NULL,
    at     INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS cache_entries_epoch (
    id    INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL
);
INSERT INTO cache_entries_epoch (id, epoch)
    VALUES (1, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
    ON CONFLICT (id) DO NOTHING;
INSERT INTO cache_entries_epoch (id, epoch)
    SELECT 2, epoch FROM cache_entries_epoch WHERE id = 1
    ON CONFLICT (id) DO NOTHING;

CREATE TABLE IF NOT EXISTS cache_entries_locks (
    key        TEXT    PRIMARY KEY,
    token      BLOB    NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
