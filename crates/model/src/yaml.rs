//! YAML text to a tree of [`Node`]s that remember where they were written.
//!
//! Definitions are read in two steps. This module runs the YAML parser (granit-parser, the
//! parser inside serde-saphyr) and builds one [`Node`] tree per document, with the 1-based line
//! and column of every node. [`crate::de`] then deserializes typed definitions from those trees.
//! Building the tree ourselves, instead of deserializing straight from the text, is what lets
//! the loader report every problem in a file instead of stopping at the first:
//!
//! - a syntax error abandons only its own document; the parser resumes at the next `---`;
//! - duplicate mapping keys are reported with both places, and loading goes on;
//! - scalars keep their text exactly as written (`01` stays `01`, `on` stays `on`), and the
//!   target type decides what the text means.
//!
//! Resources are bounded: the parser's nesting limits stop deep nesting, and alias expansion is
//! counted against [`MAX_YAML_NODES`], which stops "billion laughs" alias bombs.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{ErrorKind, Event, Options, Parser, ScalarStyle, Tag};

use crate::diagnostic::Diagnostic;

/// Deepest nesting of sequences and mappings accepted, counting the document's root as 1.
/// Definitions need about 6 levels; the limit keeps recursion in the loader shallow.
pub const MAX_YAML_DEPTH: usize = 64;

/// Most YAML nodes (scalars, sequences and mappings) one file may hold after alias expansion.
/// A legitimate definition of `MAX_STATES` states stays well below it.
pub const MAX_YAML_NODES: usize = 250_000;

/// A place in a file: 1-based line and column (columns count characters, not bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Loc {
    pub line: u64,
    pub column: u64,
}

impl Loc {
    /// "Somewhere in the file": line and column 0, as [`Diagnostic`] uses for whole-file problems.
    pub const FILE: Loc = Loc { line: 0, column: 0 };
}

/// How a scalar was written. Only plain scalars can be `null`, `true` or numbers; a quoted
/// scalar (or one tagged `!!str`) is always a string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScalarKind {
    Plain,
    Quoted,
}

#[derive(Clone, Debug, PartialEq)]
pub enum NodeValue {
    Scalar {
        text: String,
        kind: ScalarKind,
    },
    Sequence(Vec<Node>),
    /// Entries in the order written; keys are unique (duplicates were reported and dropped).
    Mapping(Vec<(Node, Node)>),
}

/// One YAML node and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub value: NodeValue,
    pub loc: Loc,
    /// Nesting depth of this subtree: 1 for a scalar or an empty collection.
    height: usize,
    /// Nodes in this subtree, itself included.
    size: usize,
}

impl Node {
    fn new(value: NodeValue, loc: Loc) -> Node {
        let (height, size) = match &value {
            NodeValue::Scalar { .. } => (1, 1),
            NodeValue::Sequence(items) => (
                1 + items.iter().map(|n| n.height).max().unwrap_or(0),
                1 + items.iter().map(|n| n.size).sum::<usize>(),
            ),
            NodeValue::Mapping(entries) => (
                1 + entries
                    .iter()
                    .map(|(k, v)| k.height.max(v.height))
                    .max()
                    .unwrap_or(0),
                1 + entries.iter().map(|(k, v)| k.size + v.size).sum::<usize>(),
            ),
        };
        Node {
            value,
            loc,
            height,
            size,
        }
    }

    /// YAML's null: a plain `~`, `null` (any case YAML allows) or nothing at all.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, NodeValue::Scalar { text, kind: ScalarKind::Plain } if is_null_text(text))
    }

    /// The text of a non-null scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar { text, .. } if !self.is_null() => Some(text),
            _ => None,
        }
    }

    pub fn as_mapping(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            NodeValue::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[Node]> {
        match &self.value {
            NodeValue::Sequence(items) => Some(items),
            _ => None,
        }
    }

    /// The key node and value node of `key` in a mapping.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        self.as_mapping()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(k, v)| (k, v))
    }

    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// A short description for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            NodeValue::Scalar { .. } if self.is_null() => "nothing (null)".to_string(),
            NodeValue::Scalar { text, .. } => format!("`{}`", abbreviate(text)),
            NodeValue::Sequence(_) => "a list".to_string(),
            NodeValue::Mapping(_) => "a mapping".to_string(),
        }
    }
}

/// Shortens user text quoted in messages, so a pasted log line does not flood the terminal.
pub fn abbreviate(text: &str) -> String {
    const MAX_QUOTED_CHARS: usize = 60;
    let single_line = text.lines().next().unwrap_or("");
    if single_line.chars().count() > MAX_QUOTED_CHARS || single_line.len() < text.len() {
        let head: String = single_line.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head}...")
    } else {
        single_line.to_string()
    }
}

pub fn is_null_text(text: &str) -> bool {
    matches!(text, "" | "~" | "null" | "Null" | "NULL")
}

/// Every document of a file that parsed, and the problems found while parsing.
#[derive(Debug, Default)]
pub struct ParsedFile {
    /// Non-empty documents in file order. Documents with a syntax error are left out.
    pub documents: Vec<Node>,
    /// Syntax errors, duplicate keys, unsupported tags, exceeded limits.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses every `---`-separated document of `source`.
pub fn parse_file(file: &str, source: &str) -> ParsedFile {
    parse_file_with_limit(file, source, MAX_YAML_NODES)
}

/// Like [`parse_file`], with another bound than [`MAX_YAML_NODES`] on the nodes of the file
/// (bulk imports of large fleets).
pub fn parse_file_with_limit(file: &str, source: &str, max_nodes: usize) -> ParsedFile {
    let mut options = Options::default();
    options.emit_comments = false;
    options.flow_nesting_limit = MAX_YAML_DEPTH;
    options.block_nesting_limit = MAX_YAML_DEPTH;
    let mut parser = Parser::new_from_str_with_options(source, options);
    let mut builder = Builder {
        file,
        out: ParsedFile::default(),
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes_total: 0,
        max_nodes,
    };
    loop {
        match parser.next_event() {
            None => break,
            Some(Ok((event, span))) => {
                let loc = Loc {
                    line: span.start.line() as u64,
                    column: span.start.col() as u64 + 1,
                };
                if let Err(stop) = builder.event(event, loc) {
                    match stop {
                        Stop::Document => {
                            builder.abandon_document();
                            match parser.proceed_next_document() {
                                Ok(true) => continue,
                                _ => break,
                            }
                        }
                        Stop::File => break,
                    }
                }
            }
            Some(Err(error)) => {
                let mark = error.marker();
                let (code, message) = match error.kind() {
                    ErrorKind::RecursionLimitExceeded => (
                        "yaml-too-deep",
                        format!(
                            "The YAML nests lists and mappings deeper than {MAX_YAML_DEPTH} \
                             levels; flatten it."
                        ),
                    ),
                    _ => (
                        "yaml-syntax",
                        format!("YAML syntax error: {}.", error.info()),
                    ),
                };
                builder.out.diagnostics.push(Diagnostic::error(
                    file,
                    mark.line() as u64,
                    mark.col() as u64 + 1,
                    code,
                    message,
                ));
                builder.abandon_document();
                match parser.proceed_next_document() {
                    Ok(true) => continue,
                    _ => break,
                }
            }
        }
    }
    builder.out
}

enum Frame {
    Sequence {
        items: Vec<Node>,
        loc: Loc,
        anchor: usize,
    },
    Mapping {
        entries: Vec<(Node, Node)>,
        pending_key: Option<Node>,
        /// Where each key was first written, to report duplicates.
        first_seen: HashMap<String, Loc>,
        loc: Loc,
        anchor: usize,
    },
}

/// Why building stopped early: skip to the next document, or give up on the file.
enum Stop {
    Document,
    File,
}

struct Builder<'a> {
    file: &'a str,
    out: ParsedFile,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes_total: usize,
    max_nodes: usize,
}

impl Builder<'_> {
    fn error(&mut self, loc: Loc, code: &str, message: String) {
        self.out.diagnostics.push(Diagnostic::error(
            self.file, loc.line, loc.column, code, message,
        ));
    }

    fn abandon_document(&mut self) {
        self.stack.clear();
        self.anchors.clear();
    }

    fn event(&mut self, event: Event<'_>, loc: Loc) -> Result<(), Stop> {
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Anchor(..) => Ok(()),
            Event::DocumentStart(..) | Event::DocumentEnd => {
                // Anchors are local to their document.
                self.anchors.clear();
                Ok(())
            }
            Event::Scalar(text, style, anchor, tag) => {
                let kind = self.scalar_kind(style, tag.as_deref(), loc);
                self.count_nodes(1, loc)?;
                let node = Node::new(
                    NodeValue::Scalar {
                        text: text.into_owned(),
                        kind,
                    },
                    loc,
                );
                self.finish_node(node, anchor)
            }
            Event::SequenceStart(_, anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "seq", loc);
                self.count_nodes(1, loc)?;
                self.stack.push(Frame::Sequence {
                    items: Vec::new(),
                    loc,
                    anchor,
                });
                Ok(())
            }
            Event::MappingStart(_, anchor, tag) => {
                self.check_collection_tag(tag.as_deref(), "map", loc);
                self.count_nodes(1, loc)?;
                self.stack.push(Frame::Mapping {
                    entries: Vec::new(),
                    pending_key: None,
                    first_seen: HashMap::new(),
                    loc,
                    anchor,
                });
                Ok(())
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Frame::Sequence { items, loc, anchor }) => {
                    self.finish_node(Node::new(NodeValue::Sequence(items), loc), anchor)
                }
                Some(Frame::Mapping {
                    entries,
                    loc,
                    anchor,
                    ..
                }) => self.finish_node(Node::new(NodeValue::Mapping(entries), loc), anchor),
                None => Ok(()),
            },
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(target) => {
                    let node = target.clone();
                    self.count_nodes(node.size, loc)?;
                    if self.stack.len() + node.height > MAX_YAML_DEPTH {
                        self.error(
                            loc,
                            "yaml-too-deep",
                            format!(
                                "This alias nests the document deeper than {MAX_YAML_DEPTH} \
                                 levels; write the value out or flatten it."
                            ),
                        );
                        return Err(Stop::Document);
                    }
                    self.finish_node(node, 0)
                }
                None => {
                    self.error(
                        loc,
                        "yaml-syntax",
                        "This alias refers to an anchor that is not complete yet (an alias \
                         cannot point into the node that defines its own anchor)."
                            .to_string(),
                    );
                    Err(Stop::Document)
                }
            },
            Event::UnresolvedAlias(name) => {
                self.error(
                    loc,
                    "yaml-syntax",
                    format!("The alias `*{name}` refers to no anchor `&{name}` before it."),
                );
                Err(Stop::Document)
            }
            // Comments are not requested from the parser (`emit_comments = false`); this arm
            // exists because serde-saphyr enables the parser's `comments` feature.
            #[allow(unreachable_patterns)]
            _ => Ok(()),
        }
    }

    fn scalar_kind(&mut self, style: ScalarStyle, tag: Option<&Tag>, loc: Loc) -> ScalarKind {
        let written = match style {
            ScalarStyle::Plain => ScalarKind::Plain,
            _ => ScalarKind::Quoted,
        };
        match tag {
            None => written,
            Some(tag) if tag.is_yaml_core_schema_tag("str") => ScalarKind::Quoted,
            Some(tag) if tag.is_yaml_core_schema() => written,
            Some(tag) => {
                self.unsupported_tag(tag, loc);
                written
            }
        }
    }

    fn check_collection_tag(&mut self, tag: Option<&Tag>, core: &str, loc: Loc) {
        if let Some(tag) = tag
            && !tag.is_yaml_core_schema_tag(core)
        {
            self.unsupported_tag(tag, loc);
        }
    }

    fn unsupported_tag(&mut self, tag: &Tag, loc: Loc) {
        self.error(
            loc,
            "unsupported-tag",
            format!(
                "The YAML tag `{}` is not supported in definitions; remove it.",
                tag.original()
            ),
        );
    }

    fn count_nodes(&mut self, added: usize, loc: Loc) -> Result<(), Stop> {
        self.nodes_total = self.nodes_total.saturating_add(added);
        if self.nodes_total > self.max_nodes {
            let max_nodes = self.max_nodes;
            self.error(
                loc,
                "yaml-too-large",
                format!(
                    "The file holds more than {max_nodes} YAML values (counting each use \
                     of an alias); split it into several files or use fewer aliases."
                ),
            );
            return Err(Stop::File);
        }
        Ok(())
    }

    /// Hands a completed node to its parent, or ends the document with it.
    fn finish_node(&mut self, node: Node, anchor: usize) -> Result<(), Stop> {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if !node.is_null() {
                    self.out.documents.push(node);
                }
                Ok(())
            }
            Some(Frame::Sequence { items, .. }) => {
                items.push(node);
                Ok(())
            }
            Some(Frame::Mapping {
                entries,
                pending_key,
                first_seen,
                ..
            }) => {
                let Some(key) = pending_key.take() else {
                    *pending_key = Some(node);
                    return Ok(());
                };
                let Some(text) = key.as_str() else {
                    entries.push((key, node));
                    return Ok(());
                };
                match first_seen.get(text) {
                    None => {
                        first_seen.insert(text.to_string(), key.loc);
                        entries.push((key, node));
                        Ok(())
                    }
                    Some(first) => {
                        let message = format!(
                            "The key `{}` appears twice in this mapping (first on line {}); \
                             remove one of them.",
                            abbreviate(text),
                            first.line
                        );
                        let loc = key.loc;
                        self.error(loc, "duplicate-key", message);
                        Ok(())
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(node: &Node) -> &str {
        node.as_str().unwrap_or("<not a scalar>")
    }

    #[test]
    fn keeps_scalar_text_and_locations() {
        let parsed = parse_file("f.yaml", "a: 01\nb:\n  - on\n  - 'x'\n");
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let root = &parsed.documents[0];
        let (key, value) = root.entry("a").expect("key a");
        assert_eq!((key.loc.line, key.loc.column), (1, 1));
        assert_eq!((scalar(value), value.loc.column), ("01", 4));
        let items = root.get("b").and_then(Node::as_sequence).expect("list");
        assert_eq!(scalar(&items[0]), "on");
        assert_eq!(items[1].loc, Loc { line: 4, column: 5 });
    }

    #[test]
    fn reports_duplicate_keys_and_keeps_the_first() {
        let parsed = parse_file("f.yaml", "a: 1\nb: 2\na: 3\n");
        assert_eq!(parsed.diagnostics.len(), 1);
        assert_eq!(parsed.diagnostics[0].code, "duplicate-key");
        assert_eq!(parsed.diagnostics[0].line, 3);
        assert_eq!(parsed.documents[0].get("a").map(scalar), Some("1"));
    }

    #[test]
    fn resumes_after_a_syntax_error_at_the_next_document() {
        let parsed = parse_file("f.yaml", "a: [1, 2\n---\nb: 1\n");
        assert_eq!(parsed.diagnostics.len(), 1);
        assert_eq!(parsed.diagnostics[0].code, "yaml-syntax");
        assert_eq!(parsed.documents.len(), 1);
        assert_eq!(parsed.documents[0].get("b").map(scalar), Some("1"));
        assert_eq!(parsed.documents[0].loc.line, 3);
    }

    #[test]
    fn stops_alias_bombs() {
        let mut source = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let previous = level - 1;
            source.push_str(&format!(
                "a{level}: &a{level} [*a{previous}, *a{previous}, *a{previous}, *a{previous}, \
                 *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}, *a{previous}]\n"
            ));
        }
        let parsed = parse_file("f.yaml", &source);
        assert!(
            parsed
                .diagnostics
                .iter()
                .any(|d| d.code == "yaml-too-large"),
            "{:?}",
            parsed.diagnostics
        );
        assert!(parsed.documents.is_empty());
    }

    #[test]
    fn stops_deep_nesting() {
        let depth = MAX_YAML_DEPTH + 10;
        let source = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let parsed = parse_file("f.yaml", &source);
        assert_eq!(parsed.diagnostics.len(), 1, "{:?}", parsed.diagnostics);
        assert_eq!(parsed.diagnostics[0].code, "yaml-too-deep");
        assert!(parsed.documents.is_empty());
    }

    #[test]
    fn stops_aliases_that_nest_too_deep() {
        let half = MAX_YAML_DEPTH / 2 + 2;
        let source = format!(
            "a: &deep {}x{}\nb: {}*deep{}\n",
            "[".repeat(half),
            "]".repeat(half),
            "[".repeat(half),
            "]".repeat(half)
        );
        let parsed = parse_file("f.yaml", &source);
        assert_eq!(parsed.diagnostics.len(), 1, "{:?}", parsed.diagnostics);
        assert_eq!(parsed.diagnostics[0].code, "yaml-too-deep");
        assert_eq!(parsed.diagnostics[0].line, 2);
    }

    #[test]
    fn skips_empty_documents() {
        let parsed = parse_file("f.yaml", "---\n---\nx: 1\n---\n");
        assert_eq!(parsed.documents.len(), 1);
        assert_eq!(parsed.documents[0].loc.line, 3);
    }
}
