//! Splitting a YAML stream into its documents while keeping each one's exact text, so that
//! documents left alone are written back byte for byte.

/// One document of a stream: its text from its `---` line (if any) to the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawDocument<'a> {
    /// The exact text, separator line included.
    pub(crate) text: &'a str,
    /// The 1-based line number where `text` starts in the stream.
    pub(crate) first_line: usize,
}

/// `---` at the start of a line, alone or followed by a space, a tab or a comment: a document
/// separator (YAML 1.2, "directives end marker").
fn is_separator(line: &str) -> bool {
    let line = line.trim_end_matches(['\n', '\r']);
    match line.strip_prefix("---") {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t']),
        None => false,
    }
}

/// A line outside any node: blank, or a comment starting in the first column (a `#` line that
/// is indented may belong to a block scalar).
fn is_outside(line: &str) -> bool {
    let trimmed = line.trim_end_matches(['\n', '\r']);
    trimmed.trim().is_empty() || trimmed.starts_with('#')
}

/// The documents of `text`, in order; their texts concatenated are `text`.
pub(crate) fn split(text: &str) -> Vec<RawDocument<'_>> {
    let mut docs = Vec::new();
    let (mut start, mut start_line, mut offset) = (0, 1, 0);
    for (n, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line) && offset > start {
            docs.push(RawDocument {
                text: &text[start..offset],
                first_line: start_line,
            });
            (start, start_line) = (offset, n + 1);
        }
        offset += line.len();
    }
    docs.push(RawDocument {
        text: &text[start..],
        first_line: start_line,
    });
    docs
}

impl<'a> RawDocument<'a> {
    fn lines(&self) -> impl Iterator<Item = &'a str> + Clone {
        self.text.split_inclusive('\n')
    }

    /// The separator line, if the document has one.
    pub(crate) fn separator(&self) -> Option<&'a str> {
        self.lines().next().filter(|l| is_separator(l))
    }

    /// Whether the document holds no node (only a separator, blank lines and comments).
    pub(crate) fn is_empty(&self) -> bool {
        self.lines()
            .skip(usize::from(self.separator().is_some()))
            .all(|l| is_outside(l) || l.trim_end() == "...")
    }

    /// Blank and comment lines right after the separator (a header, a section title).
    pub(crate) fn leading(&self) -> String {
        self.lines()
            .skip(usize::from(self.separator().is_some()))
            .take_while(|l| is_outside(l))
            .collect()
    }

    /// Blank and comment lines at the end (often the next section's title).
    pub(crate) fn trailing(&self) -> String {
        let body: Vec<&str> = self
            .lines()
            .skip(usize::from(self.separator().is_some()))
            .collect();
        let mut tail: Vec<&str> = body
            .into_iter()
            .rev()
            .take_while(|l| is_outside(l))
            .collect();
        tail.reverse();
        tail.concat()
    }

    /// The 1-based line of the first node (for messages), or of the start.
    pub(crate) fn content_line(&self) -> usize {
        let skip = usize::from(self.separator().is_some());
        let blank = self
            .lines()
            .skip(skip)
            .take_while(|l| is_outside(l))
            .count();
        self.first_line + skip + blank
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "# License\n\n---\n# Service\napiVersion: v1\nkind: Service\n\
        # next\n--- # second\nkind: Pod\n---\n";

    #[test]
    fn splits_and_keeps_every_byte() {
        let docs = split(STREAM);
        assert_eq!(docs.len(), 4);
        assert_eq!(docs.iter().map(|d| d.text).collect::<String>(), STREAM);
        assert_eq!(docs[0].text, "# License\n\n");
        assert!(docs[0].is_empty() && docs[3].is_empty());
        assert!(!docs[1].is_empty());
        assert_eq!(
            docs.iter().map(|d| d.first_line).collect::<Vec<_>>(),
            [1, 3, 8, 10]
        );
        assert_eq!(docs[1].separator(), Some("---\n"));
        assert_eq!(docs[1].leading(), "# Service\n");
        assert_eq!(docs[1].trailing(), "# next\n");
        assert_eq!(docs[1].content_line(), 5);
        assert_eq!(docs[2].separator(), Some("--- # second\n"));
        assert_eq!(docs[2].content_line(), 9);
    }

    #[test]
    fn separators_need_the_first_column_and_a_break() {
        let docs = split("a: |\n  ---\n---x: 1\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(split("").len(), 1);
        assert_eq!(split("---\na: 1").len(), 1);
        let block = split("a: |\n  text\n  # inside\n");
        assert_eq!(block[0].trailing(), "");
    }
}
