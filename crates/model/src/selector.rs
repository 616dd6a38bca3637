//! Selectors: which hosts of a fleet a pool, a spare list or a maintenance addresses, and the
//! inverted index ([`HostIndex`]) that resolves them without scanning the fleet.
//!
//! # Grammar
//!
//! ```text
//! selector := term ( "," term )*            terms are ANDed
//! term     := key "=" value                 the host's key has this value
//!           | key "!=" value                the host's key does not have this value
//!           | key "in" "(" values ")"       the host's key has one of these values
//!           | key "notin" "(" values ")"    the host's key has none of these values
//! values   := value ( "," value )*
//! key      := "host" | "region" | "datacenter" | "row" | "rack" | "power" | "switch"
//!           | "label:" NAME                 a label, such as `label:role`
//! value    := NAME
//! NAME     := 1 to 128 of A-Z a-z 0-9 . _ - / , starting with a letter or a digit
//! ```
//!
//! Spaces are allowed around every token. Examples: `rack=a-r1`, `row in (a, b)`,
//! `label:role=web, rack!=a-r3`, `host in (web-1, web-2)`.
//!
//! Two rules keep a selector from meaning "everything" by accident: an empty selector is an
//! error (never "all hosts"), and a selector needs at least one positive term (`=` or `in`),
//! since `rack!=a-r1` alone would address nearly the whole fleet. A host without a value for a
//! key (no `power` written, no `role` label) never matches a positive term on that key, and
//! always matches a negative one.

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::{DomainLevel, HostDef};
use crate::names;

/// Longest selector accepted, in characters.
pub const MAX_SELECTOR_CHARS: usize = 4_096;
/// Most terms one selector may have.
pub const MAX_SELECTOR_TERMS: usize = 32;
/// Most values one `in (...)` list may have.
pub const MAX_SELECTOR_VALUES: usize = 1_000;
/// Longest name (key or value) in a selector, in characters.
pub const MAX_SELECTOR_NAME_CHARS: usize = 128;

/// What a selector term looks at.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorKey {
    /// The host's name.
    Host,
    /// One of the host's failure domains.
    Domain(DomainLevel),
    /// A label, by its key.
    Label(String),
}

impl fmt::Display for SelectorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SelectorKey::Host => f.write_str("host"),
            SelectorKey::Domain(level) => f.write_str(level.key()),
            SelectorKey::Label(key) => write!(f, "label:{key}"),
        }
    }
}

/// One term: the key has (or, `negated`, has not) one of the values.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Term {
    pub key: SelectorKey,
    pub negated: bool,
    /// At least one value.
    pub values: Vec<String>,
}

/// A parsed selector: every term must hold. Built only by [`Selector::parse`], so it always
/// has at least one positive term.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    terms: Vec<Term>,
}

/// Why a selector does not parse: a sentence, and the 0-based character position it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at character {}: {}", self.position + 1, self.message)
    }
}

impl std::error::Error for SelectorError {}

impl Selector {
    /// Parses `text` (see the module documentation for the grammar).
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        let chars: Vec<char> = text.chars().collect();
        if chars.len() > MAX_SELECTOR_CHARS {
            return Err(SelectorError {
                position: MAX_SELECTOR_CHARS,
                message: format!(
                    "The selector is {} characters long; at most {MAX_SELECTOR_CHARS} are \
                     allowed. Select by a wider failure domain or a label instead.",
                    chars.len()
                ),
            });
        }
        let mut parser = SelectorParser { chars, at: 0 };
        parser.skip_spaces();
        if parser.at == parser.chars.len() {
            return Err(SelectorError {
                position: 0,
                message: "The selector is empty. An empty selector is an error, never \"every \
                          host\"; write what to select, such as `rack=a-r1` or \
                          `label:role=web`."
                    .to_string(),
            });
        }
        let mut terms = Vec::new();
        loop {
            if terms.len() == MAX_SELECTOR_TERMS {
                return Err(parser.error(format!(
                    "The selector has more than {MAX_SELECTOR_TERMS} terms; simplify it."
                )));
            }
            terms.push(parser.term()?);
            parser.skip_spaces();
            match parser.peek() {
                None => break,
                Some(',') => {
                    parser.at += 1;
                    parser.skip_spaces();
                }
                Some(other) => {
                    return Err(parser.error(format!(
                        "Expected `,` between terms or the end of the selector, found `{other}`."
                    )));
                }
            }
        }
        if terms.iter().all(|term| term.negated) {
            return Err(SelectorError {
                position: 0,
                message: "The selector only excludes hosts (`!=`, `notin`), so it would \
                          address nearly every host; add a term that says what to select, \
                          such as `row=a`."
                    .to_string(),
            });
        }
        Ok(Selector { terms })
    }

    pub fn terms(&self) -> &[Term] {
        &self.terms
    }
}

impl fmt::Display for Selector {
    /// The canonical form: `rack=a-r1, row in (a, b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, term) in self.terms.iter().enumerate() {
            if index > 0 {
                f.write_str(", ")?;
            }
            match (term.negated, term.values.as_slice()) {
                (false, [one]) => write!(f, "{}={one}", term.key)?,
                (true, [one]) => write!(f, "{}!={one}", term.key)?,
                (negated, values) => write!(
                    f,
                    "{} {} ({})",
                    term.key,
                    if negated { "notin" } else { "in" },
                    values.join(", ")
                )?,
            }
        }
        Ok(())
    }
}

/// Whether `c` may appear in a selector name (key or value).
pub fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// Whether `text` is a valid label key, label value or failure domain value: 1 to
/// [`MAX_SELECTOR_NAME_CHARS`] of `A-Z a-z 0-9 . _ - /`, starting with a letter or a digit.
pub fn is_valid_selector_name(text: &str) -> bool {
    text.chars().count() <= MAX_SELECTOR_NAME_CHARS
        && text.starts_with(|c: char| c.is_ascii_alphanumeric())
        && text.chars().all(is_name_char)
}

/// What [`is_valid_selector_name`] accepts, for messages.
pub const SELECTOR_NAME_RULE: &str = "use 1 to 128 letters, digits, `.`, `_`, `-` or `/`, \
     starting with a letter or a digit";

struct SelectorParser {
    chars: Vec<char>,
    at: usize,
}

impl SelectorParser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn error(&self, message: String) -> SelectorError {
        SelectorError {
            position: self.at,
            message,
        }
    }

    fn name(&mut self, what: &str) -> Result<String, SelectorError> {
        let start = self.at;
        while self.peek().is_some_and(is_name_char) {
            self.at += 1;
        }
        let name: String = self.chars[start..self.at].iter().collect();
        if name.is_empty() {
            let found = match self.peek() {
                Some(c) => format!("`{c}`"),
                None => "the end of the selector".to_string(),
            };
            self.at = start;
            return Err(self.error(format!("Expected {what}, found {found}.")));
        }
        if !is_valid_selector_name(&name) {
            self.at = start;
            return Err(self.error(format!(
                "`{}` is not a valid {what}: {SELECTOR_NAME_RULE}.",
                crate::yaml::abbreviate(&name)
            )));
        }
        Ok(name)
    }

    fn key(&mut self) -> Result<SelectorKey, SelectorError> {
        let start = self.at;
        let word = self.name("a key such as `rack`, `row` or `label:role`")?;
        if word == "label" && self.peek() == Some(':') {
            self.at += 1;
            return self
                .name("a label key after `label:`")
                .map(SelectorKey::Label);
        }
        if word == "host" {
            return Ok(SelectorKey::Host);
        }
        match DomainLevel::from_key(&word) {
            Some(level) => Ok(SelectorKey::Domain(level)),
            None => {
                let known = ["host", "label:NAME"]
                    .into_iter()
                    .chain(DomainLevel::ALL.iter().map(|level| level.key()));
                let suggestion = names::did_you_mean(&word, known.clone());
                self.at = start;
                Err(self.error(format!(
                    "Unknown key `{}`.{suggestion} The keys are {}.",
                    crate::yaml::abbreviate(&word),
                    names::list_of(known)
                )))
            }
        }
    }

    fn term(&mut self) -> Result<Term, SelectorError> {
        let key = self.key()?;
        self.skip_spaces();
        match self.peek() {
            Some('=') => {
                self.at += 1;
                self.skip_spaces();
                let value = self.name("a value after `=`")?;
                Ok(Term {
                    key,
                    negated: false,
                    values: vec![value],
                })
            }
            Some('!') if self.chars.get(self.at + 1) == Some(&'=') => {
                self.at += 2;
                self.skip_spaces();
                let value = self.name("a value after `!=`")?;
                Ok(Term {
                    key,
                    negated: true,
                    values: vec![value],
                })
            }
            Some(c) if c.is_ascii_alphabetic() => {
                let start = self.at;
                let word = self.name("`=`, `!=`, `in` or `notin`")?;
                let negated = match word.as_str() {
                    "in" => false,
                    "notin" => true,
                    _ => {
                        self.at = start;
                        return Err(self.error(format!(
                            "Expected `=`, `!=`, `in` or `notin` after `{key}`, found `{}`.",
                            crate::yaml::abbreviate(&word)
                        )));
                    }
                };
                self.skip_spaces();
                if self.peek() != Some('(') {
                    return Err(self.error(format!(
                        "Expected `(` after `{word}`: write `{key} {word} (a, b)`."
                    )));
                }
                self.at += 1;
                let mut values = Vec::new();
                loop {
                    self.skip_spaces();
                    if values.len() == MAX_SELECTOR_VALUES {
                        return Err(self.error(format!(
                            "More than {MAX_SELECTOR_VALUES} values in one list; select by a \
                             wider failure domain or a label instead."
                        )));
                    }
                    values.push(self.name("a value")?);
                    self.skip_spaces();
                    match self.peek() {
                        Some(',') => self.at += 1,
                        Some(')') => {
                            self.at += 1;
                            break;
                        }
                        Some(other) => {
                            return Err(self.error(format!(
                                "Expected `,` or `)` in the list of values, found `{other}`."
                            )));
                        }
                        None => {
                            return Err(self
                                .error("The list of values is not closed; add `)`.".to_string()));
                        }
                    }
                }
                Ok(Term {
                    key,
                    negated,
                    values,
                })
            }
            Some(other) => Err(self.error(format!(
                "Expected `=`, `!=`, `in` or `notin` after `{key}`, found `{other}`."
            ))),
            None => Err(self.error(format!(
                "The selector ends after `{key}`; write `{key}=VALUE` or `{key} in (A, B)`."
            ))),
        }
    }
}

/// Host numbers are positions in the fleet's host list.
pub type HostNumber = u32;

/// A host's value id at a level (or for a label key) meaning "no value".
const NO_VALUE: u32 = u32::MAX;

/// Values of one key (a failure domain level, or one label key), interned, each with its
/// hosts in fleet order.
#[derive(Clone, Debug, Default)]
struct Postings {
    ids: HashMap<String, u32>,
    values: Vec<String>,
    hosts: Vec<Vec<HostNumber>>,
}

impl Postings {
    fn add(&mut self, value: &str, host: HostNumber) -> u32 {
        let id = match self.ids.get(value) {
            Some(id) => *id,
            None => {
                let id = self.values.len() as u32;
                self.ids.insert(value.to_string(), id);
                self.values.push(value.to_string());
                self.hosts.push(Vec::new());
                id
            }
        };
        self.hosts[id as usize].push(host);
        id
    }
}

/// An inverted index of a fleet's hosts: by name, by each failure domain value, and by each
/// label, so a selector resolves in time proportional to the hosts it touches rather than to
/// the fleet.
#[derive(Clone, Debug, Default)]
pub struct HostIndex {
    names: HashMap<String, HostNumber>,
    domains: [Postings; DomainLevel::COUNT],
    label_keys: HashMap<String, u32>,
    labels: Vec<Postings>,
    /// Each host's value id at each level, or `NO_VALUE`.
    host_domains: Vec<[u32; DomainLevel::COUNT]>,
    /// Each host's labels as (key id, value id), hosts one after another: host `h` has
    /// `host_labels[label_starts[h]..label_starts[h + 1]]`.
    label_starts: Vec<u32>,
    host_labels: Vec<(u32, u32)>,
}

/// A term with its values looked up in the index.
enum CompiledTerm {
    Hosts {
        negated: bool,
        hosts: Vec<HostNumber>,
    },
    Domain {
        negated: bool,
        level: usize,
        ids: Vec<u32>,
    },
    Label {
        negated: bool,
        key: u32,
        ids: Vec<u32>,
    },
    /// A label key no host has: positive terms match nothing, negative ones everything.
    Nothing { negated: bool },
}

impl HostIndex {
    /// Indexes `hosts`. A name listed twice keeps its first position (the fleet loader refuses
    /// such fleets before they get here).
    pub fn new(hosts: &[HostDef]) -> HostIndex {
        let mut index = HostIndex {
            names: HashMap::with_capacity(hosts.len()),
            host_domains: Vec::with_capacity(hosts.len()),
            label_starts: Vec::with_capacity(hosts.len() + 1),
            ..HostIndex::default()
        };
        index.label_starts.push(0);
        for (number, host) in hosts.iter().enumerate() {
            let number = number as HostNumber;
            index.names.entry(host.name.clone()).or_insert(number);
            let mut ids = [NO_VALUE; DomainLevel::COUNT];
            for level in DomainLevel::ALL {
                if let Some(value) = host.domains.get(level) {
                    ids[level as usize] = index.domains[level as usize].add(value, number);
                }
            }
            index.host_domains.push(ids);
            for (key, value) in &host.labels {
                let key_id = match index.label_keys.get(key) {
                    Some(id) => *id,
                    None => {
                        let id = index.labels.len() as u32;
                        index.label_keys.insert(key.clone(), id);
                        index.labels.push(Postings::default());
                        id
                    }
                };
                let value_id = index.labels[key_id as usize].add(value, number);
                index.host_labels.push((key_id, value_id));
            }
            index.label_starts.push(index.host_labels.len() as u32);
        }
        index
    }

    /// How many hosts are indexed.
    pub fn len(&self) -> usize {
        self.host_domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.host_domains.is_empty()
    }

    /// The number of the host named `name`.
    pub fn host(&self, name: &str) -> Option<HostNumber> {
        self.names.get(name).copied()
    }

    /// Every host name, for "did you mean" suggestions.
    pub fn host_names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The values present at `level`, each with its hosts in fleet order, in order of first
    /// appearance.
    pub fn domain_values(&self, level: DomainLevel) -> impl Iterator<Item = (&str, &[HostNumber])> {
        let postings = &self.domains[level as usize];
        postings
            .values
            .iter()
            .map(String::as_str)
            .zip(postings.hosts.iter().map(Vec::as_slice))
    }

    /// The value of `host` at `level`, if it has one.
    pub fn domain_of(&self, host: HostNumber, level: DomainLevel) -> Option<&str> {
        let id = self.host_domains.get(host as usize)?[level as usize];
        (id != NO_VALUE).then(|| self.domains[level as usize].values[id as usize].as_str())
    }

    /// The hosts with `level` = `value`, in fleet order.
    pub fn hosts_in(&self, level: DomainLevel, value: &str) -> &[HostNumber] {
        let postings = &self.domains[level as usize];
        postings
            .ids
            .get(value)
            .map_or(&[], |id| postings.hosts[*id as usize].as_slice())
    }

    /// The hosts `selector` matches, in fleet order. Empty when nothing matches: callers
    /// decide what that means (for a pool or a maintenance it is an error, see
    /// [`HostIndex::explain_no_match`]).
    pub fn resolve(&self, selector: &Selector) -> Vec<HostNumber> {
        let compiled: Vec<CompiledTerm> = selector
            .terms
            .iter()
            .map(|term| self.compile(term))
            .collect();
        // Start from the positive term with the fewest hosts, then filter by the others.
        let mut best: Option<(usize, usize)> = None;
        for (position, term) in compiled.iter().enumerate() {
            if let Some(size) = self.positive_size(term)
                && best.is_none_or(|(_, smallest)| size < smallest)
            {
                best = Some((position, size));
            }
        }
        let Some((start, size)) = best else {
            return Vec::new();
        };
        let mut candidates: Vec<HostNumber> = Vec::with_capacity(size);
        match &compiled[start] {
            CompiledTerm::Hosts { hosts, .. } => candidates.extend_from_slice(hosts),
            CompiledTerm::Domain { level, ids, .. } => {
                for id in ids {
                    candidates.extend_from_slice(&self.domains[*level].hosts[*id as usize]);
                }
            }
            CompiledTerm::Label { key, ids, .. } => {
                for id in ids {
                    candidates.extend_from_slice(&self.labels[*key as usize].hosts[*id as usize]);
                }
            }
            CompiledTerm::Nothing { .. } => {}
        }
        // Each host has one value per level and per label key, so the lists are disjoint;
        // host lists were deduplicated when compiled.
        if matches!(&compiled[start], CompiledTerm::Domain { ids, .. } | CompiledTerm::Label { ids, .. } if ids.len() > 1)
        {
            candidates.sort_unstable();
        }
        candidates.retain(|host| {
            compiled
                .iter()
                .enumerate()
                .all(|(position, term)| position == start || self.holds(term, *host))
        });
        candidates
    }

    /// Why `selector` matches no host, as a sentence: the first positive term whose values no
    /// host has (with a suggestion for a misspelt value), or else that the terms together
    /// exclude every host.
    pub fn explain_no_match(&self, selector: &Selector) -> String {
        for term in selector.terms.iter().filter(|term| !term.negated) {
            let known: Vec<&str> = match &term.key {
                SelectorKey::Host => Vec::new(),
                SelectorKey::Domain(level) => self.domains[*level as usize]
                    .values
                    .iter()
                    .map(String::as_str)
                    .collect(),
                SelectorKey::Label(key) => match self.label_keys.get(key) {
                    Some(id) => self.labels[*id as usize]
                        .values
                        .iter()
                        .map(String::as_str)
                        .collect(),
                    None => {
                        return format!(
                            "No host has the label `{}`.{}",
                            key,
                            names::did_you_mean(key, self.label_keys.keys().map(String::as_str))
                        );
                    }
                },
            };
            let present = |value: &String| match &term.key {
                SelectorKey::Host => self.names.contains_key(value),
                _ => known.contains(&value.as_str()),
            };
            if term.values.iter().any(present) {
                continue;
            }
            let first = &term.values[0];
            let suggestion = match &term.key {
                SelectorKey::Host => names::did_you_mean(first, self.host_names()),
                _ => names::did_you_mean(first, known.iter().copied()),
            };
            let values = names::list_of(term.values.iter().map(String::as_str));
            return format!("No host has `{}` {values}.{suggestion}", term.key);
        }
        format!("Every term of `{selector}` matches some host, but no host matches all of them.")
    }

    fn compile(&self, term: &Term) -> CompiledTerm {
        let negated = term.negated;
        match &term.key {
            SelectorKey::Host => {
                let mut hosts: Vec<HostNumber> = term
                    .values
                    .iter()
                    .filter_map(|name| self.host(name))
                    .collect();
                hosts.sort_unstable();
                hosts.dedup();
                CompiledTerm::Hosts { negated, hosts }
            }
            SelectorKey::Domain(level) => {
                let postings = &self.domains[*level as usize];
                let mut ids: Vec<u32> = term
                    .values
                    .iter()
                    .filter_map(|value| postings.ids.get(value).copied())
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                CompiledTerm::Domain {
                    negated,
                    level: *level as usize,
                    ids,
                }
            }
            SelectorKey::Label(key) => match self.label_keys.get(key) {
                None => CompiledTerm::Nothing { negated },
                Some(key_id) => {
                    let postings = &self.labels[*key_id as usize];
                    let mut ids: Vec<u32> = term
                        .values
                        .iter()
                        .filter_map(|value| postings.ids.get(value).copied())
                        .collect();
                    ids.sort_unstable();
                    ids.dedup();
                    CompiledTerm::Label {
                        negated,
                        key: *key_id,
                        ids,
                    }
                }
            },
        }
    }

    /// How many hosts a positive term matches; `None` for negative terms.
    fn positive_size(&self, term: &CompiledTerm) -> Option<usize> {
        match term {
            CompiledTerm::Hosts {
                negated: false,
                hosts,
            } => Some(hosts.len()),
            CompiledTerm::Domain {
                negated: false,
                level,
                ids,
            } => Some(
                ids.iter()
                    .map(|id| self.domains[*level].hosts[*id as usize].len())
                    .sum(),
            ),
            CompiledTerm::Label {
                negated: false,
                key,
                ids,
            } => Some(
                ids.iter()
                    .map(|id| self.labels[*key as usize].hosts[*id as usize].len())
                    .sum(),
            ),
            CompiledTerm::Nothing { negated: false } => Some(0),
            _ => None,
        }
    }

    fn holds(&self, term: &CompiledTerm, host: HostNumber) -> bool {
        let (negated, matched) = match term {
            CompiledTerm::Hosts { negated, hosts } => {
                (*negated, hosts.binary_search(&host).is_ok())
            }
            CompiledTerm::Domain {
                negated,
                level,
                ids,
            } => {
                let id = self.host_domains[host as usize][*level];
                (*negated, id != NO_VALUE && ids.contains(&id))
            }
            CompiledTerm::Label { negated, key, ids } => {
                let start = self.label_starts[host as usize] as usize;
                let end = self.label_starts[host as usize + 1] as usize;
                let matched = self.host_labels[start..end]
                    .iter()
                    .any(|(k, v)| k == key && ids.contains(v));
                (*negated, matched)
            }
            CompiledTerm::Nothing { negated } => (*negated, false),
        };
        matched != negated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_error(text: &str) -> SelectorError {
        match Selector::parse(text) {
            Ok(selector) => panic!("`{text}` parsed as {selector:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn parses_every_form_and_prints_it_canonically() {
        let selector = Selector::parse(
            " rack=a-r1 ,row in (a,b), label:role != web,power notin (p1), host=h.1",
        )
        .expect("parses");
        assert_eq!(
            selector.to_string(),
            "rack=a-r1, row in (a, b), label:role!=web, power!=p1, host=h.1"
        );
        assert_eq!(selector.terms().len(), 5);
        assert_eq!(
            selector.terms()[2].key,
            SelectorKey::Label("role".to_string())
        );
        assert!(selector.terms()[3].negated);
    }

    #[test]
    fn an_empty_selector_is_an_error_never_everything() {
        for text in ["", "   ", "\n"] {
            let error = parse_error(text);
            assert!(error.message.contains("never \"every host\""), "{error}");
        }
    }

    #[test]
    fn a_selector_of_exclusions_only_is_refused() {
        let error = parse_error("rack!=a-r1, row notin (b)");
        assert!(error.message.contains("only excludes"), "{error}");
    }

    #[test]
    fn errors_say_where_and_what() {
        let error = parse_error("rakc=a");
        assert_eq!(error.position, 0);
        assert!(error.message.contains("Did you mean `rack`?"), "{error}");
        let error = parse_error("rack=a row=b");
        assert_eq!(error.position, 7);
        let error = parse_error("row in (a, b");
        assert!(error.message.contains("not closed"), "{error}");
        let error = parse_error("row in a");
        assert!(error.message.contains("Expected `(`"), "{error}");
        let error = parse_error("row=");
        assert!(error.message.contains("end of the selector"), "{error}");
        let error = parse_error("row=-a");
        assert!(error.message.contains("not a valid"), "{error}");
        let error = parse_error("row ~ a");
        assert!(error.message.contains("found `~`"), "{error}");
        let error = parse_error("rack=a,");
        assert!(error.message.contains("Expected a key"), "{error}");
    }

    #[test]
    fn bounds_are_enforced() {
        let many_terms = vec!["rack=a"; MAX_SELECTOR_TERMS + 1].join(",");
        assert!(parse_error(&many_terms).message.contains("terms"));
        let long = format!("host in ({})", vec!["h"; MAX_SELECTOR_VALUES + 1].join(","));
        assert!(long.chars().count() <= MAX_SELECTOR_CHARS);
        assert!(parse_error(&long).message.contains("values"));
        let too_long = format!("rack={}", "a".repeat(MAX_SELECTOR_CHARS));
        assert!(parse_error(&too_long).message.contains("characters long"));
    }

    fn host(name: &str, rack: &str, row: &str, role: Option<&str>) -> HostDef {
        let mut host = HostDef::named(name);
        host.domains.rack = Some(rack.to_string());
        host.domains.row = Some(row.to_string());
        if let Some(role) = role {
            host.labels.insert("role".to_string(), role.to_string());
        }
        host
    }

    fn names_of(index_hosts: &[HostDef], numbers: &[HostNumber]) -> Vec<String> {
        numbers
            .iter()
            .map(|n| index_hosts[*n as usize].name.clone())
            .collect()
    }

    #[test]
    fn resolves_against_the_index() {
        let hosts = vec![
            host("w1", "r1", "a", Some("web")),
            host("w2", "r2", "a", Some("web")),
            host("c1", "r1", "a", Some("cache")),
            host("d1", "r3", "b", None),
            host("w3", "r3", "b", Some("web")),
        ];
        let index = HostIndex::new(&hosts);
        let resolve = |text: &str| {
            let selector = Selector::parse(text).expect("parses");
            names_of(&hosts, &index.resolve(&selector))
        };
        assert_eq!(resolve("rack=r1"), ["w1", "c1"]);
        assert_eq!(resolve("rack in (r3, r1)"), ["w1", "c1", "d1", "w3"]);
        assert_eq!(resolve("label:role=web"), ["w1", "w2", "w3"]);
        assert_eq!(resolve("label:role=web, row=b"), ["w3"]);
        assert_eq!(resolve("row=b, label:role!=web"), ["d1"]);
        assert_eq!(resolve("row in (a,b), rack notin (r1, r2)"), ["d1", "w3"]);
        assert_eq!(resolve("host in (w3, w1, nope)"), ["w1", "w3"]);
        assert!(resolve("rack=r9").is_empty());
        assert!(resolve("label:team=x").is_empty());
        assert_eq!(resolve("row=a, label:team!=x"), ["w1", "w2", "c1"]);
        assert_eq!(index.domain_of(3, DomainLevel::Rack), Some("r3"));
        assert_eq!(index.domain_of(3, DomainLevel::Power), None);
        assert_eq!(index.hosts_in(DomainLevel::Row, "b"), [3, 4]);
    }

    #[test]
    fn explains_why_nothing_matched() {
        let hosts = vec![host("w1", "r1", "a", Some("web"))];
        let index = HostIndex::new(&hosts);
        let explain = |text: &str| index.explain_no_match(&Selector::parse(text).expect("parses"));
        assert_eq!(
            explain("rack=r2"),
            "No host has `rack` `r2`. Did you mean `r1`?"
        );
        assert_eq!(
            explain("label:rol=web"),
            "No host has the label `rol`. Did you mean `role`?"
        );
        assert!(explain("rack=r1, row=b").contains("No host has `row` `b`"));
        assert!(explain("rack=r1, label:role!=web").contains("no host matches all of them"));
        assert!(explain("host=w2").contains("Did you mean `w1`?"));
    }
}
