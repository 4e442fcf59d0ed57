//! What we know about a manifest directory's files, and how to diff it against the disk.
//!
//! Kept separate from the inotify plumbing so the diffing rules can be tested
//! deterministically, without waiting for events.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tracing::warn;

use super::error::SourceError;
use super::manifests::{
    load_files, log_failed_dirs, walk, ContentHash, Fingerprint, FoundFile, LoadOutcome,
    LoadedFile, FILES_PER_CHUNK,
};
use super::object::Object;
use super::parse::{ObjectMapper, ParsedFile};

/// A batch of changes to a manifest directory.
///
/// Every path in `changed` has new content (never the same content again);
/// the consumer replaces everything the file defined with its new objects.
/// Paths in `removed` no longer exist (or are no longer manifest files).
#[derive(Debug)]
pub struct DirChange<T = Object> {
    /// Files created or whose content changed, sorted by path.
    pub changed: Vec<(PathBuf, ParsedFile<T>)>,
    /// Files that are gone, sorted by path.
    pub removed: Vec<PathBuf>,
    /// Whether the initial scan is complete once this batch is applied:
    /// false only on the initial scan's batches before its last one. Delete
    /// state that no manifest defines only after a batch with `synced`.
    pub synced: bool,
}

impl<T> Default for DirChange<T> {
    fn default() -> Self {
        DirChange {
            changed: Vec::new(),
            removed: Vec::new(),
            synced: true,
        }
    }
}

impl<T> DirChange<T> {
    /// Whether there is nothing in the batch.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.removed.is_empty()
    }
}

#[derive(Clone, Copy, Debug)]
struct KnownFile {
    hash: ContentHash,
    fingerprint: Option<Fingerprint>,
}

/// The files of one directory tree as last reported to the consumer.
pub(crate) struct DirState<T> {
    root: PathBuf,
    kinds: Vec<String>,
    map: Arc<ObjectMapper<T>>,
    known: BTreeMap<PathBuf, KnownFile>,
}

impl<T> fmt::Debug for DirState<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirState")
            .field("root", &self.root)
            .field("kinds", &self.kinds)
            .field("known", &self.known.len())
            .finish()
    }
}

impl<T: Send> DirState<T> {
    pub(crate) fn new(root: &Path, kinds: &[&str], map: Arc<ObjectMapper<T>>) -> Self {
        DirState {
            root: root.to_path_buf(),
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
            map,
            known: BTreeMap::new(),
        }
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether we know of files strictly below `dir` (so `dir` was a directory
    /// even if it no longer exists).
    pub(crate) fn has_known_below(&self, dir: &Path) -> bool {
        // Path order is component-wise, so descendants of `dir` sort right
        // after it: the first known path after `dir` tells.
        self.known
            .range::<Path, _>((std::ops::Bound::Excluded(dir), std::ops::Bound::Unbounded))
            .next()
            .is_some_and(|(path, _)| path.starts_with(dir))
    }

    /// [`rescan_chunked`](Self::rescan_chunked) as a single batch.
    #[cfg(test)]
    pub(crate) fn rescan(
        &mut self,
        force_all: bool,
        force: &BTreeSet<PathBuf>,
    ) -> Result<DirChange<T>, SourceError> {
        let mut all = DirChange::default();
        self.rescan_chunked(force_all, force, &mut |mut change| {
            all.changed.append(&mut change.changed);
            all.removed.append(&mut change.removed);
            true
        })?;
        Ok(all)
    }

    /// Walks the whole tree and reports what differs from what we know, in
    /// batches of at most [`FILES_PER_CHUNK`] files read (removals come in
    /// the first batch) so that memory holds one batch of parsed files at a
    /// time. `emit` returns false to stop early (the consumer is gone).
    ///
    /// Files whose fingerprint (inode, size, times) is unchanged are not read,
    /// unless `force_all` or they are in `force` (paths named by events: a
    /// write within the same clock tick keeps the mtime). Errors only if the
    /// root cannot be listed, in which case nothing is changed: a vanished
    /// mount must not look like "every object was deleted".
    pub(crate) fn rescan_chunked(
        &mut self,
        force_all: bool,
        force: &BTreeSet<PathBuf>,
        emit: &mut dyn FnMut(DirChange<T>) -> bool,
    ) -> Result<(), SourceError> {
        let walk = walk(&self.root)?;
        log_failed_dirs(&walk);
        let found: HashSet<&Path> = walk.files.iter().map(|f| f.path.as_path()).collect();
        let mut change = DirChange::default();
        for path in self.known.keys() {
            let below_failed = walk
                .failed_dirs
                .iter()
                .any(|(dir, _)| path.starts_with(dir));
            if !found.contains(path.as_path()) && !below_failed {
                change.removed.push(path.clone());
            }
        }
        for path in &change.removed {
            self.known.remove(path);
        }
        let to_load: Vec<FoundFile> = walk
            .files
            .iter()
            .filter(|file| {
                force_all
                    || force.contains(&file.path)
                    || self
                        .known
                        .get(&file.path)
                        .is_none_or(|known| known.fingerprint != file.fingerprint)
            })
            .cloned()
            .collect();
        for chunk in to_load.chunks(FILES_PER_CHUNK) {
            self.load(chunk, &mut change);
            if !change.is_empty() && !emit(std::mem::take(&mut change)) {
                return Ok(());
            }
        }
        if !change.is_empty() {
            emit(change);
        }
        Ok(())
    }

    /// Re-reads exactly `paths` (files named by events).
    pub(crate) fn reread(&mut self, paths: &[PathBuf]) -> DirChange<T> {
        let files: Vec<FoundFile> = paths
            .iter()
            .map(|path| FoundFile {
                path: path.clone(),
                fingerprint: None,
            })
            .collect();
        let mut change = DirChange::default();
        self.load(&files, &mut change);
        change
    }

    fn load(&mut self, files: &[FoundFile], change: &mut DirChange<T>) {
        if files.is_empty() {
            return;
        }
        let kinds: Vec<&str> = self.kinds.iter().map(String::as_str).collect();
        let known = &self.known;
        let loaded = load_files(files, &kinds, &*self.map, &|path| {
            known.get(path).map(|k| k.hash)
        });
        for file in loaded {
            self.record(file, change);
        }
        change.removed.sort();
    }

    fn record(&mut self, file: LoadedFile<T>, change: &mut DirChange<T>) {
        let LoadedFile {
            path,
            fingerprint,
            outcome,
        } = file;
        match outcome {
            LoadOutcome::Parsed { hash, parsed } => {
                self.known
                    .insert(path.clone(), KnownFile { hash, fingerprint });
                change.changed.push((path, parsed));
            }
            LoadOutcome::Unchanged { hash } => {
                self.known.insert(path, KnownFile { hash, fingerprint });
            }
            LoadOutcome::Gone => {
                if self.known.remove(&path).is_some() {
                    change.removed.push(path);
                }
            }
            LoadOutcome::Failed(err) => {
                // Keep what we had: a transient permission or I/O problem must
                // not delete Services. Not recording a fingerprint makes the
                // next periodic rescan try again.
                warn!(path = %path.display(), error = %err, "cannot read manifest; keeping its last known content");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    const PROXY: &[&str] = &["Service"];

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n")
    }

    fn state(root: &Path) -> DirState<Object> {
        DirState::new(root, PROXY, Arc::new(|object| object))
    }

    fn rel(change: &DirChange, root: &Path) -> (Vec<String>, Vec<String>) {
        let r = |p: &PathBuf| p.strip_prefix(root).unwrap_or(p).display().to_string();
        (
            change.changed.iter().map(|(p, _)| r(p)).collect(),
            change.removed.iter().map(r).collect(),
        )
    }

    #[test]
    fn rescan_reports_only_real_differences() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir(root.join("sub")).expect("mkdir");
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        fs::write(root.join("sub/b.yaml"), service("b")).expect("write");
        let mut state = state(root);
        let none = BTreeSet::new();

        let initial = state.rescan(true, &none).expect("scan");
        assert_eq!(
            rel(&initial, root),
            (vec!["a.yaml".into(), "sub/b.yaml".into()], vec![])
        );

        // Nothing changed: nothing reported, even when every file is re-read.
        assert!(state.rescan(true, &none).expect("scan").is_empty());
        assert!(state.rescan(false, &none).expect("scan").is_empty());

        // Rewritten with identical content (new mtime): read, hashed, not reported.
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        assert!(state.rescan(false, &none).expect("scan").is_empty());

        fs::write(root.join("a.yaml"), service("a2")).expect("write");
        fs::remove_dir_all(root.join("sub")).expect("rm");
        fs::write(root.join("c.yml"), service("c")).expect("write");
        let change = state.rescan(false, &none).expect("scan");
        assert_eq!(
            rel(&change, root),
            (
                vec!["a.yaml".into(), "c.yml".into()],
                vec!["sub/b.yaml".into()]
            )
        );
        assert_eq!(change.changed[0].1.objects[0].name(), "a2");
        assert!(!state.has_known_below(&root.join("sub")));
        assert!(state.has_known_below(root));
    }

    #[test]
    fn reread_handles_vanished_and_unknown_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        let mut state = state(root);
        state.rescan(true, &BTreeSet::new()).expect("scan");

        // Deleted while (or before) we read it: reported once as removed.
        fs::remove_file(root.join("a.yaml")).expect("rm");
        let change = state.reread(&[root.join("a.yaml"), root.join("never.yaml")]);
        assert_eq!(rel(&change, root), (vec![], vec!["a.yaml".into()]));
        assert!(state.reread(&[root.join("a.yaml")]).is_empty());

        // Re-created with the same content as before: new again, so reported.
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        let change = state.reread(&[root.join("a.yaml")]);
        assert_eq!(rel(&change, root), (vec!["a.yaml".into()], vec![]));
        assert!(state.reread(&[root.join("a.yaml")]).is_empty());
    }

    #[test]
    fn vanished_root_keeps_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("m");
        fs::create_dir(&root).expect("mkdir");
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        let mut state = state(&root);
        state.rescan(true, &BTreeSet::new()).expect("scan");
        fs::remove_dir_all(&root).expect("rm");
        assert!(state.rescan(false, &BTreeSet::new()).is_err());
        // Back with the same content: no change; with new content: changed.
        fs::create_dir(&root).expect("mkdir");
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        assert!(state
            .rescan(false, &BTreeSet::new())
            .expect("scan")
            .is_empty());
        fs::write(root.join("a.yaml"), service("b")).expect("write");
        assert_eq!(
            state
                .rescan(false, &BTreeSet::new())
                .expect("scan")
                .changed
                .len(),
            1
        );
    }

    #[test]
    fn big_scans_come_in_bounded_batches() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        let total = FILES_PER_CHUNK + 10;
        for i in 0..total {
            fs::write(
                root.join(format!("s{i:04}.yaml")),
                service(&format!("s{i}")),
            )
            .expect("write");
        }
        let mut state = state(root);
        state.rescan(true, &BTreeSet::new()).expect("scan");
        // Remove one and rewrite everything: removal first, then two batches.
        fs::remove_file(root.join("s0000.yaml")).expect("rm");
        for i in 1..total {
            fs::write(
                root.join(format!("s{i:04}.yaml")),
                service(&format!("x{i}")),
            )
            .expect("write");
        }
        let mut batches = Vec::new();
        state
            .rescan_chunked(false, &BTreeSet::new(), &mut |change| {
                batches.push((change.changed.len(), change.removed.len()));
                true
            })
            .expect("scan");
        assert_eq!(
            batches,
            [(FILES_PER_CHUNK, 1), (total - 1 - FILES_PER_CHUNK, 0)]
        );

        // A consumer that goes away stops the scan after the first batch.
        for i in 1..total {
            fs::write(
                root.join(format!("s{i:04}.yaml")),
                service(&format!("y{i}")),
            )
            .expect("write");
        }
        let mut calls = 0;
        state
            .rescan_chunked(false, &BTreeSet::new(), &mut |_| {
                calls += 1;
                false
            })
            .expect("scan");
        assert_eq!(calls, 1);
    }
}
