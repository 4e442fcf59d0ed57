//! Finding, reading and parsing the manifest files of a directory tree.

use std::collections::HashSet;
use std::fs;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::error::SourceError;
use super::object::Object;
use super::parallel::par_map;
use super::parse::{parse_manifest_with, ObjectMapper, ParsedFile};

/// Files read and parsed together before results are handed on: bounds how
/// many parsed files exist at once during a start-up load.
pub(crate) const FILES_PER_CHUNK: usize = 256;

/// Reads every manifest file under `dir` and parses it, keeping only `kinds`.
///
/// Files are `*.yaml`, `*.yml` and `*.json`, found recursively; names
/// starting with `.` are skipped (editor temp files, and the `..data`
/// directories of a mounted ConfigMap, whose files are reached through the
/// top-level symlinks instead); symlinks are followed. Files are read and
/// parsed on all cores. The result is sorted by path.
///
/// Fails only if `dir` itself cannot be read. An unreadable file is returned
/// with the I/O error in its [`ParsedFile::errors`]; an unreadable
/// subdirectory is logged and skipped.
pub fn load_dir(dir: &Path, kinds: &[&str]) -> Result<Vec<(PathBuf, ParsedFile)>, SourceError> {
    let mut files = Vec::new();
    load_dir_with(dir, kinds, &|object: Object| object, |path, parsed| {
        files.push((path, parsed))
    })?;
    Ok(files)
}

/// Streaming [`load_dir`]: every object goes through `map` right after it is
/// parsed, and each file is handed to `each` (in path order) as soon as its
/// chunk of files is done, so memory holds at most a chunk of parsed files.
pub fn load_dir_with<T: Send>(
    dir: &Path,
    kinds: &[&str],
    map: &ObjectMapper<T>,
    mut each: impl FnMut(PathBuf, ParsedFile<T>),
) -> Result<(), SourceError> {
    let walk = walk(dir)?;
    log_failed_dirs(&walk);
    for chunk in walk.files.chunks(FILES_PER_CHUNK) {
        for file in load_files(chunk, kinds, map, &|_| None) {
            match file.outcome {
                LoadOutcome::Parsed { parsed, .. } => each(file.path, parsed),
                LoadOutcome::Unchanged { .. } | LoadOutcome::Gone => {}
                LoadOutcome::Failed(err) => {
                    let err = SourceError::io(&file.path, err);
                    each(file.path, ParsedFile::from_error(err));
                }
            }
        }
    }
    Ok(())
}

/// Identity and version of a file as the file system reports it; when it is
/// unchanged we assume the content is too (used by the periodic safety-net
/// rescan to avoid reading every file every few seconds).
///
/// The ctime is part of it because no tool can set it: any write moves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Fingerprint {
    pub(crate) fn of(metadata: &fs::Metadata) -> Self {
        Fingerprint {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
            ctime_ns: i128::from(metadata.ctime()) * 1_000_000_000
                + i128::from(metadata.ctime_nsec()),
        }
    }
}

/// A manifest file found by [`walk`].
#[derive(Clone, Debug)]
pub(crate) struct FoundFile {
    /// `dir` joined with the path below it (the key used everywhere).
    pub path: PathBuf,
    pub fingerprint: Option<Fingerprint>,
}

/// The result of walking a directory tree.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Manifest files, sorted by path.
    pub files: Vec<FoundFile>,
    /// Subdirectories that could not be listed: what we knew below them is
    /// not known to be gone.
    pub failed_dirs: Vec<(PathBuf, io::Error)>,
}

/// Lists the manifest files below `dir` (see [`load_dir`] for the rules).
///
/// Each directory is visited once even if several symlinks lead to it, which
/// also stops symlink loops.
pub(crate) fn walk(dir: &Path) -> Result<Walk, SourceError> {
    let mut out = Walk::default();
    let mut seen_dirs = HashSet::new();
    let root_meta = fs::metadata(dir).map_err(|e| SourceError::io(dir, e))?;
    if !root_meta.is_dir() {
        return Err(SourceError::io(
            dir,
            io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    seen_dirs.insert((root_meta.dev(), root_meta.ino()));
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(err) if current == dir => return Err(SourceError::io(dir, err)),
            Err(err) => {
                out.failed_dirs.push((current, err));
                continue;
            }
        };
        let mut subdirs = Vec::new();
        let mut names: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for name in names {
            if name.as_encoded_bytes().starts_with(b".") {
                continue;
            }
            let path = current.join(&name);
            // Follows symlinks; a dangling one is just not a manifest.
            let Ok(metadata) = fs::metadata(&path) else {
                continue;
            };
            if metadata.is_dir() {
                if seen_dirs.insert((metadata.dev(), metadata.ino())) {
                    subdirs.push(path);
                }
            } else if metadata.is_file() && is_manifest_name(&path) {
                out.files.push(FoundFile {
                    path,
                    fingerprint: Some(Fingerprint::of(&metadata)),
                });
            }
        }
        // Reverse so the stack pops them in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    out.files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Whether a file name has a manifest extension.
pub(crate) fn is_manifest_name(path: &Path) -> bool {
    path.extension().is_some_and(|ext| {
        ["yaml", "yml", "json"]
            .iter()
            .any(|want| ext.eq_ignore_ascii_case(want))
    })
}

/// Content hash of a file, to tell real changes from events that changed nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ContentHash {
    len: usize,
    hash: u64,
}

impl ContentHash {
    pub(crate) fn of(bytes: &[u8]) -> Self {
        // SipHash with fixed keys: stable within the process, which is all we
        // need (hashes are never persisted), and fast enough (> 1 GB/s).
        let mut hasher = DefaultHasher::new();
        hasher.write(bytes);
        ContentHash {
            len: bytes.len(),
            hash: hasher.finish(),
        }
    }
}

/// What reading one file gave.
#[derive(Debug)]
pub(crate) enum LoadOutcome<T> {
    /// Read and parsed.
    Parsed {
        hash: ContentHash,
        parsed: ParsedFile<T>,
    },
    /// Read, and the content hash equals the one we already had: not parsed.
    Unchanged { hash: ContentHash },
    /// The file vanished (deleted or renamed away while we looked).
    Gone,
    /// Could not be read for another reason.
    Failed(io::Error),
}

/// One file's outcome, with its fingerprint taken just before reading.
#[derive(Debug)]
pub(crate) struct LoadedFile<T> {
    pub path: PathBuf,
    pub fingerprint: Option<Fingerprint>,
    pub outcome: LoadOutcome<T>,
}

/// Reads (and, if changed, parses) `files` on all cores. `known_hash` gives
/// the hash we have for a path, if any, so unchanged files are not parsed.
pub(crate) fn load_files<T: Send>(
    files: &[FoundFile],
    kinds: &[&str],
    map: &ObjectMapper<T>,
    known_hash: &(dyn Fn(&Path) -> Option<ContentHash> + Sync),
) -> Vec<LoadedFile<T>> {
    par_map(files, |file| {
        let (fingerprint, outcome) = load_file(&file.path, kinds, map, known_hash(&file.path));
        LoadedFile {
            path: file.path.clone(),
            fingerprint: fingerprint.or(file.fingerprint),
            outcome,
        }
    })
}

fn load_file<T: Send>(
    path: &Path,
    kinds: &[&str],
    map: &ObjectMapper<T>,
    known: Option<ContentHash>,
) -> (Option<Fingerprint>, LoadOutcome<T>) {
    let fingerprint = fs::metadata(path).ok().map(|m| Fingerprint::of(&m));
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        // NotADirectory: a parent directory was replaced by a file.
        Err(err)
            if matches!(
                err.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            return (None, LoadOutcome::Gone);
        }
        Err(err) => return (fingerprint, LoadOutcome::Failed(err)),
    };
    let hash = ContentHash::of(&bytes);
    if known == Some(hash) {
        return (fingerprint, LoadOutcome::Unchanged { hash });
    }
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(err) => {
            let err = io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not valid UTF-8 ({})", err.utf8_error()),
            );
            let parsed = ParsedFile::from_error(SourceError::io(path, err));
            return (fingerprint, LoadOutcome::Parsed { hash, parsed });
        }
    };
    let parsed = parse_manifest_with(path, &text, kinds, map);
    debug!(
        path = %path.display(),
        objects = parsed.objects.len(),
        errors = parsed.errors.len(),
        "parsed manifest"
    );
    (fingerprint, LoadOutcome::Parsed { hash, parsed })
}

pub(crate) fn log_failed_dirs(walk: &Walk) {
    for (dir, err) in &walk.failed_dirs {
        warn!(dir = %dir.display(), error = %err, "cannot list manifest subdirectory; skipping it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PROXY: &[&str] = &["Service", "EndpointSlice"];

    fn service(name: &str) -> String {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\n")
    }

    fn names(loaded: &[(PathBuf, ParsedFile)], root: &Path) -> Vec<String> {
        loaded
            .iter()
            .map(|(p, _)| p.strip_prefix(root).unwrap_or(p).display().to_string())
            .collect()
    }

    #[test]
    fn loads_recursively_skipping_hidden_and_other_extensions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
        fs::create_dir_all(root.join(".hidden")).expect("mkdir");
        fs::write(root.join("a.yaml"), service("a")).expect("write");
        fs::write(root.join("sub/b.yml"), service("b")).expect("write");
        fs::write(
            root.join("sub/deeper/c.JSON"),
            r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"c"}}"#,
        )
        .expect("write");
        fs::write(root.join("sub/readme.md"), "# no").expect("write");
        fs::write(root.join(".a.yaml.swp"), "junk").expect("write");
        fs::write(root.join(".hidden/x.yaml"), service("x")).expect("write");

        let loaded = load_dir(root, PROXY).expect("load");
        assert_eq!(
            names(&loaded, root),
            ["a.yaml", "sub/b.yml", "sub/deeper/c.JSON"]
        );
        for (_, parsed) in &loaded {
            assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
            assert_eq!(parsed.objects.len(), 1);
        }
    }

    #[test]
    fn follows_symlinks_like_a_configmap_mount_and_survives_loops() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // The layout kubelet creates for a ConfigMap volume.
        fs::create_dir(root.join("..2024_01_01")).expect("mkdir");
        fs::write(root.join("..2024_01_01/web.yaml"), service("web")).expect("write");
        symlink("..2024_01_01", root.join("..data")).expect("symlink");
        symlink("..data/web.yaml", root.join("web.yaml")).expect("symlink");
        // A loop and a dangling link must not hang or fail the walk.
        fs::create_dir(root.join("loop")).expect("mkdir");
        symlink("..", root.join("loop/up")).expect("symlink");
        symlink("missing.yaml", root.join("dangling.yaml")).expect("symlink");

        let loaded = load_dir(root, PROXY).expect("load");
        assert_eq!(names(&loaded, root), ["web.yaml"]);
    }

    #[test]
    fn bad_files_do_not_fail_the_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        fs::write(root.join("bin.yaml"), [0xff, 0xfe, 0x00]).expect("write");
        fs::write(root.join("ok.yaml"), service("ok")).expect("write");
        let loaded = load_dir(root, PROXY).expect("load");
        assert_eq!(names(&loaded, root), ["bin.yaml", "ok.yaml"]);
        let msg = loaded[0].1.errors[0].to_string();
        assert!(msg.contains("bin.yaml: not valid UTF-8"), "{msg}");
    }

    #[test]
    fn missing_directory_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nope");
        let err = load_dir(&missing, PROXY).expect_err("must fail");
        assert_eq!(err.path(), missing);
        let file = dir.path().join("f.yaml");
        fs::write(&file, "").expect("write");
        assert!(load_dir(&file, PROXY).is_err());
    }

    #[test]
    fn content_hash_and_fingerprint() {
        assert_eq!(ContentHash::of(b"abc"), ContentHash::of(b"abc"));
        assert_ne!(ContentHash::of(b"abc"), ContentHash::of(b"abd"));
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("a.yaml");
        fs::write(&f, "a").expect("write");
        let before = Fingerprint::of(&fs::metadata(&f).expect("stat"));
        assert_eq!(before, Fingerprint::of(&fs::metadata(&f).expect("stat")));
        fs::write(&f, "bb").expect("write");
        assert_ne!(before, Fingerprint::of(&fs::metadata(&f).expect("stat")));
    }

    #[test]
    fn load_dir_with_maps_and_streams_in_path_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for i in 0..(FILES_PER_CHUNK + 3) {
            fs::write(
                root.join(format!("s{i:04}.yaml")),
                service(&format!("s{i}")),
            )
            .expect("write");
        }
        let mut seen = Vec::new();
        load_dir_with(
            root,
            PROXY,
            &|object: Object| object.name().to_owned(),
            |path, parsed| {
                seen.push((path, parsed.objects));
            },
        )
        .expect("load");
        assert_eq!(seen.len(), FILES_PER_CHUNK + 3);
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(seen[5].1, ["s5"]);
    }
}
