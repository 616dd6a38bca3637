//! `kind: RemediationRule`: which alerts (by their labels) repair which host with which
//! runbook, under which limits, and its compilation into a [`RemediationRuleDef`].
//!
//! A rule is the FBAR half of issue 4: an Alertmanager alert whose labels match the rule names
//! a host (by `host_label`); the rule runs a host-level runbook for it with the parameters
//! `host`, `service` and `alert` (and `with:`), at most `max_in_repair_per_pool` hosts of a pool
//! and `max_in_repair` hosts overall in repair at once, never twice for one host within
//! `cooldown`, and not at all while the `short_circuit` is tripped (too many hosts unhealthy at
//! once: that is an outage, not a broken host). The decision itself is pure and lives in
//! `levee_fleet::remediation`; whether `runbook` names a stored runbook and `fleet` a stored
//! fleet needs other documents, which the server checks.
//!
//! Label matchers follow Alertmanager's: `=` (a plain value), `!=` (`{ not: VALUE }`), `=~`
//! (`{ regex: RE }`) and `!~` (`{ not_regex: RE }`); regular expressions are anchored at both
//! ends, as Alertmanager anchors them, and use RE2's syntax (the `regex` crate's, which has no
//! look-around or back-references either). A missing label matches as the empty string, as in
//! Alertmanager. Every rule must match `alertname` with `=` or `=~`, so no rule ever takes
//! every alert.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::de::{Field, Json, OrderedMap, Reader, Spanned, field};
use crate::fleet::Amount;
use crate::names::{self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE};
use crate::runbook::{Located, Origin};
use crate::time::parse_duration_ms;
use crate::yaml::{Loc, Node, abbreviate};

/// The `kind` of a remediation rule.
pub const REMEDIATION_RULE_KIND: &str = "RemediationRule";
/// The label whose value names the host when the rule does not say: Prometheus's target
/// address, `host:port`, with the port stripped.
pub const DEFAULT_HOST_LABEL: &str = "instance";
/// The label tried next when the alert has no [`DEFAULT_HOST_LABEL`] and the rule names none.
pub const FALLBACK_HOST_LABEL: &str = "host";
/// Hosts of one pool in repair at once when the rule does not say.
pub const DEFAULT_MAX_IN_REPAIR_PER_POOL_HOSTS: u64 = 1;
/// Hosts in repair at once, over the whole fleet, when the rule does not say.
pub const DEFAULT_MAX_IN_REPAIR_HOSTS: u64 = 5;
/// Unhealthy hosts within the short-circuit window beyond which automatic remediation stops,
/// when the rule does not say.
pub const DEFAULT_SHORT_CIRCUIT_UNHEALTHY_HOSTS: u64 = 10;
/// The short-circuit window when the rule does not say, in milliseconds.
pub const DEFAULT_SHORT_CIRCUIT_WINDOW_MS: u64 = 10 * 60 * 1000;
/// Longest short-circuit window, in milliseconds.
pub const MAX_SHORT_CIRCUIT_WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Time after a host's repair ends before a rule repairs it again, when the rule does not
/// say, in milliseconds.
pub const DEFAULT_COOLDOWN_MS: u64 = 60 * 60 * 1000;
/// Longest cooldown, in milliseconds.
pub const MAX_COOLDOWN_MS: u64 = 30 * 24 * 60 * 60 * 1000;
/// Most label matchers one rule may have.
pub const MAX_MATCHERS_PER_RULE: usize = 32;
/// Longest regular expression in a matcher, in bytes.
pub const MAX_REGEX_PATTERN_BYTES: usize = 1024;
/// Most memory one compiled regular expression may take, in bytes (the `regex` crate's size
/// limit), so a pathological pattern is refused at load time.
pub const MAX_COMPILED_REGEX_BYTES: usize = 1024 * 1024;
/// Longest `repair_ticket_webhook` URL, in bytes.
pub const MAX_WEBHOOK_URL_BYTES: usize = 2048;
/// Parameters Levee gives the runbook itself; `with:` may not set them.
pub const RESERVED_PARAMS: [&str; 3] = ["host", "service", "alert"];
/// The shape of a Prometheus label name.
pub const LABEL_NAME_PATTERN: &str = "^[a-zA-Z_][a-zA-Z0-9_]*$";

/// Whether `name` matches [`LABEL_NAME_PATTERN`].
pub fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A regular expression anchored at both ends (`^(?:RE)$`), as Alertmanager anchors its
/// matchers. Serialized as the pattern written; compared by it.
#[derive(Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored, within [`MAX_COMPILED_REGEX_BYTES`].
    pub fn new(source: &str) -> Result<Pattern, String> {
        if source.len() > MAX_REGEX_PATTERN_BYTES {
            return Err(format!(
                "The regular expression is {} bytes long; at most {MAX_REGEX_PATTERN_BYTES} \
                 bytes are allowed.",
                source.len()
            ));
        }
        let build = |pattern: &str| {
            regex::RegexBuilder::new(pattern)
                .size_limit(MAX_COMPILED_REGEX_BYTES)
                .build()
        };
        // The pattern as written first, so a syntax error points into the user's text and
        // not into the anchors.
        build(source)
            .and_then(|_| build(&format!("^(?:{source})$")))
            .map(|compiled| Pattern {
                source: source.to_string(),
                compiled,
            })
            .map_err(|error| {
                let detail = match error {
                    regex::Error::CompiledTooBig(_) => format!(
                        "it compiles to more than {MAX_COMPILED_REGEX_BYTES} bytes; simplify it"
                    ),
                    // The `regex` crate's message draws the pattern and a caret over
                    // several lines; its last line says what is wrong.
                    other => other
                        .to_string()
                        .lines()
                        .rev()
                        .map(str::trim)
                        .find(|line| !line.is_empty())
                        .map(|line| line.trim_start_matches("error: ").to_string())
                        .unwrap_or_default(),
                };
                format!(
                    "`{}` is not a valid regular expression (RE2 syntax, as in Alertmanager): \
                     {detail}",
                    abbreviate(source)
                )
            })
    }

    /// The pattern as written, without the anchors.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `text` matches.
    pub fn is_match(&self, text: &str) -> bool {
        self.compiled.is_match(text)
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pattern({:?})", self.source)
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Pattern) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Pattern, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// How a matcher compares a label's value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op", content = "value")]
pub enum MatchOp {
    /// `=`: the value is exactly this.
    Equal(String),
    /// `!=`: the value is anything but this.
    NotEqual(String),
    /// `=~`: the whole value matches.
    Regex(Pattern),
    /// `!~`: the whole value does not match.
    NotRegex(Pattern),
}

/// One label matcher of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelMatcher {
    pub label: String,
    pub op: MatchOp,
    pub origin: Origin,
}

impl LabelMatcher {
    /// Whether an alert with `value` for the label (`None`: the alert has no such label, which
    /// matches as the empty string, as in Alertmanager) passes.
    pub fn matches(&self, value: Option<&str>) -> bool {
        let value = value.unwrap_or("");
        match &self.op {
            MatchOp::Equal(expected) => value == expected,
            MatchOp::NotEqual(unwanted) => value != unwanted,
            MatchOp::Regex(pattern) => pattern.is_match(value),
            MatchOp::NotRegex(pattern) => !pattern.is_match(value),
        }
    }

    /// The matcher as Alertmanager writes it: `alertname="HostDown"`, `severity=~"crit.*"`.
    pub fn describe(&self) -> String {
        let (op, value) = match &self.op {
            MatchOp::Equal(v) => ("=", v.as_str()),
            MatchOp::NotEqual(v) => ("!=", v.as_str()),
            MatchOp::Regex(p) => ("=~", p.as_str()),
            MatchOp::NotRegex(p) => ("!~", p.as_str()),
        };
        format!("{}{op}{value:?}", self.label)
    }
}

/// When automatic remediation stops altogether: more than `max_unhealthy` hosts (a count, or a
/// percentage of the fleet's hosts, rounded down) unhealthy within `within_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShortCircuit {
    pub max_unhealthy: Amount,
    pub within_ms: u64,
}

/// A compiled `kind: RemediationRule`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemediationRuleDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The fleet whose hosts the rule repairs; `None`: whichever fleet has the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Located<String>>,
    /// All must match (ANDed), in the order written; one of them is a positive `alertname`.
    pub matchers: Vec<LabelMatcher>,
    /// The label that names the host; `None`: [`DEFAULT_HOST_LABEL`], else
    /// [`FALLBACK_HOST_LABEL`]. A `:port` suffix is stripped from the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_label: Option<String>,
    /// The host-level runbook to run.
    pub runbook: Located<String>,
    /// Extra parameters for the runbook (never `host`, `service` or `alert`).
    #[serde(default)]
    pub with: serde_json::Map<String, serde_json::Value>,
    /// Most hosts of one pool in repair at once: a count, or a percentage of the pool's
    /// members (rounded down).
    pub max_in_repair_per_pool: Amount,
    /// Most hosts in repair at once over the fleet: a count, or a percentage of its hosts
    /// (rounded down).
    pub max_in_repair: Amount,
    pub short_circuit: ShortCircuit,
    /// Where the runbook opens a repair ticket (`http://` or `https://`), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_ticket_webhook: Option<String>,
    /// Time after a host's repair ends before it may be repaired again, in milliseconds.
    pub cooldown_ms: u64,
    pub origin: Origin,
}

impl RemediationRuleDef {
    /// Whether every matcher passes for an alert with these labels.
    pub fn matches<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.matchers.iter().all(|m| m.matches(label(&m.label)))
    }

    /// The labels tried, in order, for the host's name.
    pub fn host_labels(&self) -> Vec<&str> {
        match &self.host_label {
            Some(label) => vec![label.as_str()],
            None => vec![DEFAULT_HOST_LABEL, FALLBACK_HOST_LABEL],
        }
    }

    /// The matchers as Alertmanager writes them: `{alertname="HostDown", severity=~"crit"}`.
    pub fn describe_matchers(&self) -> String {
        let parts: Vec<String> = self.matchers.iter().map(LabelMatcher::describe).collect();
        format!("{{{}}}", parts.join(", "))
    }
}

/// The host a label value names: `web-1:9100` is `web-1`, `[::1]:9100` is `::1`; a value
/// without a port is the host itself.
pub fn strip_port(value: &str) -> &str {
    if let Some(rest) = value.strip_prefix('[')
        && let Some((host, port)) = rest.split_once(']')
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    {
        return host;
    }
    match value.rsplit_once(':') {
        // A bare IPv6 address has several colons and no port.
        Some((host, port))
            if !host.contains(':')
                && !port.is_empty()
                && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            host
        }
        _ => value,
    }
}

macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

text_schema!(
    /// A definition name.
    RuleName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting \
                        with a letter or a digit."
    })
);
text_schema!(
    /// A Prometheus label name.
    LabelName,
    json_schema!({
        "type": "string",
        "pattern": LABEL_NAME_PATTERN,
        "description": "A Prometheus label name."
    })
);
text_schema!(
    /// A duration.
    RuleDuration,
    json_schema!({
        "type": "string",
        "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
        "description": "A duration such as `10m`, `1h` or `1h30m`.",
        "examples": ["10m", "1h"]
    })
);
text_schema!(
    /// A count or a percentage.
    RuleAmount,
    json_schema!({
        "type": ["string", "integer"],
        "pattern": "^([0-9]+|[0-9]{1,3}(\\.[0-9]{1,2})?%)$",
        "minimum": 1,
        "description": "A count of hosts such as `2`, or a percentage such as `10%`; never 0.",
        "examples": [2, "10%"]
    })
);
text_schema!(
    /// A URL.
    WebhookUrl,
    json_schema!({
        "type": "string",
        "pattern": "^https?://",
        "description": "An `http://` or `https://` URL."
    })
);

/// The schema of `kind:` in a remediation rule.
pub(crate) struct RuleKindSchema;

impl JsonSchema for RuleKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "RemediationRuleKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "const": REMEDIATION_RULE_KIND,
            "description": "The kind of definition: `RemediationRule`."
        })
    }
}

/// A remediation rule (`kind: RemediationRule`): alerts whose labels match `match` repair the
/// host their `host_label` names with `runbook`, within the limits.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee RemediationRule")]
pub(crate) struct RemediationRuleSpec {
    /// The kind of definition: `RemediationRule`.
    #[schemars(with = "RuleKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The rule's name, unique among remediation rules.
    #[schemars(with = "RuleName")]
    pub name: Field<Spanned<String>>,
    /// What the rule is for.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// The fleet whose hosts the rule repairs (default: whichever fleet has the host).
    #[serde(default)]
    #[schemars(with = "Option<RuleName>")]
    pub fleet: Field<Spanned<String>>,
    /// Label matchers, all of which must pass; `alertname` is required.
    #[serde(rename = "match")]
    #[schemars(with = "OrderedMap<LabelName, MatcherSpec>")]
    pub matchers: Field<Spanned<OrderedMap<Spanned<String>, Spanned<MatcherSpec>>>>,
    /// The label that names the host (default `instance`, port stripped, else `host`).
    #[serde(default)]
    #[schemars(with = "Option<LabelName>")]
    pub host_label: Field<Spanned<String>>,
    /// The host-level runbook to run, with parameters `host`, `service`, `alert` and `with`.
    #[schemars(with = "RuleName")]
    pub runbook: Field<Spanned<String>>,
    /// More parameters for the runbook.
    #[serde(default, rename = "with")]
    #[schemars(with = "Option<OrderedMap<String, Json>>")]
    pub with: Field<Spanned<OrderedMap<Spanned<String>, Json>>>,
    /// Most hosts of one pool in repair at once: a count or a percentage of the pool's members
    /// (default 1).
    #[serde(default)]
    #[schemars(with = "Option<RuleAmount>")]
    pub max_in_repair_per_pool: Field<Spanned<String>>,
    /// Most hosts in repair at once: a count or a percentage of the fleet's hosts (default 5).
    #[serde(default)]
    #[schemars(with = "Option<RuleAmount>")]
    pub max_in_repair: Field<Spanned<String>>,
    /// When all automatic remediation stops (default: more than 10 hosts unhealthy within
    /// 10 minutes).
    #[serde(default)]
    #[schemars(with = "Option<ShortCircuitSpec>")]
    pub short_circuit: Field<Spanned<ShortCircuitSpec>>,
    /// Where the runbook opens a repair ticket.
    #[serde(default)]
    #[schemars(with = "Option<WebhookUrl>")]
    pub repair_ticket_webhook: Field<Spanned<String>>,
    /// Time after a host's repair ends before it is repaired again (default `1h`).
    #[serde(default)]
    #[schemars(with = "Option<RuleDuration>")]
    pub cooldown: Field<Spanned<String>>,
}

/// A label matcher: a plain value (`=`), or `{ not: V }` (`!=`), `{ regex: RE }` (`=~`),
/// `{ not_regex: RE }` (`!~`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename = "$levee::shorthand::equals::matcher", deny_unknown_fields)]
#[schemars(
    rename = "Matcher",
    transform = matcher_shorthand,
    extend("minProperties" = 1, "maxProperties" = 1)
)]
pub(crate) struct MatcherSpec {
    /// The label's value is exactly this.
    #[serde(default)]
    pub equals: Option<Spanned<String>>,
    /// The label's value is anything but this.
    #[serde(default)]
    pub not: Option<Spanned<String>>,
    /// The label's whole value matches this regular expression (RE2 syntax).
    #[serde(default)]
    pub regex: Option<Spanned<String>>,
    /// The label's whole value does not match this regular expression.
    #[serde(default)]
    pub not_regex: Option<Spanned<String>>,
}

fn matcher_shorthand(schema: &mut Schema) {
    let description = schema.remove("description");
    let long_form = std::mem::replace(schema, json_schema!({}));
    let mut combined = json_schema!({
        "anyOf": [
            {
                "type": ["string", "number", "boolean"],
                "description": "The label's value is exactly this: shorthand for `{ equals: VALUE }`."
            },
            long_form
        ]
    });
    if let Some(description) = description {
        combined.insert("description".to_string(), description);
    }
    *schema = combined;
}

/// When automatic remediation stops.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "ShortCircuit")]
pub(crate) struct ShortCircuitSpec {
    /// More unhealthy hosts than this (a count, or a percentage of the fleet's hosts) within
    /// `within` stops all automatic remediation.
    #[schemars(with = "RuleAmount")]
    pub max_unhealthy: Option<Spanned<String>>,
    /// The window unhealthy hosts are counted in (default `10m`).
    #[serde(default)]
    #[schemars(with = "Option<RuleDuration>")]
    pub within: Option<Spanned<String>>,
}

struct Compiler<'a> {
    reader: &'a Reader<'a>,
}

impl Compiler<'_> {
    fn origin(&self, loc: Loc) -> Origin {
        Origin {
            file: self.reader.file.to_string(),
            line: loc.line,
            column: loc.column,
        }
    }

    fn name(&self, value: &Spanned<String>, what: &str) -> bool {
        let valid = names::is_valid_definition_name(&value.value);
        if !valid {
            self.reader.error(
                value.loc,
                "invalid-name",
                format!(
                    "`{}` is not a valid {what} name: {DEFINITION_NAME_RULE}.",
                    abbreviate(&value.value)
                ),
            );
        }
        valid
    }

    fn label_name(&self, value: &Spanned<String>) -> bool {
        let valid = is_valid_label_name(&value.value);
        if !valid {
            self.reader.error(
                value.loc,
                "invalid-label",
                format!(
                    "`{}` is not a label name: Prometheus label names are letters, digits and \
                     `_`, not starting with a digit.",
                    abbreviate(&value.value)
                ),
            );
        }
        valid
    }

    /// A count or a percentage that must not be zero; `default` when absent.
    fn limit(&self, value: &Field<Spanned<String>>, key: &str, default: Amount) -> Option<Amount> {
        let Some(text) = field(value) else {
            return value.is_none().then_some(default);
        };
        self.amount(text, key)
    }

    fn amount(&self, text: &Spanned<String>, key: &str) -> Option<Amount> {
        match Amount::parse(&text.value) {
            Ok(Amount::Count(0) | Amount::Percent { basis_points: 0 }) => {
                self.reader.error(
                    text.loc,
                    "zero-limit",
                    format!(
                        "`{key}` is {}: nothing could ever be repaired. Write at least `1` (or \
                         remove the rule).",
                        text.value
                    ),
                );
                None
            }
            Ok(amount) => Some(amount),
            Err(message) => {
                self.reader.error(text.loc, "invalid-value", message);
                None
            }
        }
    }

    /// A duration within `1ms..=max_ms`; `default` when absent.
    fn duration(
        &self,
        value: Option<&Spanned<String>>,
        key: &str,
        max_ms: u64,
        default: u64,
    ) -> Option<u64> {
        let Some(text) = value else {
            return Some(default);
        };
        match parse_duration_ms(&text.value) {
            Ok(0) => {
                self.reader.error(
                    text.loc,
                    "zero-duration",
                    format!("`{key}` is zero; write a duration such as `10m`."),
                );
                None
            }
            Ok(ms) if ms > max_ms => {
                self.reader.error(
                    text.loc,
                    "duration-too-long",
                    format!(
                        "`{key}` is `{}`; at most {} is allowed.",
                        text.value,
                        describe_ms(max_ms)
                    ),
                );
                None
            }
            Ok(ms) => Some(ms),
            Err(message) => {
                self.reader.error(text.loc, "invalid-duration", message);
                None
            }
        }
    }

    fn matcher(&self, label: &Spanned<String>, spec: &Spanned<MatcherSpec>) -> Option<MatchOp> {
        let written: Vec<(&str, &Spanned<String>)> = [
            ("equals", &spec.value.equals),
            ("not", &spec.value.not),
            ("regex", &spec.value.regex),
            ("not_regex", &spec.value.not_regex),
        ]
        .into_iter()
        .filter_map(|(key, value)| value.as_ref().map(|v| (key, v)))
        .collect();
        let (key, value) = match written.as_slice() {
            [one] => *one,
            [] => {
                self.reader.error(
                    spec.loc,
                    "missing-key",
                    format!(
                        "The matcher for `{}` says nothing; write a value, or one of \
                         `{{ not: V }}`, `{{ regex: RE }}`, `{{ not_regex: RE }}`.",
                        label.value
                    ),
                );
                return None;
            }
            [_, (second, value), ..] => {
                self.reader.error(
                    value.loc,
                    "conflicting-keys",
                    format!(
                        "The matcher for `{}` has more than one comparison (`{second}` is the \
                         second); write one matcher per label.",
                        label.value
                    ),
                );
                return None;
            }
        };
        let pattern = |text: &Spanned<String>| match Pattern::new(&text.value) {
            Ok(pattern) => Some(pattern),
            Err(message) => {
                self.reader.error(text.loc, "invalid-regex", message);
                None
            }
        };
        match key {
            "equals" => Some(MatchOp::Equal(value.value.clone())),
            "not" => Some(MatchOp::NotEqual(value.value.clone())),
            "regex" => pattern(value).map(MatchOp::Regex),
            _ => pattern(value).map(MatchOp::NotRegex),
        }
    }
}

/// `30d`, `24h`, `10m`: the largest whole unit.
fn describe_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    UNITS
        .iter()
        .find(|(unit_ms, _)| ms >= *unit_ms && ms.is_multiple_of(*unit_ms))
        .map(|(unit_ms, unit)| format!("{}{unit}", ms / unit_ms))
        .unwrap_or_else(|| format!("{ms}ms"))
}

/// Compiles one `kind: RemediationRule` document; `None` if it has errors.
pub(crate) fn compile_rule(root: &Node, reader: &Reader) -> Option<RemediationRuleDef> {
    let errors_before = reader.error_count();
    let spec: RemediationRuleSpec = reader.read(root)?;
    let c = Compiler { reader };
    for (key, value, what) in [
        ("name", &spec.name, "rule"),
        ("runbook", &spec.runbook, "runbook"),
    ] {
        match value {
            None => reader.error(
                root.loc,
                "missing-key",
                format!(
                    "This RemediationRule has no `{key}`; add `{key}: ...` \
                     ({DEFINITION_NAME_RULE})."
                ),
            ),
            Some(_) => {
                if let Some(value) = field(value) {
                    c.name(value, what);
                }
            }
        }
    }
    if let Some(fleet) = field(&spec.fleet) {
        c.name(fleet, "fleet");
    }
    let mut matchers = Vec::new();
    match &spec.matchers {
        None => reader.error(
            root.loc,
            "missing-key",
            "This RemediationRule has no `match`; add the alert's labels, at least \
             `match: { alertname: NAME }`.",
        ),
        Some(_) => {
            if let Some(written) = field(&spec.matchers) {
                if written.value.0.len() > MAX_MATCHERS_PER_RULE {
                    reader.error(
                        written.loc,
                        "too-many-matchers",
                        format!(
                            "This rule has {} matchers; at most {MAX_MATCHERS_PER_RULE} are \
                             allowed.",
                            written.value.0.len()
                        ),
                    );
                }
                for (label, matcher) in &written.value.0 {
                    if !c.label_name(label) {
                        continue;
                    }
                    if let Some(op) = c.matcher(label, matcher) {
                        matchers.push(LabelMatcher {
                            label: label.value.clone(),
                            op,
                            origin: c.origin(label.loc),
                        });
                    }
                }
                let names_alert = written.value.0.iter().any(|(label, matcher)| {
                    label.value == "alertname"
                        && (matcher.value.equals.is_some() || matcher.value.regex.is_some())
                });
                if !names_alert {
                    reader.error(
                        written.loc,
                        "missing-alertname",
                        "`match` must name the alert: add `alertname: NAME` (or `alertname: \
                         { regex: RE }`), so the rule never takes every alert.",
                    );
                }
            }
        }
    }
    let host_label = field(&spec.host_label).and_then(|label| {
        c.label_name(label).then(|| {
            // `instance` is the default; naming it changes only that `host` is not tried.
            label.value.clone()
        })
    });
    let mut with = serde_json::Map::new();
    if let Some(written) = field(&spec.with) {
        for (key, value) in &written.value.0 {
            if RESERVED_PARAMS.contains(&key.value.as_str()) {
                reader.error(
                    key.loc,
                    "reserved-param",
                    format!(
                        "`{}` is set by Levee from the alert; `with` may not set {}.",
                        key.value,
                        names::list_of(RESERVED_PARAMS)
                    ),
                );
                continue;
            }
            with.insert(key.value.clone(), value.0.clone());
        }
    }
    let max_in_repair_per_pool = c.limit(
        &spec.max_in_repair_per_pool,
        "max_in_repair_per_pool",
        Amount::Count(DEFAULT_MAX_IN_REPAIR_PER_POOL_HOSTS),
    );
    let max_in_repair = c.limit(
        &spec.max_in_repair,
        "max_in_repair",
        Amount::Count(DEFAULT_MAX_IN_REPAIR_HOSTS),
    );
    let short_circuit = match &spec.short_circuit {
        None => Some(ShortCircuit {
            max_unhealthy: Amount::Count(DEFAULT_SHORT_CIRCUIT_UNHEALTHY_HOSTS),
            within_ms: DEFAULT_SHORT_CIRCUIT_WINDOW_MS,
        }),
        Some(_) => field(&spec.short_circuit).and_then(|written| {
            let max_unhealthy = match &written.value.max_unhealthy {
                Some(text) => c.amount(text, "short_circuit.max_unhealthy"),
                None => {
                    reader.error(
                        written.loc,
                        "missing-key",
                        "`short_circuit` needs `max_unhealthy`: the count or percentage of \
                         the fleet's hosts unhealthy at once beyond which remediation stops.",
                    );
                    None
                }
            };
            let within_ms = c.duration(
                written.value.within.as_ref(),
                "short_circuit.within",
                MAX_SHORT_CIRCUIT_WINDOW_MS,
                DEFAULT_SHORT_CIRCUIT_WINDOW_MS,
            );
            Some(ShortCircuit {
                max_unhealthy: max_unhealthy?,
                within_ms: within_ms?,
            })
        }),
    };
    let repair_ticket_webhook = match field(&spec.repair_ticket_webhook) {
        None => None,
        Some(url) => {
            let text = url.value.as_str();
            let scheme_ok = text.split_once("://").is_some_and(|(scheme, rest)| {
                matches!(scheme, "http" | "https") && !rest.is_empty()
            });
            if !scheme_ok
                || text.len() > MAX_WEBHOOK_URL_BYTES
                || text.contains(char::is_whitespace)
            {
                reader.error(
                    url.loc,
                    "invalid-url",
                    format!(
                        "`{}` is not a webhook URL: write an `http://` or `https://` URL of at \
                         most {MAX_WEBHOOK_URL_BYTES} bytes, without spaces.",
                        abbreviate(text)
                    ),
                );
            }
            Some(text.to_string())
        }
    };
    let cooldown_ms = match &spec.cooldown {
        Some(_) => field(&spec.cooldown).and_then(|text| {
            c.duration(Some(text), "cooldown", MAX_COOLDOWN_MS, DEFAULT_COOLDOWN_MS)
        }),
        None => Some(DEFAULT_COOLDOWN_MS),
    };
    let name = field(&spec.name)?;
    let runbook = field(&spec.runbook)?;
    if reader.error_count() > errors_before {
        return None;
    }
    Some(RemediationRuleDef {
        name: name.value.clone(),
        description: field(&spec.description).cloned(),
        fleet: field(&spec.fleet).map(|fleet| Located {
            value: fleet.value.clone(),
            origin: c.origin(fleet.loc),
        }),
        matchers,
        host_label,
        runbook: Located {
            value: runbook.value.clone(),
            origin: c.origin(runbook.loc),
        },
        with,
        max_in_repair_per_pool: max_in_repair_per_pool?,
        max_in_repair: max_in_repair?,
        short_circuit: short_circuit?,
        repair_ticket_webhook,
        cooldown_ms: cooldown_ms?,
        origin: c.origin(name.loc),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_host_labels() {
        assert_eq!(strip_port("web-r1-1:9100"), "web-r1-1");
        assert_eq!(strip_port("web-r1-1"), "web-r1-1");
        assert_eq!(strip_port("[::1]:9100"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
        assert_eq!(strip_port("fe80::1"), "fe80::1");
        assert_eq!(strip_port("host:"), "host:");
        assert_eq!(strip_port("host:http"), "host:http");
    }

    #[test]
    fn patterns_are_anchored_like_alertmanager() {
        let pattern = Pattern::new("crit|page").expect("compiles");
        assert!(pattern.is_match("crit"));
        assert!(pattern.is_match("page"));
        assert!(!pattern.is_match("critical"));
        assert!(!pattern.is_match("xpage"));
        assert!(Pattern::new("(").is_err());
        assert!(Pattern::new(&"a".repeat(MAX_REGEX_PATTERN_BYTES + 1)).is_err());
        let round = serde_json::to_string(&pattern).expect("serializes");
        assert_eq!(round, "\"crit|page\"");
        let back: Pattern = serde_json::from_str(&round).expect("deserializes");
        assert_eq!(back, pattern);
    }

    #[test]
    fn label_names_follow_prometheus() {
        assert!(is_valid_label_name("alertname"));
        assert!(is_valid_label_name("_x1"));
        assert!(!is_valid_label_name("1x"));
        assert!(!is_valid_label_name("a-b"));
        assert!(!is_valid_label_name(""));
    }
}
