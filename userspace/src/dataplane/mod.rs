//! The dataplane: loading and attaching the eBPF programs, and keeping the
//! load-balancer maps equal to the desired frontends.

pub mod attached;
pub mod ct_gc;
pub mod ids;
pub mod loader;
pub mod maglev;
pub mod maps;
pub mod node_maps;
mod sys;
pub mod writer;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use loader::Datapath;
pub use maps::{BpfMaps, LbMaps, Snapshot};
pub use writer::{Stats, Writer};

/// Dataplane errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A map operation failed (a full map shows up here as E2BIG/ENOMEM).
    #[error("BPF map {map}: {op} failed: {source}")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The eBPF object lacks a map the agent needs (a build mismatch).
    #[error("BPF map {0} missing from the eBPF object")]
    MissingMap(&'static str),
    /// A pinned map could not be opened.
    #[error("cannot open pinned map {path}: {source} (is the agent installed with this --bpffs?)")]
    OpenPin {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    /// No id left to hand out.
    #[error("out of {0} ids")]
    IdsExhausted(&'static str),
    /// More backends than a frontend's slot counter can address.
    #[error("frontend {frontend} has {count} backends; at most 65535 are supported")]
    TooManyBackends { frontend: String, count: usize },
    /// Loading, attaching or pinning the programs failed.
    #[error("{context}: {source}")]
    Load {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
