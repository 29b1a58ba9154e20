use cacheruntime::cached;

/// XFetch's beta from the application's settings, as a constant.
const XFETCH_BETA: f64 = 1.5;

#[cached(key = "feed:{id}", ttl = 600, early = XFETCH_BETA)]
async fn feed(id: u32) -> String {
    id.to_string()
}

mod settings {
    pub const BETA: f64 = 0.5 * 2.0;
}

#[cached(key = "page:{id}", ttl = 600, early = settings::BETA)]
async fn page(id: u32) -> String {
    id.to_string()
}

fn main() {
    let _ = feed(1);
    let _ = page(1);
}
