//! `kind: DrainTest`: a runbook run on purpose against a datacenter, on a schedule or on
//! demand, then its restore runbook, judged by pass criteria (Maelstrom's drain tests: the
//! only way to know a runbook works is to run it).
//!
//! ```yaml
//! kind: DrainTest
//! name: weekly-east
//! runbook: evacuate-dc          # a stored runbook; gets `dc: <target>` and `params`
//! params: {}
//! target: east                  # or { least_recently_tested: [east, west, central] }
//! schedule: { cron: "0 3 * * tue", time_zone: Europe/Berlin }
//! pass: { max_duration: 2h, no_health_breach: true, restore_completed: true }
//! restore: { runbook: restore-dc, params: {} }
//! storm: false                  # true also passes `storm=true` to the drain runbook
//! ```
//!
//! Whether the runbooks exist and declare the parameters the test gives them needs the stored
//! runbooks: the server checks that when the test is applied.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::cron::Cron;
use crate::de::{Field, Json, OrderedMap, Reader, Spanned, field};
use crate::names::{self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE};
use crate::runbook::{Located, Origin};
use crate::time::parse_duration_ms;
use crate::yaml::{Loc, Node, abbreviate};

/// The `kind` of a drain test.
pub const DRAIN_TEST_KIND: &str = "DrainTest";
/// The runbook parameter that receives the target datacenter when `target_param` is not set
/// (the generated evacuation runbooks and the demo's call it `dc`).
pub const DEFAULT_TARGET_PARAM: &str = "dc";
/// The parameter a storm test passes, as `true`, to its drain runbook.
pub const STORM_PARAM: &str = "storm";
/// Most datacenters a `least_recently_tested` target may list.
pub const MAX_TARGET_DATACENTERS: usize = 100;
/// Longest `max_duration` a drain test may allow, in milliseconds (a week: a drain test
/// that runs longer is an outage, not a test).
pub const MAX_DRAIN_TEST_DURATION_MS: u64 = 7 * 24 * 3_600_000;

/// Which datacenter a drain test drains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DrainTarget {
    /// Always this one.
    Datacenter(String),
    /// The one of these whose last drain test (of this test) is oldest; one never tested
    /// first, in the order listed.
    LeastRecentlyTested(Vec<String>),
}

impl DrainTarget {
    /// Every datacenter the target may pick.
    pub fn candidates(&self) -> Vec<&str> {
        match self {
            DrainTarget::Datacenter(dc) => vec![dc.as_str()],
            DrainTarget::LeastRecentlyTested(dcs) => dcs.iter().map(String::as_str).collect(),
        }
    }

    /// The datacenter to drain now, given when each was last tested (`None`: never). Pure, so
    /// replicas pick the same one from the same history.
    pub fn pick(&self, last_tested_ms: impl Fn(&str) -> Option<i64>) -> &str {
        match self {
            DrainTarget::Datacenter(dc) => dc,
            DrainTarget::LeastRecentlyTested(dcs) => dcs
                .iter()
                .enumerate()
                .min_by_key(|(index, dc)| (last_tested_ms(dc).unwrap_or(i64::MIN), *index))
                .map(|(_, dc)| dc.as_str())
                .expect("a least_recently_tested target lists at least one datacenter"),
        }
    }
}

/// When a drain test fires: a cron expression in an IANA time zone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainSchedule {
    /// The five fields as written; checked by [`Cron::parse`].
    pub cron: String,
    /// An IANA time zone name such as `Europe/Berlin`.
    pub time_zone: String,
}

impl DrainSchedule {
    /// The parsed expression and zone. Both were checked when the test was compiled; a zone
    /// this host's time zone database lacks (read back on another host) is an error.
    pub fn parts(&self) -> Result<(Cron, jiff::tz::TimeZone), String> {
        let cron = Cron::parse(&self.cron).map_err(|e| e.message)?;
        let tz = jiff::tz::TimeZone::get(&self.time_zone)
            .map_err(|e| format!("time zone `{}`: {e}", self.time_zone))?;
        Ok((cron, tz))
    }
}

/// What a drain test must show to pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassCriteria {
    /// The drain and the restore together must finish within this, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_duration_ms: Option<u64>,
    /// No task of either run may stall on a failing health check.
    pub no_health_breach: bool,
    /// The restore run must succeed.
    pub restore_completed: bool,
}

impl Default for PassCriteria {
    fn default() -> Self {
        PassCriteria {
            max_duration_ms: None,
            no_health_breach: true,
            restore_completed: true,
        }
    }
}

/// A runbook and the parameters a drain test gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunbookCall {
    pub runbook: Located<String>,
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// A drain test (`kind: DrainTest`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainTestDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The drain runbook and its parameters (the target is added as `target_param`).
    pub drain: RunbookCall,
    /// The runbook parameter that receives the datacenter.
    pub target_param: String,
    pub target: DrainTarget,
    /// `None`: it runs only when asked (`POST /api/v1/drain-tests/NAME/run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<DrainSchedule>,
    pub pass: PassCriteria,
    /// Run after the drain, whatever its outcome, with the same target parameter.
    pub restore: RunbookCall,
    /// A storm test: the drain runbook also gets `storm=true` (stop replication, cut the
    /// datacenter off: the runbook decides what that means).
    pub storm: bool,
    pub origin: Origin,
}

impl DrainTestDef {
    /// The drain run's parameters for `datacenter`.
    pub fn drain_params(&self, datacenter: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut params = self.drain.params.clone();
        params.insert(self.target_param.clone(), datacenter.into());
        if self.storm {
            params.insert(STORM_PARAM.to_string(), true.into());
        }
        params
    }

    /// The restore run's parameters for `datacenter`.
    pub fn restore_params(&self, datacenter: &str) -> serde_json::Map<String, serde_json::Value> {
        let mut params = self.restore.params.clone();
        params.insert(self.target_param.clone(), datacenter.into());
        params
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
    /// A definition or datacenter name.
    DrainTestName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting \
                        with a letter or a digit."
    })
);
text_schema!(
    /// A duration.
    DrainTestDuration,
    json_schema!({
        "type": "string",
        "pattern": "^(?=[0-9])([0-9]+d)?([0-9]+h)?([0-9]+m(?!s))?([0-9]+s)?([0-9]+ms)?$",
        "description": "A duration such as `30m`, `2h` or `1h30m`.",
        "examples": ["2h", "90m"]
    })
);
text_schema!(
    /// A cron expression.
    CronText,
    json_schema!({
        "type": "string",
        "description": "Five fields, `minute hour day-of-month month day-of-week`, as in Vixie \
                        cron (lists, ranges, steps, month and day names), or @hourly, @daily, \
                        @weekly, @monthly, @yearly.",
        "examples": ["0 3 * * tue", "30 2 1-7 * sun"]
    })
);
text_schema!(
    /// An IANA time zone name.
    TimeZoneText,
    json_schema!({
        "type": "string",
        "description": "An IANA time zone name such as `Europe/Berlin` or `UTC`.",
        "examples": ["UTC", "Europe/Berlin", "America/New_York"]
    })
);

/// The schema of `kind:` in a drain test.
pub(crate) struct DrainTestKindSchema;

impl JsonSchema for DrainTestKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "DrainTestKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "const": DRAIN_TEST_KIND,
            "description": "The kind of definition: `DrainTest`."
        })
    }
}

/// A drain test (`kind: DrainTest`): run a runbook against a datacenter on a schedule, then
/// its restore runbook, and judge the outcome by pass criteria.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee DrainTest")]
pub(crate) struct DrainTestSpec {
    /// The kind of definition: `DrainTest`.
    #[schemars(with = "DrainTestKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The drain test's name, unique among drain tests.
    #[schemars(with = "DrainTestName")]
    pub name: Field<Spanned<String>>,
    /// What the test is for.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// The stored runbook that drains the datacenter.
    #[schemars(with = "DrainTestName")]
    pub runbook: Field<Spanned<String>>,
    /// The drain runbook's parameters (the datacenter is added as `target_param`).
    #[serde(default)]
    #[schemars(with = "Option<OrderedMap<String, Json>>")]
    pub params: Field<Spanned<OrderedMap<Spanned<String>, Json>>>,
    /// The runbook parameter that receives the datacenter (default `dc`).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub target_param: Field<Spanned<String>>,
    /// A datacenter, or `{ least_recently_tested: [DC, ...] }`.
    #[schemars(with = "TargetSpec")]
    pub target: Field<Spanned<TargetSpec>>,
    /// When it runs by itself; without a schedule it runs only when asked.
    #[serde(default)]
    #[schemars(with = "Option<ScheduleSpec>")]
    pub schedule: Field<Spanned<ScheduleSpec>>,
    /// What it must show to pass (by default: no health breach, restore completed).
    #[serde(default)]
    #[schemars(with = "Option<PassSpec>")]
    pub pass: Field<Spanned<PassSpec>>,
    /// The runbook that brings the traffic back, run after the drain whatever its outcome.
    #[schemars(with = "RestoreSpec")]
    pub restore: Field<Spanned<RestoreSpec>>,
    /// A storm test: the drain runbook also gets `storm: true`.
    #[serde(default)]
    #[schemars(with = "Option<bool>")]
    pub storm: Field<bool>,
}

/// A datacenter (shorthand: its name) or the least recently tested of a list.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename = "$levee::shorthand::datacenter::target", deny_unknown_fields)]
#[schemars(
    rename = "Target",
    transform = target_shorthand,
    extend("oneOf" = [{ "required": ["datacenter"] }, { "required": ["least_recently_tested"] }])
)]
pub(crate) struct TargetSpec {
    /// Always this datacenter.
    #[serde(default)]
    #[schemars(with = "Option<DrainTestName>")]
    pub datacenter: Option<Spanned<String>>,
    /// The one of these least recently drained by this test.
    #[serde(default)]
    #[schemars(with = "Option<Vec<DrainTestName>>", length(min = 1, max = MAX_TARGET_DATACENTERS))]
    pub least_recently_tested: Option<Spanned<Vec<Spanned<String>>>>,
}

fn target_shorthand(schema: &mut Schema) {
    let description = schema.remove("description");
    let long_form = std::mem::replace(schema, json_schema!({}));
    let mut combined = json_schema!({
        "anyOf": [
            {
                "type": "string",
                "pattern": DEFINITION_NAME_PATTERN,
                "description": "A datacenter: shorthand for `{ datacenter: NAME }`."
            },
            long_form
        ]
    });
    if let Some(description) = description {
        combined.insert("description".to_string(), description);
    }
    *schema = combined;
}

/// A cron expression and its time zone.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Schedule")]
pub(crate) struct ScheduleSpec {
    /// When, in the time zone's wall-clock time.
    #[schemars(with = "CronText")]
    pub cron: Spanned<String>,
    /// The IANA time zone the expression is read in.
    #[schemars(with = "TimeZoneText")]
    pub time_zone: Spanned<String>,
}

/// Pass criteria.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Pass")]
pub(crate) struct PassSpec {
    /// The drain and the restore together must finish within this.
    #[serde(default)]
    #[schemars(with = "Option<DrainTestDuration>")]
    pub max_duration: Option<Spanned<String>>,
    /// No task may stall on a failing health check (default true).
    #[serde(default)]
    pub no_health_breach: Option<bool>,
    /// The restore run must succeed (default true).
    #[serde(default)]
    pub restore_completed: Option<bool>,
}

/// The restore runbook.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Restore")]
pub(crate) struct RestoreSpec {
    /// The stored runbook that brings the traffic back.
    #[schemars(with = "DrainTestName")]
    pub runbook: Spanned<String>,
    /// Its parameters (the datacenter is added as `target_param`).
    #[serde(default)]
    #[schemars(with = "Option<OrderedMap<String, Json>>")]
    pub params: Option<Spanned<OrderedMap<Spanned<String>, Json>>>,
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

    /// The parameters as a map; `target_param` and `storm` are set by the test, not here.
    fn params(
        &self,
        written: Option<&Spanned<OrderedMap<Spanned<String>, Json>>>,
        target_param: &str,
        storm_allowed: bool,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut params = serde_json::Map::new();
        for (key, value) in written.map(|w| w.value.0.as_slice()).unwrap_or_default() {
            if key.value == target_param {
                self.reader.error(
                    key.loc,
                    "reserved-param",
                    format!(
                        "`{}` receives the target datacenter; set `target` instead.",
                        key.value
                    ),
                );
                continue;
            }
            if key.value == STORM_PARAM && !storm_allowed {
                self.reader.error(
                    key.loc,
                    "reserved-param",
                    "`storm` is set by the drain test; write `storm: true` on the test instead.",
                );
                continue;
            }
            params.insert(key.value.clone(), value.0.clone());
        }
        params
    }

    fn target(&self, spec: &Spanned<TargetSpec>) -> Option<DrainTarget> {
        match (&spec.datacenter, &spec.least_recently_tested) {
            (Some(dc), None) => self
                .name(dc, "datacenter")
                .then(|| DrainTarget::Datacenter(dc.value.clone())),
            (None, Some(list)) => {
                if list.value.is_empty() {
                    self.reader.error(
                        list.loc,
                        "invalid-value",
                        "`least_recently_tested` lists no datacenter; list the ones the test \
                         takes turns on.",
                    );
                    return None;
                }
                if list.value.len() > MAX_TARGET_DATACENTERS {
                    self.reader.error(
                        list.loc,
                        "invalid-value",
                        format!(
                            "`least_recently_tested` lists {} datacenters; at most \
                             {MAX_TARGET_DATACENTERS} are allowed.",
                            list.value.len()
                        ),
                    );
                    return None;
                }
                let mut valid = true;
                let mut seen: Vec<&str> = Vec::new();
                for dc in &list.value {
                    valid &= self.name(dc, "datacenter");
                    if seen.contains(&dc.value.as_str()) {
                        self.reader.error(
                            dc.loc,
                            "duplicate-datacenter",
                            format!("`{}` is listed twice.", dc.value),
                        );
                        valid = false;
                    }
                    seen.push(&dc.value);
                }
                valid.then(|| {
                    DrainTarget::LeastRecentlyTested(
                        list.value.iter().map(|dc| dc.value.clone()).collect(),
                    )
                })
            }
            (Some(dc), Some(_)) => {
                self.reader.error(
                    dc.loc,
                    "conflicting-keys",
                    "A target is one `datacenter` or `least_recently_tested`, not both.",
                );
                None
            }
            (None, None) => {
                self.reader.error(
                    spec.loc,
                    "missing-key",
                    "This target names no datacenter; write a datacenter's name, or \
                     `{ least_recently_tested: [DC, ...] }`.",
                );
                None
            }
        }
    }

    fn schedule(&self, spec: &ScheduleSpec) -> Option<DrainSchedule> {
        let cron = match Cron::parse(&spec.cron.value) {
            Ok(cron) => Some(cron),
            Err(error) => {
                self.reader.error(
                    spec.cron.loc,
                    "invalid-cron",
                    format!(
                        "{} (at character {} of `{}`).",
                        error.message,
                        error.offset + 1,
                        abbreviate(&spec.cron.value)
                    ),
                );
                None
            }
        };
        let zone = match jiff::tz::TimeZone::get(&spec.time_zone.value) {
            Ok(_) => Some(()),
            Err(_) => {
                self.reader.error(
                    spec.time_zone.loc,
                    "invalid-time-zone",
                    format!(
                        "`{}` is not an IANA time zone name; write one such as `UTC`, \
                         `Europe/Berlin` or `America/New_York`.",
                        abbreviate(&spec.time_zone.value)
                    ),
                );
                None
            }
        };
        let (cron, ()) = (cron?, zone?);
        Some(DrainSchedule {
            cron: cron.expression().to_string(),
            time_zone: spec.time_zone.value.clone(),
        })
    }

    fn pass(&self, spec: &PassSpec) -> Option<PassCriteria> {
        let max_duration_ms = match &spec.max_duration {
            None => None,
            Some(text) => match parse_duration_ms(&text.value) {
                Ok(0) => {
                    self.reader.error(
                        text.loc,
                        "invalid-duration",
                        "`max_duration` is 0; no drain test could pass.",
                    );
                    return None;
                }
                Ok(ms) if ms > MAX_DRAIN_TEST_DURATION_MS => {
                    self.reader.error(
                        text.loc,
                        "invalid-duration",
                        format!("`max_duration` is {}; at most 7d is allowed.", text.value),
                    );
                    return None;
                }
                Ok(ms) => Some(ms),
                Err(message) => {
                    self.reader.error(text.loc, "invalid-duration", message);
                    return None;
                }
            },
        };
        Some(PassCriteria {
            max_duration_ms,
            no_health_breach: spec.no_health_breach.unwrap_or(true),
            restore_completed: spec.restore_completed.unwrap_or(true),
        })
    }
}

/// Compiles one `kind: DrainTest` document; `None` if it has errors.
pub(crate) fn compile_drain_test(root: &Node, reader: &Reader) -> Option<DrainTestDef> {
    let errors_before = reader.error_count();
    let spec: DrainTestSpec = reader.read(root)?;
    let c = Compiler { reader };
    for (key, value, what, example) in [
        ("name", &spec.name, "drain test", "weekly-east"),
        ("runbook", &spec.runbook, "runbook", "evacuate-dc"),
    ] {
        match value {
            None => reader.error(
                root.loc,
                "missing-key",
                format!("This DrainTest has no `{key}`; add `{key}: {example}`."),
            ),
            Some(_) => {
                if let Some(value) = field(value) {
                    c.name(value, what);
                }
            }
        }
    }
    if spec.target.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This DrainTest has no `target`; add a datacenter's name, or \
             `target: { least_recently_tested: [DC, ...] }`.",
        );
    }
    if spec.restore.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This DrainTest has no `restore`; add `restore: { runbook: NAME }`: a drain test \
             always brings the traffic back.",
        );
    }
    let target_param = match field(&spec.target_param) {
        None => DEFAULT_TARGET_PARAM.to_string(),
        Some(written) => {
            if !crate::params::is_valid_param_name(&written.value) {
                reader.error(
                    written.loc,
                    "invalid-name",
                    format!(
                        "`{}` is not a valid parameter name: {}.",
                        abbreviate(&written.value),
                        crate::params::PARAM_NAME_RULE
                    ),
                );
            }
            written.value.clone()
        }
    };
    let storm = field(&spec.storm).copied().unwrap_or(false);
    let params = c.params(field(&spec.params), &target_param, false);
    let target = field(&spec.target).and_then(|t| c.target(t));
    let schedule = field(&spec.schedule).map(|s| c.schedule(s));
    let pass = match field(&spec.pass) {
        None => Some(PassCriteria::default()),
        Some(pass) => c.pass(pass),
    };
    let restore = field(&spec.restore).map(|restore| {
        c.name(&restore.runbook, "runbook");
        RunbookCall {
            runbook: Located {
                value: restore.runbook.value.clone(),
                origin: c.origin(restore.runbook.loc),
            },
            params: c.params(restore.params.as_ref(), &target_param, true),
        }
    });
    let name = field(&spec.name)?;
    let runbook = field(&spec.runbook)?;
    if reader.error_count() > errors_before {
        return None;
    }
    Some(DrainTestDef {
        name: name.value.clone(),
        description: field(&spec.description).cloned(),
        drain: RunbookCall {
            runbook: Located {
                value: runbook.value.clone(),
                origin: c.origin(runbook.loc),
            },
            params,
        },
        target_param,
        target: target?,
        schedule: match schedule {
            None => None,
            Some(compiled) => Some(compiled?),
        },
        pass: pass?,
        restore: restore?,
        storm,
        origin: c.origin(name.loc),
    })
}
