//! Parses one manifest file (YAML stream or JSON) into typed Kubernetes objects.
//!
//! Objects must look exactly as the API server would serve them; we only
//! apply what `kubectl apply` would add (a `default` namespace) and drop what
//! we never read but can be huge (`managedFields`, the last-applied annotation).
//!
//! Speed: block-style YAML documents take a fast path (kind read from the
//! text, unwanted kinds skipped unparsed, wanted ones deserialized straight
//! into their type); everything else, and every error, goes through a
//! `serde_yaml::Value`, which can tell precisely what is wrong.

use std::path::Path;

use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::DeserializeOwned;
use serde_yaml::{Mapping, Value};

use super::error::{Location, SourceError};
use super::object::{Kind, Object, ObjectRef};
use super::parallel::par_map;
use super::split::{split_documents, DocSpan};

/// Files at least this big have their documents parsed on several threads
/// (one big file holding a whole cluster must not be single-threaded).
const PARALLEL_MIN_BYTES: usize = 256 * 1024;
/// Documents per parallel work item: big enough to amortise the hand-off.
const DOCS_PER_TASK: usize = 64;
/// Written by `kubectl apply`: a full copy of the object, never needed here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The result of parsing one file: every usable object, and one error per
/// unusable document or list item. One bad document never loses the others.
///
/// `T` is what each object was turned into right after parsing (see
/// [`parse_manifest_with`]); by default the k8s object itself.
#[derive(Clone, Debug)]
pub struct ParsedFile<T = Object> {
    /// The objects of the requested kinds, in file order.
    pub objects: Vec<T>,
    /// Problems, in file order.
    pub errors: Vec<SourceError>,
}

impl<T> Default for ParsedFile<T> {
    fn default() -> Self {
        ParsedFile {
            objects: Vec::new(),
            errors: Vec::new(),
        }
    }
}

impl<T> ParsedFile<T> {
    /// A file that yielded nothing but `error` (e.g. it could not be read).
    pub fn from_error(error: SourceError) -> Self {
        ParsedFile {
            objects: Vec::new(),
            errors: vec![error],
        }
    }

    fn append(&mut self, mut other: ParsedFile<T>) {
        self.objects.append(&mut other.objects);
        self.errors.append(&mut other.errors);
    }
}

/// Turns each parsed object into what the consumer keeps, on the parsing
/// thread, right after the object is parsed: memory then never holds more
/// than a few k8s objects at a time, even for a file with thousands.
pub type ObjectMapper<T> = dyn Fn(Object) -> T + Send + Sync;

/// Parses the manifest `text` read from `path`, keeping only objects whose
/// `kind` is listed in `kinds` (e.g. `&["Service", "EndpointSlice"]`).
///
/// Other kinds (ConfigMap, Deployment, …) are silently ignored. `*.json`
/// files are a JSON value (or a stream of them); anything else is a YAML
/// stream of `---`-separated documents. `kind: List` and typed lists
/// (`ServiceList`, as the API server serves them) are flattened.
pub fn parse_manifest(path: &Path, text: &str, kinds: &[&str]) -> ParsedFile {
    parse_manifest_with(path, text, kinds, &|object| object)
}

/// Like [`parse_manifest`], passing every object through `map` as soon as it
/// is parsed (the model uses this to keep only its compact form).
pub fn parse_manifest_with<T: Send>(
    path: &Path,
    text: &str,
    kinds: &[&str],
    map: &ObjectMapper<T>,
) -> ParsedFile<T> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let ctx = Ctx { path, kinds, map };
    if is_json(path) {
        parse_json(&ctx, text)
    } else {
        parse_yaml(&ctx, text)
    }
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"))
}

/// What every document of a file is parsed with.
struct Ctx<'a, T> {
    path: &'a Path,
    kinds: &'a [&'a str],
    map: &'a ObjectMapper<T>,
}

impl<T> Ctx<'_, T> {
    /// Finishes a parsed object and hands it to the mapper.
    fn accept(&self, mut object: Object, out: &mut ParsedFile<T>) {
        strip_unused_fields(&mut object);
        default_namespace(&mut object);
        out.objects.push((self.map)(object));
    }
}

/// The raw text of one document, kept to re-parse it for a precise error.
#[derive(Clone, Copy)]
enum DocText<'a> {
    /// A YAML document whose first line is `line` in the file.
    Yaml { text: &'a str, line: usize },
    /// One JSON value.
    Json { text: &'a str },
}

impl DocText<'_> {
    fn line(&self) -> Option<usize> {
        match self {
            DocText::Yaml { line, .. } => Some(*line),
            DocText::Json { .. } => None,
        }
    }

    fn reparse(&self) -> Option<Value> {
        match self {
            DocText::Yaml { text, .. } => serde_yaml::from_str(text).ok(),
            DocText::Json { text } => serde_json::from_str(text).ok(),
        }
    }
}

fn parse_yaml<T: Send>(ctx: &Ctx<T>, text: &str) -> ParsedFile<T> {
    let spans = split_documents(text);
    let parse_chunk = |(first_index, chunk): &(usize, &[DocSpan])| {
        let mut out = ParsedFile::default();
        for (i, span) in chunk.iter().enumerate() {
            parse_yaml_document(ctx, first_index + i + 1, text, *span, &mut out);
        }
        out
    };
    if text.len() < PARALLEL_MIN_BYTES {
        return parse_chunk(&(0, &spans));
    }
    let chunks: Vec<(usize, &[DocSpan])> = spans
        .chunks(DOCS_PER_TASK)
        .enumerate()
        .map(|(i, chunk)| (i * DOCS_PER_TASK, chunk))
        .collect();
    let mut out = ParsedFile::default();
    for part in par_map(&chunks, parse_chunk) {
        out.append(part);
    }
    out
}

fn parse_yaml_document<T>(
    ctx: &Ctx<T>,
    document: usize,
    text: &str,
    span: DocSpan,
    out: &mut ParsedFile<T>,
) {
    let doc_text = &text[span.start..span.end];
    if parse_yaml_fast(ctx, doc_text, out) {
        return;
    }
    let doc = DocText::Yaml {
        text: doc_text,
        line: span.line,
    };
    match serde_yaml::from_str::<Value>(doc_text) {
        Ok(value) => handle_document(ctx, document, doc, value, out),
        Err(err) => {
            let (reason, line) = yaml_error_parts(&err, span.line);
            out.errors.push(SourceError::document(
                Location {
                    path: ctx.path.to_owned(),
                    document,
                    item: None,
                    line: line.or(Some(span.line)),
                },
                None,
                reason,
            ));
        }
    }
}

fn parse_json<T>(ctx: &Ctx<T>, text: &str) -> ParsedFile<T> {
    let mut out = ParsedFile::default();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0;
    let mut document = 0;
    while let Some(next) = stream.next() {
        document += 1;
        match next {
            Ok(value) => {
                let end = stream.byte_offset();
                let doc = DocText::Json {
                    text: &text[start..end],
                };
                start = end;
                handle_document(ctx, document, doc, value, &mut out);
            }
            Err(err) => {
                // A JSON syntax error ends the stream: serde_json cannot resync.
                let (line, column) = (err.line(), err.column());
                let msg = err.to_string();
                let suffix = format!(" at line {line} column {column}");
                let reason = msg.strip_suffix(&suffix).unwrap_or(&msg).to_owned();
                out.errors.push(SourceError::document(
                    Location {
                        path: ctx.path.to_owned(),
                        document,
                        item: None,
                        line: (line > 0).then_some(line),
                    },
                    None,
                    reason,
                ));
                break;
            }
        }
    }
    out
}

/// Dispatches a parsed document: nothing, a list, or one object.
fn handle_document<T>(
    ctx: &Ctx<T>,
    document: usize,
    doc: DocText,
    value: Value,
    out: &mut ParsedFile<T>,
) {
    let location = |item| Location {
        path: ctx.path.to_owned(),
        document,
        item,
        line: doc.line(),
    };
    let mut map = match value {
        // An empty document (`---` followed by nothing) is legal and means nothing.
        Value::Null => return,
        Value::Mapping(map) => map,
        _ => {
            out.errors.push(document_error(
                location(None),
                None,
                "not a Kubernetes object (the document is not a mapping)".into(),
            ));
            return;
        }
    };
    let Some(list_kind) = list_item_kind(&map) else {
        handle_object(ctx, doc, location(None), None, map, out);
        return;
    };
    let list_api_version = str_field(&map, "apiVersion").map(str::to_owned);
    match map.remove("items") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(items)) => {
            for (i, item) in items.into_iter().enumerate() {
                match item {
                    Value::Mapping(mut item_map) => {
                        apply_list_defaults(list_kind, list_api_version.as_deref(), &mut item_map);
                        handle_object(ctx, doc, location(Some(i)), Some(i), item_map, out);
                    }
                    _ => out.errors.push(document_error(
                        location(Some(i)),
                        None,
                        "not a Kubernetes object (the list item is not a mapping)".into(),
                    )),
                }
            }
        }
        Some(_) => out.errors.push(document_error(
            location(None),
            None,
            "items: expected a sequence".into(),
        )),
    }
}

/// For a list document, the kind its items default to: `Some(None)` for a
/// generic `List` (items carry their own kind), `Some(Some(k))` for a typed
/// `<Kind>List` as served by the API server (items carry no kind), `None`
/// if the document is not a list.
fn list_item_kind(map: &Mapping) -> Option<Option<&'static str>> {
    let kind = str_field(map, "kind")?;
    if kind == "List" {
        return Some(None);
    }
    let item_kind = Kind::from_name(kind.strip_suffix("List")?)?;
    Some(Some(item_kind.as_str()))
}

/// The API server omits `kind`/`apiVersion` from the items of a typed list.
fn apply_list_defaults(list_kind: Option<&str>, api_version: Option<&str>, item: &mut Mapping) {
    let Some(kind) = list_kind else { return };
    if !item.contains_key("kind") {
        item.insert("kind".into(), kind.into());
    }
    if let Some(api_version) = api_version {
        if !item.contains_key("apiVersion") {
            item.insert("apiVersion".into(), api_version.into());
        }
    }
}

/// Checks and deserializes one object of a wanted kind.
fn handle_object<T>(
    ctx: &Ctx<T>,
    doc: DocText,
    location: Location,
    item: Option<usize>,
    mut map: Mapping,
    out: &mut ParsedFile<T>,
) {
    let kind_name = match map.get("kind") {
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => {
            out.errors.push(document_error(
                location,
                None,
                "kind: expected a string".into(),
            ));
            return;
        }
        None => {
            out.errors.push(document_error(
                location,
                None,
                "not a Kubernetes object (kind is missing)".into(),
            ));
            return;
        }
    };
    if !ctx.kinds.contains(&kind_name) {
        return;
    }
    // A kind the caller asked for but this module does not know cannot be
    // produced; treat it like any other unwanted kind.
    let Some(kind) = Kind::from_name(kind_name) else {
        return;
    };

    let metadata = match map.get("metadata") {
        Some(Value::Mapping(metadata)) => Some(metadata),
        _ => None,
    };
    let name = metadata.and_then(|m| m.get("name"));
    let object = match name {
        Some(Value::String(name)) if !name.is_empty() => Some(ObjectRef {
            kind,
            namespace: kind.is_namespaced().then(|| {
                metadata
                    .and_then(|m| str_field(m, "namespace"))
                    .filter(|ns| !ns.is_empty())
                    .unwrap_or("default")
                    .to_owned()
            }),
            name: name.clone(),
        }),
        // Present but not a string: let deserialization report the exact problem.
        Some(value) if !value.is_null() && !value.is_string() => None,
        _ => {
            // generateName cannot work here: there is no API server to pick
            // a name, and the object must have a stable identity across reloads.
            out.errors.push(document_error(
                location,
                None,
                format!("{kind}: metadata.name is missing"),
            ));
            return;
        }
    };

    match str_field(&map, "apiVersion") {
        Some(version) if version == kind.api_version() => {}
        Some(version) => {
            out.errors.push(document_error(
                location,
                object,
                format!(
                    "apiVersion {version} is not supported for {kind} (use {})",
                    kind.api_version()
                ),
            ));
            return;
        }
        None => {
            out.errors.push(document_error(
                location,
                object,
                format!("apiVersion is missing (use {})", kind.api_version()),
            ));
            return;
        }
    }

    strip_unused_metadata(&mut map);
    let value = Value::Mapping(map);
    let parsed = match kind {
        Kind::Service => typed::<Service>(value, doc, item).map(|o| Object::Service(Box::new(o))),
        Kind::EndpointSlice => {
            typed::<EndpointSlice>(value, doc, item).map(|o| Object::EndpointSlice(Box::new(o)))
        }
        Kind::Node => typed::<Node>(value, doc, item).map(|o| Object::Node(Box::new(o))),
        Kind::Ingress => typed::<Ingress>(value, doc, item).map(|o| Object::Ingress(Box::new(o))),
        Kind::IngressClass => {
            typed::<IngressClass>(value, doc, item).map(|o| Object::IngressClass(Box::new(o)))
        }
        Kind::Secret => typed::<Secret>(value, doc, item).map(|o| Object::Secret(Box::new(o))),
    };
    match parsed {
        Ok(object) => ctx.accept(object, out),
        Err((reason, line)) => {
            let location = Location {
                line: line.or(location.line),
                ..location
            };
            out.errors.push(document_error(location, object, reason));
        }
    }
}

/// What `kubectl apply` does without `-n`: namespaced objects land in
/// `default`; a namespace on a cluster-scoped object is ignored by the server.
fn default_namespace(object: &mut Object) {
    let namespaced = object.kind().is_namespaced();
    let metadata = object.metadata_mut();
    if !namespaced {
        metadata.namespace = None;
    } else if metadata.namespace.as_deref().is_none_or(str::is_empty) {
        metadata.namespace = Some("default".to_owned());
    }
}

/// Drops fields we never read but that can dwarf the object itself (they are
/// also removed from the text before typed parsing on the slow path).
fn strip_unused_fields(object: &mut Object) {
    let metadata = object.metadata_mut();
    metadata.managed_fields = None;
    if let Some(annotations) = &mut metadata.annotations {
        annotations.remove(LAST_APPLIED);
    }
}

/// The fast path for the common case, a block-style YAML document: the
/// top-level `kind:` and `apiVersion:` lines are read from the text, unwanted
/// kinds are skipped without parsing, and wanted ones are deserialized
/// straight into their type (no intermediate `Value`: about 1.5× faster).
///
/// Returns false to fall back to the general path, which also produces every
/// error message (lists, flow style, wrong apiVersion, any parse error).
fn parse_yaml_fast<T>(ctx: &Ctx<T>, doc: &str, out: &mut ParsedFile<T>) -> bool {
    let Some((kind_name, api_version)) = scan_header(doc) else {
        return false;
    };
    if kind_name.ends_with("List") {
        return false;
    }
    if !ctx.kinds.contains(&kind_name) {
        return true;
    }
    let Some(kind) = Kind::from_name(kind_name) else {
        return true;
    };
    if api_version != kind.api_version() {
        return false;
    }
    let parsed = match kind {
        Kind::Service => serde_yaml::from_str::<Service>(doc).map(|o| Object::Service(Box::new(o))),
        Kind::EndpointSlice => {
            serde_yaml::from_str::<EndpointSlice>(doc).map(|o| Object::EndpointSlice(Box::new(o)))
        }
        Kind::Node => serde_yaml::from_str::<Node>(doc).map(|o| Object::Node(Box::new(o))),
        Kind::Ingress => serde_yaml::from_str::<Ingress>(doc).map(|o| Object::Ingress(Box::new(o))),
        Kind::IngressClass => {
            serde_yaml::from_str::<IngressClass>(doc).map(|o| Object::IngressClass(Box::new(o)))
        }
        Kind::Secret => serde_yaml::from_str::<Secret>(doc).map(|o| Object::Secret(Box::new(o))),
    };
    match parsed {
        Ok(object) if !object.name().is_empty() => {
            ctx.accept(object, out);
            true
        }
        _ => false,
    }
}

/// The values of the top-level `kind:` and `apiVersion:` keys of a
/// block-style document, read from lines starting at column 0 (in YAML only
/// top-level keys can start there). `None` when either is missing or not a
/// simple scalar: the caller then parses the document properly.
fn scan_header(doc: &str) -> Option<(&str, &str)> {
    let (mut kind, mut api_version) = (None, None);
    for line in doc.lines() {
        if let Some(rest) = line.strip_prefix("kind:") {
            kind = Some(simple_scalar(rest)?);
        } else if let Some(rest) = line.strip_prefix("apiVersion:") {
            api_version = Some(simple_scalar(rest)?);
        }
        if let (Some(kind), Some(api_version)) = (kind, api_version) {
            return Some((kind, api_version));
        }
    }
    None
}

/// A plain or quoted scalar made of the characters kinds and API versions
/// use, with an optional trailing comment; `None` for anything fancier.
fn simple_scalar(rest: &str) -> Option<&str> {
    let mut value = rest.trim();
    if let Some(comment) = value.find(" #").or_else(|| value.find("\t#")) {
        value = value[..comment].trim_end();
    }
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            value = inner;
            break;
        }
    }
    let simple = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_'));
    simple.then_some(value)
}

/// Drops fields we never read but that can dwarf the object itself, before
/// they are turned into typed structs.
fn strip_unused_metadata(map: &mut Mapping) {
    if let Some(Value::Mapping(metadata)) = map.get_mut("metadata") {
        metadata.remove("managedFields");
        if let Some(Value::Mapping(annotations)) = metadata.get_mut("annotations") {
            annotations.remove(LAST_APPLIED);
        }
    }
}

/// Deserializes a typed object from an already parsed value (fast path).
///
/// serde_yaml only tracks the field path (`spec.ports[0].port`) when it
/// deserializes from text, so on failure we re-parse just this document from
/// text to produce a precise message. Errors are rare; the cost is irrelevant.
fn typed<T: DeserializeOwned>(
    value: Value,
    doc: DocText,
    item: Option<usize>,
) -> Result<T, (String, Option<usize>)> {
    match serde_yaml::from_value::<T>(value) {
        Ok(object) => Ok(object),
        Err(err) => Err(precise_error::<T>(doc, item).unwrap_or_else(|| (err.to_string(), None))),
    }
}

/// Re-parses `doc` (or its `items[item]`) from text to get a path-qualified
/// error and, for top-level YAML documents, its line in the file.
fn precise_error<T: DeserializeOwned>(
    doc: DocText,
    item: Option<usize>,
) -> Option<(String, Option<usize>)> {
    if let (DocText::Yaml { text, line }, None) = (doc, item) {
        let err = serde_yaml::from_str::<T>(text).err()?;
        return Some(yaml_error_parts(&err, line));
    }
    // List items and JSON: serialize the one object back to YAML and parse it
    // from text; the line numbers of that text mean nothing, so drop them.
    let mut value = doc.reparse()?;
    if let Some(i) = item {
        let Value::Mapping(map) = &mut value else {
            return None;
        };
        let list_kind = list_item_kind(map)?;
        let api_version = str_field(map, "apiVersion").map(str::to_owned);
        let Some(Value::Sequence(items)) = map.remove("items") else {
            return None;
        };
        let Value::Mapping(mut item_map) = items.into_iter().nth(i)? else {
            return None;
        };
        apply_list_defaults(list_kind, api_version.as_deref(), &mut item_map);
        value = Value::Mapping(item_map);
    }
    let text = serde_yaml::to_string(&value).ok()?;
    let err = serde_yaml::from_str::<T>(&text).err()?;
    Some((yaml_error_parts(&err, 1).0, None))
}

/// Splits serde_yaml's message into the reason and the absolute line, given
/// the line in the file where the parsed text started.
fn yaml_error_parts(err: &serde_yaml::Error, first_line: usize) -> (String, Option<usize>) {
    let message = err.to_string();
    let Some(location) = err.location() else {
        return (message, None);
    };
    let line = first_line + location.line().saturating_sub(1);
    let suffix = format!(" at line {} column {}", location.line(), location.column());
    match message.strip_suffix(&suffix) {
        Some(reason) => (reason.to_owned(), Some(line)),
        // libyaml syntax errors mention several positions; fix them all up.
        None => (shift_line_numbers(&message, first_line - 1), Some(line)),
    }
}

/// Adds `offset` to every `line N` in `message`.
fn shift_line_numbers(message: &str, offset: usize) -> String {
    if offset == 0 {
        return message.to_owned();
    }
    let mut out = String::with_capacity(message.len() + 8);
    let mut rest = message;
    while let Some(pos) = rest.find("line ") {
        let (before, after) = rest.split_at(pos + "line ".len());
        out.push_str(before);
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        match after[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&after[..digits]),
        }
        rest = &after[digits..];
    }
    out.push_str(rest);
    out
}

fn str_field<'a>(map: &'a Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(Value::as_str)
}

fn document_error(location: Location, object: Option<ObjectRef>, reason: String) -> SourceError {
    SourceError::document(location, object, reason)
}

#[cfg(test)]
mod tests;
