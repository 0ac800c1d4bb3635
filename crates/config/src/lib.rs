//! Configuration sources for the control plane.
//!
//! A [`ConfigSource`] publishes [`ConfigSnapshot`]s — every valid object of
//! the configuration, plus the problems found — over a
//! [`tokio::sync::watch`] channel. Sources today:
//!
//! - [`DirectorySource`]: a directory tree of YAML/JSON files, watched by
//!   polling (file set, sizes, mtimes every [`POLL_INTERVAL`]) and republished
//!   after a debounce;
//! - [`StaticSource`]: a fixed snapshot (tests, one-shot tools).
//!
//! [`load_dir`] is the one-shot load behind both `DirectorySource` and
//! `trellis analyze`.
//!
//! Objects are Istio kinds (typed by crate `api`), the local workload
//! manifest kinds (`local.trellis.dev/v1alpha1`, checked by
//! `registry::local`), and kinds Trellis does not interpret (kept as
//! `Spec::Unsupported`). An object that fails to parse or validate is left
//! out of `objects` and reported in `errors`; the rest keeps working.

mod directory;

use std::sync::Arc;

use tokio::sync::watch;

pub use directory::{DEFAULT_DEBOUNCE, DirectorySource, POLL_INTERVAL, is_config_file, load_dir};

/// The configuration at one point in time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigSnapshot {
    /// Every object that loaded and validated, sorted by file path, then
    /// position in the file.
    pub objects: Vec<api::Object>,
    /// Objects left out and why, each `file[:line]: Kind ns/name: field: message`.
    pub errors: Vec<String>,
    /// Accepted objects' warnings, same format, ending in `(warning)`.
    pub warnings: Vec<String>,
    /// Increases by one with every published change (the first snapshot is 1).
    pub generation: u64,
}

/// A source of configuration snapshots.
pub trait ConfigSource: Send + Sync {
    /// A receiver whose current value is the latest snapshot; `changed()`
    /// resolves when a newer one is published.
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>>;
}

/// A source that never changes.
#[derive(Debug)]
pub struct StaticSource {
    tx: watch::Sender<Arc<ConfigSnapshot>>,
}

impl StaticSource {
    pub fn new(snapshot: ConfigSnapshot) -> Self {
        Self {
            tx: watch::Sender::new(Arc::new(snapshot)),
        }
    }
}

impl ConfigSource for StaticSource {
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.tx.subscribe()
    }
}
