//! Watches a manifest directory (inotify, recursive) and sends batches of file changes.
//!
//! Design: notify's callback only forwards raw events to a dedicated thread.
//! That thread coalesces bursts, decides per batch whether re-reading the named
//! files is enough or the whole tree must be rescanned, does the (blocking)
//! reads and parsing, and sends a [`DirChange`] into a tokio channel. A slow
//! consumer blocks the thread (bounded channel), and events pile up and get
//! coalesced into the next batch meanwhile, which is what we want.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RemoveKind};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::dir_state::{DirChange, DirState};
use super::error::SourceError;
use super::manifests::is_manifest_name;
use super::object::Object;
use super::parse::ObjectMapper;

/// Timing of a [`ManifestWatcher`].
#[derive(Clone, Debug)]
pub struct WatchConfig {
    /// A batch is closed once no event arrived for this long…
    pub quiet: Duration,
    /// …or this long after its first event, whichever comes first (so a
    /// constant stream of writes cannot delay updates indefinitely).
    pub max_delay: Duration,
    /// Full rescan (by file fingerprint, then content hash) this often, as a
    /// safety net for missed events (e.g. changes on network file systems).
    pub rescan_interval: Duration,
    /// Batches the consumer may fall behind before the watcher waits for it.
    /// Small on purpose: a start-up batch holds up to 256 parsed files.
    pub channel_capacity: usize,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(100),
            rescan_interval: Duration::from_secs(10),
            channel_capacity: 4,
        }
    }
}

/// Messages to the watch thread.
enum Msg {
    Event(notify::Result<notify::Event>),
    Stop,
}

/// Watches a manifest directory and sends [`DirChange`] batches.
///
/// File paths in the batches are the (absolute) directory joined with the
/// path below it; symlinks are not resolved.
///
/// The first batches on the channel are the initial content of the
/// directory (every file in `changed`), split into batches of at most 256
/// files to bound memory; the last of them has `synced: true`. The watch is
/// set up before that scan, so no change can fall between the two. Later
/// batches hold only files whose content really changed. Dropping the
/// watcher stops it; so does dropping the receiver.
pub struct ManifestWatcher {
    stop: std_mpsc::Sender<Msg>,
}

impl ManifestWatcher {
    /// Starts watching `dir` for manifests of `kinds`, with default timing.
    pub fn start(
        dir: &Path,
        kinds: &[&str],
    ) -> Result<(ManifestWatcher, mpsc::Receiver<DirChange>), SourceError> {
        Self::start_with(dir, kinds, WatchConfig::default())
    }

    /// Starts watching `dir` with explicit timing.
    pub fn start_with(
        dir: &Path,
        kinds: &[&str],
        config: WatchConfig,
    ) -> Result<(ManifestWatcher, mpsc::Receiver<DirChange>), SourceError> {
        Self::start_mapped(dir, kinds, config, Arc::new(|object: Object| object))
    }

    /// Starts watching `dir`, passing every parsed object through `map` on
    /// the watch thread (e.g. into the model's compact form, so that the k8s
    /// objects never pile up).
    ///
    /// Fails if `dir` is not a readable directory or inotify cannot watch it
    /// (e.g. `fs.inotify.max_user_watches` exhausted). Cheap: the initial scan
    /// runs on the watch thread.
    pub fn start_mapped<T: Send + 'static>(
        dir: &Path,
        kinds: &[&str],
        config: WatchConfig,
        map: Arc<ObjectMapper<T>>,
    ) -> Result<(ManifestWatcher, mpsc::Receiver<DirChange<T>>), SourceError> {
        if !dir.is_dir() {
            let err = std::fs::metadata(dir).err().unwrap_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory")
            });
            return Err(SourceError::io(dir, err));
        }
        // notify reports absolute paths (it joins relative ones to the
        // current directory), so file keys are absolute too.
        let dir = &std::path::absolute(dir).map_err(|e| SourceError::io(dir, e))?;
        let (event_tx, event_rx) = std_mpsc::channel();
        let stop = event_tx.clone();
        let mut watcher = notify::recommended_watcher(move |event| {
            // Fails only once the thread has exited; nothing left to do then.
            let _ = event_tx.send(Msg::Event(event));
        })
        .map_err(|e| notify_error(dir, e))?;
        watcher
            .watch(dir, RecursiveMode::Recursive)
            .map_err(|e| notify_error(dir, e))?;

        let (out_tx, out_rx) = mpsc::channel(config.channel_capacity.max(1));
        let watch_loop = WatchLoop {
            state: DirState::new(dir, kinds, map),
            watcher,
            root_watched: true,
            events: event_rx,
            out: out_tx,
            config,
        };
        thread::Builder::new()
            .name("manifest-watch".into())
            .spawn(move || watch_loop.run())
            .map_err(|e| SourceError::io(dir, e))?;
        Ok((ManifestWatcher { stop }, out_rx))
    }
}

impl Drop for ManifestWatcher {
    fn drop(&mut self) {
        // Not joined: the thread may be blocked sending to a full channel that
        // the dropping task itself was supposed to drain. It exits on its own.
        let _ = self.stop.send(Msg::Stop);
    }
}

fn notify_error(dir: &Path, err: notify::Error) -> SourceError {
    let io = match err.kind {
        notify::ErrorKind::Io(io) => io,
        _ => std::io::Error::other(err.to_string()),
    };
    SourceError::io(dir, io)
}

/// What the events of one batch ask for.
#[derive(Debug, Default)]
struct Batch {
    /// Files (or directories) named by events, as keys (root-joined paths).
    paths: BTreeSet<PathBuf>,
    /// Events were lost (queue overflow, watch error): re-read everything.
    overflow: bool,
    /// A directory appeared or vanished: rescan the tree (new directories
    /// may have been filled before their watch was added).
    rescan: bool,
}

/// Whether a batch ended normally or the thread must stop.
enum Next {
    Batch(Batch),
    Stop,
}

struct WatchLoop<T> {
    state: DirState<T>,
    watcher: RecommendedWatcher,
    /// False after the root directory itself was deleted or moved: inotify
    /// dropped its watch, which must be re-added once the root is back.
    root_watched: bool,
    events: std_mpsc::Receiver<Msg>,
    out: mpsc::Sender<DirChange<T>>,
    config: WatchConfig,
}

impl<T: Send + 'static> WatchLoop<T> {
    fn run(mut self) {
        if !self.initial_scan() {
            return;
        }
        let mut next_rescan = Instant::now() + self.config.rescan_interval;
        loop {
            let timeout = next_rescan.saturating_duration_since(Instant::now());
            let first = match self.events.recv_timeout(timeout) {
                Ok(Msg::Event(event)) => event,
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                Err(std_mpsc::RecvTimeoutError::Timeout) => {
                    next_rescan = Instant::now() + self.config.rescan_interval;
                    if !self.rescan(false, &BTreeSet::new(), "periodic rescan") {
                        return;
                    }
                    continue;
                }
            };
            let batch = match self.collect_batch(first) {
                Next::Batch(batch) => batch,
                Next::Stop => return,
            };
            let alive = if batch.overflow || batch.rescan || self.needs_rescan(&batch) {
                next_rescan = Instant::now() + self.config.rescan_interval;
                self.rescan(batch.overflow, &batch.paths, "events (rescan)")
            } else {
                let files: Vec<PathBuf> = batch
                    .paths
                    .into_iter()
                    .filter(|path| self.is_manifest_key(path))
                    .collect();
                let change = self.state.reread(&files);
                self.send(change, "events")
            };
            if !alive {
                return;
            }
        }
    }

    /// Reads everything and sends it in batches, the last one `synced`;
    /// false if the consumer is gone.
    fn initial_scan(&mut self) -> bool {
        let started = Instant::now();
        let (mut files, mut batches) = (0, 0);
        // Each batch is held back until the next one exists so that the
        // last can be marked `synced`.
        let mut pending: Option<DirChange<T>> = None;
        let out = self.out.clone();
        let result = self
            .state
            .rescan_chunked(true, &BTreeSet::new(), &mut |mut change| {
                files += change.changed.len();
                batches += 1;
                change.synced = false;
                match pending.replace(change) {
                    Some(previous) => out.blocking_send(previous).is_ok(),
                    None => true,
                }
            });
        if let Err(err) = result {
            warn!(error = %err, "initial manifest scan failed; waiting for the directory");
        }
        info!(
            dir = %self.state.root().display(),
            files,
            batches,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "initial manifest scan done"
        );
        // Sent even when empty: the consumer waits for `synced` to reconcile.
        let mut last = pending.unwrap_or_default();
        last.synced = true;
        self.out.blocking_send(last).is_ok()
    }

    /// Gathers events until `quiet` passes without one, or `max_delay` after
    /// the first.
    fn collect_batch(&mut self, first: notify::Result<notify::Event>) -> Next {
        let mut batch = Batch::default();
        self.add_event(first, &mut batch);
        let started = Instant::now();
        let mut last = started;
        loop {
            let deadline = (last + self.config.quiet).min(started + self.config.max_delay);
            let now = Instant::now();
            if now >= deadline {
                return Next::Batch(batch);
            }
            match self.events.recv_timeout(deadline - now) {
                Ok(Msg::Event(event)) => {
                    self.add_event(event, &mut batch);
                    last = Instant::now();
                }
                Ok(Msg::Stop) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return Next::Stop,
                Err(std_mpsc::RecvTimeoutError::Timeout) => return Next::Batch(batch),
            }
        }
    }

    fn add_event(&mut self, event: notify::Result<notify::Event>, batch: &mut Batch) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                warn!(error = %err, "manifest watch error; rescanning");
                batch.overflow = true;
                return;
            }
        };
        if event.need_rescan() {
            debug!("inotify queue overflow; rescanning");
            batch.overflow = true;
        }
        match event.kind {
            // Our own reads produce open/close-nowrite events: never react to
            // those (it would loop). A close after writing is a real change.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            // chmod/touch/xattr: the content is the same.
            EventKind::Modify(ModifyKind::Metadata(_)) => return,
            EventKind::Create(CreateKind::Folder) | EventKind::Remove(RemoveKind::Folder) => {
                batch.rescan = true;
            }
            _ => {}
        }
        let root = self.state.root().to_path_buf();
        for path in event.paths {
            // notify reports paths under the path we gave it, so they already
            // are keys; anything else is not ours.
            if !path.starts_with(&root) {
                continue;
            }
            if path == root {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) {
                    warn!(dir = %root.display(), "manifest directory was removed or moved; keeping the last known objects");
                    self.root_watched = false;
                }
                batch.rescan = true;
                continue;
            }
            batch.paths.insert(path);
        }
    }

    /// Whether some named path is (or was) a directory: then files may have
    /// appeared or vanished without events naming them. This also catches the
    /// atomic `..data` symlink swap of a mounted ConfigMap, whose names are
    /// hidden but whose target is a directory.
    fn needs_rescan(&self, batch: &Batch) -> bool {
        batch
            .paths
            .iter()
            .any(|path| path.is_dir() || self.state.has_known_below(path))
    }

    /// A path we read: a manifest extension and no hidden component below the root.
    fn is_manifest_key(&self, path: &Path) -> bool {
        let Ok(relative) = path.strip_prefix(self.state.root()) else {
            return false;
        };
        is_manifest_name(path)
            && !relative
                .components()
                .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b"."))
    }

    /// Rescans and sends the differences; false if the consumer is gone.
    fn rescan(&mut self, force_all: bool, force: &BTreeSet<PathBuf>, cause: &'static str) -> bool {
        if !self.root_watched && self.state.root().is_dir() {
            match self
                .watcher
                .watch(self.state.root(), RecursiveMode::Recursive)
            {
                Ok(()) => {
                    info!(dir = %self.state.root().display(), "manifest directory is back; watching it again");
                    self.root_watched = true;
                }
                Err(err) => warn!(error = %err, "cannot watch manifest directory again"),
            }
        }
        let out = self.out.clone();
        let mut alive = true;
        let result = self.state.rescan_chunked(force_all, force, &mut |change| {
            alive = send(&out, change, cause);
            alive
        });
        if let Err(err) = result {
            warn!(error = %err, "cannot scan manifest directory; keeping the last known objects");
        }
        alive
    }

    /// Sends a non-empty batch; false if the consumer is gone.
    fn send(&self, change: DirChange<T>, cause: &'static str) -> bool {
        send(&self.out, change, cause)
    }
}

/// Sends a non-empty batch; false if the consumer is gone.
fn send<T>(out: &mpsc::Sender<DirChange<T>>, change: DirChange<T>, cause: &'static str) -> bool {
    if change.is_empty() {
        return true;
    }
    debug!(
        cause,
        changed = change.changed.len(),
        removed = change.removed.len(),
        "manifest changes"
    );
    out.blocking_send(change).is_ok()
}

#[cfg(test)]
mod tests;
