//! Reading Kubernetes objects: parsing manifest files and watching a manifest directory.
//!
//! The source layer turns files into typed [`Object`]s (k8s-openapi structs)
//! and reports problems as [`SourceError`]s that name the file, document and
//! object. It knows nothing about load balancing, so the Ingress proxy can
//! reuse it and a future API-server source can produce the same [`Object`]s.
//!
//! Every entry point has a `_with`/`_mapped` variant taking an
//! [`ObjectMapper`]: each object is handed to it right after parsing, on the
//! parsing thread, so a consumer that keeps a compact form (the model's
//! `ModelObject`) never holds thousands of k8s objects at once.
//!
//! - [`parse_manifest`] / [`parse_manifest_with`]: one file's text.
//! - [`load_dir`] / [`load_dir_with`]: a directory tree, once, on all cores.
//! - [`ManifestWatcher`]: a directory tree, kept up to date via inotify.
//! - [`synthetic`]: generated manifests for tests and benchmarks.

mod dir_state;
mod error;
pub mod kube;
mod manifests;
mod object;
mod parallel;
mod parse;
mod split;
pub mod synthetic;
mod watch;

pub use dir_state::DirChange;
pub use error::{DocumentError, Location, SourceError};
pub use manifests::{load_dir, load_dir_with};
pub use object::{split_namespaced, Kind, Object, ObjectRef};
pub use parse::{parse_manifest, parse_manifest_with, ObjectMapper, ParsedFile};
pub use watch::{ManifestWatcher, WatchConfig};
