//! A bookshop: an axum app on an embedded SQLite database, with its pages
//! cached whole by the HTTP layer and the expensive parts of those pages
//! cached as ids underneath.
//!
//! ```sh
//! cargo run --features http --example bookshop                      # serve on 127.0.0.1:3000
//! cargo run --release --features http --example bookshop -- --load  # the load test
//! ```
//!
//! Routes: `GET /authors/{id}[?user=U]`, `GET /books/{id}[?user=U]`,
//! `POST /books/{id}/purchase?user=U`, `PUT /books/{id}` (JSON
//! `{"price_cents": 1299, "boost": 0.5}`), `GET /stats`, `GET /metrics`
//! (the cache's series in Prometheus' text format, charted by
//! `dashboard.json`, a Grafana dashboard). A sign-in
//! middleware turns `?user=U` (a stand-in for a session) into a `Shopper`
//! for the handlers, loading the user's row and its version. Pages are
//! written in the language `Accept-Language` prefers (English, French or
//! German: a greeting and the prices).
//!
//! # What is cached
//! - **Pages** (`cacheruntime::http::CacheLayer`, on the two `GET` routes
//!   only): key `page:{path}`, then the `Accept-Language` header, then the
//!   shopper: `anon`, or `U.V` with V the user's version. Two minutes. A
//!   purchase, a price or a boost never goes through it, nor do `/stats`
//!   and `/metrics`.
//!   `--no-page-cache` serves without it.
//! - **Functions**, as ids: an author's ranking (`top_books`, an hour), a
//!   book's "also bought" list and each user's recommendations (eight
//!   minutes) are expensive queries over the purchase log, but their
//!   output is only *which* books in *which* order. Storing ids
//!   (`#[cached(ids = ...)]`) and fetching the rows by primary key on each
//!   hit means a price change reaches them at once and a deleted book
//!   disappears, without invalidating anything; a page miss is mostly hits
//!   on these.
//!
//! # What a write drops, and what may lag
//! After a write's response, no page shows what the write changed, except:
//! a book's "also bought" list and other users' recommendations follow
//! sales within ten minutes (eight in their function, two on the page).
//! - A purchase of a book by author A: the ranking (`author:A:`), the
//!   author's page (`page:/authors/A:`, every language and shopper) and
//!   the page of each of A's books, which show A's top books and copies
//!   sold (`page:/books/B:`). It bumps the buyer's version in its transaction,
//!   so every page cached for the buyer (their recommendations are on
//!   each) is asked for under a new key from then on; their recommendations
//!   drop the bought book when hydrated.
//! - A price or a boost: every page (`page:`: a book's price is on pages no
//!   prefix names, such as others' "also bought" lists; one record or
//!   counter in the store, whatever the number of pages); a boost also
//!   re-ranks the author (`author:A:`).
//! - Invalidations run after the commit: a page or ranking computed from
//!   the old rows whose cache read came before them is refused by the
//!   store. A failed invalidation (a shared store down) is logged and
//!   does not fail the write; what it should have dropped then lives to
//!   its TTL.
//! - Pages go out with `Cache-Control: private, no-cache` and the layer's
//!   `ETag`, so browsers ask before each reuse (answered `304` from the cache while
//!   the page is unchanged) rather than showing an old page.
//!
//! `CACHE_URL` picks the store (memory when unset, `none://` to switch the
//! cache off; Redis, SQL and Memcached URLs need their cargo features). The
//! database lives in a temporary directory and is created and seeded on
//! start.
//!
//! `--load` runs the load test the numbers in BENCHMARKS.md come from
//! (`load.rs`): it starts this program three times as a child server (with
//! `CACHE_URL=none://`; with the cache on for the functions only,
//! `--no-page-cache`; with the cache on for functions and pages), drives
//! each over HTTP with a Zipf-distributed mix of author views, book views
//! (in three languages, a third signed in) and purchases, checks every
//! page for a wrong answer (copies sold behind a purchase that had
//! returned; a bought book among the buyer's recommendations), and prints
//! requests/s, latency percentiles, the functions' and the pages' hit
//! rates, `X-Cache` counts, origin computations, errors and wrong pages;
//! it exits non-zero on any error or wrong page. Options: `--seconds 60`
//! (per run), `--concurrency 32` (clients, each one shopper),
//! `--purchases-per-mille 3` (purchases among the actions; each re-ranks
//! an author). On a shared store (Redis, SQL, Memcached) it empties
//! `CACHE_URL`'s namespace before each run, so give it one of its own
//! (`redis://127.0.0.1/0?namespace=bookshop-load`): every run starts from a
//! fresh database and must not find the last run's pages.

use std::collections::HashMap;
use std::io::Read;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, Query, Request, State};
use axum::http::header::{ACCEPT_LANGUAGE, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use cacheruntime::http::{cache_control, CacheLayer, LayerError};
use cacheruntime::{cached, Cache, CacheId};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
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
    /// Renders what the `metrics` recorder holds (`/metrics`).
    metrics: PrometheusHandle,
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
    skip = [shop],
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
/// books by co-purchases, a self-join over the purchase log. Eight
/// minutes, so that with a page's two ([`PAGE_TTL`]) the list on a page
/// follows sales within ten.
#[cached(
    key = "book:{book_id}:also_bought",
    ttl = "8m",
    cache = shop.cache,
    skip = [shop],
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
/// the shop's sales within its TTL: eight minutes, ten with a page's two
/// ([`PAGE_TTL`]).
#[cached(
    key = "recommended",
    ttl = "8m",
    vary = user_id,
    cache = shop.cache,
    skip = [shop],
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

// ------------------------------------------------------------------ errors

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

/// What the page cache's key holds for the shopper (`vary_on_user`):
/// `anon`, or `U.V` for user U at row version V. A purchase bumps V, so
/// every page cached for the buyer (their recommendations are on each)
/// is under a name their later requests never ask for again; those
/// entries age out by TTL or eviction.
impl std::fmt::Display for Shopper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shopper::Anonymous => f.write_str("anon"),
            Shopper::SignedIn { id, version } => write!(f, "{id}.{version}"),
        }
    }
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

// ------------------------------------------------------------------ pages

/// The languages the shop writes its pages in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Locale {
    En,
    Fr,
    De,
}

impl Locale {
    /// The language `Accept-Language` gives the highest `q` among those
    /// the shop speaks (the first listed among equals); English otherwise.
    fn of(headers: &HeaderMap) -> Locale {
        let mut best = (Locale::En, 0.0_f32);
        let header = headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok());
        for item in header.unwrap_or("").split(',') {
            let mut parts = item.split(';');
            let tag = parts.next().unwrap_or("").trim();
            let primary = tag.split('-').next().unwrap_or("");
            let locale = match primary.to_ascii_lowercase().as_str() {
                "en" => Locale::En,
                "fr" => Locale::Fr,
                "de" => Locale::De,
                _ => continue,
            };
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .map_or(1.0, |q| q.trim().parse().unwrap_or(0.0));
            if q > best.1 {
                best = (locale, q);
            }
        }
        best.0
    }

    fn tag(self) -> &'static str {
        match self {
            Locale::En => "en",
            Locale::Fr => "fr",
            Locale::De => "de",
        }
    }

    fn greeting(self) -> &'static str {
        match self {
            Locale::En => "Welcome",
            Locale::Fr => "Bienvenue",
            Locale::De => "Willkommen",
        }
    }

    /// A price as the language writes it.
    fn price(self, cents: i64) -> String {
        let (whole, cents) = (cents / 100, cents % 100);
        match self {
            Locale::En => format!("€{whole}.{cents:02}"),
            Locale::Fr | Locale::De => format!("{whole},{cents:02} €"),
        }
    }
}

/// A book as a page shows it: the row, and its price in the page's
/// language.
fn listed(book: &Book, locale: Locale) -> Value {
    let mut value = json!(book);
    value["price"] = json!(locale.price(book.price_cents));
    value
}

fn shelf(books: &[Book], locale: Locale) -> Vec<Value> {
    books.iter().map(|book| listed(book, locale)).collect()
}

/// A page's response.
fn page(body: Value) -> Response {
    Json(body).into_response()
}

async fn author_page(
    State(shop): State<Arc<Shop>>,
    Path(id): Path<i64>,
    Extension(shopper): Extension<Shopper>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let locale = Locale::of(&headers);
    let author: Option<(String, i64)> =
        sqlx::query_as("SELECT name, sold FROM authors WHERE id = ?")
            .bind(id)
            .fetch_optional(&shop.pool)
            .await?;
    let Some((name, sold)) = author else {
        return Ok(not_found("author"));
    };
    let top = top_books(&shop, id).await?;
    let for_you = for_shopper(&shop, shopper).await?;
    Ok(page(json!({
        "lang": locale.tag(),
        "greeting": locale.greeting(),
        "id": id,
        "name": name,
        "sold": sold,
        "top_books": shelf(&top, locale),
        "recommended": for_you.map(|books| shelf(&books, locale)),
    })))
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
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let locale = Locale::of(&headers);
    let Some(book) = Book::by_id(&shop.pool, id).await? else {
        return Ok(not_found("book"));
    };
    let (author_sold,): (i64,) = sqlx::query_as("SELECT sold FROM authors WHERE id = ?")
        .bind(book.author_id)
        .fetch_one(&shop.pool)
        .await?;
    let by_author = top_books(&shop, book.author_id).await?;
    let also = also_bought(&shop, id).await?;
    let for_you = for_shopper(&shop, shopper).await?;
    Ok(page(json!({
        "lang": locale.tag(),
        "greeting": locale.greeting(),
        "book": listed(&book, locale),
        "author_sold": author_sold,
        "author_top_books": shelf(&by_author, locale),
        "also_bought": shelf(&also, locale),
        "recommended": for_you.map(|books| shelf(&books, locale)),
    })))
}

// ------------------------------------------------------------------ writes

/// A purchase changes the author's ranking and copies sold: drop the
/// author's prefix, and the pages that show them: the author's page and
/// every page of the author's books (each lists the author's top books and
/// sales), in every language and for every shopper. The buyer's
/// recommendations drop the book when hydrated, and every page cached for
/// the buyer (each shows their recommendations) has a new key from the
/// version the purchase bumps.
/// A book's "also bought" list (a week of co-purchases, which one sale
/// barely moves) and other users' recommendations follow within ten
/// minutes: their functions' TTL plus the page's.
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
    // Named before the write, so that nothing can fail between the commit
    // and the invalidations.
    let author_books: Vec<(i64,)> = sqlx::query_as("SELECT id FROM books WHERE author_id = ?")
        .bind(book.author_id)
        .fetch_all(&shop.pool)
        .await?;
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
    let (author_sold,): (i64,) =
        sqlx::query_as("UPDATE authors SET sold = sold + 1 WHERE id = ? RETURNING sold")
            .bind(book.author_id)
            .fetch_one(&mut *tx)
            .await?;
    tx.commit().await?;
    // After the commit, before the response. A page (or ranking) computed
    // from the old rows whose cache read came before its invalidation is
    // refused by the store when it tries to write (its read's ticket is
    // older); one whose read came after sees the new rows. The ranking goes
    // first, so a page made after its own invalidation reads a ranking
    // made after the purchase.
    invalidate(&shop, &format!("author:{}:", book.author_id)).await;
    invalidate(&shop, &format!("page:/authors/{}:", book.author_id)).await;
    for (book_id,) in author_books {
        invalidate(&shop, &format!("page:/books/{book_id}:")).await;
    }
    Ok(Json(json!({
        "purchased": id,
        "user": user,
        "author": book.author_id,
        "author_sold": author_sold,
    }))
    .into_response())
}

#[derive(Deserialize)]
struct BookUpdate {
    price_cents: Option<i64>,
    boost: Option<f64>,
}

/// A new price needs no function invalidated (their hits fetch rows fresh
/// by id), but the pages showing the book; a new editorial boost also
/// re-ranks the author's books. The update writes only
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
    if update.price_cents.is_some() || update.boost.is_some() {
        // The book's price and boost are on every page that lists it: its
        // author's, its own, and any "also bought" or recommendations list
        // holding it, which no prefix names. So every page goes: one
        // prefix record in memory, one counter in Redis or Memcached,
        // however many pages there are; their functions' entries (ids)
        // stay, so the pages are rebuilt from hits.
        invalidate(&shop, "page:").await;
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

// ------------------------------------------------------------------ routes

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
    // The page cache's calls are the cache's less the functions'.
    let (mut hits, mut stale_hits, mut misses) = (s.hits, s.stale_hits, s.misses);
    for f in &s.functions {
        hits = hits.saturating_sub(f.hits);
        stale_hits = stale_hits.saturating_sub(f.stale_hits);
        misses = misses.saturating_sub(f.misses);
    }
    let o = &shop.origin;
    Ok(Json(json!({
        "functions": functions,
        "pages": { "hits": hits, "stale_hits": stale_hits, "misses": misses },
        "hits": s.hits,
        "stale_hits": s.stale_hits,
        "misses": s.misses,
        "errors": s.errors,
        "origin": {
            "top_books": o.top_books.load(Ordering::Relaxed),
            "also_bought": o.also_bought.load(Ordering::Relaxed),
            "recommended": o.recommended.load(Ordering::Relaxed),
        },
    })))
}

/// The cache's series (the `metrics` feature) for Prometheus: copied from
/// the cache's counters first, so they match `/stats` exactly.
async fn metrics(State(shop): State<Arc<Shop>>) -> impl IntoResponse {
    shop.cache.export_metrics();
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        shop.metrics.render(),
    )
}

/// A Prometheus recorder for the process, histograms with buckets (so
/// Grafana can take any quantile across instances), and its upkeep (it
/// folds recorded samples into the buckets).
fn prometheus() -> Result<PrometheusHandle, Box<dyn std::error::Error>> {
    let handle = PrometheusBuilder::new()
        .set_buckets(&[
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ])?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// How long a page is kept: two minutes, so that the parts of a page that
/// follow sales within a TTL (a book's "also bought", other shoppers'
/// recommendations, eight minutes in their functions) are at most ten
/// minutes old. Everything else on a page is dropped by the writes.
const PAGE_TTL: Duration = Duration::from_secs(120);

/// The page cache: whole GET pages, in the same cache as the functions,
/// one per path, language and shopper. The key leaves the query out:
/// handlers read none (the only parameter, `user`, reaches them as the
/// [`Shopper`], which the key holds), so `?user=7` and `?user=7&x=1` share a
/// page and `page:/authors/7:` names every variant of the author's page.
fn page_cache(cache: &Cache) -> Result<CacheLayer, LayerError> {
    CacheLayer::builder(cache.clone())
        .key("page:{path}")
        .ttl(PAGE_TTL)
        .vary_on_header("accept-language")
        .vary_on_user::<Shopper>()
        // Browsers ask before each reuse (with the page's `ETag`, answered
        // `304` from the cache while the page is unchanged): the derived
        // `private, max-age=120` would let a browser show a page for two
        // minutes without asking, so a buyer could see the book they just
        // bought among their recommendations, or an old price.
        .client_cache_control(cache_control().private().no_cache())
        .build()
}

/// The routes; with `pages`, the page cache in front of the two pages.
/// Purchases and `/stats` are outside it, and it lets the `PUT` through
/// (it caches GET and HEAD only). The sign-in middleware is outermost: it
/// runs first, so the cache sees the [`Shopper`] it varies on.
fn app(shop: Arc<Shop>, pages: Option<CacheLayer>) -> Router {
    let mut router = Router::new()
        .route("/authors/{id}", get(author_page))
        .route("/books/{id}", get(book_page).put(update_book));
    if let Some(pages) = pages {
        router = router.route_layer(pages);
    }
    router
        .route("/books/{id}/purchase", post(purchase))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
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
        "CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
           sold INTEGER NOT NULL DEFAULT 0)"
            .to_owned(),
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
             INSERT INTO authors (id, name) SELECT i, 'Author ' || i FROM n"
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
        // Copies sold per author, which each purchase adds to.
        "UPDATE authors SET sold = (SELECT COALESCE(SUM(p.qty), 0) FROM books b
           JOIN purchases p ON p.book_id = b.id WHERE b.author_id = authors.id)"
            .to_owned(),
    ];
    for sql in statements {
        sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&pool).await?;
    }
    Ok(pool)
}

// ------------------------------------------------------------------ serving

async fn serve(
    port: u16,
    until_stdin_closes: bool,
    page_caching: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let pool = open_database(dir.path()).await?;
    let cache = Cache::from_env().await?;
    let pages = page_caching.then(|| page_cache(&cache)).transpose()?;
    let shop = Arc::new(Shop {
        pool,
        cache,
        origin: Origin::default(),
        metrics: prometheus()?,
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
    axum::serve(listener, app(shop, pages))
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
    let page_caching = !args.iter().any(|a| a == "--no-page-cache");
    if args.iter().any(|a| a == "--serve-child") {
        return serve(0, true, page_caching).await;
    }
    if args.iter().any(|a| a == "--load") {
        return load::run(&args).await;
    }
    let port = flag(&args, "--port", 3000u16)?;
    serve(port, false, page_caching).await
}
