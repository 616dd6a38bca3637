//! Typed definitions from [`Node`] trees, with every error located and recorded.
//!
//! [`Reader::read`] runs an ordinary `#[derive(Deserialize)]` type against a [`Node`] through a
//! serde `Deserializer` written for that tree. It differs from a plain YAML deserializer in four
//! ways, all for the sake of error messages:
//!
//! - Every error is recorded as a [`Diagnostic`] at the innermost node it concerns (the
//!   offending key or value), the moment it first passes through the deserializer.
//! - Unknown keys in a struct are reported by the deserializer itself, which knows the struct's
//!   field names, and then skipped, so a typo never hides the rest of the document. Whether they
//!   are errors (native definitions) or warnings (StateService files) is a [`Reader`] setting.
//! - [`Recover<T>`] marks recovery points: an error inside it is recorded and the value becomes
//!   `Recover(None)` instead of failing the enclosing struct, so one broken state does not hide
//!   problems in the next.
//! - [`Spanned<T>`] captures a value's line and column, [`OneOrMany<T>`] reads `x` or `[x, y]`,
//!   and structs renamed to `$levee::shorthand::FIELD::WHAT` also accept a scalar meaning
//!   `{ FIELD: scalar }`.
//!
//! Scalars keep the text they were written with: a `String` field accepts any non-null scalar
//! (`on`, `01`, `true`) as written, and numbers and booleans are parsed only when the field asks
//! for one. `deserialize_any` hands every non-null scalar to the visitor as a string.

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::value::{BorrowedStrDeserializer, U64Deserializer};
use serde::de::{self, DeserializeSeed, Visitor};
use serde::{Deserialize, Deserializer};

use crate::diagnostic::{Diagnostic, Severity};
use crate::names;
use crate::yaml::{Loc, Node, NodeValue, ScalarKind};

const SPANNED_NAME: &str = "$levee::Spanned";
const RECOVER_NAME: &str = "$levee::Recover";
const ONE_OR_MANY_NAME: &str = "$levee::OneOrMany";
const JSON_NAME: &str = "$levee::Json";
/// Structs renamed to start with this prefix (`#[serde(rename =
/// "$levee::shorthand::to::transition")]`) also accept a scalar, read as a mapping with the one
/// field named after the prefix (`to`); the last part names the struct in messages.
const SHORTHAND_PREFIX: &str = "$levee::shorthand::";

/// What to do with keys a struct does not know.
#[derive(Clone, Copy, Debug)]
pub enum UnknownKeys {
    /// An error (`unknown-key`): native definitions are `deny_unknown_fields`.
    Deny,
    /// A warning (`unknown-key`) ending with this sentence: StateService ignores unknown keys.
    Warn { note: &'static str },
}

/// Reads typed values from nodes of one file and collects the diagnostics.
pub struct Reader<'a> {
    pub file: &'a str,
    unknown_keys: UnknownKeys,
    /// Extra sentences for known mistakes, by unknown key (a StateService key in a native file).
    key_hints: &'static [(&'static str, &'static str)],
    diagnostics: RefCell<Vec<Diagnostic>>,
}

impl<'a> Reader<'a> {
    pub fn new(
        file: &'a str,
        unknown_keys: UnknownKeys,
        key_hints: &'static [(&'static str, &'static str)],
    ) -> Self {
        Reader {
            file,
            unknown_keys,
            key_hints,
            diagnostics: RefCell::new(Vec::new()),
        }
    }

    /// Deserializes `T` from `node`. On failure the errors have been recorded; `None` says so.
    pub fn read<'n, T: Deserialize<'n>>(&self, node: &'n Node) -> Option<T> {
        match T::deserialize(NodeDe { node, reader: self }) {
            Ok(value) => Some(value),
            Err(error) => {
                self.record(error, node.loc);
                None
            }
        }
    }

    pub fn error(&self, loc: Loc, code: &str, message: impl Into<String>) {
        self.push(Severity::Error, loc, code, message.into());
    }

    pub fn warning(&self, loc: Loc, code: &str, message: impl Into<String>) {
        self.push(Severity::Warning, loc, code, message.into());
    }

    pub fn push_diagnostic(&self, diagnostic: Diagnostic) {
        self.diagnostics.borrow_mut().push(diagnostic);
    }

    fn push(&self, severity: Severity, loc: Loc, code: &str, message: String) {
        self.diagnostics.borrow_mut().push(Diagnostic {
            file: self.file.to_string(),
            line: loc.line,
            column: loc.column,
            severity,
            code: code.to_string(),
            message,
        });
    }

    /// Errors recorded so far (warnings not counted).
    pub fn error_count(&self) -> usize {
        self.diagnostics
            .borrow()
            .iter()
            .filter(|d| d.is_error())
            .count()
    }

    pub fn into_diagnostics(self) -> Vec<Diagnostic> {
        self.diagnostics.into_inner()
    }

    /// Records `error` unless it already was, at its own location or else at `fallback`.
    fn record(&self, error: DeError, fallback: Loc) {
        if !error.recorded {
            self.error(error.loc.unwrap_or(fallback), error.code, error.message);
        }
    }

    fn unknown_key(&self, key: &Node, known: &'static [&'static str]) {
        let Some(text) = key.as_str() else {
            self.error(
                key.loc,
                "wrong-type",
                format!(
                    "Keys must be names, not {}; write `name: value`.",
                    key.describe()
                ),
            );
            return;
        };
        let shown = crate::yaml::abbreviate(text);
        let suggestion = names::did_you_mean(text, known.iter().copied());
        let hint = self
            .key_hints
            .iter()
            .find(|(hinted, _)| *hinted == text)
            .map(|(_, hint)| format!(" {hint}"))
            .unwrap_or_default();
        let valid = format!(
            "valid keys here are {}",
            names::list_of(known.iter().copied())
        );
        match self.unknown_keys {
            UnknownKeys::Deny => self.error(
                key.loc,
                "unknown-key",
                format!("Unknown key `{shown}`.{suggestion}{hint} The {valid}."),
            ),
            UnknownKeys::Warn { note } => self.warning(
                key.loc,
                "unknown-key",
                format!("Unknown key `{shown}` is ignored: {note}{suggestion}{hint} The {valid}."),
            ),
        }
    }
}

/// An error on its way out of the deserializer. It is recorded (turned into a [`Diagnostic`])
/// by the first deserializer method that can say where it happened.
#[derive(Debug)]
pub struct DeError {
    code: &'static str,
    message: String,
    loc: Option<Loc>,
    recorded: bool,
}

impl DeError {
    fn new(code: &'static str, message: String) -> Self {
        DeError {
            code,
            message,
            loc: None,
            recorded: false,
        }
    }

    fn wrong_type(expected: &str, node: &Node) -> Self {
        DeError::new(
            "wrong-type",
            format!("Expected {expected}, found {}.", node.describe()),
        )
    }
}

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        DeError::new("wrong-type", sentence(message.to_string()))
    }

    fn invalid_type(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::new(
            "wrong-type",
            format!("Expected {expected}, found {unexpected}."),
        )
    }

    fn invalid_value(unexpected: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        DeError::new(
            "invalid-value",
            format!("Expected {expected}, found {unexpected}."),
        )
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(
            "invalid-value",
            format!(
                "`{variant}` is not one of {}.{}",
                names::list_of(expected.iter().copied()),
                names::did_you_mean(variant, expected.iter().copied())
            ),
        )
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        DeError::new(
            "unknown-key",
            format!(
                "Unknown key `{field}`.{} The valid keys here are {}.",
                names::did_you_mean(field, expected.iter().copied()),
                names::list_of(expected.iter().copied())
            ),
        )
    }

    fn missing_field(field: &'static str) -> Self {
        DeError::new(
            "missing-key",
            format!("This mapping has no `{field}`; add `{field}: ...`."),
        )
    }

    fn duplicate_field(field: &'static str) -> Self {
        DeError::new(
            "duplicate-key",
            format!("The key `{field}` appears twice; remove one of them."),
        )
    }
}

/// Capitalizes and ends a message from serde so it reads as a sentence.
fn sentence(mut text: String) -> String {
    if let Some(first) = text.get(..1) {
        let upper = first.to_uppercase();
        text.replace_range(..1, &upper);
    }
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

/// The deserializer for one node.
#[derive(Clone, Copy)]
struct NodeDe<'r, 'n> {
    node: &'n Node,
    reader: &'r Reader<'r>,
}

impl<'r, 'n> NodeDe<'r, 'n> {
    /// Gives an error from below this node its location, if it has none yet, and records it.
    fn locate<T>(self, result: Result<T, DeError>) -> Result<T, DeError> {
        result.map_err(|mut error| {
            let loc = *error.loc.get_or_insert(self.node.loc);
            if !error.recorded {
                self.reader.error(loc, error.code, error.message.clone());
                error.recorded = true;
            }
            error
        })
    }

    fn fail<T>(self, error: DeError) -> Result<T, DeError> {
        self.locate(Err(error))
    }

    fn text(self, expected: &str) -> Result<&'n str, DeError> {
        match self.node.as_str() {
            Some(text) => Ok(text),
            None => self.fail(DeError::wrong_type(expected, self.node)),
        }
    }

    /// The text of a plain (unquoted) scalar: numbers and booleans must not be quoted.
    fn plain_text(self, expected: &str) -> Result<&'n str, DeError> {
        match &self.node.value {
            NodeValue::Scalar {
                text,
                kind: ScalarKind::Plain,
            } if !self.node.is_null() => Ok(text),
            NodeValue::Scalar {
                kind: ScalarKind::Quoted,
                text,
            } => self.fail(DeError::new(
                "wrong-type",
                format!(
                    "Expected {expected}, found the quoted string `{}`; remove the quotes.",
                    crate::yaml::abbreviate(text)
                ),
            )),
            _ => self.fail(DeError::wrong_type(expected, self.node)),
        }
    }

    fn integer(self) -> Result<i128, DeError> {
        let text = self.plain_text("a whole number")?;
        match parse_integer(text) {
            Some(value) => Ok(value),
            None => self.fail(DeError::wrong_type("a whole number", self.node)),
        }
    }

    fn visit_integer<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let value = self.integer()?;
        let result = if let Ok(signed) = i64::try_from(value) {
            visitor.visit_i64(signed)
        } else if let Ok(unsigned) = u64::try_from(value) {
            visitor.visit_u64(unsigned)
        } else {
            Err(DeError::new(
                "wrong-type",
                format!("The number {value} is too large."),
            ))
        };
        self.locate(result)
    }

    fn mapping_entries(
        self,
        entries: &'n [(Node, Node)],
        fields: Option<&'static [&'static str]>,
    ) -> MapDe<'r, 'n> {
        let mut kept = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            let known = match (fields, key.as_str()) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(fields), Some(text)) => fields.contains(&text),
            };
            if known {
                kept.push((Key::Node(key), value));
            } else {
                self.reader.unknown_key(key, fields.unwrap_or(&[]));
            }
        }
        MapDe {
            entries: kept.into_iter(),
            value: None,
            reader: self.reader,
        }
    }
}

/// Replaces "This mapping" in a not yet recorded error by what the struct is ("This timer").
fn name_the_mapping(mut error: DeError, struct_name: &str) -> DeError {
    if !error.recorded && error.message.starts_with("This mapping") {
        error.message = error.message.replacen(
            "This mapping",
            &format!("This {}", describe_struct(struct_name)),
            1,
        );
    }
    error
}

/// What a struct is, for messages: `TimerSpec` is "timer", `$levee::shorthand::to::transition`
/// is "transition".
fn describe_struct(name: &str) -> String {
    if let Some(rest) = name.strip_prefix(SHORTHAND_PREFIX) {
        return rest.split("::").nth(1).unwrap_or("mapping").to_string();
    }
    let base = name.strip_suffix("Spec").unwrap_or(name);
    let mut words = String::new();
    for (index, c) in base.chars().enumerate() {
        if c.is_ascii_uppercase() && index > 0 {
            words.push(' ');
        }
        words.push(c.to_ascii_lowercase());
    }
    words
}

fn parse_integer(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(octal) = digits.strip_prefix("0o") {
        i128::from_str_radix(octal, 8).ok()?
    } else if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        digits.parse::<i128>().ok()?
    } else {
        return None;
    };
    Some(if negative { -magnitude } else { magnitude })
}

impl<'r, 'n> Deserializer<'n> for NodeDe<'r, 'n> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.value {
            _ if self.node.is_null() => visitor.visit_unit(),
            NodeValue::Scalar { text, .. } => visitor.visit_borrowed_str(text),
            NodeValue::Sequence(items) => visitor.visit_seq(SeqDe::new(items, self.reader)),
            NodeValue::Mapping(entries) => visitor.visit_map(self.mapping_entries(entries, None)),
        };
        self.locate(result)
    }

    fn deserialize_bool<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.plain_text("`true` or `false`")?;
        let result = match text {
            "true" | "True" | "TRUE" => visitor.visit_bool(true),
            "false" | "False" | "FALSE" => visitor.visit_bool(false),
            _ => Err(DeError::wrong_type("`true` or `false`", self.node)),
        };
        self.locate(result)
    }

    fn deserialize_i8<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_u8<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.visit_integer(visitor)
    }

    fn deserialize_f32<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.plain_text("a number")?;
        let result = match text.parse::<f64>() {
            Ok(value) if value.is_finite() => visitor.visit_f64(value),
            _ => Err(DeError::wrong_type("a number", self.node)),
        };
        self.locate(result)
    }

    fn deserialize_char<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.text("a single character")?;
        let mut chars = text.chars();
        let result = match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(DeError::wrong_type("a single character", self.node)),
        };
        self.locate(result)
    }

    fn deserialize_str<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        let text = self.text("text")?;
        self.locate(visitor.visit_borrowed_str(text))
    }

    fn deserialize_string<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'n>>(self, _visitor: V) -> Result<V::Value, DeError> {
        self.fail(DeError::new(
            "wrong-type",
            "Binary data is not supported in definitions.".to_string(),
        ))
    }

    fn deserialize_byte_buf<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.locate(visitor.visit_none())
        } else {
            self.locate(visitor.visit_some(self))
        }
    }

    fn deserialize_unit<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            self.locate(visitor.visit_unit())
        } else {
            self.fail(DeError::wrong_type("nothing (null)", self.node))
        }
    }

    fn deserialize_unit_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'n>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match name {
            SPANNED_NAME => visitor.visit_seq(SpannedSeq {
                node: self.node,
                reader: self.reader,
                next: 0,
            }),
            RECOVER_NAME => visitor.visit_seq(RecoverSeq {
                node: Some(self.node),
                reader: self.reader,
            }),
            JSON_NAME => visitor
                .visit_newtype_struct(node_to_json(self.node))
                .map_err(|error| DeError::new("invalid-value", sentence(error.to_string()))),
            ONE_OR_MANY_NAME => match &self.node.value {
                NodeValue::Sequence(items) => visitor.visit_seq(SeqDe::new(items, self.reader)),
                _ => visitor.visit_seq(SeqDe::new(std::slice::from_ref(self.node), self.reader)),
            },
            _ => visitor.visit_newtype_struct(self),
        };
        self.locate(result)
    }

    fn deserialize_seq<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Sequence(items) => {
                self.locate(visitor.visit_seq(SeqDe::new(items, self.reader)))
            }
            _ => self.fail(DeError::wrong_type("a list", self.node)),
        }
    }

    fn deserialize_tuple<V: Visitor<'n>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'n>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.node.value {
            NodeValue::Mapping(entries) => {
                self.locate(visitor.visit_map(self.mapping_entries(entries, None)))
            }
            _ => self.fail(DeError::wrong_type("a mapping of `key: value`", self.node)),
        }
    }

    fn deserialize_struct<V: Visitor<'n>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let shorthand_field = name
            .strip_prefix(SHORTHAND_PREFIX)
            .map(|rest| rest.split("::").next().unwrap_or(rest));
        match (&self.node.value, shorthand_field) {
            (NodeValue::Mapping(entries), _) => {
                let result = visitor.visit_map(self.mapping_entries(entries, Some(fields)));
                self.locate(result.map_err(|error| name_the_mapping(error, name)))
            }
            (NodeValue::Scalar { .. }, Some(field)) if !self.node.is_null() => {
                let map = MapDe {
                    entries: vec![(Key::Name(field), self.node)].into_iter(),
                    value: None,
                    reader: self.reader,
                };
                self.locate(visitor.visit_map(map))
            }
            (_, Some(field)) => self.fail(DeError::wrong_type(
                &format!("a name or a mapping with `{field}`"),
                self.node,
            )),
            (_, None) => self.fail(DeError::wrong_type("a mapping of `key: value`", self.node)),
        }
    }

    fn deserialize_enum<V: Visitor<'n>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let expected = format!("one of {}", names::list_of(variants.iter().copied()));
        let text = self.text(&expected)?;
        self.locate(visitor.visit_enum(BorrowedStrDeserializer::<DeError>::new(text)))
    }

    fn deserialize_ignored_any<V: Visitor<'n>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }
}

enum Key<'n> {
    Node(&'n Node),
    /// The implied key of a shorthand scalar.
    Name(&'static str),
}

struct MapDe<'r, 'n> {
    entries: std::vec::IntoIter<(Key<'n>, &'n Node)>,
    value: Option<&'n Node>,
    reader: &'r Reader<'r>,
}

impl<'r, 'n> de::MapAccess<'n> for MapDe<'r, 'n> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'n>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        match key {
            Key::Node(node) => seed
                .deserialize(NodeDe {
                    node,
                    reader: self.reader,
                })
                .map(Some),
            Key::Name(name) => seed
                .deserialize(BorrowedStrDeserializer::<DeError>::new(name))
                .map(Some),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'n>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        match self.value.take() {
            Some(node) => seed.deserialize(NodeDe {
                node,
                reader: self.reader,
            }),
            None => Err(DeError::new(
                "internal",
                "A value was read before its key; this is a bug in Levee.".to_string(),
            )),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

struct SeqDe<'r, 'n> {
    items: std::slice::Iter<'n, Node>,
    reader: &'r Reader<'r>,
}

impl<'r, 'n> SeqDe<'r, 'n> {
    fn new(items: &'n [Node], reader: &'r Reader<'r>) -> Self {
        SeqDe {
            items: items.iter(),
            reader,
        }
    }
}

impl<'r, 'n> de::SeqAccess<'n> for SeqDe<'r, 'n> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'n>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        match self.items.next() {
            Some(node) => seed
                .deserialize(NodeDe {
                    node,
                    reader: self.reader,
                })
                .map(Some),
            None => Ok(None),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Hands [`Spanned`] its line, column and value as a three-element sequence.
struct SpannedSeq<'r, 'n> {
    node: &'n Node,
    reader: &'r Reader<'r>,
    next: u8,
}

impl<'r, 'n> de::SeqAccess<'n> for SpannedSeq<'r, 'n> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'n>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.next += 1;
        match self.next {
            1 => seed
                .deserialize(U64Deserializer::<DeError>::new(self.node.loc.line))
                .map(Some),
            2 => seed
                .deserialize(U64Deserializer::<DeError>::new(self.node.loc.column))
                .map(Some),
            3 => seed
                .deserialize(NodeDe {
                    node: self.node,
                    reader: self.reader,
                })
                .map(Some),
            _ => Ok(None),
        }
    }
}

/// Hands [`Recover`] its value as a one-element sequence, or as an empty one when the value
/// has errors (recorded here).
struct RecoverSeq<'r, 'n> {
    node: Option<&'n Node>,
    reader: &'r Reader<'r>,
}

impl<'r, 'n> de::SeqAccess<'n> for RecoverSeq<'r, 'n> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'n>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        let Some(node) = self.node.take() else {
            return Ok(None);
        };
        match seed.deserialize(NodeDe {
            node,
            reader: self.reader,
        }) {
            Ok(value) => Ok(Some(value)),
            Err(error) => {
                self.reader.record(error, node.loc);
                Ok(None)
            }
        }
    }
}

/// A value and where it was written. Read through other deserializers than the loader's, the
/// location is [`Loc::FILE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spanned<T> {
    pub value: T,
    pub loc: Loc,
}

impl<T> std::ops::Deref for Spanned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Spanned<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpannedVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for SpannedVisitor<T> {
            type Value = Spanned<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Spanned<T>, A::Error> {
                let line: u64 = seq.next_element()?.unwrap_or(0);
                let column: u64 = seq.next_element()?.unwrap_or(0);
                let value: T = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(2, &self))?;
                Ok(Spanned {
                    value,
                    loc: Loc { line, column },
                })
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Spanned<T>, D::Error> {
                T::deserialize(deserializer).map(|value| Spanned {
                    value,
                    loc: Loc::FILE,
                })
            }
        }

        deserializer.deserialize_newtype_struct(SPANNED_NAME, SpannedVisitor(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Spanned<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// A recovery point: with the loader's deserializer, a value with errors becomes `Recover(None)`
/// (its errors recorded) instead of failing what contains it. Other deserializers fail as usual.
#[derive(Clone, Debug, PartialEq)]
pub struct Recover<T>(pub Option<T>);

/// An optional key whose value is a recovery point: `None` when the key is absent,
/// `Some(Recover(None))` when its value had errors (already reported).
pub type Field<T> = Option<Recover<T>>;

/// The value of a [`Field`] that is present and well-formed.
pub fn field<T>(field: &Field<T>) -> Option<&T> {
    field.as_ref().and_then(|recover| recover.0.as_ref())
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Recover<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RecoverVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for RecoverVisitor<T> {
            type Value = Recover<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Recover<T>, A::Error> {
                Ok(Recover(seq.next_element()?))
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Recover<T>, D::Error> {
                T::deserialize(deserializer).map(|value| Recover(Some(value)))
            }
        }

        deserializer.deserialize_newtype_struct(RECOVER_NAME, RecoverVisitor(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for Recover<T> {
    fn inline_schema() -> bool {
        T::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        T::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        T::schema_id()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        T::json_schema(generator)
    }
}

/// One value or a list of them: `in: serving` or `in: [serving, draining]`. Other
/// deserializers than the loader's accept only the list.
#[derive(Clone, Debug, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = OneOrMany<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one value or a list")
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<OneOrMany<T>, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(OneOrMany(items))
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<OneOrMany<T>, D::Error> {
                Vec::<T>::deserialize(deserializer).map(OneOrMany)
            }
        }

        deserializer.deserialize_newtype_struct(ONE_OR_MANY_NAME, OneOrManyVisitor(PhantomData))
    }
}

impl<T: JsonSchema> JsonSchema for OneOrMany<T> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("OneOrMany_{}", T::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let one = generator.subschema_for::<T>();
        json_schema!({
            "anyOf": [
                one,
                { "type": "array", "items": one, "minItems": 1 }
            ]
        })
    }
}

/// Any YAML value as JSON, with YAML's types: plain `3` is a number, `true` a boolean, `~` null,
/// and quoted scalars are strings. Free-form values (stage arguments) are kept this way so a
/// stage receives `count: 3` as the number it was written as, not as the text `"3"`. Other
/// deserializers than the loader's read it as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Json(pub serde_json::Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct JsonVisitor;

        impl<'de> Visitor<'de> for JsonVisitor {
            type Value = Json;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }

            fn visit_newtype_struct<D: Deserializer<'de>>(
                self,
                deserializer: D,
            ) -> Result<Json, D::Error> {
                serde_json::Value::deserialize(deserializer).map(Json)
            }
        }

        deserializer.deserialize_newtype_struct(JSON_NAME, JsonVisitor)
    }
}

impl JsonSchema for Json {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "AnyValue".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!(true)
    }
}

/// Converts a node to JSON with YAML 1.2's core types for plain scalars.
pub(crate) fn node_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match &node.value {
        _ if node.is_null() => Value::Null,
        NodeValue::Scalar {
            text,
            kind: ScalarKind::Quoted,
        } => Value::String(text.clone()),
        NodeValue::Scalar { text, .. } => plain_scalar_to_json(text),
        NodeValue::Sequence(items) => Value::Array(items.iter().map(node_to_json).collect()),
        NodeValue::Mapping(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match &key.value {
                        NodeValue::Scalar { text, .. } => text.clone(),
                        _ => key.describe(),
                    };
                    (key, node_to_json(value))
                })
                .collect(),
        ),
    }
}

fn plain_scalar_to_json(text: &str) -> serde_json::Value {
    use serde_json::Value;
    match text {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Some(integer) = parse_integer(text).and_then(|value| i64::try_from(value).ok()) {
        return Value::from(integer);
    }
    let looks_numeric = text
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && text.bytes().any(|b| b.is_ascii_digit());
    if looks_numeric
        && let Ok(float) = text.parse::<f64>()
        && let Some(number) = serde_json::Number::from_f64(float)
    {
        return Value::Number(number);
    }
    Value::String(text.to_string())
}

/// A mapping read in the order it was written (keys are unique: the YAML layer refuses
/// duplicates). Its schema is an object whose property names follow `K`'s schema.
#[derive(Clone, Debug, PartialEq)]
pub struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<K, V>(PhantomData<(K, V)>);

        impl<'de, K: Deserialize<'de>, V: Deserialize<'de>> Visitor<'de> for MapVisitor<K, V> {
            type Value = OrderedMap<K, V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedMap<K, V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

impl<K: JsonSchema, V: JsonSchema> JsonSchema for OrderedMap<K, V> {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        format!("Map_{}_{}", K::schema_name(), V::schema_name()).into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let keys = generator.subschema_for::<K>();
        let values = generator.subschema_for::<V>();
        json_schema!({
            "type": "object",
            "propertyNames": keys,
            "additionalProperties": values
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::parse_file;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: Spanned<String>,
        #[serde(default)]
        count: Option<Spanned<u32>>,
        #[serde(default)]
        #[allow(dead_code, reason = "only its errors are tested")]
        flag: Option<bool>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        items: Vec<Recover<Item>>,
        #[serde(default)]
        tags: Option<OneOrMany<Spanned<String>>>,
    }

    fn read(source: &str) -> (Option<Doc>, Vec<String>) {
        let parsed = parse_file("t.yaml", source);
        assert!(parsed.diagnostics.is_empty(), "{:?}", parsed.diagnostics);
        let reader = Reader::new("t.yaml", UnknownKeys::Deny, &[]);
        let doc = reader.read::<Doc>(&parsed.documents[0]);
        let messages = reader
            .into_diagnostics()
            .iter()
            .map(ToString::to_string)
            .collect();
        (doc, messages)
    }

    #[test]
    fn spans_point_at_values() {
        let (doc, messages) = read("items:\n  - name: a\n    count: 3\ntags: x\n");
        assert!(messages.is_empty(), "{messages:?}");
        let doc = doc.expect("doc");
        let item = doc.items[0].0.as_ref().expect("item");
        assert_eq!(
            item.name.loc,
            Loc {
                line: 2,
                column: 11
            }
        );
        assert_eq!(item.count.as_ref().map(|c| c.value), Some(3));
        let tags = doc.tags.expect("tags").0;
        assert_eq!(tags[0].value, "x");
        assert_eq!(tags[0].loc, Loc { line: 4, column: 7 });
    }

    #[test]
    fn recovers_and_reports_every_broken_item() {
        let (doc, messages) = read(
            "items:\n  - name: a\n    cuont: 3\n  - name: b\n    count: x\n  - count: 1\n  - name: d\n    flag: \"true\"\n",
        );
        let doc = doc.expect("doc");
        assert_eq!(
            doc.items.iter().filter(|i| i.0.is_some()).count(),
            1,
            "{messages:#?}"
        );
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].starts_with("t.yaml:3:5: error[unknown-key]"));
        assert!(messages[0].contains("Did you mean `count`?"));
        assert!(messages[1].starts_with("t.yaml:5:12: error[wrong-type]"));
        assert!(messages[2].starts_with("t.yaml:6:5: error[missing-key]"));
        assert!(messages[3].starts_with("t.yaml:8:11: error[wrong-type]"));
    }
}
