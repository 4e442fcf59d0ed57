//! The incremental store: files of objects in, changed frontends out.
//!
//! Everything is keyed so that an update costs O(objects it touches): a
//! file's objects are replaced as a unit; a slice change recomputes only its
//! Service's backends; a frontend key's winner is re-decided only when one of
//! its claimants changed.
//!
//! Memory matters (10k Services × 10 endpoints must fit in a few MB): only
//! compact [`ServiceInfo`]/[`SliceInfo`] are kept, never the k8s objects;
//! Services, slices and files are interned once and referred to by `u32`
//! slot numbers; and [`Frontend`]s are not stored but assembled on output
//! from the winning Service's ports and per-port backends.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use tracing::debug;

use super::error::ModelError;
use super::frontends::{endpoints, frontend_keys, match_port, select_backends, Endpoints};
use super::object::ModelObject;
use super::service::ServiceInfo;
use super::slice::SliceInfo;
use super::types::{
    BackendAddr, Frontend, FrontendKey, FrontendKind, HealthCheck, Scope, ServiceId,
};
use crate::source::{DirChange, Kind, ObjectMapper, ObjectRef, ParsedFile, SourceError};

/// What an update changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// For every frontend whose desired state changed: its new state, `None`
    /// meaning delete. (May also hold keys whose value did not change.)
    pub frontends: BTreeMap<FrontendKey, Option<Frontend>>,
    /// Problems found in the applied objects.
    pub errors: Vec<ModelError>,
    /// [`ServiceStore::health_checks`] is not what it was before the
    /// update: the health-check server should fetch it again. (Cheap to
    /// test; the list itself is only built when a Service with a health
    /// check was touched.)
    pub health_checks_changed: bool,
}

impl Changes {
    /// Whether nothing changed and nothing was wrong.
    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty() && self.errors.is_empty() && !self.health_checks_changed
    }

    /// Adds the changes of a later update (its values win).
    pub fn merge(&mut self, later: Changes) {
        self.frontends.extend(later.frontends);
        self.errors.extend(later.errors);
        self.health_checks_changed |= later.health_checks_changed;
    }
}

/// Slot numbers. `u32` keeps the many references between slots small.
type FileId = u32;
type Sid = u32;
type SliceIdx = u32;

/// An EndpointSlice's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SliceKey {
    namespace: String,
    name: String,
}

/// One file's definition of an object; the highest `seq` (applied last) wins.
#[derive(Debug)]
struct Def<T> {
    file: FileId,
    seq: u64,
    value: T,
}

fn winner<T>(defs: &[Def<T>]) -> Option<&Def<T>> {
    defs.iter().max_by_key(|d| d.seq)
}

/// A slice definition; `info.service` is moved out into `target`.
#[derive(Debug, PartialEq, Eq)]
struct StoredSlice {
    target: Option<Sid>,
    info: SliceInfo,
}

#[derive(Debug)]
struct ServiceSlot {
    /// Shared with the `service_ids` key.
    id: Arc<ServiceId>,
    /// Definitions (usually one); `value.id` is emptied, `id` above has it.
    defs: Vec<Def<ServiceInfo>>,
    /// Slices whose winning definition points at this Service.
    slices: Vec<SliceIdx>,
    /// What the Service currently contributes, as of the last recompute.
    built: Built,
}

/// A Service's frontends as last computed: enough to assemble each
/// [`Frontend`] without looking at (possibly already replaced) definitions.
#[derive(Debug, Default, PartialEq, Eq)]
struct Built {
    /// The keys claimed (see `frontend_keys`).
    keys: Vec<BuiltKey>,
    /// Per Service port: what a frontend on that port looks like.
    ports: Vec<BuiltPort>,
    affinity_timeout: u32,
    internal_local: bool,
    external_local: bool,
    /// `healthCheckNodePort` and the ready local endpoints it reports.
    health: Option<(u16, u32)>,
}

/// One claimed key, with what it is and which port feeds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BuiltKey {
    key: FrontendKey,
    kind: FrontendKind,
    /// Index into `Built::ports`.
    port: u32,
}

/// One Service port's backends; only the lists some frontend uses are
/// computed (most Services have only cluster-wide ones).
#[derive(Debug, PartialEq, Eq)]
struct BuiltPort {
    name: String,
    /// Every endpoint in the cluster ([`Endpoints::Cluster`]).
    cluster: Option<Box<[BackendAddr]>>,
    /// This node's endpoints ([`Endpoints::Local`]).
    local: Option<Box<[BackendAddr]>>,
}

#[derive(Debug)]
struct SliceSlot {
    key: Arc<SliceKey>,
    defs: Vec<Def<StoredSlice>>,
}

#[derive(Debug)]
struct FileSlot {
    path: Arc<Path>,
    services: Vec<Sid>,
    slices: Vec<SliceIdx>,
}

/// The Services claiming one frontend key, by precedence.
#[derive(Debug)]
struct Claim {
    winner: Sid,
    /// Losers, in precedence order (empty, without allocation, normally).
    others: Vec<Sid>,
}

/// A slab: slots addressed by `u32`, freed slots reused.
#[derive(Debug)]
struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<u32>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T> Slab<T> {
    fn insert(&mut self, value: T) -> u32 {
        if let Some(i) = self.free.pop() {
            self.slots[i as usize] = Some(value);
            return i;
        }
        self.slots.push(Some(value));
        // More than 4 billion objects cannot exist in a manifest directory.
        u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
    }

    fn remove(&mut self, i: u32) -> Option<T> {
        let value = self.slots.get_mut(i as usize)?.take();
        if value.is_some() {
            self.free.push(i);
        }
        value
    }

    fn get(&self, i: u32) -> Option<&T> {
        self.slots.get(i as usize)?.as_ref()
    }

    fn get_mut(&mut self, i: u32) -> Option<&mut T> {
        self.slots.get_mut(i as usize)?.as_mut()
    }
}

/// Desired frontends, maintained incrementally from manifest files.
///
/// Feed it whole files ([`apply_file`](Self::apply_file),
/// [`remove_file`](Self::remove_file), or a watcher batch with
/// [`apply_batch`](Self::apply_batch)); each call returns the frontends
/// whose desired state changed. Objects other than Services and
/// EndpointSlices are ignored.
///
/// A file's errors decide what happens to objects it no longer yields: if a
/// document error names an object (or the model rejects its new version), the
/// object's previous definition from that file is kept; if an error names no
/// object (e.g. a YAML syntax error, an unreadable file), every previous
/// object of that file that is missing from the new parse is kept. A typo
/// never takes a Service down; deleting it from a valid file does.
#[derive(Debug, Default)]
pub struct ServiceStore {
    node_name: Option<String>,
    seq: u64,
    file_ids: HashMap<Arc<Path>, FileId>,
    files: Slab<FileSlot>,
    service_ids: HashMap<Arc<ServiceId>, Sid>,
    services: Slab<ServiceSlot>,
    slice_ids: HashMap<Arc<SliceKey>, SliceIdx>,
    slices: Slab<SliceSlot>,
    claims: HashMap<FrontendKey, Claim>,
    /// Services whose last build has a health check.
    health_sids: BTreeSet<Sid>,
    /// [`ServiceStore::health_checks`], rebuilt when one of
    /// `health_sids` is touched.
    health: Vec<HealthCheck>,
}

/// The objects of one file, converted.
#[derive(Default)]
struct Converted {
    services: Vec<ServiceInfo>,
    slices: Vec<(SliceKey, SliceInfo)>,
    /// Objects whose new definition is unusable: keep their old one.
    failed: Vec<ObjectRef>,
    /// An error named no object: keep every old object not redefined.
    keep_all_missing: bool,
}

impl ServiceStore {
    /// An empty store that does not know this node's name: Services with
    /// `internalTrafficPolicy: Local` get no backends, nor do the external
    /// frontends of Services with `externalTrafficPolicy: Local`, and no
    /// health check counts an endpoint (like kube-proxy, no endpoint can be
    /// local to an unknown node).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store for the node `node_name` (`--node-name`): endpoints
    /// whose EndpointSlice `nodeName` equals it are local, which decides
    /// the backends of `Local` traffic policies, `BackendAddr::local` and
    /// the health-check counts.
    pub fn with_node_name(node_name: impl Into<String>) -> Self {
        ServiceStore {
            node_name: Some(node_name.into()),
            ..Self::default()
        }
    }

    /// Replaces everything `path` defined with the objects of `parsed`.
    pub fn apply_file(&mut self, path: &Path, parsed: &ParsedFile) -> Changes {
        let node = self.node_name.as_deref();
        let objects = parsed
            .objects
            .iter()
            .map(|o| ModelObject::from_object(o, node));
        let mut errors = Vec::new();
        let converted = Self::convert(path, objects, &parsed.errors, &mut errors);
        self.replace(path, converted, errors)
    }

    /// [`apply_file`](Self::apply_file) for a file parsed with
    /// [`mapper`](Self::mapper): the memory-lean path.
    pub fn apply_model_file(&mut self, path: &Path, parsed: ParsedFile<ModelObject>) -> Changes {
        let mut errors = Vec::new();
        let converted = Self::convert(path, parsed.objects, &parsed.errors, &mut errors);
        self.replace(path, converted, errors)
    }

    /// The mapper to parse files for [`apply_model_file`](Self::apply_model_file)
    /// and [`apply_model_batch`](Self::apply_model_batch) (it knows this
    /// store's node name).
    pub fn mapper(&self) -> Arc<ObjectMapper<ModelObject>> {
        ModelObject::mapper(self.node_name.clone())
    }

    /// Removes everything `path` defined.
    pub fn remove_file(&mut self, path: &Path) -> Changes {
        if !self.file_ids.contains_key(path) {
            return Changes::default();
        }
        self.replace(path, Converted::default(), Vec::new())
    }

    /// Applies a watcher batch: removals first (so an object moved between
    /// files is not reported as a duplicate), then changed files in order.
    pub fn apply_batch(&mut self, change: &DirChange) -> Changes {
        let mut changes = Changes::default();
        for path in &change.removed {
            changes.merge(self.remove_file(path));
        }
        for (path, parsed) in &change.changed {
            changes.merge(self.apply_file(path, parsed));
        }
        changes
    }

    /// [`apply_batch`](Self::apply_batch) for a watcher started with
    /// [`mapper`](Self::mapper).
    pub fn apply_model_batch(&mut self, change: DirChange<ModelObject>) -> Changes {
        let mut changes = Changes::default();
        for path in &change.removed {
            changes.merge(self.remove_file(path));
        }
        for (path, parsed) in change.changed {
            changes.merge(self.apply_model_file(&path, parsed));
        }
        changes
    }

    /// Every desired frontend (the winners), in no particular order: the
    /// full state for start-up reconciliation. Assembled on the fly (the
    /// store does not keep `Frontend`s, to save memory).
    pub fn frontends(&self) -> impl Iterator<Item = Frontend> + '_ {
        self.claims
            .iter()
            .filter_map(|(key, claim)| self.materialize(claim.winner, key))
    }

    /// The `healthCheckNodePort`s to serve on this node, sorted by Service:
    /// one per `type: LoadBalancer` Service with `externalTrafficPolicy:
    /// Local` and a health-check port, with its ready, non-terminating
    /// endpoints on this node (kube-proxy's count; 0 when only terminating
    /// ones are left, so load balancers steer away). Should two Services
    /// claim one port (impossible in a real cluster, where the port is
    /// allocated), the one that wins frontend conflicts keeps it. Refetch
    /// when [`Changes::health_checks_changed`] says so.
    pub fn health_checks(&self) -> Vec<HealthCheck> {
        self.health.clone()
    }

    /// The desired frontend for `key`, if any.
    pub fn frontend(&self, key: &FrontendKey) -> Option<Frontend> {
        self.materialize(self.claims.get(key)?.winner, key)
    }

    /// Number of Services defined (valid or not; not the ones only
    /// EndpointSlices name). A walk over the ids: tens of microseconds at
    /// 10,000 Services.
    pub fn service_count(&self) -> usize {
        self.service_ids
            .values()
            .filter(|&&sid| self.services.get(sid).is_some_and(|s| !s.defs.is_empty()))
            .count()
    }

    /// Number of desired frontends.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    /// Whether there are no desired frontends.
    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Sorts a file's converted objects into what `replace` needs,
    /// reporting their problems.
    fn convert(
        path: &Path,
        objects: impl IntoIterator<Item = ModelObject>,
        source_errors: &[SourceError],
        errors: &mut Vec<ModelError>,
    ) -> Converted {
        let mut out = Converted {
            keep_all_missing: source_errors.iter().any(|e| e.object().is_none()),
            failed: source_errors
                .iter()
                .filter_map(|e| e.object().cloned())
                .collect(),
            ..Converted::default()
        };
        for object in objects {
            match object {
                ModelObject::Service { object, result } => match result {
                    Ok(converted) => {
                        errors.extend(converted.warnings.into_iter().map(|reason| {
                            ModelError::Partial {
                                file: path.to_owned(),
                                object: object.clone(),
                                reason,
                            }
                        }));
                        out.services.push(converted.value);
                    }
                    Err(reason) => {
                        errors.push(ModelError::Invalid {
                            file: path.to_owned(),
                            object: object.clone(),
                            reason,
                        });
                        out.failed.push(object);
                    }
                },
                ModelObject::EndpointSlice { object, converted } => {
                    errors.extend(converted.warnings.into_iter().map(|reason| {
                        ModelError::Partial {
                            file: path.to_owned(),
                            object: object.clone(),
                            reason,
                        }
                    }));
                    let key = SliceKey {
                        namespace: object.namespace.unwrap_or_else(|| "default".to_owned()),
                        name: object.name,
                    };
                    out.slices.push((key, converted.value));
                }
                ModelObject::Other => {}
            }
        }
        out
    }

    /// Makes `path` define exactly `new` (plus kept old objects) and returns
    /// the resulting frontend changes.
    fn replace(&mut self, path: &Path, new: Converted, mut errors: Vec<ModelError>) -> Changes {
        let file = self.file_id(path);
        let file_path = self.path_of(file);
        self.seq += 1;
        let seq = self.seq;
        let (old_services, old_slices) = match self.files.get_mut(file) {
            Some(slot) => (
                std::mem::take(&mut slot.services),
                std::mem::take(&mut slot.slices),
            ),
            None => (Vec::new(), Vec::new()),
        };
        let mut touched: Vec<Sid> = Vec::new();
        let mut file_services: Vec<Sid> = Vec::new();
        let mut file_slices: Vec<SliceIdx> = Vec::new();
        let object_error =
            |kind, id: &ServiceId| ObjectRef::namespaced(kind, &id.namespace, &id.name);
        let keep = |object: &ObjectRef| new.keep_all_missing || new.failed.contains(object);

        // Intern the new objects; a later definition in the same file wins.
        let mut new_services: Vec<(Sid, ServiceInfo)> = Vec::with_capacity(new.services.len());
        let mut seen_services: HashMap<Sid, usize> = HashMap::with_capacity(new.services.len());
        for mut info in new.services {
            let sid = self.intern_service(std::mem::take(&mut info.id));
            match seen_services.get(&sid) {
                Some(&i) => {
                    errors.push(self.duplicate(path, Kind::Service, sid, &file_path));
                    new_services[i].1 = info;
                }
                None => {
                    seen_services.insert(sid, new_services.len());
                    new_services.push((sid, info));
                }
            }
        }
        let mut new_slices: Vec<(SliceIdx, StoredSlice)> = Vec::with_capacity(new.slices.len());
        let mut seen_slices: HashMap<SliceIdx, usize> = HashMap::with_capacity(new.slices.len());
        for (key, mut info) in new.slices {
            let idx = self.intern_slice(key);
            let target = info.service.take().map(|id| self.intern_service(id));
            let stored = StoredSlice { target, info };
            match seen_slices.get(&idx) {
                Some(&i) => {
                    errors.push(self.slice_duplicate(path, idx, &file_path));
                    new_slices[i].1 = stored;
                }
                None => {
                    seen_slices.insert(idx, new_slices.len());
                    new_slices.push((idx, stored));
                }
            }
        }

        // Old objects the file no longer yields: removed, unless their new
        // definition failed (then kept, as the API server keeps an object
        // whose update it rejects).
        for sid in old_services {
            if seen_services.contains_key(&sid) {
                continue;
            }
            let Some(slot) = self.services.get_mut(sid) else {
                continue;
            };
            let object = object_error(Kind::Service, &slot.id);
            if keep(&object) {
                errors.push(ModelError::KeptPrevious {
                    file: path.to_owned(),
                    object,
                });
                file_services.push(sid);
                continue;
            }
            slot.defs.retain(|d| d.file != file);
            touched.push(sid);
        }
        for idx in old_slices {
            if seen_slices.contains_key(&idx) {
                continue;
            }
            let Some(slot) = self.slices.get(idx) else {
                continue;
            };
            let object =
                ObjectRef::namespaced(Kind::EndpointSlice, &slot.key.namespace, &slot.key.name);
            if keep(&object) {
                errors.push(ModelError::KeptPrevious {
                    file: path.to_owned(),
                    object,
                });
                file_slices.push(idx);
                continue;
            }
            self.update_slice(idx, file, None, &mut touched);
        }

        // New definitions replace this file's old ones and win over other
        // files' (applied last).
        for (sid, info) in new_services {
            file_services.push(sid);
            // Unchanged and defined nowhere else: nothing to do (re-applying
            // a big file after a one-line edit must not recompute it all).
            let unchanged = self.services.get(sid).is_some_and(
                |slot| matches!(slot.defs.as_slice(), [d] if d.file == file && d.value == info),
            );
            if unchanged {
                // Its conflicts still concern whoever just edited the file.
                errors.extend(self.conflicts_lost_by(sid));
                continue;
            }
            if let Some(error) = self.duplicate_elsewhere(path, Kind::Service, sid, file) {
                errors.push(error);
            }
            if let Some(slot) = self.services.get_mut(sid) {
                slot.defs.retain(|d| d.file != file);
                // Exact: a Vec's first push reserves room for 4.
                slot.defs.reserve_exact(1);
                slot.defs.push(Def {
                    file,
                    seq,
                    value: info,
                });
            }
            touched.push(sid);
        }
        for (idx, stored) in new_slices {
            file_slices.push(idx);
            let unchanged = self.slices.get(idx).is_some_and(
                |slot| matches!(slot.defs.as_slice(), [d] if d.file == file && d.value == stored),
            );
            if unchanged {
                continue;
            }
            if let Some(error) = self.duplicate_elsewhere(path, Kind::EndpointSlice, idx, file) {
                errors.push(error);
            }
            self.update_slice(idx, file, Some((seq, stored)), &mut touched);
        }

        if file_services.is_empty() && file_slices.is_empty() {
            self.files.remove(file);
            self.file_ids.remove(path);
        } else if let Some(slot) = self.files.get_mut(file) {
            file_services.shrink_to_fit();
            file_slices.shrink_to_fit();
            slot.services = file_services;
            slot.slices = file_slices;
        }

        touched.sort_unstable();
        touched.dedup();
        let mut health_touched = false;
        let frontends = self.recompute(&touched, &mut errors, &mut health_touched);
        for sid in touched {
            self.free_service_if_unused(sid);
        }
        let health_checks_changed = health_touched && self.refresh_health();
        debug!(
            path = %path.display(),
            frontends_changed = frontends.len(),
            errors = errors.len(),
            health_checks_changed,
            "applied manifest file"
        );
        Changes {
            frontends,
            errors,
            health_checks_changed,
        }
    }

    /// Replaces (or, with `None`, removes) `file`'s definition of a slice,
    /// keeping the Services' slice lists right and noting the Services affected.
    fn update_slice(
        &mut self,
        idx: SliceIdx,
        file: FileId,
        def: Option<(u64, StoredSlice)>,
        touched: &mut Vec<Sid>,
    ) {
        let Some(slot) = self.slices.get_mut(idx) else {
            return;
        };
        let before = winner(&slot.defs).and_then(|d| d.value.target);
        slot.defs.retain(|d| d.file != file);
        if let Some((seq, value)) = def {
            slot.defs.reserve_exact(1);
            slot.defs.push(Def { file, seq, value });
        }
        let after = winner(&slot.defs).and_then(|d| d.value.target);
        if slot.defs.is_empty() {
            if let Some(slot) = self.slices.remove(idx) {
                self.slice_ids.remove(&slot.key);
            }
        }
        if let Some(sid) = before {
            if let Some(service) = self.services.get_mut(sid) {
                service.slices.retain(|&s| s != idx);
            }
            touched.push(sid);
        }
        if let Some(sid) = after {
            if let Some(service) = self.services.get_mut(sid) {
                service.slices.reserve_exact(1);
                service.slices.push(idx);
            }
            touched.push(sid);
        }
    }

    /// Recomputes the frontends of `touched` Services (sorted) and re-decides
    /// every key they claimed or claim; returns the keys whose value changed.
    /// Sets `health_touched` if a touched Service had or has a health check.
    fn recompute(
        &mut self,
        touched: &[Sid],
        errors: &mut Vec<ModelError>,
        health_touched: &mut bool,
    ) -> BTreeMap<FrontendKey, Option<Frontend>> {
        let rebuilt: Vec<Built> = touched.iter().map(|&sid| self.build(sid)).collect();
        let mut affected = BTreeSet::new();
        for (&sid, built) in touched.iter().zip(&rebuilt) {
            affected.extend(built.keys.iter().map(|k| k.key));
            if let Some(slot) = self.services.get(sid) {
                affected.extend(slot.built.keys.iter().map(|k| k.key));
            }
        }
        let before: Vec<(FrontendKey, Option<Sid>, Option<Frontend>)> = affected
            .into_iter()
            .map(|key| {
                let winner = self.claims.get(&key).map(|c| c.winner);
                (key, winner, winner.and_then(|w| self.materialize(w, &key)))
            })
            .collect();

        // Drop all old claims first, then add the new ones: the precedence
        // (creation time) of touched Services may have changed.
        for &sid in touched {
            let old_keys = self
                .services
                .get_mut(sid)
                .map(|s| std::mem::take(&mut s.built.keys))
                .unwrap_or_default();
            for key in old_keys {
                self.remove_claim(key.key, sid);
            }
        }
        for (&sid, built) in touched.iter().zip(rebuilt) {
            for key in &built.keys {
                self.add_claim(key.key, sid);
            }
            if self.health_sids.remove(&sid) {
                *health_touched = true;
            }
            if built.health.is_some() {
                self.health_sids.insert(sid);
                *health_touched = true;
            }
            if let Some(slot) = self.services.get_mut(sid) {
                slot.built = built;
            }
        }

        let mut changed = BTreeMap::new();
        for (key, was_winner, was) in before {
            let claim = self.claims.get(&key);
            let winner_changed = claim.map(|c| c.winner) != was_winner;
            if let Some(claim) = claim {
                for &loser in &claim.others {
                    // Report when the loser was just applied or the winner
                    // changed, not on every endpoint change of the winner.
                    if winner_changed || touched.binary_search(&loser).is_ok() {
                        errors.push(self.conflict(key, loser, claim.winner));
                    }
                }
            }
            let now = claim.and_then(|c| self.materialize(c.winner, &key));
            if now != was {
                changed.insert(key, now);
            }
        }
        changed
    }

    /// What `sid` contributes with its current winning definition and slices.
    fn build(&self, sid: Sid) -> Built {
        let Some(slot) = self.services.get(sid) else {
            return Built::default();
        };
        let Some(def) = winner(&slot.defs) else {
            return Built::default();
        };
        let service = &def.value;
        let mut keys: Vec<BuiltKey> = frontend_keys(service)
            .into_iter()
            .map(|(port, kind, key)| BuiltKey {
                key,
                kind,
                // Ports come from a Vec the API server limits far below this.
                port: u32::try_from(port).unwrap_or(u32::MAX),
            })
            .collect();
        keys.shrink_to_fit();
        if keys.is_empty() {
            return Built::default();
        }
        let slices: Vec<&SliceInfo> = slot
            .slices
            .iter()
            .filter_map(|&idx| winner(&self.slices.get(idx)?.defs).map(|d| &d.value.info))
            .collect();
        let uses = |port: usize, which: Endpoints| {
            keys.iter().any(|k| {
                k.port as usize == port
                    && endpoints(
                        service.internal_local,
                        service.external_local,
                        k.kind,
                        k.key.scope,
                    ) == which
            })
        };
        let ports = service
            .ports
            .iter()
            .enumerate()
            .map(|(i, port)| BuiltPort {
                name: port.name.clone(),
                cluster: uses(i, Endpoints::Cluster)
                    .then(|| select_backends(port, false, &slices).into_boxed_slice()),
                local: uses(i, Endpoints::Local)
                    .then(|| select_backends(port, true, &slices).into_boxed_slice()),
            })
            .collect();
        let health = service
            .health_check_node_port
            .map(|node_port| (node_port, local_ready_endpoints(service, &slices)));
        Built {
            keys,
            ports,
            affinity_timeout: service.affinity_timeout,
            internal_local: service.internal_local,
            external_local: service.external_local,
            health,
        }
    }

    /// Assembles the frontend `key` of Service `sid` as last built.
    fn materialize(&self, sid: Sid, key: &FrontendKey) -> Option<Frontend> {
        let slot = self.services.get(sid)?;
        let built = &slot.built;
        let claimed = built.keys.iter().find(|k| k.key == *key)?;
        let port = built.ports.get(claimed.port as usize)?;
        let backends = match endpoints(
            built.internal_local,
            built.external_local,
            claimed.kind,
            key.scope,
        ) {
            Endpoints::Cluster => port.cluster.as_deref(),
            Endpoints::Local => port.local.as_deref(),
        };
        Some(Frontend {
            key: *key,
            kind: claimed.kind,
            service: ServiceId::clone(&slot.id),
            port_name: port.name.clone(),
            backends: backends.map(<[BackendAddr]>::to_vec).unwrap_or_default(),
            affinity_timeout: built.affinity_timeout,
            external_local: key.scope == Scope::External && built.external_local,
        })
    }

    /// Rebuilds [`health_checks`](Self::health_checks) from `health_sids`;
    /// returns whether it changed.
    fn refresh_health(&mut self) -> bool {
        let mut sids: Vec<Sid> = self.health_sids.iter().copied().collect();
        sids.sort_by(|&a, &b| precedence(&self.services, a, b));
        let mut ports = HashSet::new();
        let mut checks: Vec<HealthCheck> = sids
            .into_iter()
            .filter_map(|sid| {
                let slot = self.services.get(sid)?;
                let (node_port, local) = slot.built.health?;
                ports.insert(node_port).then(|| HealthCheck {
                    service: ServiceId::clone(&slot.id),
                    node_port,
                    local_endpoints: local as usize,
                })
            })
            .collect();
        checks.sort();
        let changed = checks != self.health;
        self.health = checks;
        changed
    }

    /// Inserts `sid` among `key`'s claimants by precedence.
    fn add_claim(&mut self, key: FrontendKey, sid: Sid) {
        let services = &self.services;
        let before = |a: Sid, b: Sid| precedence(services, a, b) == Ordering::Less;
        match self.claims.get_mut(&key) {
            None => {
                self.claims.insert(
                    key,
                    Claim {
                        winner: sid,
                        others: Vec::new(),
                    },
                );
            }
            Some(claim) => {
                if before(sid, claim.winner) {
                    let old = std::mem::replace(&mut claim.winner, sid);
                    claim.others.insert(0, old);
                } else {
                    let pos = claim.others.partition_point(|&other| before(other, sid));
                    claim.others.insert(pos, sid);
                }
            }
        }
    }

    fn remove_claim(&mut self, key: FrontendKey, sid: Sid) {
        let Some(claim) = self.claims.get_mut(&key) else {
            return;
        };
        if claim.winner == sid {
            if claim.others.is_empty() {
                self.claims.remove(&key);
            } else {
                claim.winner = claim.others.remove(0);
            }
        } else {
            claim.others.retain(|&s| s != sid);
        }
    }

    fn intern_service(&mut self, id: ServiceId) -> Sid {
        if let Some(&sid) = self.service_ids.get(&id) {
            return sid;
        }
        let id = Arc::new(id);
        let sid = self.services.insert(ServiceSlot {
            id: Arc::clone(&id),
            defs: Vec::new(),
            slices: Vec::new(),
            built: Built::default(),
        });
        self.service_ids.insert(id, sid);
        sid
    }

    fn free_service_if_unused(&mut self, sid: Sid) {
        let unused = self
            .services
            .get(sid)
            .is_some_and(|s| s.defs.is_empty() && s.slices.is_empty() && s.built.keys.is_empty());
        if unused {
            if let Some(slot) = self.services.remove(sid) {
                self.service_ids.remove(&slot.id);
            }
        }
    }

    fn intern_slice(&mut self, key: SliceKey) -> SliceIdx {
        if let Some(&idx) = self.slice_ids.get(&key) {
            return idx;
        }
        let key = Arc::new(key);
        let idx = self.slices.insert(SliceSlot {
            key: Arc::clone(&key),
            defs: Vec::new(),
        });
        self.slice_ids.insert(key, idx);
        idx
    }

    fn file_id(&mut self, path: &Path) -> FileId {
        if let Some(&id) = self.file_ids.get(path) {
            return id;
        }
        let path: Arc<Path> = Arc::from(path);
        let id = self.files.insert(FileSlot {
            path: Arc::clone(&path),
            services: Vec::new(),
            slices: Vec::new(),
        });
        self.file_ids.insert(path, id);
        id
    }

    fn path_of(&self, file: FileId) -> Arc<Path> {
        self.files
            .get(file)
            .map_or_else(|| Arc::from(Path::new("")), |f| Arc::clone(&f.path))
    }

    /// A duplicate within one file.
    fn duplicate(&self, path: &Path, kind: Kind, sid: Sid, file_path: &Path) -> ModelError {
        let id = self
            .services
            .get(sid)
            .map(|s| Arc::clone(&s.id))
            .unwrap_or_default();
        ModelError::Duplicate {
            file: path.to_owned(),
            object: ObjectRef::namespaced(kind, &id.namespace, &id.name),
            other_file: file_path.to_owned(),
        }
    }

    fn slice_duplicate(&self, path: &Path, idx: SliceIdx, file_path: &Path) -> ModelError {
        let key = self.slices.get(idx).map(|s| Arc::clone(&s.key));
        let (namespace, name) = key.as_deref().map_or(("", ""), |k| (&k.namespace, &k.name));
        ModelError::Duplicate {
            file: path.to_owned(),
            object: ObjectRef::namespaced(Kind::EndpointSlice, namespace, name),
            other_file: file_path.to_owned(),
        }
    }

    /// A duplicate if another file defines the object too (reported with
    /// the most recently applied other file).
    fn duplicate_elsewhere(
        &self,
        path: &Path,
        kind: Kind,
        slot: u32,
        file: FileId,
    ) -> Option<ModelError> {
        let (other, object) = match kind {
            Kind::Service => {
                let s = self.services.get(slot)?;
                let other = s
                    .defs
                    .iter()
                    .filter(|d| d.file != file)
                    .max_by_key(|d| d.seq)?
                    .file;
                (
                    other,
                    ObjectRef::namespaced(kind, &s.id.namespace, &s.id.name),
                )
            }
            _ => {
                let s = self.slices.get(slot)?;
                let other = s
                    .defs
                    .iter()
                    .filter(|d| d.file != file)
                    .max_by_key(|d| d.seq)?
                    .file;
                (
                    other,
                    ObjectRef::namespaced(kind, &s.key.namespace, &s.key.name),
                )
            }
        };
        Some(ModelError::Duplicate {
            file: path.to_owned(),
            object,
            other_file: self.path_of(other).to_path_buf(),
        })
    }

    /// Conflict errors for every frontend `sid` claims but does not get.
    fn conflicts_lost_by(&self, sid: Sid) -> Vec<ModelError> {
        let Some(slot) = self.services.get(sid) else {
            return Vec::new();
        };
        slot.built
            .keys
            .iter()
            .filter_map(|key| {
                let winner = self.claims.get(&key.key)?.winner;
                (winner != sid).then(|| self.conflict(key.key, sid, winner))
            })
            .collect()
    }

    fn conflict(&self, key: FrontendKey, loser: Sid, winner_sid: Sid) -> ModelError {
        let describe = |sid: Sid| {
            let slot = self.services.get(sid);
            let id = slot.map(|s| ServiceId::clone(&s.id)).unwrap_or_default();
            let file = slot
                .and_then(|s| winner(&s.defs))
                .map(|d| self.path_of(d.file).to_path_buf())
                .unwrap_or_default();
            (id, file)
        };
        let (loser, file) = describe(loser);
        let (winner, winner_file) = describe(winner_sid);
        ModelError::Conflict {
            file,
            key,
            loser,
            winner,
            winner_file,
        }
    }
}

/// The health-check count of a Service: distinct addresses of its ready,
/// non-terminating endpoints on this node, in slices that feed one of its
/// ports (kube-proxy's `LocalReadyEndpoints`).
fn local_ready_endpoints(service: &ServiceInfo, slices: &[&SliceInfo]) -> u32 {
    let mut addresses: Vec<Ipv4Addr> = slices
        .iter()
        .filter(|slice| service.ports.iter().any(|p| match_port(p, slice).is_some()))
        .flat_map(|slice| &slice.endpoints)
        .filter(|e| e.local && e.ready && !e.terminating)
        .map(|e| e.address)
        .collect();
    addresses.sort_unstable();
    addresses.dedup();
    u32::try_from(addresses.len()).unwrap_or(u32::MAX)
}

/// Which of two Services claiming one frontend wins: the older one
/// (`creationTimestamp`; a missing timestamp counts as newest), then the
/// first by namespace/name. Mirrors a real cluster, where the first Service
/// to be allocated an IP keeps it.
fn precedence(services: &Slab<ServiceSlot>, a: Sid, b: Sid) -> Ordering {
    let (a, b) = (services.get(a), services.get(b));
    let created = |slot: Option<&ServiceSlot>| {
        let created = slot
            .and_then(|s| winner(&s.defs))
            .and_then(|d| d.value.created);
        (created.is_none(), created)
    };
    created(a)
        .cmp(&created(b))
        .then_with(|| a.map(|s| &*s.id).cmp(&b.map(|s| &*s.id)))
}

#[cfg(test)]
mod tests;
