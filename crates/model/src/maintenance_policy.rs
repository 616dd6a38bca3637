//! `kind: MaintenancePolicy`: a service's decision matrix, from a maintenance's type and
//! duration to what the service does about it, and its compilation into a
//! [`MaintenancePolicyDef`].
//!
//! Rules are tried in order and the first that matches decides; when none does, `default`
//! decides (a human, unless the policy says otherwise). A rule that an earlier rule hides
//! completely is reported as a warning. Whether `service` names a service of a fleet, and
//! whether a `runbook` action names a stored runbook, needs other documents: `levee_fleet`
//! checks the first, the server the second.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::de::{Field, Json, OneOrMany, OrderedMap, Reader, Recover, Spanned, field};
use crate::fleet::Amount;
use crate::names::{self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE};
use crate::runbook::{Located, Origin};
use crate::time::parse_duration_ms;
use crate::yaml::{Loc, Node, abbreviate};

/// The `kind` of a maintenance policy.
pub const MAINTENANCE_POLICY_KIND: &str = "MaintenancePolicy";
/// Most rules one policy may have.
pub const MAX_POLICY_RULES: usize = 100;
/// Hosts disabled at the same time when the policy does not say.
pub const DEFAULT_DISABLE_CONCURRENCY_HOSTS: u32 = 10;
/// Most hosts a policy may let be disabled at the same time.
pub const MAX_DISABLE_CONCURRENCY_HOSTS: u32 = 10_000;

/// What a maintenance does to its hosts.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum MaintenanceType {
    /// The hosts lose their network.
    Network,
    /// The hosts lose power.
    Power,
    /// The hosts reboot.
    Reboot,
    /// Any other kind, by name (`kernel-upgrade`, `bios`).
    Custom(String),
}

impl MaintenanceType {
    /// Parses `network`, `power`, `reboot` or a custom name (a definition name other than
    /// `any`, which policy rules use to match every type).
    pub fn parse(text: &str) -> Result<MaintenanceType, String> {
        match text {
            "network" => Ok(MaintenanceType::Network),
            "power" => Ok(MaintenanceType::Power),
            "reboot" => Ok(MaintenanceType::Reboot),
            "any" => Err(
                "`any` is not a maintenance type; it matches every type in a policy rule."
                    .to_string(),
            ),
            custom if names::is_valid_definition_name(custom) => {
                Ok(MaintenanceType::Custom(custom.to_string()))
            }
            other => Err(format!(
                "`{}` is not a maintenance type: write `network`, `power`, `reboot`, or a \
                 custom type's name ({DEFINITION_NAME_RULE}).",
                abbreviate(other)
            )),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            MaintenanceType::Network => "network",
            MaintenanceType::Power => "power",
            MaintenanceType::Reboot => "reboot",
            MaintenanceType::Custom(name) => name,
        }
    }
}

impl fmt::Display for MaintenanceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<String> for MaintenanceType {
    type Error = String;
    fn try_from(text: String) -> Result<MaintenanceType, String> {
        MaintenanceType::parse(&text)
    }
}

impl From<MaintenanceType> for String {
    fn from(kind: MaintenanceType) -> String {
        kind.name().to_string()
    }
}

/// What a service does about a maintenance of its hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyAction {
    /// Take the hosts out of the load-balancer pool and wait for the maintenance to end.
    DrainAndWait,
    /// Replace the hosts ahead of time with spares outside the maintenance.
    ReplaceWithSpares,
    /// Nothing: the service rides it out.
    Nothing,
    /// A person must confirm the hosts are handled before the maintenance goes on.
    Human,
    /// Run the service team's own runbook with these arguments.
    Runbook {
        runbook: Located<String>,
        #[serde(default)]
        with: serde_json::Map<String, serde_json::Value>,
    },
}

impl PolicyAction {
    /// `drain_and_wait`, ..., or `runbook NAME`.
    pub fn describe(&self) -> String {
        match self {
            PolicyAction::DrainAndWait => "drain_and_wait".to_string(),
            PolicyAction::ReplaceWithSpares => "replace_with_spares".to_string(),
            PolicyAction::Nothing => "nothing".to_string(),
            PolicyAction::Human => "human".to_string(),
            PolicyAction::Runbook { runbook, .. } => format!("runbook {}", runbook.value),
        }
    }
}

/// One row of the decision matrix.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRule {
    /// The types it applies to; empty means every type (`type: any`).
    pub types: Vec<MaintenanceType>,
    /// Applies only to maintenances longer than this, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over_ms: Option<u64>,
    /// Applies only to maintenances of at most this long, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up_to_ms: Option<u64>,
    pub action: PolicyAction,
    pub origin: Origin,
}

impl PolicyRule {
    /// Whether the rule applies to a maintenance of `kind` lasting `duration_ms`.
    pub fn matches(&self, kind: &MaintenanceType, duration_ms: u64) -> bool {
        (self.types.is_empty() || self.types.contains(kind))
            && self.over_ms.is_none_or(|over| duration_ms > over)
            && self.up_to_ms.is_none_or(|up_to| duration_ms <= up_to)
    }

    /// Whether every maintenance this rule matches, `earlier` matches too.
    fn hidden_by(&self, earlier: &PolicyRule) -> bool {
        let types_covered = earlier.types.is_empty()
            || (!self.types.is_empty() && self.types.iter().all(|t| earlier.types.contains(t)));
        // Durations a rule matches: (over, up_to], with no `over` meaning from 0 inclusive.
        let low = |rule: &PolicyRule| rule.over_ms.map_or(-1, i128::from);
        let high = |rule: &PolicyRule| rule.up_to_ms.map_or(i128::MAX, i128::from);
        types_covered && low(earlier) <= low(self) && high(earlier) >= high(self)
    }
}

/// Why a policy chose its action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum DecidedBy {
    /// The rule at this position (0-based) matched.
    Rule { index: usize, origin: Origin },
    /// No rule matched; the policy's `default` applied.
    Default,
    /// The policy has `automation: false`: a human handles every maintenance.
    AutomationOff,
}

/// A service's maintenance policy (`kind: MaintenancePolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenancePolicyDef {
    pub name: String,
    pub service: Located<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `false` while the service's automation is paused: every maintenance needs a human.
    pub automation: bool,
    /// Host-level disables that may fail before post-disable stops for a human: a count, or
    /// a percentage of the service's hosts in the maintenance.
    pub max_failed_hosts: Amount,
    /// Most of the service's hosts disabled at the same time.
    pub disable_concurrency: u32,
    pub rules: Vec<PolicyRule>,
    /// The action when no rule matches.
    pub default_action: PolicyAction,
    pub origin: Origin,
}

impl MaintenancePolicyDef {
    /// The action for a maintenance of `kind` lasting `duration_ms`, and why.
    pub fn decide(&self, kind: &MaintenanceType, duration_ms: u64) -> (&PolicyAction, DecidedBy) {
        static HUMAN: PolicyAction = PolicyAction::Human;
        if !self.automation {
            return (&HUMAN, DecidedBy::AutomationOff);
        }
        match self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(kind, duration_ms))
        {
            Some((index, rule)) => (
                &rule.action,
                DecidedBy::Rule {
                    index,
                    origin: rule.origin.clone(),
                },
            ),
            None => (&self.default_action, DecidedBy::Default),
        }
    }

    /// How many of `hosts_in_scope` failed host-level disables post-disable accepts.
    pub fn allowed_failures(&self, hosts_in_scope: u64) -> u64 {
        self.max_failed_hosts
            .units_rounded_down(hosts_in_scope)
            .min(hosts_in_scope)
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
    /// A definition or service name.
    PolicyName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting \
                        with a letter or a digit."
    })
);
text_schema!(
    /// A maintenance type.
    MaintenanceTypeText,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "`network`, `power`, `reboot`, a custom type's name, or `any` for \
                        every type.",
        "examples": ["network", "power", "reboot", "any"]
    })
);
text_schema!(
    /// A duration.
    PolicyDuration,
    json_schema!({
        "type": "string",
        "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
        "description": "A duration such as `30m`, `4h` or `1h30m`.",
        "examples": ["30m", "4h"]
    })
);
text_schema!(
    /// A count or a percentage.
    PolicyAmount,
    json_schema!({
        "type": ["string", "integer"],
        "pattern": "^([0-9]+|[0-9]{1,3}(\\.[0-9]{1,2})?%)$",
        "minimum": 0,
        "description": "A count of hosts such as `2`, or a percentage of the service's hosts \
                        in the maintenance such as `10%`.",
        "examples": [2, "10%"]
    })
);

/// The schema of `kind:` in a maintenance policy.
pub(crate) struct PolicyKindSchema;

impl JsonSchema for PolicyKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "MaintenancePolicyKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "const": MAINTENANCE_POLICY_KIND,
            "description": "The kind of definition: `MaintenancePolicy`."
        })
    }
}

/// A service's maintenance policy (`kind: MaintenancePolicy`): for each type and duration of
/// maintenance, what the service does. The first rule that matches decides; when none does,
/// `default` does (a human unless it says otherwise).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee MaintenancePolicy")]
pub(crate) struct MaintenancePolicySpec {
    /// The kind of definition: `MaintenancePolicy`.
    #[schemars(with = "PolicyKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The policy's name, unique among maintenance policies.
    #[schemars(with = "PolicyName")]
    pub name: Field<Spanned<String>>,
    /// The service of the fleet this policy is for; one policy per service.
    #[schemars(with = "PolicyName")]
    pub service: Field<Spanned<String>>,
    /// What the policy is for.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// `false` pauses the service's automation: every maintenance needs a human.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub automation: Field<bool>,
    /// Host-level disables that may fail before a human is called: a count, or a percentage
    /// of the service's hosts in the maintenance. Default 0.
    #[serde(default)]
    #[schemars(with = "Option<PolicyAmount>")]
    pub max_failed_hosts: Field<Spanned<String>>,
    /// Most of the service's hosts disabled at the same time (default 10).
    #[serde(default)]
    #[schemars(
        with = "Option<u32>",
        range(min = 1, max = MAX_DISABLE_CONCURRENCY_HOSTS)
    )]
    pub disable_concurrency: Field<Spanned<i64>>,
    /// The decision matrix, tried in order.
    #[schemars(with = "Vec<RuleSpec>", length(min = 1, max = MAX_POLICY_RULES))]
    pub rules: Field<Spanned<Vec<Spanned<Recover<RuleSpec>>>>>,
    /// The action when no rule matches (default `human`).
    #[serde(default)]
    #[schemars(with = "Option<ActionSpec>")]
    pub default: Field<Spanned<ActionSpec>>,
}

/// One row of the decision matrix.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Rule")]
pub(crate) struct RuleSpec {
    /// The maintenance type or types the rule applies to; `any` for every type.
    #[serde(rename = "type")]
    #[schemars(with = "OneOrMany<MaintenanceTypeText>")]
    pub types: Spanned<OneOrMany<Spanned<String>>>,
    /// Applies only to maintenances longer than this.
    #[serde(default)]
    #[schemars(with = "Option<PolicyDuration>")]
    pub over: Option<Spanned<String>>,
    /// Applies only to maintenances of at most this long.
    #[serde(default)]
    #[schemars(with = "Option<PolicyDuration>")]
    pub up_to: Option<Spanned<String>>,
    /// What the service does.
    pub action: Spanned<ActionSpec>,
    /// Why, in a sentence.
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for readers of the policy")]
    pub description: Option<String>,
}

/// An action: `drain_and_wait`, `replace_with_spares`, `nothing` or `human`, or a runbook
/// (`{ runbook: NAME, with: { ... } }`).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename = "$levee::shorthand::builtin::action", deny_unknown_fields)]
#[schemars(
    rename = "Action",
    transform = action_shorthand,
    extend("oneOf" = [{ "required": ["builtin"] }, { "required": ["runbook"] }])
)]
pub(crate) struct ActionSpec {
    /// One of the built-in actions.
    #[serde(default)]
    pub builtin: Option<Spanned<BuiltinActionSpec>>,
    /// The service team's runbook that handles the maintenance.
    #[serde(default)]
    #[schemars(with = "Option<PolicyName>")]
    pub runbook: Option<Spanned<String>>,
    /// The runbook's parameters.
    #[serde(default, rename = "with")]
    #[schemars(with = "Option<OrderedMap<String, Json>>")]
    pub with: Option<Spanned<OrderedMap<Spanned<String>, Json>>>,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "BuiltinAction")]
pub(crate) enum BuiltinActionSpec {
    DrainAndWait,
    ReplaceWithSpares,
    Nothing,
    Human,
}

fn action_shorthand(schema: &mut Schema) {
    let description = schema.remove("description");
    let long_form = std::mem::replace(schema, json_schema!({}));
    let mut combined = json_schema!({
        "anyOf": [
            {
                "enum": ["drain_and_wait", "replace_with_spares", "nothing", "human"],
                "description": "A built-in action: shorthand for `{ builtin: ACTION }`."
            },
            long_form
        ]
    });
    if let Some(description) = description {
        combined.insert("description".to_string(), description);
    }
    *schema = combined;
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

    fn duration(&self, value: &Option<Spanned<String>>) -> Result<Option<u64>, ()> {
        let Some(value) = value else { return Ok(None) };
        parse_duration_ms(&value.value)
            .map(Some)
            .map_err(|message| {
                self.reader.error(value.loc, "invalid-duration", message);
            })
    }

    fn action(&self, spec: &Spanned<ActionSpec>) -> Option<PolicyAction> {
        let action = &spec.value;
        match (&action.builtin, &action.runbook) {
            (Some(builtin), None) => {
                if let Some(with) = &action.with {
                    self.reader.error(
                        with.loc,
                        "unexpected-key",
                        "`with` gives a runbook its parameters; a built-in action takes none.",
                    );
                    return None;
                }
                Some(match builtin.value {
                    BuiltinActionSpec::DrainAndWait => PolicyAction::DrainAndWait,
                    BuiltinActionSpec::ReplaceWithSpares => PolicyAction::ReplaceWithSpares,
                    BuiltinActionSpec::Nothing => PolicyAction::Nothing,
                    BuiltinActionSpec::Human => PolicyAction::Human,
                })
            }
            (None, Some(runbook)) => {
                if !self.name(runbook, "runbook") {
                    return None;
                }
                let with = action
                    .with
                    .as_ref()
                    .map(|with| {
                        with.value
                            .0
                            .iter()
                            .map(|(k, v)| (k.value.clone(), v.0.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                Some(PolicyAction::Runbook {
                    runbook: Located {
                        value: runbook.value.clone(),
                        origin: self.origin(runbook.loc),
                    },
                    with,
                })
            }
            (Some(builtin), Some(_)) => {
                self.reader.error(
                    builtin.loc,
                    "conflicting-keys",
                    "An action is a built-in action or a runbook, not both.",
                );
                None
            }
            (None, None) => {
                self.reader.error(
                    spec.loc,
                    "missing-key",
                    "This action says nothing; write `drain_and_wait`, `replace_with_spares`, \
                     `nothing`, `human`, or `{ runbook: NAME, with: { ... } }`.",
                );
                None
            }
        }
    }

    fn rule(&self, loc: Loc, spec: &RuleSpec) -> Option<PolicyRule> {
        let mut types = Vec::new();
        let mut any = None;
        let mut valid = true;
        if spec.types.value.0.is_empty() {
            self.reader.error(
                spec.types.loc,
                "invalid-value",
                "`type` lists no maintenance type; write one such as `network`, or `any`.",
            );
            valid = false;
        }
        for text in &spec.types.value.0 {
            if text.value == "any" {
                any = Some(text.loc);
                continue;
            }
            match MaintenanceType::parse(&text.value) {
                Ok(kind) if types.contains(&kind) => {
                    self.reader.error(
                        text.loc,
                        "duplicate-type",
                        format!("`{kind}` is listed twice in this rule."),
                    );
                    valid = false;
                }
                Ok(kind) => types.push(kind),
                Err(message) => {
                    self.reader.error(text.loc, "invalid-value", message);
                    valid = false;
                }
            }
        }
        if let Some(loc) = any
            && spec.types.value.0.len() > 1
        {
            self.reader.error(
                loc,
                "invalid-value",
                "`any` matches every type; list it alone.",
            );
            valid = false;
        }
        let over = self.duration(&spec.over);
        let up_to = self.duration(&spec.up_to);
        let action = self.action(&spec.action);
        let (Ok(over_ms), Ok(up_to_ms), Some(action)) = (over, up_to, action) else {
            return None;
        };
        if let (Some(over), Some(up_to)) = (over_ms, up_to_ms)
            && over >= up_to
            && let Some(written) = &spec.over
        {
            self.reader.error(
                written.loc,
                "empty-duration-range",
                format!(
                    "No maintenance lasts more than `{}` and at most `{}`: this rule could \
                     never apply. `over` must be shorter than `up_to`.",
                    written.value,
                    spec.up_to.as_ref().map_or("", |u| u.value.as_str())
                ),
            );
            return None;
        }
        valid.then(|| PolicyRule {
            types,
            over_ms,
            up_to_ms,
            action,
            origin: self.origin(loc),
        })
    }
}

/// Compiles one `kind: MaintenancePolicy` document; `None` if it has errors.
pub(crate) fn compile_policy(root: &Node, reader: &Reader) -> Option<MaintenancePolicyDef> {
    let errors_before = reader.error_count();
    let spec: MaintenancePolicySpec = reader.read(root)?;
    let c = Compiler { reader };
    for (key, value) in [("name", &spec.name), ("service", &spec.service)] {
        match value {
            None => reader.error(
                root.loc,
                "missing-key",
                format!(
                    "This MaintenancePolicy has no `{key}`; add `{key}: ...` \
                     ({DEFINITION_NAME_RULE})."
                ),
            ),
            Some(_) => {
                if let Some(value) = field(value) {
                    c.name(value, if key == "name" { "policy" } else { "service" });
                }
            }
        }
    }
    let max_failed_hosts = match field(&spec.max_failed_hosts) {
        None => Some(Amount::Count(0)),
        Some(text) => match Amount::parse(&text.value) {
            Ok(amount) => Some(amount),
            Err(message) => {
                reader.error(text.loc, "invalid-value", message);
                None
            }
        },
    };
    let disable_concurrency = match field(&spec.disable_concurrency) {
        None => Some(DEFAULT_DISABLE_CONCURRENCY_HOSTS),
        Some(value) => match u32::try_from(value.value) {
            Ok(n) if (1..=MAX_DISABLE_CONCURRENCY_HOSTS).contains(&n) => Some(n),
            _ => {
                reader.error(
                    value.loc,
                    "invalid-value",
                    format!(
                        "`disable_concurrency` is {}; it must be between 1 and \
                         {MAX_DISABLE_CONCURRENCY_HOSTS} hosts.",
                        value.value
                    ),
                );
                None
            }
        },
    };
    if spec.rules.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This MaintenancePolicy has no `rules`; add a list such as \
             `rules: [{ type: network, action: drain_and_wait }]`.",
        );
    }
    let mut rules = Vec::new();
    if let Some(written) = field(&spec.rules) {
        if written.value.is_empty() {
            reader.error(
                written.loc,
                "no-rules",
                "`rules` is empty; add at least one rule (without rules, every maintenance \
                 would need a human: say so with `automation: false`).",
            );
        }
        if written.value.len() > MAX_POLICY_RULES {
            reader.error(
                written.loc,
                "too-many-rules",
                format!(
                    "This policy has {} rules; at most {MAX_POLICY_RULES} are allowed.",
                    written.value.len()
                ),
            );
        }
        for rule in &written.value {
            if let Some(spec) = &rule.value.0
                && let Some(rule) = c.rule(rule.loc, spec)
            {
                rules.push(rule);
            }
        }
    }
    for (later, rule) in rules.iter().enumerate() {
        if let Some(earlier) = rules[..later].iter().find(|e| rule.hidden_by(e)) {
            reader.warning(
                Loc {
                    line: rule.origin.line,
                    column: rule.origin.column,
                },
                "unreachable-rule",
                format!(
                    "This rule never applies: the rule on line {} matches every maintenance it \
                     would, and the first rule that matches decides.",
                    earlier.origin.line
                ),
            );
        }
    }
    let default_action = match field(&spec.default) {
        None => Some(PolicyAction::Human),
        Some(action) => c.action(action),
    };
    let name = field(&spec.name)?;
    let service = field(&spec.service)?;
    if reader.error_count() > errors_before {
        return None;
    }
    Some(MaintenancePolicyDef {
        name: name.value.clone(),
        service: Located {
            value: service.value.clone(),
            origin: c.origin(service.loc),
        },
        description: field(&spec.description).cloned(),
        automation: field(&spec.automation).copied().unwrap_or(true),
        max_failed_hosts: max_failed_hosts?,
        disable_concurrency: disable_concurrency?,
        rules,
        default_action: default_action?,
        origin: c.origin(name.loc),
    })
}
