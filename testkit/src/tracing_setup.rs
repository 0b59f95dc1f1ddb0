//! `tracing` set up for tests that assert on spans or events through a
//! subscriber of their own (feature `tracing-setup`).
//!
//! ```
//! use tracing_subscriber::layer::SubscriberExt;
//!
//! // first in every test of the binary
//! tower_cql_testkit::tracing_setup::global_registry();
//! // then, in a test that looks at spans, its own subscriber
//! let _guard = tracing::subscriber::set_default(tracing_subscriber::registry());
//! ```
//!
//! `tracing` caches each callsite's interest for the whole process,
//! computed when a thread first reaches it. Until a thread-local
//! subscriber exists anywhere, that asks only the reaching thread's
//! subscriber: a test running the stack with none caches "never" for the
//! stack's spans, and when that races the registration of another test's
//! own subscriber (`set_default`, on its thread), the rebuild that
//! registration makes can miss it: that test then sees no span at all.
//! With a global registry installed first (its creation rebuilds every
//! cached interest), a thread with no subscriber of its own answers
//! "always", so no callsite is cached as "never".

/// Makes a bare [`tracing_subscriber::registry`] the process's global
/// subscriber, once (a global subscriber set before is as good). Call it
/// first in every test of a binary where some test asserts on spans or
/// events through its own subscriber.
pub fn global_registry() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
    });
}
