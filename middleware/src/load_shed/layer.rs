use tower_cql_core::Collectors;
use tower_layer::Layer;

use super::LoadShed;
use crate::toggle::PassThrough;

/// Makes [`LoadShed`] services (see the [module docs](super)). It has no
/// settings, so building it cannot fail.
#[derive(Debug, Clone, Default)]
pub struct LoadShedLayer {
    collectors: Collectors,
}

impl LoadShedLayer {
    /// A layer whose services emit shed events into `collectors`.
    pub fn new(collectors: Collectors) -> LoadShedLayer {
        LoadShedLayer { collectors }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> LoadShed<S> {
        LoadShed::new(inner, self.collectors.clone())
    }
}

impl<S> PassThrough<S> for LoadShedLayer {
    fn pass_through(inner: S) -> LoadShed<S> {
        LoadShed::pass_through(inner)
    }
}
