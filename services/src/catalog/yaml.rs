//! Bounded YAML loading for catalog imports: a YAML stream (one or more `---`-separated
//! documents, as Backstage writes `catalog-info.yaml` files) becomes a small value tree that
//! remembers the line of every node.
//!
//! Why not a ready-made loader: YAML from callers is untrusted, and the classic attacks are
//! cheap to send and expensive to load — a "billion laughs" stream of nested aliases expands a
//! kilobyte into gigabytes, and deep nesting exhausts the stack of recursive loaders. So this
//! module drives `saphyr-parser`'s event API itself (the parser is an explicit state machine,
//! never recursive) and builds the tree with an explicit stack, counting as it goes:
//!
//! - nesting depth (sequences and mappings) above [`Limits::max_depth`] → [`ParseErrorKind::TooDeep`];
//! - aliases above [`Limits::max_aliases`] → [`ParseErrorKind::TooManyAliases`];
//! - the size that aliases add above [`Limits::max_alias_expansion_ratio`] times the source
//!   size → [`ParseErrorKind::AliasExpansion`], so memory and time stay linear in the input
//!   (each alias is charged the size of the node it copies before it is copied, and keeping an
//!   anchored node for later aliases is charged once too);
//! - a document larger than [`Limits::max_document_bytes`] → [`ParseErrorKind::DocumentTooLarge`],
//!   found by a line scan *before* parsing, so a 10 MB document costs one pass over its bytes;
//! - more than [`Limits::max_documents`] documents → [`ParseErrorKind::TooManyDocuments`].
//!
//! Scalars are resolved with the YAML 1.2 core schema, as Backstage's loader does (`1.0` is a
//! number, `go1.15.3` a string, `~` null). A parser panic (there should be none) is caught and
//! reported as a syntax error, so no input can take the server down.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use saphyr_parser::{Event, Parser, ScalarStyle, Span, Tag};

/// Bounds applied while loading one YAML source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Deepest allowed nesting of sequences and mappings (the document root counts as 1).
    pub max_depth: usize,
    /// Most aliases (`*name`) allowed in one source.
    pub max_aliases: usize,
    /// Aliases may add at most this many times the source's size in copied content.
    pub max_alias_expansion_ratio: usize,
    /// Largest allowed document, in bytes of source text.
    pub max_document_bytes: usize,
    /// Most documents allowed in one source (empty documents count).
    pub max_documents: usize,
}

impl Default for Limits {
    /// The limits of `ImportEntities`: depth 64, 10,000 aliases, 10x expansion, 1 MiB
    /// documents, 10,000 documents.
    fn default() -> Self {
        Limits {
            max_depth: 64,
            max_aliases: 10_000,
            max_alias_expansion_ratio: 10,
            max_document_bytes: 1024 * 1024,
            max_documents: 10_000,
        }
    }
}

/// One non-empty document of a YAML stream.
#[derive(Debug, Clone, PartialEq)]
pub struct RawDocument {
    /// The 0-based index of the document in its source; empty documents count.
    pub index: usize,
    /// The 1-based line where the document starts (its `---`, or its first content).
    pub line: usize,
    /// The document's content.
    pub root: Node,
}

/// A YAML node with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// The 1-based line where the node starts.
    pub line: usize,
    /// The 1-based column where the node starts.
    pub column: usize,
    /// Whether the node is a one-line plain scalar followed by spaces or tabs at the end of its
    /// line (YAML drops them, but they usually mean a copy-paste accident).
    pub trailing_whitespace: bool,
}

/// A YAML value after core-schema resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `~`, `null`, or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits in an `i64`.
    Int(i64),
    /// Any other number, including `.inf` and `.nan`.
    Float(f64),
    /// A string (every quoted or block scalar, and plain scalars that are nothing else).
    String(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order; duplicate keys are kept for the caller to report.
    Map(Vec<(Node, Node)>),
}

impl Value {
    /// A short name of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::String(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Which rule a source broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseErrorKind {
    /// Not well-formed YAML.
    Syntax,
    /// Nesting deeper than [`Limits::max_depth`].
    TooDeep,
    /// More aliases than [`Limits::max_aliases`].
    TooManyAliases,
    /// Aliases expand to more than [`Limits::max_alias_expansion_ratio`] times the source.
    AliasExpansion,
    /// A document larger than [`Limits::max_document_bytes`].
    DocumentTooLarge,
    /// More documents than [`Limits::max_documents`].
    TooManyDocuments,
}

impl ParseErrorKind {
    /// A stable machine-readable reason, as used in `EntityIssue.reason`.
    pub fn reason(self) -> &'static str {
        match self {
            ParseErrorKind::Syntax => "INVALID_YAML",
            ParseErrorKind::TooDeep => "TOO_DEEP",
            ParseErrorKind::TooManyAliases => "TOO_MANY_ALIASES",
            ParseErrorKind::AliasExpansion => "ALIAS_EXPANSION",
            ParseErrorKind::DocumentTooLarge => "TOO_LARGE",
            ParseErrorKind::TooManyDocuments => "TOO_MANY_DOCUMENTS",
        }
    }
}

/// Why a whole YAML source was rejected. Its `Display` names the rule and the place, e.g.
/// `line 3, column 7: nesting deeper than 64 levels (TOO_DEEP)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The rule broken.
    pub kind: ParseErrorKind,
    /// The 1-based line where it was noticed.
    pub line: usize,
    /// The 1-based column where it was noticed (0 when not known).
    pub column: usize,
    /// What happened, naming the limit.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.column > 0 {
            write!(
                f,
                "line {}, column {}: {} ({})",
                self.line,
                self.column,
                self.message,
                self.kind.reason()
            )
        } else {
            write!(
                f,
                "line {}: {} ({})",
                self.line,
                self.message,
                self.kind.reason()
            )
        }
    }
}

impl std::error::Error for ParseError {}

/// Loads every document of a YAML stream within `limits`. Empty documents (a trailing `---`, a
/// file of comments, an explicit `null`) are skipped, as Backstage skips them, but keep their
/// index. Any broken limit or syntax error rejects the whole source.
pub fn parse_documents(source: &str, limits: &Limits) -> Result<Vec<RawDocument>, ParseError> {
    check_document_sizes(source, limits)?;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Loader::new(source, limits).run()
    })) {
        Ok(result) => result,
        Err(_) => Err(ParseError {
            kind: ParseErrorKind::Syntax,
            line: 0,
            column: 0,
            message: "the YAML parser failed on this input".to_owned(),
        }),
    }
}

/// Rejects a document larger than the limit before any parsing. Documents are delimited by
/// `---` and `...` lines (a marker at column 0 followed by a blank or the end of the line),
/// which YAML forbids inside any scalar, so this bounds every document from above.
fn check_document_sizes(source: &str, limits: &Limits) -> Result<(), ParseError> {
    if source.len() <= limits.max_document_bytes {
        return Ok(());
    }
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    let too_large = |start_line: usize, size: usize| ParseError {
        kind: ParseErrorKind::DocumentTooLarge,
        line: start_line,
        column: 0,
        message: format!(
            "the document starting at line {start_line} is larger than {} bytes ({size} bytes or more)",
            limits.max_document_bytes
        ),
    };
    for (line, text) in (1usize..).zip(source.split_inclusive('\n')) {
        if is_document_marker(text) {
            if offset - start > limits.max_document_bytes {
                return Err(too_large(start_line, offset - start));
            }
            start = offset;
            start_line = line;
        }
        offset += text.len();
        if offset - start > limits.max_document_bytes {
            return Err(too_large(start_line, offset - start));
        }
    }
    Ok(())
}

fn is_document_marker(line: &str) -> bool {
    let bytes = line.as_bytes();
    (bytes.starts_with(b"---") || bytes.starts_with(b"..."))
        && matches!(bytes.get(3), None | Some(b' ' | b'\t' | b'\r' | b'\n'))
}

/// A collection being built.
struct Frame {
    anchor: usize,
    line: usize,
    column: usize,
    /// Size charged so far (see [`Loader::weight`]).
    weight: usize,
    content: FrameContent,
}

enum FrameContent {
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>, Option<Node>),
}

struct Loader<'a> {
    source: &'a str,
    limits: &'a Limits,
    /// Byte offset where each line starts, to look at the text after a scalar.
    line_starts: Vec<usize>,
    stack: Vec<Frame>,
    /// Completed anchored nodes of the current document, with their weights.
    anchors: HashMap<usize, (Node, usize)>,
    aliases: usize,
    expanded: usize,
    expansion_limit: usize,
    documents: Vec<RawDocument>,
    document_count: usize,
    document_line: usize,
    root: Option<Node>,
}

impl<'a> Loader<'a> {
    fn new(source: &'a str, limits: &'a Limits) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(source.match_indices('\n').map(|(i, _)| i + 1));
        Loader {
            source,
            limits,
            line_starts,
            stack: Vec::new(),
            anchors: HashMap::new(),
            aliases: 0,
            expanded: 0,
            expansion_limit: source
                .len()
                .saturating_mul(limits.max_alias_expansion_ratio),
            documents: Vec::new(),
            document_count: 0,
            document_line: 1,
            root: None,
        }
    }

    fn run(mut self) -> Result<Vec<RawDocument>, ParseError> {
        let mut parser = Parser::new_from_str(self.source);
        while let Some(next) = parser.next_event() {
            let (event, span) = next.map_err(|e| {
                let mark = e.marker();
                let info = e.info();
                // The scanner gives up on flow nesting at 256 levels, possibly before the parser has
                // handed over the 65th: that is this module's depth limit too.
                let (kind, message) = if info.contains("recursion limit") {
                    (
                        ParseErrorKind::TooDeep,
                        format!("nesting deeper than {} levels", self.limits.max_depth),
                    )
                } else {
                    (ParseErrorKind::Syntax, info.to_owned())
                };
                ParseError {
                    kind,
                    line: mark.line(),
                    column: mark.col() + 1,
                    message,
                }
            })?;
            self.event(event, span)?;
        }
        Ok(self.documents)
    }

    fn error(&self, kind: ParseErrorKind, span: &Span, message: String) -> ParseError {
        ParseError {
            kind,
            line: span.start.line(),
            column: span.start.col() + 1,
            message,
        }
    }

    fn event(&mut self, event: Event<'_>, span: Span) -> Result<(), ParseError> {
        match event {
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
            Event::DocumentStart(_) => {
                self.document_count += 1;
                if self.document_count > self.limits.max_documents {
                    return Err(self.error(
                        ParseErrorKind::TooManyDocuments,
                        &span,
                        format!("more than {} documents", self.limits.max_documents),
                    ));
                }
                self.document_line = span.start.line();
                self.anchors.clear();
                self.stack.clear();
                self.root = None;
            }
            Event::DocumentEnd => {
                if let Some(root) = self.root.take()
                    && root.value != Value::Null
                {
                    self.documents.push(RawDocument {
                        index: self.document_count.saturating_sub(1),
                        line: self.document_line,
                        root,
                    });
                }
                self.anchors.clear();
            }
            Event::Alias(id) => {
                self.aliases += 1;
                if self.aliases > self.limits.max_aliases {
                    return Err(self.error(
                        ParseErrorKind::TooManyAliases,
                        &span,
                        format!("more than {} aliases", self.limits.max_aliases),
                    ));
                }
                let Some(weight) = self.anchors.get(&id).map(|(_, weight)| *weight) else {
                    return Err(self.error(
                        ParseErrorKind::Syntax,
                        &span,
                        "alias to an anchor that is not defined before it (or that contains the alias)".to_owned(),
                    ));
                };
                // Charged before copying, so an over-budget copy is never made.
                self.charge(weight, &span)?;
                let Some((node, _)) = self.anchors.get(&id) else {
                    return Ok(());
                };
                let mut copy = node.clone();
                copy.line = span.start.line();
                copy.column = span.start.col() + 1;
                copy.trailing_whitespace = false;
                self.complete(copy, weight, 0, &span)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let trailing_whitespace =
                    style == ScalarStyle::Plain && self.trailing_whitespace_after(&span);
                let weight = text.len() + 1;
                let value = resolve_scalar(text, style, tag.as_deref());
                let node = Node {
                    value,
                    line: span.start.line(),
                    column: span.start.col() + 1,
                    trailing_whitespace,
                };
                self.complete(node, weight, anchor, &span)?;
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if self.stack.len() >= self.limits.max_depth {
                    return Err(self.error(
                        ParseErrorKind::TooDeep,
                        &span,
                        format!("nesting deeper than {} levels", self.limits.max_depth),
                    ));
                }
                let content = if matches!(event, Event::SequenceStart(..)) {
                    FrameContent::Seq(Vec::new())
                } else {
                    FrameContent::Map(Vec::new(), None)
                };
                self.stack.push(Frame {
                    anchor,
                    line: span.start.line(),
                    column: span.start.col() + 1,
                    weight: 1,
                    content,
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(frame) = self.stack.pop() {
                    let value = match frame.content {
                        FrameContent::Seq(items) => Value::Seq(items),
                        FrameContent::Map(mut entries, pending) => {
                            // A key without a value cannot be left by the parser; keep it as null.
                            if let Some(key) = pending {
                                let null = Node {
                                    value: Value::Null,
                                    line: key.line,
                                    column: key.column,
                                    trailing_whitespace: false,
                                };
                                entries.push((key, null));
                            }
                            Value::Map(entries)
                        }
                    };
                    let node = Node {
                        value,
                        line: frame.line,
                        column: frame.column,
                        trailing_whitespace: false,
                    };
                    self.complete(node, frame.weight, frame.anchor, &span)?;
                }
            }
        }
        Ok(())
    }

    /// Adds a finished node to its parent (or makes it the document root) and remembers it
    /// under its anchor. `weight` is its size in bytes of content plus one per node, counting
    /// alias copies at their full size, so an alias to it is charged what it will cost.
    fn complete(
        &mut self,
        node: Node,
        weight: usize,
        anchor: usize,
        span: &Span,
    ) -> Result<(), ParseError> {
        if anchor > 0 {
            // Keeping the anchored node is a copy too: charge it, so that nested anchors cannot
            // make copies the alias budget does not see.
            self.charge(weight, span)?;
            self.anchors.insert(anchor, (node.clone(), weight));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(frame) => {
                frame.weight = frame.weight.saturating_add(weight);
                match &mut frame.content {
                    FrameContent::Seq(items) => items.push(node),
                    FrameContent::Map(entries, pending) => match pending.take() {
                        None => *pending = Some(node),
                        Some(key) => entries.push((key, node)),
                    },
                }
            }
        }
        Ok(())
    }

    /// Charges copied content against the expansion budget.
    fn charge(&mut self, weight: usize, span: &Span) -> Result<(), ParseError> {
        self.expanded = self.expanded.saturating_add(weight);
        if self.expanded > self.expansion_limit {
            return Err(self.error(
                ParseErrorKind::AliasExpansion,
                span,
                format!(
                    "aliases expand to more than {} times the source size ({} bytes)",
                    self.limits.max_alias_expansion_ratio,
                    self.source.len()
                ),
            ));
        }
        Ok(())
    }

    /// Whether a one-line scalar ends its line with spaces or tabs.
    fn trailing_whitespace_after(&self, span: &Span) -> bool {
        if span.start.line() != span.end.line() {
            return false;
        }
        let Some(&line_start) = self.line_starts.get(span.end.line().saturating_sub(1)) else {
            return false;
        };
        let Some(line) = self.source.get(line_start..) else {
            return false;
        };
        let line = line.split('\n').next().unwrap_or_default();
        let line = line.strip_suffix('\r').unwrap_or(line);
        let rest: String = line.chars().skip(span.end.col()).collect();
        !rest.is_empty() && rest.chars().all(|c| c == ' ' || c == '\t')
    }
}

/// Resolves a scalar with the YAML 1.2 core schema. Quoted and block scalars are strings; a
/// core-schema tag (`!!str`, `!!int`, ...) forces the type when the text allows it; other tags
/// are ignored.
fn resolve_scalar(text: Cow<'_, str>, style: ScalarStyle, tag: Option<&Tag>) -> Value {
    let core_tag = tag
        .filter(|t| t.is_yaml_core_schema())
        .map(|t| t.suffix.as_str());
    match core_tag {
        Some("str") => return Value::String(text.into_owned()),
        Some("null") => return Value::Null,
        Some("bool") => {
            if let Some(b) = resolve_bool(&text) {
                return Value::Bool(b);
            }
        }
        Some("int") => {
            if let Some(v) = resolve_int(&text) {
                return v;
            }
        }
        Some("float") => {
            if let Some(v) = resolve_int(&text).or_else(|| resolve_float(&text)) {
                return match v {
                    Value::Int(i) => Value::Float(i as f64),
                    other => other,
                };
            }
        }
        _ => {}
    }
    if style != ScalarStyle::Plain {
        return Value::String(text.into_owned());
    }
    match text.as_ref() {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        _ => {}
    }
    if let Some(b) = resolve_bool(&text) {
        return Value::Bool(b);
    }
    if let Some(v) = resolve_int(&text).or_else(|| resolve_float(&text)) {
        return v;
    }
    Value::String(text.into_owned())
}

fn resolve_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `[-+]?[0-9]+`, `0o[0-7]+`, `0x[0-9a-fA-F]+`; integers beyond `i64` become floats.
fn resolve_int(text: &str) -> Option<Value> {
    let radix_int = |digits: &str, radix: u32| -> Option<Value> {
        if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
            return None;
        }
        Some(match i64::from_str_radix(digits, radix) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Float(digits.chars().fold(0f64, |acc, c| {
                acc * f64::from(radix) + f64::from(c.to_digit(radix).unwrap_or(0))
            })),
        })
    };
    if let Some(octal) = text.strip_prefix("0o") {
        return radix_int(octal, 8);
    }
    if let Some(hex) = text.strip_prefix("0x") {
        return radix_int(hex, 16);
    }
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(match text.parse::<i64>() {
        Ok(i) => Value::Int(i),
        Err(_) => Value::Float(text.parse::<f64>().ok()?),
    })
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`, `[-+]?.inf`, `.nan` (core schema).
fn resolve_float(text: &str) -> Option<Value> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let negative = text.starts_with('-');
    match unsigned {
        ".inf" | ".Inf" | ".INF" => {
            return Some(Value::Float(if negative {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            }));
        }
        ".nan" | ".NaN" | ".NAN" if unsigned.len() == text.len() => {
            return Some(Value::Float(f64::NAN));
        }
        _ => {}
    }
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let (whole, fraction) = match mantissa.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (mantissa, None),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match fraction {
        None => !whole.is_empty() && all_digits(whole),
        Some(f) => all_digits(whole) && all_digits(f) && !(whole.is_empty() && f.is_empty()),
    };
    let exponent_ok = match exponent {
        None => true,
        Some(e) => {
            let digits = e.strip_prefix(['-', '+']).unwrap_or(e);
            !digits.is_empty() && all_digits(digits)
        }
    };
    if !mantissa_ok || !exponent_ok {
        return None;
    }
    text.parse::<f64>().ok().map(Value::Float)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn parse(source: &str) -> Result<Vec<RawDocument>, ParseError> {
        parse_documents(source, &Limits::default())
    }

    fn scalar(doc: &RawDocument, key: &str) -> Value {
        match &doc.root.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.value == Value::String(key.to_owned()))
                .map(|(_, v)| v.value.clone())
                .unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    #[test]
    fn documents_have_index_and_line_and_skip_empty_ones() {
        let source = "# comment\na: 1\n---\n---\nb: two\n...\n---\n";
        let docs = parse(source).expect("must parse");
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].index, docs[0].line), (0, 2));
        assert_eq!((docs[1].index, docs[1].line), (2, 4));
        assert_eq!(scalar(&docs[0], "a"), Value::Int(1));
        assert_eq!(scalar(&docs[1], "b"), Value::String("two".into()));
        assert!(parse("").expect("must parse").is_empty());
        assert!(parse("---\n~\n").expect("must parse").is_empty());
    }

    #[test]
    fn core_schema_scalars() {
        let docs = parse(
            "a: 1.0\nb: go1.15.3\nc: ~\nd: 'true'\ne: true\nf: 0x1F\ng: -12\nh: 1e3\ni: .inf\nj: 99999999999999999999\nk: !!str 12\nl: 1.15.3\nm: \"\"\n",
        )
        .expect("must parse");
        let d = &docs[0];
        assert_eq!(scalar(d, "a"), Value::Float(1.0));
        assert_eq!(scalar(d, "b"), Value::String("go1.15.3".into()));
        assert_eq!(scalar(d, "c"), Value::Null);
        assert_eq!(scalar(d, "d"), Value::String("true".into()));
        assert_eq!(scalar(d, "e"), Value::Bool(true));
        assert_eq!(scalar(d, "f"), Value::Int(31));
        assert_eq!(scalar(d, "g"), Value::Int(-12));
        assert_eq!(scalar(d, "h"), Value::Float(1000.0));
        assert_eq!(scalar(d, "i"), Value::Float(f64::INFINITY));
        assert_eq!(scalar(d, "j"), Value::Float(1e20));
        assert_eq!(scalar(d, "k"), Value::String("12".into()));
        assert_eq!(scalar(d, "l"), Value::String("1.15.3".into()));
        assert_eq!(scalar(d, "m"), Value::String(String::new()));
    }

    #[test]
    fn aliases_are_copied_and_lines_kept() {
        let docs = parse("base: &b {x: 1}\ncopy: *b\n").expect("must parse");
        let Value::Map(entries) = &docs[0].root.value else {
            panic!("not a map")
        };
        assert_eq!(entries[0].1.value, entries[1].1.value);
        assert_eq!(entries[1].1.line, 2);
    }

    #[test]
    fn trailing_whitespace_is_noticed_on_plain_scalars() {
        let docs = parse("a: Guest User \nb: clean\nc: 'quoted' \n").expect("must parse");
        let Value::Map(entries) = &docs[0].root.value else {
            panic!("not a map")
        };
        assert!(entries[0].1.trailing_whitespace);
        assert_eq!(entries[0].1.value, Value::String("Guest User".into()));
        assert!(!entries[1].1.trailing_whitespace);
        assert!(!entries[2].1.trailing_whitespace);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse("a: 1\nb: [unclosed\n").expect_err("must be rejected");
        assert_eq!(err.kind, ParseErrorKind::Syntax);
        assert!(err.line >= 2, "{err}");
        let err = parse("a: *nope\n").expect_err("must be rejected");
        assert_eq!(err.kind, ParseErrorKind::Syntax, "{err}");
    }

    #[test]
    fn billion_laughs_is_rejected_fast() {
        let mut source = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
            let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
            source.push_str(&format!("{name}: &{name} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"));
        }
        let start = Instant::now();
        let err = parse(&source).expect_err("must be rejected");
        assert_eq!(err.kind, ParseErrorKind::AliasExpansion, "{err}");
        assert!(err.to_string().contains("10 times"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn too_many_aliases_is_rejected() {
        let mut source = String::from("a: &a x\nlist:\n");
        for _ in 0..10_001 {
            source.push_str("- *a\n");
        }
        let err = parse(&source).expect_err("must be rejected");
        assert_eq!(err.kind, ParseErrorKind::TooManyAliases, "{err}");
        assert_eq!(err.line, 10_003, "{err}");
        assert!(err.to_string().contains("10000 aliases"), "{err}");
    }

    #[test]
    fn deep_nesting_is_rejected_fast() {
        let start = Instant::now();
        for source in [
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)),
            format!("{}{}", "{a: ".repeat(10_000), "}".repeat(10_000)),
            format!("{}x\n", "- ".repeat(10_000)),
        ] {
            let err = parse(&source).expect_err("must be rejected");
            assert_eq!(err.kind, ParseErrorKind::TooDeep, "{err}");
            assert!(err.to_string().contains("64 levels"), "{err}");
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        // 64 levels are fine.
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(parse(&ok).is_ok());
        let too_deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse(&too_deep).expect_err("must be rejected").kind,
            ParseErrorKind::TooDeep
        );
    }

    #[test]
    fn large_documents_are_rejected_before_parsing() {
        let start = Instant::now();
        let big = format!("a: \"{}\"\n", "x".repeat(10 * 1024 * 1024));
        let err = parse(&big).expect_err("must be rejected");
        assert_eq!(err.kind, ParseErrorKind::DocumentTooLarge, "{err}");
        assert_eq!(err.line, 1);
        assert!(err.to_string().contains("1048576 bytes"), "{err}");
        // The second document is the large one.
        let two = format!("a: 1\n---\nb: |\n  {}\n", "y".repeat(2 * 1024 * 1024));
        let err = parse(&two).expect_err("must be rejected");
        assert_eq!(
            (err.kind, err.line),
            (ParseErrorKind::DocumentTooLarge, 2),
            "{err}"
        );
        assert!(start.elapsed() < Duration::from_secs(5));
        // Many small documents adding up to more than 1 MiB are fine.
        let many = format!("a: {}\n---\n", "z".repeat(200)).repeat(6_000);
        assert!(many.len() > 1024 * 1024);
        assert_eq!(parse(&many).expect("must parse").len(), 6_000);
    }

    #[test]
    fn too_many_documents_is_rejected() {
        let limits = Limits {
            max_documents: 3,
            ..Limits::default()
        };
        let err = parse_documents("a: 1\n---\nb: 1\n---\nc: 1\n---\nd: 1\n", &limits)
            .expect_err("must be rejected");
        assert_eq!(
            (err.kind, err.line),
            (ParseErrorKind::TooManyDocuments, 6),
            "{err}"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let samples = [
            "\u{0}\u{1}",
            "]]]",
            "{{{",
            "- - - -",
            "? ? ?",
            "&a &b *c",
            "!!binary |\n  @@@",
            "'unterminated",
            "\"\\u12\"",
            "a:\n\t- b",
            "%YAML 1.2\n%YAML 1.2\n---",
            "--- !<tag:x> &a [*a]",
            ":\n:\n:",
            "a: &x\n  b: *x\n",
        ];
        for s in samples {
            let _ = parse(s);
        }
        // Every prefix of a realistic document.
        let doc = "apiVersion: v1\nkind: C\nmetadata: {name: x, tags: [a, 'b']}\nspec:\n  list:\n    - &k {q: \"\\t\"}\n    - *k\n";
        for i in 0..doc.len() {
            let _ = parse(&doc[..i]);
        }
    }
}
