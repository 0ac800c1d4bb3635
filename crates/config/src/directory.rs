//! A directory of YAML/JSON files as a configuration source.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::{ConfigSnapshot, ConfigSource};

/// How often the tree is scanned for changes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Quiet time after the last change before a snapshot is published.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest a change waits while files keep changing.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// True for `*.yaml`, `*.yml` and `*.json` (case-insensitive), except
/// hidden files.
pub fn is_config_file(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    !hidden && matches!(ext.as_deref(), Some("yaml" | "yml" | "json"))
}

/// The configuration files under `dir`, recursively, sorted by path. Hidden
/// files and directories (`.git`, Kubernetes ConfigMap `..data`) are
/// skipped; symbolic links are followed.
fn config_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mut files: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .follow_links(true)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || !e.file_name().to_str().is_some_and(|n| n.starts_with('.'))
        })
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file() && is_config_file(e.path()))
        .map(walkdir::DirEntry::into_path)
        .collect();
    files.sort();
    Ok(files)
}

/// What the watcher compares between scans.
type Fingerprint = BTreeMap<PathBuf, (Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Option<Fingerprint> {
    let files = config_files(dir).ok()?;
    Some(
        files
            .into_iter()
            .map(|p| {
                let meta = std::fs::metadata(&p).ok();
                let stamp = (
                    meta.as_ref().and_then(|m| m.modified().ok()),
                    meta.as_ref().map_or(u64::MAX, std::fs::Metadata::len),
                );
                (p, stamp)
            })
            .collect(),
    )
}

/// Identity of an object for duplicate detection.
fn identity(o: &api::Object) -> (String, String, String, String) {
    (
        o.group().to_string(),
        o.kind.clone(),
        o.metadata.namespace.clone(),
        o.metadata.name.clone(),
    )
}

/// Loads every configuration file under `dir` once: parses, validates
/// (Istio kinds with `api::validate`, local manifest kinds with
/// `registry::local::validate`, Kubernetes TLS Secrets with
/// `registry::secret::validate`), leaves out and reports bad objects, and
/// reports an object defined twice. As with `kubectl apply`, the definition
/// written last wins: files are read oldest first (path order among equals),
/// so dropping a new VirtualService for `reviews` into the directory takes
/// over from the one already there. The snapshot's generation is 1.
pub fn load_dir(dir: &Path) -> ConfigSnapshot {
    let mut snapshot = ConfigSnapshot {
        generation: 1,
        ..ConfigSnapshot::default()
    };
    let files = match config_files(dir) {
        Ok(f) => f,
        Err(e) => {
            snapshot
                .errors
                .push(format!("{}: cannot read directory: {e}", dir.display()));
            return snapshot;
        }
    };
    let mut files: Vec<(Option<SystemTime>, PathBuf)> = files
        .into_iter()
        .map(|f| (std::fs::metadata(&f).and_then(|m| m.modified()).ok(), f))
        .collect();
    files.sort();
    let mut seen: BTreeMap<(String, String, String, String), (String, usize)> = BTreeMap::new();
    for (_, file) in files {
        let (objects, load_errors) = api::load::load_file(&file);
        snapshot
            .errors
            .extend(load_errors.iter().map(ToString::to_string));
        for object in objects {
            let mut v = api::validate(&object);
            let local = registry::local::validate(&object);
            v.errors.extend(local.errors);
            v.warnings.extend(local.warnings);
            // Kubernetes TLS Secrets (gateway credentials in local mode).
            v.errors.extend(registry::secret::validate(&object).errors);
            snapshot
                .warnings
                .extend(v.warnings.iter().map(ToString::to_string));
            if !v.is_ok() {
                snapshot
                    .errors
                    .extend(v.errors.iter().map(ToString::to_string));
                continue;
            }
            if let Some((earlier, index)) = seen.get(&identity(&object)).cloned() {
                snapshot.warnings.push(format!(
                    "{}: {} {}: metadata.name: also defined in {earlier}; the definition written last is used",
                    object.origin,
                    object.kind,
                    object.key()
                ));
                seen.insert(identity(&object), (object.origin.clone(), index));
                snapshot.objects[index] = object;
                continue;
            }
            seen.insert(
                identity(&object),
                (object.origin.clone(), snapshot.objects.len()),
            );
            snapshot.objects.push(object);
        }
    }
    snapshot
}

/// Loads `dir`, never panicking (a loader bug becomes an error entry).
fn load_guarded(dir: &Path) -> ConfigSnapshot {
    catch_unwind(AssertUnwindSafe(|| load_dir(dir))).unwrap_or_else(|_| ConfigSnapshot {
        errors: vec![format!(
            "{}: internal error while loading the configuration",
            dir.display()
        )],
        ..ConfigSnapshot::default()
    })
}

fn log_problems(snapshot: &ConfigSnapshot) {
    for e in &snapshot.errors {
        tracing::error!(generation = snapshot.generation, "rejected: {e}");
    }
    for w in &snapshot.warnings {
        tracing::warn!(generation = snapshot.generation, "{w}");
    }
}

/// A watched directory of YAML/JSON files (see [`load_dir`] for what a
/// snapshot holds). Scans every [`POLL_INTERVAL`]; after a change (a file
/// added, removed, resized or touched) and `debounce` of quiet, reloads and
/// publishes a new snapshot if the result differs. Dropping the source stops
/// the watcher thread.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    tx: Arc<watch::Sender<Arc<ConfigSnapshot>>>,
    // Dropping the sender wakes and ends the watcher thread.
    _stop: mpsc::Sender<()>,
}

impl DirectorySource {
    /// Loads `dir` (the first snapshot, generation 1, is available at once)
    /// and starts watching it. Fails only when `dir` is not a readable
    /// directory or the watcher thread cannot start.
    pub fn start(dir: PathBuf, debounce: Duration) -> io::Result<Self> {
        config_files(&dir)?;
        // Fingerprint before loading: a change racing the load is seen by
        // the watcher's first scan.
        let seen = fingerprint(&dir);
        let initial = load_guarded(&dir);
        log_problems(&initial);
        let tx = Arc::new(watch::Sender::new(Arc::new(initial)));
        let (stop_tx, stop_rx) = mpsc::channel();
        let watcher = Watcher {
            dir: dir.clone(),
            seen,
            debounce,
            tx: tx.clone(),
            stop: stop_rx,
        };
        thread::Builder::new()
            .name("config-watch".into())
            .spawn(move || watcher.run())?;
        Ok(Self {
            dir,
            tx,
            _stop: stop_tx,
        })
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<ConfigSnapshot> {
        self.tx.borrow().clone()
    }
}

impl ConfigSource for DirectorySource {
    fn subscribe(&self) -> watch::Receiver<Arc<ConfigSnapshot>> {
        self.tx.subscribe()
    }
}

struct Watcher {
    dir: PathBuf,
    /// The fingerprint the published snapshot was loaded after.
    seen: Option<Fingerprint>,
    debounce: Duration,
    tx: Arc<watch::Sender<Arc<ConfigSnapshot>>>,
    stop: mpsc::Receiver<()>,
}

impl Watcher {
    fn run(mut self) {
        let mut last = self.seen.take();
        // (first unpublished change, latest change)
        let mut pending: Option<(Instant, Instant)> = None;
        loop {
            match self.stop.recv_timeout(POLL_INTERVAL) {
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let now = Instant::now();
            let current = fingerprint(&self.dir);
            if current != last {
                last = current;
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
            let Some((first, latest)) = pending else {
                continue;
            };
            if now.duration_since(latest) < self.debounce
                && now.duration_since(first) < MAX_DELAY.max(self.debounce)
            {
                continue;
            }
            pending = None;
            self.reload();
        }
    }

    fn reload(&self) {
        let mut next = load_guarded(&self.dir);
        let previous = self.tx.borrow().clone();
        if next.objects == previous.objects
            && next.errors == previous.errors
            && next.warnings == previous.warnings
        {
            return;
        }
        next.generation = previous.generation + 1;
        let files: BTreeSet<&str> = next.objects.iter().map(|o| o.origin.as_str()).collect();
        tracing::info!(
            generation = next.generation,
            objects = next.objects.len(),
            files = files.len(),
            errors = next.errors.len(),
            dir = %self.dir.display(),
            "configuration changed"
        );
        log_problems(&next);
        self.tx.send_replace(Arc::new(next));
    }
}
