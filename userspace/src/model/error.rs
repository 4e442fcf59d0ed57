//! Problems the model found in otherwise well-formed objects.

use std::path::PathBuf;

use super::types::{FrontendKey, ServiceId};
use crate::source::ObjectRef;

/// A problem with an object's content, naming the file and the object.
///
/// None of these stop anything else from being served.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The object is invalid (the API server would have rejected it) and is
    /// not used. If the same file had a valid version before, that one is
    /// kept (see [`ModelError::KeptPrevious`]).
    #[error("{}: {object}: {reason}", file.display())]
    Invalid {
        /// The file defining the object.
        file: PathBuf,
        /// The object.
        object: ObjectRef,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// Part of the object cannot be used (e.g. an SCTP port); the rest is.
    #[error("{}: {object}: {reason}", file.display())]
    Partial {
        /// The file defining the object.
        file: PathBuf,
        /// The object.
        object: ObjectRef,
        /// What is not used and why.
        reason: String,
    },
    /// The object is defined in two files (or twice in one); the definition
    /// applied last wins until it is removed.
    #[error(
        "{}: {object}: also defined in {}; using this definition (applied last)",
        file.display(),
        other_file.display()
    )]
    Duplicate {
        /// The file whose definition is now used.
        file: PathBuf,
        /// The object.
        object: ObjectRef,
        /// The other file defining it.
        other_file: PathBuf,
    },
    /// The file changed but the object's new definition could not be read or
    /// was invalid, so its previous definition stays in effect, as the API
    /// server keeps the old object when an update is rejected.
    #[error(
        "{}: {object}: new definition unusable; keeping the previous one",
        file.display()
    )]
    KeptPrevious {
        /// The file defining the object.
        file: PathBuf,
        /// The object.
        object: ObjectRef,
    },
    /// Two Services claim the same frontend: a cluster IP or node port
    /// (impossible in a real cluster, where both are allocated uniquely), or
    /// an external or load-balancer IP and port (user-chosen, so it can
    /// happen). The older Service (then the first by namespace/name) keeps
    /// it; the other does not get it.
    #[error(
        "{}: Service {loser}: frontend {key} is already used by Service {winner} (from {}); not serving it for {loser}",
        file.display(),
        winner_file.display()
    )]
    Conflict {
        /// The file defining the losing Service.
        file: PathBuf,
        /// The contested frontend.
        key: FrontendKey,
        /// The Service that does not get the frontend.
        loser: ServiceId,
        /// The Service that keeps it.
        winner: ServiceId,
        /// The file defining the winner.
        winner_file: PathBuf,
    },
}
