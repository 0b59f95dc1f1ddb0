//! What a layer that refuses a request owes the inner service it polled
//! ready: the capacity that service reserved for a call it will not get
//! (the rule and its one helper are in
//! [`tower_cql_core::refusal`], which the shutdown gate follows too).

pub(crate) use tower_cql_core::refusal::release;
