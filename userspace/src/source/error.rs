//! Errors found while reading manifests: each names the file, where in it, and the object.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::object::ObjectRef;

/// Where in a manifest file a problem was found.
///
/// Displays as `path:line (document N, items[I])`, leaving out what is unknown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The manifest file.
    pub path: PathBuf,
    /// 1-based index of the YAML document (or JSON value) within the file.
    pub document: usize,
    /// 0-based index within a `List`'s `items`, when the object came from one.
    pub item: Option<usize>,
    /// 1-based line within the file, when known.
    pub line: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, " (document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        f.write_str(")")
    }
}

/// A problem reading a manifest directory or file.
///
/// `Clone` (the I/O error is shared) so that parsed files can be cloned and
/// errors kept around for status reporting.
#[derive(Clone, Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: Arc<io::Error>,
    },
    /// One document (or one `List` item) could not be used; the rest of the
    /// file is unaffected. Boxed: errors travel in `Result`s and vectors.
    #[error("{0}")]
    Document(Box<DocumentError>),
}

/// Why one document (or `List` item) could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {}{reason}", ObjectPrefix(object.as_ref()))]
pub struct DocumentError {
    /// Where the document is.
    pub location: Location,
    /// The object the document defines, when its kind and name could be read.
    pub object: Option<ObjectRef>,
    /// What is wrong, e.g. `spec.ports[0].port: invalid type: string "x", expected i32`.
    pub reason: String,
}

impl SourceError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> Self {
        SourceError::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// A problem with one document.
    pub fn document(location: Location, object: Option<ObjectRef>, reason: String) -> Self {
        SourceError::Document(Box::new(DocumentError {
            location,
            object,
            reason,
        }))
    }

    /// The file (or directory) the error is about.
    pub fn path(&self) -> &Path {
        match self {
            SourceError::Io { path, .. } => path,
            SourceError::Document(doc) => &doc.location.path,
        }
    }

    /// The object the error is about, when known.
    ///
    /// Consumers use this to keep the last good version of exactly that object
    /// instead of deleting it because of a typo (as the API server would keep
    /// the old object when an update is rejected).
    pub fn object(&self) -> Option<&ObjectRef> {
        match self {
            SourceError::Io { .. } => None,
            SourceError::Document(doc) => doc.object.as_ref(),
        }
    }
}

/// Displays `Kind ns/name: ` or nothing.
struct ObjectPrefix<'a>(Option<&'a ObjectRef>);

impl fmt::Display for ObjectPrefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(object) => write!(f, "{object}: "),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Kind;

    #[test]
    fn document_error_names_file_line_document_object_and_reason() {
        let err = SourceError::document(
            Location {
                path: "manifests/web.yaml".into(),
                document: 2,
                item: None,
                line: Some(12),
            },
            Some(ObjectRef::namespaced(Kind::Service, "default", "web")),
            "spec.ports[0].port: invalid type: string \"x\", expected i32".into(),
        );
        assert_eq!(
            err.to_string(),
            "manifests/web.yaml:12 (document 2): Service default/web: \
             spec.ports[0].port: invalid type: string \"x\", expected i32"
        );
    }

    #[test]
    fn list_item_error_without_object() {
        let err = SourceError::document(
            Location {
                path: "a.json".into(),
                document: 1,
                item: Some(3),
                line: None,
            },
            None,
            "missing kind".into(),
        );
        assert_eq!(
            err.to_string(),
            "a.json (document 1, items[3]): missing kind"
        );
    }

    #[test]
    fn io_error_names_path() {
        let err = SourceError::io(
            Path::new("/m/x.yaml"),
            io::Error::new(io::ErrorKind::PermissionDenied, "denied"),
        );
        assert_eq!(err.to_string(), "/m/x.yaml: denied");
        assert_eq!(err.path(), Path::new("/m/x.yaml"));
        assert!(err.object().is_none());
    }
}
