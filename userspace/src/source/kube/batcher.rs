//! Turning watch events into [`DirChange`] batches: the pure part of the API
//! source, kept apart from the network so that its rules can be tested
//! event by event.
//!
//! Every object is a "file" of its own, at the path [`object_path`] gives,
//! so the consumers (the agent's model, the ingress's object store) apply
//! API objects exactly as they apply manifest files: a changed path
//! replaces what it held, a removed path takes its object away.
//!
//! Rules:
//! - Each watch's (re)list, between `Init` and `InitDone`, is applied as it
//!   arrives (newer state is never held back); at `InitDone` the objects the
//!   list no longer had are removed. That is how a relist after 410 Gone
//!   or an outage converges without dropping anything that still exists.
//! - Several events for one path in a batch: the last one wins.
//! - `synced` is false while a watch has not completed its first list:
//!   at start, and again while a watch added later (one Secret's) lists,
//!   so that a consumer can wait for what it just asked for.

use std::collections::{BTreeMap, BTreeSet};
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

use crate::source::{DirChange, Kind, ParsedFile};

use super::WatchSpec;

/// Where an object lives in the batches: `api/<Kind>/<namespace>/<name>`,
/// or `api/<Kind>/<name>` for cluster-scoped kinds.
pub fn object_path(kind: Kind, namespace: Option<&str>, name: &str) -> PathBuf {
    match namespace {
        Some(ns) => PathBuf::from(format!("api/{kind}/{ns}/{name}")),
        None => PathBuf::from(format!("api/{kind}/{name}")),
    }
}

/// One watch event, with the object already mapped.
#[derive(Debug)]
pub enum WatchEvent<T> {
    /// The watch was started (after the others).
    Started,
    /// A (re)list starts.
    Init,
    /// An object exists (from a list or a watch).
    Apply(PathBuf, T),
    /// An object was deleted.
    Delete(PathBuf),
    /// The list is complete.
    InitDone,
    /// The watch was stopped: what it brought in goes away.
    Stopped,
}

#[derive(Debug, Default)]
struct WatchState {
    known: BTreeSet<PathBuf>,
    /// Paths seen since `Init`, while a list is in progress.
    listing: Option<BTreeSet<PathBuf>>,
    listed_once: bool,
}

/// Accumulates events into the next batch.
#[derive(Debug)]
pub struct Batcher<T> {
    watches: BTreeMap<WatchSpec, WatchState>,
    pending: BTreeMap<PathBuf, Option<T>>,
    synced: bool,
    /// `synced` turned true and no batch has said so yet.
    announce_sync: bool,
}

impl<T> Default for Batcher<T> {
    fn default() -> Self {
        Batcher {
            watches: BTreeMap::new(),
            pending: BTreeMap::new(),
            synced: false,
            announce_sync: false,
        }
    }
}

impl<T> Batcher<T> {
    /// Registers a watch before its events arrive (so that `synced` waits
    /// for its first list).
    pub fn add_watch(&mut self, spec: WatchSpec) {
        if let std::collections::btree_map::Entry::Vacant(e) = self.watches.entry(spec) {
            e.insert(WatchState::default());
            self.synced = false;
        }
    }

    /// Applies one event of `spec`'s watch.
    pub fn event(&mut self, spec: &WatchSpec, event: WatchEvent<T>) {
        if let WatchEvent::Started = event {
            self.add_watch(spec.clone());
            return;
        }
        if let WatchEvent::Stopped = event {
            if let Some(state) = self.watches.remove(spec) {
                for path in state.known {
                    self.remove(path);
                }
            }
            self.check_synced();
            return;
        }
        let Some(state) = self.watches.get_mut(spec) else {
            // Events of a watch stopped meanwhile.
            return;
        };
        match event {
            WatchEvent::Init => state.listing = Some(BTreeSet::new()),
            WatchEvent::Apply(path, object) => {
                if let Some(listing) = &mut state.listing {
                    listing.insert(path.clone());
                }
                state.known.insert(path.clone());
                self.pending.insert(path, Some(object));
            }
            WatchEvent::Delete(path) => {
                state.known.remove(&path);
                if let Some(listing) = &mut state.listing {
                    listing.remove(&path);
                }
                self.remove(path);
            }
            WatchEvent::InitDone => {
                let listed = state.listing.take().unwrap_or_default();
                let gone: Vec<PathBuf> = state.known.difference(&listed).cloned().collect();
                state.known = listed;
                state.listed_once = true;
                for path in gone {
                    self.remove(path);
                }
                self.check_synced();
            }
            WatchEvent::Started | WatchEvent::Stopped => {}
        }
    }

    fn remove(&mut self, path: PathBuf) {
        // Another watch may hold the same path (never in practice: specs
        // do not overlap); keep it then.
        if self.watches.values().any(|w| w.known.contains(&path)) {
            return;
        }
        self.pending.insert(path, None);
    }

    fn check_synced(&mut self) {
        if !self.synced && self.watches.values().all(|w| w.listed_once) {
            self.synced = true;
            self.announce_sync = true;
        }
    }

    /// Whether [`Batcher::take`] has something to send.
    pub fn has_batch(&self) -> bool {
        !self.pending.is_empty() || self.announce_sync
    }

    /// Objects waiting in the batch.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// The batch so far; starts the next one.
    pub fn take(&mut self) -> DirChange<T> {
        let mut change = DirChange {
            changed: Vec::new(),
            removed: Vec::new(),
            synced: self.synced,
        };
        for (path, object) in std::mem::take(&mut self.pending) {
            match object {
                Some(object) => change.changed.push((
                    path,
                    ParsedFile {
                        objects: vec![object],
                        errors: Vec::new(),
                    },
                )),
                None => change.removed.push(path),
            }
        }
        self.announce_sync = false;
        change
    }

    /// The paths `spec`'s watch currently holds (for tests).
    #[cfg(test)]
    fn known(&self, spec: &WatchSpec) -> Vec<&Path> {
        self.watches
            .get(spec)
            .map(|w| w.known.iter().map(PathBuf::as_path).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: Kind) -> WatchSpec {
        WatchSpec::all(kind)
    }

    fn path(name: &str) -> PathBuf {
        object_path(Kind::Service, Some("default"), name)
    }

    fn names(change: &DirChange<&'static str>) -> (Vec<&'static str>, Vec<String>) {
        (
            change.changed.iter().map(|(_, f)| f.objects[0]).collect(),
            change
                .removed
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        )
    }

    #[test]
    fn paths_name_kind_namespace_and_name() {
        assert_eq!(path("web"), PathBuf::from("api/Service/default/web"));
        assert_eq!(
            object_path(Kind::Node, None, "node-a"),
            PathBuf::from("api/Node/node-a")
        );
    }

    #[test]
    fn synced_waits_for_every_watch_first_list() {
        let mut b = Batcher::default();
        let (svc, eps) = (spec(Kind::Service), spec(Kind::EndpointSlice));
        b.add_watch(svc.clone());
        b.add_watch(eps.clone());
        b.event(&svc, WatchEvent::Init);
        b.event(&svc, WatchEvent::Apply(path("web"), "web v1"));
        b.event(&svc, WatchEvent::InitDone);
        let first = b.take();
        assert!(!first.synced, "the EndpointSlice list is not in yet");
        assert_eq!(names(&first).0, ["web v1"]);
        b.event(&eps, WatchEvent::Init);
        assert!(!b.has_batch());
        b.event(&eps, WatchEvent::InitDone);
        assert!(b.has_batch(), "an empty list still completes the sync");
        let second = b.take();
        assert!(second.synced && second.changed.is_empty());
        assert!(!b.has_batch(), "said once");
    }

    #[test]
    fn the_last_event_for_a_path_wins_within_a_batch() {
        let mut b = Batcher::default();
        let svc = spec(Kind::Service);
        b.add_watch(svc.clone());
        b.event(&svc, WatchEvent::Init);
        b.event(&svc, WatchEvent::InitDone);
        b.take();
        b.event(&svc, WatchEvent::Apply(path("web"), "web v1"));
        b.event(&svc, WatchEvent::Apply(path("web"), "web v2"));
        b.event(&svc, WatchEvent::Apply(path("db"), "db v1"));
        b.event(&svc, WatchEvent::Delete(path("db")));
        let change = b.take();
        assert_eq!(
            names(&change),
            (vec!["web v2"], vec!["api/Service/default/db".to_owned()])
        );
    }

    #[test]
    fn a_relist_removes_what_is_gone_and_keeps_the_rest() {
        let mut b = Batcher::default();
        let svc = spec(Kind::Service);
        b.add_watch(svc.clone());
        b.event(&svc, WatchEvent::Init);
        for name in ["a", "b", "c"] {
            b.event(&svc, WatchEvent::Apply(path(name), name));
        }
        b.event(&svc, WatchEvent::InitDone);
        b.take();
        // 410 Gone, or an outage: the watcher lists again. `b` was
        // deleted meanwhile, `d` created.
        b.event(&svc, WatchEvent::Init);
        b.event(&svc, WatchEvent::Apply(path("a"), "a"));
        b.event(&svc, WatchEvent::Apply(path("c"), "c"));
        let during = b.take();
        assert!(
            during.removed.is_empty(),
            "nothing removed before the list is complete"
        );
        b.event(&svc, WatchEvent::Apply(path("d"), "d"));
        b.event(&svc, WatchEvent::InitDone);
        let after = b.take();
        assert_eq!(
            names(&after),
            (vec!["d"], vec!["api/Service/default/b".to_owned()])
        );
        assert!(after.synced);
        assert_eq!(b.known(&svc).len(), 3);
    }

    #[test]
    fn a_stopped_watch_takes_its_objects_away() {
        let mut b = Batcher::default();
        let (svc, secret) = (
            spec(Kind::Service),
            WatchSpec::named(Kind::Secret, Some("web"), "tls"),
        );
        b.add_watch(svc.clone());
        b.event(&svc, WatchEvent::Init);
        b.event(&svc, WatchEvent::InitDone);
        b.take();
        b.event(&secret, WatchEvent::Started);
        b.event(&secret, WatchEvent::Init);
        let p = object_path(Kind::Secret, Some("web"), "tls");
        b.event(&secret, WatchEvent::Apply(p.clone(), "tls"));
        assert!(
            !b.take().synced,
            "a watch added later unsyncs until it has listed"
        );
        b.event(&secret, WatchEvent::InitDone);
        assert!(b.has_batch(), "the sync is announced");
        assert!(b.take().synced);
        b.event(&secret, WatchEvent::Stopped);
        let change = b.take();
        assert_eq!(change.removed, [p]);
        // Late events of the stopped watch are ignored.
        b.event(
            &secret,
            WatchEvent::Apply(object_path(Kind::Secret, Some("web"), "tls"), "late"),
        );
        assert!(!b.has_batch());
    }
}
