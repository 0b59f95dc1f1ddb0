//! [`Label`]: a bounded label value (an operation, keyspace or table name).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

/// A cheap-to-clone label value (`&'static str` or shared string). Labels
/// are for bounded sets of names — operation names, keyspaces, tables —
/// never for statement text or values.
///
/// A label is its text: equality, order and hash are those of
/// [`as_str`](Label::as_str) (as `Borrow<str>` requires), however the label
/// was made; two labels sharing one string compare without reading it.
#[derive(Clone)]
pub struct Label(LabelInner);

#[derive(Clone)]
enum LabelInner {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Label {
    /// A label from a static string (no allocation).
    pub const fn from_static(s: &'static str) -> Label {
        Label(LabelInner::Static(s))
    }

    /// The label's text.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            LabelInner::Static(s) => s,
            LabelInner::Shared(s) => s,
        }
    }

    /// The label's text if it is a static string: with
    /// [`as_shared`](Self::as_shared), for exporters that keep the text
    /// without copying it.
    pub fn as_static(&self) -> Option<&'static str> {
        match &self.0 {
            LabelInner::Static(s) => Some(s),
            LabelInner::Shared(_) => None,
        }
    }

    /// The label's text if it is shared (made at run time): cloning the
    /// `Arc` keeps it without copying it.
    pub fn as_shared(&self) -> Option<&Arc<str>> {
        match &self.0 {
            LabelInner::Static(_) => None,
            LabelInner::Shared(s) => Some(s),
        }
    }
}

impl PartialEq for Label {
    #[inline]
    fn eq(&self, other: &Label) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        std::ptr::eq(a, b) || a == b
    }
}

impl Eq for Label {}

impl std::hash::Hash for Label {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialOrd for Label {
    fn partial_cmp(&self, other: &Label) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Label {
    fn cmp(&self, other: &Label) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl Borrow<str> for Label {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&'static str> for Label {
    fn from(s: &'static str) -> Label {
        Label::from_static(s)
    }
}

impl From<String> for Label {
    fn from(s: String) -> Label {
        Label(LabelInner::Shared(Arc::from(s)))
    }
}

impl From<Arc<str>> for Label {
    fn from(s: Arc<str>) -> Label {
        Label(LabelInner::Shared(s))
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
