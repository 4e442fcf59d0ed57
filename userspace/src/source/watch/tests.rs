use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::time::Duration;

use super::*;

const PROXY: &[&str] = &["Service"];

fn service(name: &str) -> String {
    format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n")
}

/// A watcher with a short periodic rescan disabled (1 h) unless asked.
struct Harness {
    _watcher: ManifestWatcher,
    rx: mpsc::Receiver<DirChange>,
    rt: tokio::runtime::Runtime,
    root: PathBuf,
}

impl Harness {
    fn start(root: &Path, rescan_interval: Duration) -> Harness {
        let config = WatchConfig {
            rescan_interval,
            ..WatchConfig::default()
        };
        let (watcher, rx) = ManifestWatcher::start_with(root, PROXY, config).expect("start");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        Harness {
            _watcher: watcher,
            rx,
            rt,
            root: root.to_path_buf(),
        }
    }

    fn recv(&mut self, timeout: Duration) -> Option<DirChange> {
        let rx = &mut self.rx;
        self.rt.block_on(async {
            tokio::time::timeout(timeout, rx.recv())
                .await
                .ok()
                .flatten()
        })
    }

    /// Collects batches until `done` holds for the merged view or 5 s pass.
    /// Returns the merged view: path → Some(object names) or None (removed),
    /// and the number of batches it took.
    fn until(
        &mut self,
        done: impl Fn(&BTreeMap<String, Option<Vec<String>>>) -> bool,
    ) -> (BTreeMap<String, Option<Vec<String>>>, usize) {
        let mut merged = BTreeMap::new();
        let mut batches = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done(&merged) {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(change) = self.recv(left) else {
                panic!("timed out; got {merged:?}");
            };
            batches += 1;
            self.merge(change, &mut merged);
        }
        (merged, batches)
    }

    fn merge(&self, change: DirChange, merged: &mut BTreeMap<String, Option<Vec<String>>>) {
        for (path, parsed) in change.changed {
            let names = parsed.objects.iter().map(|o| o.name().to_owned()).collect();
            merged.insert(self.rel(&path), Some(names));
        }
        for path in change.removed {
            merged.insert(self.rel(&path), None);
        }
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    /// Asserts nothing arrives for a while (quiet + max delay, generously).
    fn assert_quiet(&mut self) {
        if let Some(change) = self.recv(Duration::from_millis(400)) {
            panic!("unexpected change: {change:?}");
        }
    }
}

fn names(list: &[&str]) -> Option<Vec<String>> {
    Some(list.iter().map(|s| (*s).to_owned()).collect())
}

const NEVER: Duration = Duration::from_secs(3600);

#[test]
fn initial_snapshot_then_changes_removals_and_no_op_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(root.join("a.yaml"), service("a")).expect("write");
    let mut h = Harness::start(root, NEVER);

    let initial = h.recv(Duration::from_secs(5)).expect("initial snapshot");
    assert_eq!(initial.changed.len(), 1);
    assert!(initial.removed.is_empty());

    fs::write(root.join("a.yaml"), service("a2")).expect("write");
    let (seen, _) = h.until(|m| m.contains_key("a.yaml"));
    assert_eq!(seen["a.yaml"], names(&["a2"]));

    // Same content written again: no batch at all.
    fs::write(root.join("a.yaml"), service("a2")).expect("write");
    h.assert_quiet();

    fs::remove_file(root.join("a.yaml")).expect("rm");
    let (seen, _) = h.until(|m| m.contains_key("a.yaml"));
    assert_eq!(seen["a.yaml"], None);
    h.assert_quiet();
}

#[test]
fn empty_directory_still_sends_initial_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut h = Harness::start(dir.path(), NEVER);
    let initial = h.recv(Duration::from_secs(5)).expect("initial snapshot");
    assert!(initial.is_empty());
}

#[test]
fn editor_write_to_temp_then_rename() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::write(root.join("web.yaml"), service("old")).expect("write");
    let mut h = Harness::start(root, NEVER);
    h.recv(Duration::from_secs(5)).expect("initial snapshot");

    for tmp in [".web.yaml.swp", "web.yaml.tmp", "web.yaml~"] {
        fs::write(root.join(tmp), service("new")).expect("write");
        fs::rename(root.join(tmp), root.join("web.yaml")).expect("rename");
        let (seen, _) = h.until(|m| m.contains_key("web.yaml"));
        assert_eq!(seen.len(), 1, "temp files must not be reported: {seen:?}");
        assert_eq!(seen["web.yaml"], names(&["new"]));
        fs::write(root.join("web.yaml"), service("old")).expect("write");
        h.until(|m| m.contains_key("web.yaml"));
    }
    h.assert_quiet();
}

#[test]
fn bursts_are_coalesced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let mut h = Harness::start(root, NEVER);
    h.recv(Duration::from_secs(5)).expect("initial snapshot");
    for i in 0..20 {
        fs::write(root.join(format!("s{i}.yaml")), service(&format!("s{i}"))).expect("write");
    }
    let (seen, batches) = h.until(|m| m.len() == 20);
    assert!(seen.values().all(Option::is_some));
    // Typically 1; allow for a scheduler hiccup on a loaded machine.
    assert!(batches <= 3, "{batches} batches for one burst");
}

#[test]
fn subdirectories_deleted_and_recreated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    fs::create_dir_all(root.join("team/a")).expect("mkdir");
    fs::write(root.join("team/a/x.yaml"), service("x")).expect("write");
    let mut h = Harness::start(root, NEVER);
    h.recv(Duration::from_secs(5)).expect("initial snapshot");

    fs::remove_dir_all(root.join("team")).expect("rm");
    let (seen, _) = h.until(|m| m.contains_key("team/a/x.yaml"));
    assert_eq!(seen["team/a/x.yaml"], None);

    // Re-created and filled immediately, before notify can add its watch:
    // the directory event triggers a rescan that finds the files.
    fs::create_dir_all(root.join("team/a/b")).expect("mkdir");
    fs::write(root.join("team/a/x.yaml"), service("x")).expect("write");
    fs::write(root.join("team/a/b/y.yaml"), service("y")).expect("write");
    let (seen, _) = h.until(|m| m.len() == 2);
    assert_eq!(seen["team/a/x.yaml"], names(&["x"]));
    assert_eq!(seen["team/a/b/y.yaml"], names(&["y"]));

    // The new directories are watched too.
    fs::write(root.join("team/a/b/y.yaml"), service("y2")).expect("write");
    let (seen, _) = h.until(|m| m.contains_key("team/a/b/y.yaml"));
    assert_eq!(seen["team/a/b/y.yaml"], names(&["y2"]));

    // A directory moved away removes its files; moved back, adds them.
    let outside = tempfile::tempdir().expect("tempdir");
    fs::rename(root.join("team"), outside.path().join("team")).expect("rename away");
    let (seen, _) = h.until(|m| m.len() == 2);
    assert!(seen.values().all(Option::is_none), "{seen:?}");
    fs::rename(outside.path().join("team"), root.join("team")).expect("rename back");
    let (seen, _) = h.until(|m| m.len() == 2);
    assert!(seen.values().all(Option::is_some), "{seen:?}");
    h.assert_quiet();
}

#[test]
fn configmap_volume_update_via_data_symlink_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    // The layout and update sequence of kubelet's atomic writer.
    fs::create_dir(root.join("..v1")).expect("mkdir");
    fs::write(root.join("..v1/web.yaml"), service("v1")).expect("write");
    symlink("..v1", root.join("..data")).expect("symlink");
    symlink("..data/web.yaml", root.join("web.yaml")).expect("symlink");
    let mut h = Harness::start(root, NEVER);
    let initial = h.recv(Duration::from_secs(5)).expect("initial snapshot");
    assert_eq!(initial.changed.len(), 1);

    fs::create_dir(root.join("..v2")).expect("mkdir");
    fs::write(root.join("..v2/web.yaml"), service("v2")).expect("write");
    symlink("..v2", root.join("..data_tmp")).expect("symlink");
    fs::rename(root.join("..data_tmp"), root.join("..data")).expect("rename");
    fs::remove_dir_all(root.join("..v1")).expect("rm");

    let (seen, _) = h.until(|m| m.contains_key("web.yaml"));
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen["web.yaml"], names(&["v2"]));
    h.assert_quiet();
}

#[test]
fn periodic_rescan_catches_what_events_missed_and_root_coming_back() {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("m");
    fs::create_dir(&root).expect("mkdir");
    fs::write(root.join("a.yaml"), service("a")).expect("write");
    let mut h = Harness::start(&root, Duration::from_millis(300));
    h.recv(Duration::from_secs(5)).expect("initial snapshot");

    // The root vanishes: the last known objects stay (no removal batch).
    fs::remove_dir_all(&root).expect("rm");
    h.assert_quiet();

    // It comes back (inotify lost its watch): the periodic rescan re-watches
    // it and reports the difference.
    fs::create_dir(&root).expect("mkdir");
    fs::write(root.join("b.yaml"), service("b")).expect("write");
    let (seen, _) = h.until(|m| m.len() == 2);
    assert_eq!(seen["a.yaml"], None);
    assert_eq!(seen["b.yaml"], names(&["b"]));

    // And events work again.
    fs::write(root.join("b.yaml"), service("b2")).expect("write");
    let (seen, _) = h.until(|m| m.contains_key("b.yaml"));
    assert_eq!(seen["b.yaml"], names(&["b2"]));
}

#[test]
fn start_fails_on_missing_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let Err(err) = ManifestWatcher::start(&missing, PROXY) else {
        panic!("must fail")
    };
    assert_eq!(err.path(), missing);
}

#[test]
fn dropping_the_receiver_or_watcher_stops_the_thread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (watcher, rx) = ManifestWatcher::start(dir.path(), PROXY).expect("start");
    drop(rx);
    fs::write(dir.path().join("a.yaml"), service("a")).expect("write");
    drop(watcher);
    // Nothing to assert beyond "no panic, no hang"; the thread exits on its own.
}

#[test]
fn large_initial_scan_is_batched_and_only_the_last_batch_is_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for i in 0..600 {
        fs::write(root.join(format!("s{i}.yaml")), service(&format!("s{i}"))).expect("write");
    }
    let mut h = Harness::start(root, NEVER);
    let mut synced = Vec::new();
    let mut files = 0;
    while synced.last() != Some(&true) {
        let change = h.recv(Duration::from_secs(10)).expect("initial batch");
        files += change.changed.len();
        synced.push(change.synced);
    }
    assert_eq!(files, 600);
    assert_eq!(synced, [false, false, true]);
    // Later batches are synced too.
    fs::write(root.join("s1.yaml"), service("changed")).expect("write");
    let change = h.recv(Duration::from_secs(5)).expect("change");
    assert!(change.synced);
}

#[test]
fn mapped_watcher_delivers_mapped_objects() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), service("a")).expect("write");
    let map: Arc<ObjectMapper<String>> = Arc::new(|object: Object| object.object_ref().to_string());
    let (_watcher, mut rx) =
        ManifestWatcher::start_mapped(dir.path(), PROXY, WatchConfig::default(), map)
            .expect("start");
    let initial = rx.blocking_recv().expect("initial");
    assert_eq!(initial.changed[0].1.objects, ["Service default/a"]);
}

#[test]
fn relative_directory_paths_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("a.yaml"), service("a")).expect("write");
    // A relative path to the temp dir, without changing the process's cwd.
    let cwd = std::env::current_dir().expect("cwd");
    let mut relative = PathBuf::new();
    for _ in cwd.components().skip(1) {
        relative.push("..");
    }
    relative.push(dir.path().strip_prefix("/").expect("absolute temp dir"));
    let mut h = Harness::start(&relative, NEVER);
    h.root = std::path::absolute(&relative).expect("absolute");
    let initial = h.recv(Duration::from_secs(5)).expect("initial snapshot");
    assert!(initial.changed[0].0.is_absolute());
    fs::write(dir.path().join("a.yaml"), service("a2")).expect("write");
    let (seen, _) = h.until(|m| m.contains_key("a.yaml"));
    assert_eq!(seen["a.yaml"], names(&["a2"]));
}
