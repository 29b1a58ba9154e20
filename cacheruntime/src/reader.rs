//! Who reads the store, where one read serves both the application and
//! operators (tags' tokens, read to tell whether an entry still holds).

use std::time::Duration;

/// The application's calls go through the circuit breaker and its op
/// timeout (`Engine::guarded`); an operator's (`Cache::inspect`,
/// `Cache::keys`) go around them with the patience given
/// (`Engine::operator_call`), so a slow walk never opens the breaker for
/// the application, nor fails because it is open.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Reader {
    App,
    Operator(Duration),
}
