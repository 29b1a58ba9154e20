//! Every statement the SQL backend runs, with the validated table name in
//! place, for one dialect.
//!
//! Times that decide which rows live (`expires_at`, the sweep's horizon,
//! lock expiry, invalidation records' `at`) are the database's clock, read
//! in the statement (`now`), so processes whose clocks disagree still agree
//! on them. Each such statement takes a nullable `now` parameter that, when
//! bound (tests with a manual clock, see `SqlConfig::database_clock`),
//! stands in for the database's clock.

use super::Dialect;

/// The statements, built once per backend.
pub(super) struct Statements {
    pub(super) get: String,
    pub(super) put_ticketed: String,
    pub(super) put_current: String,
    pub(super) get_many: String,
    pub(super) set_many: String,
    pub(super) delete_many: String,
    pub(super) record_many: String,
    pub(super) swap_absent: String,
    pub(super) swap_present: String,
    pub(super) delete: String,
    pub(super) bump: String,
    pub(super) seed_epoch: String,
    pub(super) floor_to_epoch: String,
    pub(super) floor_if_missing: String,
    pub(super) record: String,
    pub(super) purge: String,
    pub(super) lock_take: String,
    pub(super) lock_release: String,
    pub(super) sweep: String,
    pub(super) sweep_locks: String,
    pub(super) raise_floor: String,
    pub(super) sweep_invalidations: String,
    pub(super) count: String,
    pub(super) cull: String,
    /// Operators' listing (`scan.rs`): keys from $1 (the prefix) past $2
    /// (the last key of the page before), $3 of them, in key order.
    pub(super) scan: String,
    /// PostgreSQL: the change notices of an invalidation or deletes ($1,
    /// an array of notices), sent in their transaction; `""` on SQLite.
    pub(super) notify: String,
    /// PostgreSQL only (`combined.rs`; `""` on SQLite): `get` and, when it
    /// finds no live entry, `lock_take` in one statement ($4 the token, $5
    /// the lock's TTL); `lock_take` and `get` in one; `put_ticketed` or
    /// `put_current` and `lock_release` in one ($7 or $5 the token).
    pub(super) get_or_lock: String,
    pub(super) lock_and_get: String,
    pub(super) put_ticketed_unlock: String,
    pub(super) put_current_unlock: String,
}

/// The channel on which PostgreSQL change notices go to near tiers
/// (`push.rs`).
pub(super) const NOTICES: &str = "cacheruntime_changes";

/// The longest notice PostgreSQL's `NOTIFY` takes is under 8000 bytes; a
/// longer name is sent as `*` ("anything may have changed").
pub(super) const MAX_NOTICE: usize = 7_900;

/// On PostgreSQL, `write` (an `INSERT` or `UPDATE` of entries) made to send
/// the near tiers the notice of each row it wrote (`k<key>`), in its own
/// transaction, so no such write commits without its notice. It still
/// reports one row per row written (`SELECT n`), as the callers count them.
/// On SQLite, which cannot notify, `write` as it is.
///
/// `set`, `set_many` and compare-and-set notify every row they write. A
/// computation's write under its read's ticket (`put_ticketed`, most of a
/// cache's writes) notifies only when it replaced a live row
/// ([`notifying_if_live`]). A notice costs: PostgreSQL serializes the
/// commits of notifying transactions (BENCHMARKS.md).
fn notifying(dialect: Dialect, write: String) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "WITH w AS ({write} RETURNING key) SELECT pg_notify('{NOTICES}', {notice}) FROM w",
            notice = row_notice(),
        ),
        Dialect::Sqlite => write,
    }
}

/// The notice of a written row `w`, or `*` for a key too long for it.
fn row_notice() -> String {
    format!("CASE WHEN octet_length(w.key) < {MAX_NOTICE} THEN 'k' || w.key ELSE '*' END")
}

/// [`notifying`] for a write of one key (`$1`, its time `now` parameter
/// `$6`) under a read's ticket: a notice only when it replaced a live row:
/// one the statement's snapshot saw unexpired (hidden rows included: a
/// write right after an invalidation notifies, which is only a cost), or
/// one another writer inserted after the snapshot (`xmax <> 0`: updated,
/// yet the snapshot saw no row). Otherwise the write follows a miss that
/// nobody could have served from a near copy: the row was gone, expired (a
/// near copy is past its deadline too, as far as the clocks of the
/// processes agree: the same offset by which any entry's freshness is
/// judged), or hidden by an invalidation or delete whose own notice dropped
/// the copies. It replaces a live row when the writer could not read it
/// (another type or version, a signature it cannot verify), refreshed it
/// (stale or early refresh), or raced another computation, and near copies
/// elsewhere must then go. The statement reports the notices sent, not the
/// rows written (its callers count neither).
fn notifying_if_live(dialect: Dialect, t: &str, write: String) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "WITH seen AS (SELECT c.expires_at > {now} AS live FROM {t} c WHERE c.key = $1), \
             w AS ({write} RETURNING key, (xmax <> 0) AS replaced) \
             SELECT pg_notify('{NOTICES}', {notice}) FROM w \
             WHERE EXISTS (SELECT 1 FROM seen WHERE seen.live) \
             OR (w.replaced AND NOT EXISTS (SELECT 1 FROM seen))",
            now = now_ms(dialect, 6),
            notice = row_notice(),
        ),
        Dialect::Sqlite => write,
    }
}

/// The database's clock in ms since the Unix epoch, unless parameter `n`
/// is bound. PostgreSQL: `statement_timestamp()`, stable within a
/// statement so the sweep's range still uses the `expires_at` index.
fn now_ms(dialect: Dialect, n: u32) -> String {
    match dialect {
        Dialect::Postgres => format!(
            "COALESCE(${n}::bigint, (extract(epoch from statement_timestamp()) * 1000)::bigint)"
        ),
        Dialect::Sqlite => {
            format!("COALESCE(?{n}, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))")
        }
    }
}

/// The database's clock in microseconds: where an epoch starts, so that
/// epochs keep growing when the epoch row (or every table) is created anew.
pub(super) fn now_us(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Postgres => "(extract(epoch from clock_timestamp()) * 1000000)::bigint",
        Dialect::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)",
    }
}

impl Statements {
    pub(super) fn new(dialect: Dialect, t: &str) -> Statements {
        let mut built = Self::each(dialect, t);
        if dialect == Dialect::Postgres {
            combined(&mut built, t);
        }
        built
    }

    fn each(dialect: Dialect, t: &str) -> Statements {
        let pg = dialect == Dialect::Postgres;
        // Placeholders: $n on PostgreSQL, ?n on SQLite (same numbering).
        let p = |n: u32| if pg { format!("${n}") } else { format!("?{n}") };
        let now = |n: u32| now_ms(dialect, n);
        let us = now_us(dialect);
        let greatest = if pg { "GREATEST" } else { "MAX" };
        // Invalidation records naming the key, its prefixes or its delete,
        // bound as one array parameter.
        let records_of = |n: u32| {
            if pg {
                format!("i.prefix = ANY({}::text[])", p(n))
            } else {
                format!("i.prefix IN (SELECT value FROM json_each({}))", p(n))
            }
        };
        // No COALESCE: a missing floor row refuses writes and hides
        // entries until it is seeded again (`Shared::seed`).
        let floor = format!("(SELECT epoch FROM {t}_epoch WHERE id = 2)");
        Statements {
            // One round trip: the current epoch (the ticket), the newest
            // record naming the key, the floor (the newer of the two is its
            // scope: a swept record leaves the floor at least as high), and
            // the entry, unless expired, under the floor, or older than a
            // record naming it.
            get: format!(
                "SELECT (SELECT epoch FROM {t}_epoch WHERE id = 1) AS now_epoch, \
                 (SELECT COALESCE(MAX(i.epoch), 0) FROM {t}_invalidations i WHERE {records}) \
                 AS scope, {floor} AS floor, \
                 (SELECT c.value FROM {t} c WHERE c.key = {k} AND c.expires_at > {now} \
                 AND c.epoch >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > c.epoch)) AS value",
                k = p(1),
                now = now(2),
                records = records_of(3),
            ),
            // Refused when the ticket is under the floor or a record naming
            // the key is newer than it. A notice only when it replaced a
            // live row (see `notifying`).
            put_ticketed: notifying_if_live(
                dialect,
                t,
                format!(
                    "INSERT INTO {t} (key, value, expires_at, epoch) \
                 SELECT {k}, {v}, {now} + {ttl}, {e} WHERE {e} >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > {e}) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at, epoch = excluded.epoch",
                    k = p(1),
                    v = p(2),
                    ttl = p(3),
                    e = p(4),
                    records = records_of(5),
                    now = now(6),
                ),
            ),
            put_current: notifying(
                dialect,
                format!(
                    "INSERT INTO {t} (key, value, expires_at, epoch) \
                 SELECT {}, {}, {} + {}, epoch FROM {t}_epoch WHERE id = 1 \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at, epoch = excluded.epoch",
                    p(1),
                    p(2),
                    now(4),
                    p(3),
                ),
            ),
            // Several keys ($1, an array) in one statement: each live row,
            // unless expired, under the floor, or older than a record naming
            // it. $3 holds the records of every key; a record names a key
            // when it is "", the key's delete record, or a prefix of it
            // ending with ':' (what `records` gives for one key).
            get_many: format!(
                "SELECT c.key AS key, c.value AS value FROM {t} c WHERE {keys} \
                 AND c.expires_at > {now} AND c.epoch >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > c.epoch AND (i.prefix = '' OR i.prefix = c.key || {one} \
                 OR (substr(i.prefix, length(i.prefix)) = ':' \
                 AND substr(c.key, 1, length(i.prefix)) = i.prefix)))",
                keys = if pg {
                    "c.key = ANY($1::text[])".to_owned()
                } else {
                    "c.key IN (SELECT value FROM json_each(?1))".to_owned()
                },
                now = now(2),
                records = records_of(3),
                one = if pg { "chr(1)" } else { "char(1)" },
            ),
            // Several rows in one statement under the current epoch, as
            // `put_current`: $3 the keys and $4 the values (SQLite: one JSON
            // array of [key, hex value] pairs in $3).
            set_many: if pg {
                notifying(
                    dialect,
                    format!(
                        "INSERT INTO {t} (key, value, expires_at, epoch) \
                     SELECT u.k, u.v, {now} + $2, e.epoch \
                     FROM unnest($3::text[], $4::bytea[]) AS u(k, v), {t}_epoch e \
                     WHERE e.id = 1 \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     expires_at = excluded.expires_at, epoch = excluded.epoch",
                        now = now(1),
                    ),
                )
            } else {
                format!(
                    "INSERT INTO {t} (key, value, expires_at, epoch) \
                     SELECT json_extract(u.value, '$[0]'), unhex(json_extract(u.value, '$[1]')), \
                     {now} + ?2, e.epoch FROM json_each(?3) AS u, {t}_epoch e WHERE e.id = 1 \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                     expires_at = excluded.expires_at, epoch = excluded.epoch",
                    now = now(1),
                )
            },
            delete_many: if pg {
                format!("DELETE FROM {t} WHERE key = ANY($1::text[])")
            } else {
                format!("DELETE FROM {t} WHERE key IN (SELECT value FROM json_each(?1))")
            },
            // The delete records of several keys ($1) under one epoch.
            record_many: format!(
                "INSERT INTO {t}_invalidations AS r (prefix, epoch, at) \
                 SELECT {names}, {e}, {now} {from} WHERE true \
                 ON CONFLICT (prefix) DO UPDATE SET epoch = excluded.epoch, at = excluded.at \
                 WHERE r.epoch < excluded.epoch",
                names = if pg { "n" } else { "value" },
                from = if pg {
                    "FROM unnest($1::text[]) AS n"
                } else {
                    "FROM json_each(?1)"
                },
                e = p(2),
                now = now(3),
            ),
            // Compare-and-set, under a ticket as `put_ticketed` (refused
            // when a record naming the key is newer than the read), when
            // the read found no live row: inserts, or replaces a row a read
            // would not serve (expired, under the floor, or older than a
            // record naming it); a live row stays.
            swap_absent: notifying(
                dialect,
                format!(
                    "INSERT INTO {t} AS c (key, value, expires_at, epoch) \
                 SELECT {k}, {v}, {now} + {ttl}, {e} WHERE {e} >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > {e}) \
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, \
                 expires_at = excluded.expires_at, epoch = excluded.epoch \
                 WHERE c.expires_at <= {now} OR c.epoch < {floor} \
                 OR EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND i.epoch > c.epoch)",
                    k = p(1),
                    v = p(2),
                    ttl = p(3),
                    e = p(4),
                    records = records_of(5),
                    now = now(6),
                ),
            ),
            // ... and when it found bytes ($7): replaces the row only while
            // it is live and holds them.
            swap_present: notifying(
                dialect,
                format!(
                    "UPDATE {t} AS c SET value = {v}, expires_at = {now} + {ttl}, epoch = {e} \
                 WHERE c.key = {k} AND c.value = {x} AND c.expires_at > {now} \
                 AND c.epoch >= {floor} AND {e} >= {floor} \
                 AND NOT EXISTS (SELECT 1 FROM {t}_invalidations i WHERE {records} \
                 AND (i.epoch > c.epoch OR i.epoch > {e}))",
                    k = p(1),
                    v = p(2),
                    ttl = p(3),
                    e = p(4),
                    records = records_of(5),
                    now = now(6),
                    x = p(7),
                ),
            ),
            delete: format!("DELETE FROM {t} WHERE key = {}", p(1)),
            // Never below the clock: an epoch row created again later starts
            // from the clock, above every epoch this one handed out (unless
            // invalidations outran a million a second).
            bump: format!(
                "UPDATE {t}_epoch SET epoch = {greatest}(epoch + 1, {us}) WHERE id = 1 \
                 RETURNING epoch"
            ),
            seed_epoch: format!(
                "INSERT INTO {t}_epoch (id, epoch) VALUES (1, {us}) ON CONFLICT (id) DO NOTHING"
            ),
            // After the epoch row was created anew: no ticket from before
            // it (whose records may be gone) may write.
            floor_to_epoch: format!(
                "INSERT INTO {t}_epoch AS f (id, epoch) \
                 SELECT 2, epoch FROM {t}_epoch WHERE id = 1 \
                 ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch \
                 WHERE f.epoch < excluded.epoch"
            ),
            floor_if_missing: format!(
                "INSERT INTO {t}_epoch (id, epoch) \
                 SELECT 2, epoch FROM {t}_epoch WHERE id = 1 ON CONFLICT (id) DO NOTHING"
            ),
            record: format!(
                "INSERT INTO {t}_invalidations AS r (prefix, epoch, at) \
                 VALUES ({}, {}, {}) \
                 ON CONFLICT (prefix) DO UPDATE SET epoch = excluded.epoch, at = excluded.at \
                 WHERE r.epoch < excluded.epoch",
                p(1),
                p(2),
                now(3)
            ),
            // Rows an invalidation hides, removed after it in batches: only
            // those written under an older epoch (a value computed after it
            // stays). In key order from where the last batch ended, so no
            // batch walks again over the dead rows of the ones before.
            //
            // One key range per batch: from where the last batch ended up
            // to the batch's last key (an uncorrelated subquery, run once),
            // so the plan scans one table (a primary-key range in the
            // plans seen, generic or with stale statistics), never a join
            // that rescans the batch. The earlier `key IN (subquery)` form:
            // one batch of a million-row purge ran for over 14 minutes of
            // CPU in a local CI run (its plan not captured), and on the
            // same server a whole purge of a million rows took 27 s against
            // 3.2 s for this form.
            //
            // The epoch test is on the DELETE itself: PostgreSQL re-reads
            // a row that a write changed while the DELETE waited for it
            // against the DELETE's WHERE only, so a test in the subquery
            // alone deleted a value written just after the invalidation (a
            // lost write, and two `add`s of one key could both store).
            purge: format!(
                "DELETE FROM {t} WHERE key >= {from} AND key <= (SELECT MAX(key) FROM \
                 (SELECT key FROM {t} WHERE key >= {from} AND ({to} IS NULL OR key < {to}) \
                 AND epoch < {e} ORDER BY key LIMIT {}) AS batch) AND epoch < {e} RETURNING key",
                p(4),
                e = p(3),
                from = p(1),
                to = if pg { "$2::text".to_owned() } else { p(2) },
            ),
            lock_take: format!(
                "INSERT INTO {t}_locks AS l (key, token, expires_at) \
                 VALUES ({}, {}, {now} + {}) \
                 ON CONFLICT (key) DO UPDATE SET token = excluded.token, \
                 expires_at = excluded.expires_at WHERE l.expires_at <= {now}",
                p(1),
                p(2),
                p(3),
                now = now(4),
            ),
            lock_release: format!(
                "DELETE FROM {t}_locks WHERE key = {} AND token = {}",
                p(1),
                p(2)
            ),
            // The expiry test outside the subquery too, as in `purge`: a
            // row written again while the sweep waited for it is not
            // expired any more.
            sweep: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} WHERE expires_at <= {now} LIMIT {}) \
                 AND expires_at <= {now}",
                p(2),
                now = now(1),
            ),
            sweep_locks: format!("DELETE FROM {t}_locks WHERE expires_at <= {}", now(1)),
            // The horizon: `max_ttl` ($2) before now.
            raise_floor: format!(
                "UPDATE {t}_epoch SET epoch = \
                 (SELECT MAX(epoch) FROM {t}_invalidations WHERE at <= {h}) \
                 WHERE id = 2 AND epoch < \
                 (SELECT COALESCE(MAX(epoch), 0) FROM {t}_invalidations WHERE at <= {h})",
                h = format!("{} - {}", now(1), p(2))
            ),
            sweep_invalidations: format!(
                "DELETE FROM {t}_invalidations WHERE at <= {} - {}",
                now(1),
                p(2)
            ),
            count: format!("SELECT COUNT(*) AS n FROM {t}"),
            scan: format!(
                "SELECT key FROM {t} WHERE key >= {} AND key > {} ORDER BY key LIMIT {}",
                p(1),
                p(2),
                p(3)
            ),
            cull: format!(
                "DELETE FROM {t} WHERE key IN \
                 (SELECT key FROM {t} ORDER BY expires_at LIMIT {})",
                p(1)
            ),
            notify: if pg {
                format!("SELECT pg_notify('{NOTICES}', n) FROM unnest($1::text[]) AS n")
            } else {
                String::new()
            },
            get_or_lock: String::new(),
            lock_and_get: String::new(),
            put_ticketed_unlock: String::new(),
            put_current_unlock: String::new(),
        }
    }
}

/// The statements of a cold miss in two round trips, on PostgreSQL (its
/// data-modifying `WITH`; SQLite, in process, has no round trips to save).
///
/// One snapshot serves a whole statement, while `INSERT .. ON CONFLICT`
/// sees the lock as it is now: a lock whose holder released it (with its
/// value written) after the snapshot is taken although the read missed
/// the value. `was_busy` says the snapshot saw another live lock that the
/// statement then took (live or expired: an expired holder may still be
/// writing): the caller reads once more.
fn combined(s: &mut Statements, t: &str) {
    let now = now_ms(Dialect::Postgres, 2);
    let take = format!(
        "ON CONFLICT (key) DO UPDATE SET token = excluded.token, \
         expires_at = excluded.expires_at \
         WHERE l.expires_at <= {now} OR l.token = excluded.token RETURNING 1"
    );
    let answer = format!(
        "SELECT r.now_epoch, r.scope, r.floor, r.value, \
         (SELECT count(*) FROM l) AS locked, \
         EXISTS (SELECT 1 FROM {t}_locks s WHERE s.key = $1 AND s.token <> $4) \
         AS was_busy FROM r"
    );
    s.get_or_lock = format!(
        "WITH r AS ({get}), l AS (INSERT INTO {t}_locks AS l (key, token, expires_at) \
         SELECT $1, $4, {now} + $5 FROM r WHERE r.value IS NULL {take}) {answer}",
        get = s.get,
    );
    s.lock_and_get = format!(
        "WITH r AS ({get}), l AS (INSERT INTO {t}_locks AS l (key, token, expires_at) \
         VALUES ($1, $4, {now} + $5) {take}) {answer}",
        get = s.get,
    );
    // The write's statement with the release as one more `WITH`: run
    // whether or not the write took (a refused write still ends the miss).
    let unlocking = |write: &str, token: u32| {
        let release = format!("u AS (DELETE FROM {t}_locks WHERE key = $1 AND token = ${token}), ");
        write.replacen("WITH ", &format!("WITH {release}"), 1)
    };
    s.put_ticketed_unlock = unlocking(&s.put_ticketed, 7);
    s.put_current_unlock = unlocking(&s.put_current, 5);
}
