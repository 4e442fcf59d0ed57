//! Splits a multi-document YAML stream into its documents without parsing them.
//!
//! We split ourselves instead of letting serde_yaml iterate the stream
//! because (a) libyaml stops at the first syntax error, which would lose every
//! later document in the file, (b) independent documents can then be parsed in
//! parallel, and (c) we know each document's first line for error messages.
//!
//! This is exact for YAML: a line starting with `---` followed by whitespace
//! or end of line is always a document marker at column 0 (YAML 1.2 §9.1.2
//! forbids that content even inside block or quoted scalars), and so is a `...`
//! line (document end). `%` directives are not supported (kubectl users never
//! write them).

/// One document's byte range within the text and its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DocSpan {
    /// Byte offset of the document's first line with content (its `---`
    /// line only when content follows the marker on that line).
    pub start: usize,
    /// Byte offset just past the document.
    pub end: usize,
    /// 1-based line number of `start`.
    pub line: usize,
}

/// Splits `text` into documents, dropping those that contain only blank
/// lines, comments and markers (they are empty documents, not errors).
pub fn split_documents(text: &str) -> Vec<DocSpan> {
    let mut spans = Vec::new();
    let mut current = Pending {
        start: 0,
        line: 1,
        has_content: false,
    };
    let mut offset = 0;
    for (index, raw_line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        let line = raw_line.trim_end_matches(['\n', '\r']);
        if is_marker(line, "---") {
            current.close(offset, &mut spans);
            // The `---` line belongs to the new document: it may carry content
            // (`--- {a: 1}`), and libyaml accepts an explicit start marker.
            current = Pending {
                start: offset,
                line: line_no,
                has_content: line.len() > 3 && has_content(&line[3..]),
            };
        } else if is_marker(line, "...") {
            current.close(offset, &mut spans);
            current = Pending {
                start: offset + raw_line.len(),
                line: line_no + 1,
                has_content: false,
            };
        } else if !current.has_content && has_content(line) {
            // Start the document at its first real line so that reported line
            // numbers point at content, not at a `---` or comment above it.
            current = Pending {
                start: offset,
                line: line_no,
                has_content: true,
            };
        }
        offset += raw_line.len();
    }
    current.close(offset, &mut spans);
    spans
}

/// A document being scanned.
struct Pending {
    start: usize,
    line: usize,
    has_content: bool,
}

impl Pending {
    fn close(&self, end: usize, spans: &mut Vec<DocSpan>) {
        if self.has_content {
            spans.push(DocSpan {
                start: self.start,
                end,
                line: self.line,
            });
        }
    }
}

/// `---` or `...` at column 0, followed by whitespace or end of line.
fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Whether a line holds anything but whitespace and a comment.
fn has_content(line: &str) -> bool {
    let trimmed = line.trim_start();
    !trimmed.is_empty() && !trimmed.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn docs(text: &str) -> Vec<(&str, usize)> {
        split_documents(text)
            .into_iter()
            .map(|s| (&text[s.start..s.end], s.line))
            .collect()
    }

    #[test]
    fn single_document_without_marker() {
        assert_eq!(docs("a: 1\nb: 2\n"), vec![("a: 1\nb: 2\n", 1)]);
    }

    #[test]
    fn splits_on_markers_and_keeps_line_numbers() {
        let text = "# header\n---\na: 1\n---\n\n# only a comment\n---\nb: 2\n";
        assert_eq!(docs(text), vec![("a: 1\n", 3), ("b: 2\n", 8)]);
    }

    #[test]
    fn marker_needs_whitespace_or_eol_after_it() {
        let text = "a: |\n  x\n----\nb: 1\n--- # c\nc: 2";
        assert_eq!(
            docs(text),
            vec![("a: |\n  x\n----\nb: 1\n", 1), ("c: 2", 6)]
        );
    }

    #[test]
    fn content_on_marker_line_counts() {
        assert_eq!(docs("--- {a: 1}\n"), vec![("--- {a: 1}\n", 1)]);
    }

    #[test]
    fn document_end_marker_ends_a_document() {
        let text = "a: 1\n...\nb: 2\n...\n";
        assert_eq!(docs(text), vec![("a: 1\n", 1), ("b: 2\n", 3)]);
    }

    #[test]
    fn crlf_and_empty_input() {
        assert_eq!(docs(""), vec![]);
        assert_eq!(docs("---\r\n---\r\n"), vec![]);
        assert_eq!(docs("---\r\na: 1\r\n"), vec![("a: 1\r\n", 2)]);
    }
}
