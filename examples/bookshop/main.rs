//! A bookshop: an axum app on an embedded SQLite database, with the
//! expensive parts of its pages cached as ids.
//!
//! ```sh
//! cargo run --example bookshop                          # serve on 127.0.0.1:3000
//! cargo run --release --example bookshop -- --load      # load test: cache off, then on
//! ```
//!
//! Routes: `GET /authors/{id}[?user=U]`, `GET /books/{id}[?user=U]`,
//! `POST /books/{id}/purchase?user=U`, `PUT /books/{id}` (JSON
//! `{"price_cents": 1299, "boost": 0.5}`), `GET /stats`.
//!
//! What is cached, and why as ids: an author's ranking (`top_books`), a
//! book's "also bought" list and each user's recommendations are
//! expensive queries over the purchase log, but their output is only *which*
//! books in *which* order. Storing ids (`#[cached(ids = ...)]`) and fetching
//! the rows by primary key on each hit means a price change shows at once
//! and a deleted book disappears, without invalidating anything. What does
//! change a ranking (a purchase, an editorial boost) drops the author's key
//! prefix, `author:{id}:`.
//!
//! `CACHE_URL` picks the store (memory when unset, `none://` to switch the
//! cache off; Redis, SQL and Memcached URLs need their cargo features). The
//! database lives in a temporary directory and is created and seeded on
//! start.
//!
//! `--load` runs the load test the numbers in BENCHMARKS.md come from: it
//! starts this program twice as a child server (once with
//! `CACHE_URL=none://`, once with the cache on), drives each over HTTP with
//! a Zipf-distributed mix of author views, book views and purchases, and
//! prints requests/s, latency percentiles, hit rate per cached function,
//! origin computations and errors. Options: `--seconds 60` (per run),
//! `--concurrency 32` (clients, each one shopper), `--purchases-per-mille 3`
//! (purchases among the actions; each re-ranks an author).

use std::collections::HashMap;
use std::io::Read;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cacheruntime::{cached, Cache, CacheId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

// ------------------------------------------------------------------ catalog

const AUTHORS: i64 = 100;
const BOOKS_PER_AUTHOR: i64 = 20;
const BOOKS: i64 = AUTHORS * BOOKS_PER_AUTHOR;
const USERS: i64 = 2_000;
const PURCHASES: i64 = 500_000;

#[derive(Debug, Clone, Serialize)]
struct Book {
    id: i64,
    author_id: i64,
    title: String,
    price_cents: i64,
    boost: f64,
}

impl CacheId for Book {
    type Id = i64;
    fn cache_id(&self) -> i64 {
        self.id
    }
}

type BookRow = (i64, i64, String, i64, f64);

impl From<BookRow> for Book {
    fn from((id, author_id, title, price_cents, boost): BookRow) -> Book {
        Book {
            id,
            author_id,
            title,
            price_cents,
            boost,
        }
    }
}

impl Book {
    /// Rows by primary key, in whatever order SQLite returns them
    /// (`#[cached(ids)]` puts them back in the stored order).
    async fn by_ids(pool: &SqlitePool, ids: &[i64]) -> Result<Vec<Book>, sqlx::Error> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let marks = vec!["?"; ids.len()].join(",");
        let sql = format!(
            "SELECT id, author_id, title, price_cents, boost FROM books WHERE id IN ({marks})"
        );
        let mut query = sqlx::query_as::<_, BookRow>(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        Ok(query
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(Book::from)
            .collect())
    }

    /// [`Book::by_ids`] without the books this user has bought.
    async fn not_owned(
        pool: &SqlitePool,
        ids: &[i64],
        user_id: i64,
    ) -> Result<Vec<Book>, sqlx::Error> {
        let owned: Vec<(i64,)> =
            sqlx::query_as("SELECT DISTINCT book_id FROM purchases WHERE user_id = ?")
                .bind(user_id)
                .fetch_all(pool)
                .await?;
        let owned: std::collections::HashSet<i64> = owned.into_iter().map(|(id,)| id).collect();
        let mut books = Book::by_ids(pool, ids).await?;
        books.retain(|b| !owned.contains(&b.id));
        Ok(books)
    }

    async fn by_id(pool: &SqlitePool, id: i64) -> Result<Option<Book>, sqlx::Error> {
        let row = sqlx::query_as::<_, BookRow>(
            "SELECT id, author_id, title, price_cents, boost FROM books WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(Book::from))
    }

    /// Ranked ids, then their rows in that order (what a miss returns).
    async fn ranked(pool: &SqlitePool, ids: Vec<i64>) -> Result<Vec<Book>, sqlx::Error> {
        let mut rows: HashMap<i64, Book> = Book::by_ids(pool, &ids)
            .await?
            .into_iter()
            .map(|b| (b.id, b))
            .collect();
        Ok(ids.iter().filter_map(|id| rows.remove(id)).collect())
    }
}

// ------------------------------------------------------------------ the shop

/// How many times each expensive query actually ran (origin computations).
#[derive(Default)]
struct Origin {
    top_books: AtomicU64,
    also_bought: AtomicU64,
    recommended: AtomicU64,
}

struct Shop {
    pool: SqlitePool,
    cache: Cache,
    origin: Origin,
}

/// Recency-weighted sales: each purchase counts less as it ages (half
/// weight after a month), over every purchase of the author's books: an
/// aggregate over thousands of rows, milliseconds to tens of them, as
/// ranking queries tend to be.
const SCORE: &str = "SUM(p.qty / (1.0 + (?1 - p.ts) / 2592000.0)) * (1.0 + b.boost)";

/// The author's ten best-selling books, ranked. The ranking is cached as
/// ids for an hour; prices and titles come fresh from the table.
#[cached(
    key = "author:{author_id}:top_books",
    ttl = 3600,
    cache = shop.cache,
    ids = |ids| Book::by_ids(&shop.pool, &ids)
)]
async fn top_books(shop: &Shop, author_id: i64) -> Result<Vec<Book>, sqlx::Error> {
    shop.origin.top_books.fetch_add(1, Ordering::Relaxed);
    let sql = format!(
        "SELECT b.id FROM books b JOIN purchases p ON p.book_id = b.id
         WHERE b.author_id = ?2 GROUP BY b.id ORDER BY {SCORE} DESC, b.id LIMIT 10"
    );
    let ids: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now())
        .bind(author_id)
        .fetch_all(&shop.pool)
        .await?;
    Book::ranked(&shop.pool, ids.into_iter().map(|(id,)| id).collect()).await
}

/// Readers who bought this book in the last 7 days also bought: five
/// books by co-purchases, a self-join over the purchase log.
#[cached(
    key = "book:{book_id}:also_bought",
    ttl = 600,
    cache = shop.cache,
    ids = |ids| Book::by_ids(&shop.pool, &ids)
)]
async fn also_bought(shop: &Shop, book_id: i64) -> Result<Vec<Book>, sqlx::Error> {
    shop.origin.also_bought.fetch_add(1, Ordering::Relaxed);
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT p2.book_id FROM purchases p1 JOIN purchases p2
           ON p2.user_id = p1.user_id AND p2.book_id != p1.book_id
         WHERE p1.book_id = ?1 AND p1.ts > ?2 - 604800
         GROUP BY p2.book_id ORDER BY COUNT(*) DESC, p2.book_id LIMIT 5",
    )
    .bind(book_id)
    .bind(now())
    .fetch_all(&shop.pool)
    .await?;
    Book::ranked(&shop.pool, ids.into_iter().map(|(id,)| id).collect()).await
}

/// Recommended for you: the best-selling books of the three authors this
/// user buys most, that they have not bought. One entry per user (`vary`);
/// the hydrator drops what the user has bought since, so their own
/// purchase shows at once without an invalidation, and the list follows
/// the shop's sales within its TTL.
#[cached(
    key = "recommended",
    ttl = 600,
    vary = user_id,
    cache = shop.cache,
    ids = |ids| Book::not_owned(&shop.pool, &ids, user_id)
)]
async fn recommended(shop: &Shop, user_id: i64) -> Result<Vec<Book>, sqlx::Error> {
    shop.origin.recommended.fetch_add(1, Ordering::Relaxed);
    let sql = format!(
        "SELECT b.id FROM books b JOIN purchases p ON p.book_id = b.id
         WHERE b.author_id IN (
             SELECT bb.author_id FROM purchases pp JOIN books bb ON bb.id = pp.book_id
             WHERE pp.user_id = ?2 GROUP BY bb.author_id ORDER BY COUNT(*) DESC, bb.author_id LIMIT 3)
           AND b.id NOT IN (SELECT book_id FROM purchases WHERE user_id = ?2)
         GROUP BY b.id ORDER BY {SCORE} DESC, b.id LIMIT 5"
    );
    let ids: Vec<(i64,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(now())
        .bind(user_id)
        .fetch_all(&shop.pool)
        .await?;
    Book::ranked(&shop.pool, ids.into_iter().map(|(id,)| id).collect()).await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ------------------------------------------------------------------ routes

struct AppError(String);

impl<E: std::fmt::Display> From<E> for AppError {
    fn from(e: E) -> Self {
        AppError(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        (StatusCode::INTERNAL_SERVER_ERROR, self.0).into_response()
    }
}

type Page = Result<Json<Value>, AppError>;

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}")).into_response()
}

// ------------------------------------------------------------------ sign-in

/// The query parameter that signs a visitor in (a stand-in for a session
/// cookie, kept so the load test can name its shopper).
#[derive(Deserialize)]
struct Visitor {
    user: Option<i64>,
}

/// Who is asking, as [`sign_in`] found them: what the handlers read
/// instead of the query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shopper {
    Anonymous,
    /// `version` is the user's row version, bumped by each of their
    /// purchases in the purchase's own transaction.
    SignedIn {
        id: i64,
        version: i64,
    },
}

impl Shopper {
    fn user(self) -> Option<i64> {
        match self {
            Shopper::Anonymous => None,
            Shopper::SignedIn { id, .. } => Some(id),
        }
    }
}

/// The middleware every request goes through: `?user=U` becomes a
/// [`Shopper`] in the request extensions, with the user's row loaded as
/// a real app loads its session user on each request. An unknown user is
/// refused.
async fn sign_in(
    State(shop): State<Arc<Shop>>,
    mut request: Request,
    next: Next,
) -> Result<Response, AppError> {
    let visitor = match Query::<Visitor>::try_from_uri(request.uri()) {
        Ok(Query(visitor)) => visitor,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let shopper = match visitor.user {
        None => Shopper::Anonymous,
        Some(id) => {
            let row: Option<(i64,)> = sqlx::query_as("SELECT version FROM users WHERE id = ?")
                .bind(id)
                .fetch_optional(&shop.pool)
                .await?;
            let Some((version,)) = row else {
                return Ok((StatusCode::BAD_REQUEST, format!("no such user: {id}")).into_response());
            };
            Shopper::SignedIn { id, version }
        }
    };
    request.extensions_mut().insert(shopper);
    Ok(next.run(request).await)
}

async fn author_page(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<i64>,
    Extension(shopper): Extension<Shopper>,
) -> Result<Response, AppError> {
    let author: Option<(String,)> = sqlx::query_as("SELECT name FROM authors WHERE id = ?")
        .bind(id)
        .fetch_optional(&shop.pool)
        .await?;
    let Some((name,)) = author else {
        return Ok(not_found("author"));
    };
    let top = top_books(&shop, id).await?;
    let for_you = for_shopper(&shop, shopper).await?;
    Ok(
        Json(json!({ "id": id, "name": name, "top_books": top, "recommended": for_you }))
            .into_response(),
    )
}

/// Signed-in shoppers see their recommendations on every page.
async fn for_shopper(shop: &Shop, shopper: Shopper) -> Result<Option<Vec<Book>>, sqlx::Error> {
    match shopper.user() {
        Some(user) => Ok(Some(recommended(shop, user).await?)),
        None => Ok(None),
    }
}

async fn book_page(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<i64>,
    Extension(shopper): Extension<Shopper>,
) -> Result<Response, AppError> {
    let Some(book) = Book::by_id(&shop.pool, id).await? else {
        return Ok(not_found("book"));
    };
    let by_author = top_books(&shop, book.author_id).await?;
    let also = also_bought(&shop, id).await?;
    let for_you = for_shopper(&shop, shopper).await?;
    Ok(Json(json!({
        "book": book,
        "author_top_books": by_author,
        "also_bought": also,
        "recommended": for_you,
    }))
    .into_response())
}

/// A purchase changes the author's ranking: drop the author's prefix. The
/// buyer's recommendations drop the book when hydrated; the book's "also
/// bought" list (a week of co-purchases, which one sale barely moves) and
/// other users' recommendations follow within their 10-minute TTL.
async fn purchase(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<i64>,
    Extension(shopper): Extension<Shopper>,
) -> Result<Response, AppError> {
    let Some(user) = shopper.user() else {
        return Ok((StatusCode::BAD_REQUEST, "purchase needs ?user=ID").into_response());
    };
    let Some(book) = Book::by_id(&shop.pool, id).await? else {
        return Ok(not_found("book"));
    };
    let mut tx = shop.pool.begin().await?;
    sqlx::query("INSERT INTO purchases (book_id, user_id, qty, ts) VALUES (?, ?, 1, ?)")
        .bind(id)
        .bind(user)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE users SET version = version + 1 WHERE id = ?")
        .bind(user)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    invalidate(&shop, &format!("author:{}:", book.author_id)).await;
    Ok(Json(json!({ "purchased": id, "user": user })).into_response())
}

#[derive(Deserialize)]
struct BookUpdate {
    price_cents: Option<i64>,
    boost: Option<f64>,
}

/// A new price needs no invalidation (hits fetch rows fresh by id); a new
/// editorial boost re-ranks the author's books. The update writes only
/// the fields it names (`COALESCE` in SQL, not a value read before), so
/// two updates at once (one price, one boost) cannot undo each other; and
/// any boost drops the ranking, without comparing it to a value read
/// before the write, which another update may have changed since.
async fn update_book(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<i64>,
    Json(update): Json<BookUpdate>,
) -> Result<Response, AppError> {
    let Some(book) = Book::by_id(&shop.pool, id).await? else {
        return Ok(not_found("book"));
    };
    sqlx::query(
        "UPDATE books SET price_cents = COALESCE(?, price_cents), boost = COALESCE(?, boost)
         WHERE id = ?",
    )
    .bind(update.price_cents)
    .bind(update.boost)
    .bind(id)
    .execute(&shop.pool)
    .await?;
    if update.boost.is_some() {
        invalidate(&shop, &format!("author:{}:", book.author_id)).await;
    }
    let book = Book::by_id(&shop.pool, id).await?;
    Ok(Json(json!(book)).into_response())
}

/// A failed invalidation must not fail the write that caused it; the
/// cache logs and counts it, and the entries expire with their TTL.
async fn invalidate(shop: &Shop, prefix: &str) {
    if let Err(e) = shop.cache.invalidate_prefix(prefix).await {
        tracing_free_warn(&format!("invalidating {prefix}: {e}"));
    }
}

fn tracing_free_warn(msg: &str) {
    eprintln!("warning: {msg}");
}

async fn stats(State(shop): State<Arc<Shop>>) -> Page {
    let s = shop.cache.stats();
    let functions: Vec<Value> = s
        .functions
        .iter()
        .map(|f| {
            let name = f.name.rsplit("::").next().unwrap_or(&f.name);
            json!({ "name": name, "hits": f.hits, "misses": f.misses, "hit_rate": f.hit_rate() })
        })
        .collect();
    let o = &shop.origin;
    Ok(Json(json!({
        "functions": functions,
        "hits": s.hits,
        "misses": s.misses,
        "errors": s.errors,
        "origin": {
            "top_books": o.top_books.load(Ordering::Relaxed),
            "also_bought": o.also_bought.load(Ordering::Relaxed),
            "recommended": o.recommended.load(Ordering::Relaxed),
        },
    })))
}

fn app(shop: Arc<Shop>) -> Router {
    Router::new()
        .route("/authors/{id}", get(author_page))
        .route("/books/{id}", get(book_page).put(update_book))
        .route("/books/{id}/purchase", post(purchase))
        .route("/stats", get(stats))
        .layer(middleware::from_fn_with_state(shop.clone(), sign_in))
        .with_state(shop)
}

// ------------------------------------------------------------------ database

/// Creates and seeds the catalog and a random purchase log of the same size
/// and distribution each time.
async fn open_database(dir: &std::path::Path) -> Result<SqlitePool, sqlx::Error> {
    let url = format!("sqlite://{}", dir.join("bookshop.db").display());
    let options = SqliteConnectOptions::from_str(&url)?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await?;
    let statements = [
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL)".to_owned(),
        "CREATE TABLE books (id INTEGER PRIMARY KEY, author_id INTEGER NOT NULL, title TEXT NOT NULL,
           price_cents INTEGER NOT NULL, boost REAL NOT NULL DEFAULT 0)"
            .to_owned(),
        "CREATE INDEX books_author ON books (author_id)".to_owned(),
        "CREATE TABLE purchases (id INTEGER PRIMARY KEY, book_id INTEGER NOT NULL,
           user_id INTEGER NOT NULL, qty INTEGER NOT NULL, ts INTEGER NOT NULL)"
            .to_owned(),
        "CREATE INDEX purchases_book ON purchases (book_id)".to_owned(),
        "CREATE INDEX purchases_user ON purchases (user_id)".to_owned(),
        "CREATE TABLE users (id INTEGER PRIMARY KEY, version INTEGER NOT NULL DEFAULT 0)"
            .to_owned(),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {USERS})
             INSERT INTO users (id) SELECT i FROM n"
        ),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {AUTHORS})
             INSERT INTO authors SELECT i, 'Author ' || i FROM n"
        ),
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {BOOKS})
             INSERT INTO books SELECT i, (i - 1) / {BOOKS_PER_AUTHOR} + 1, 'Book ' || i,
               500 + (i * 37) % 2500, 0 FROM n"
        ),
        // A purchase log over the last 90 days.
        format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {PURCHASES})
             INSERT INTO purchases (book_id, user_id, qty, ts)
             SELECT 1 + abs(random()) % {BOOKS}, 1 + abs(random()) % {USERS},
                    1 + abs(random()) % 3, {now} - abs(random()) % 7776000 FROM n",
            now = now()
        ),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
    }
    Ok(pool)
}

// ------------------------------------------------------------------ serving

async fn serve(port: u16, until_stdin_closes: bool) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pool = open_database(dir.path()).await?;
    let cache = Cache::from_env().await?;
    let shop = Arc::new(Shop {
        pool,
        cache,
        origin: Origin::default(),
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let stop = async move {
        if until_stdin_closes {
            // The load test's parent holds our stdin: when it closes (or the
            // parent dies) stop, so the temporary database is removed.
            let _ =
                tokio::task::spawn_blocking(|| std::io::stdin().read_to_end(&mut Vec::new())).await;
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    axum::serve(listener, app(shop))
        .with_graceful_shutdown(stop)
        .await?;
    drop(dir);
    Ok(())
}

mod load;

fn flag<T: FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} needs a number, e.g. `{name} 10`")),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--serve-child") {
        return serve(0, true).await;
    }
    if args.iter().any(|a| a == "--load") {
        return load::run(&args).await;
    }
    let port = flag(&args, "--port", 3000u16)?;
    serve(port, false).await
}
