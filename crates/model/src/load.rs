//! Loading YAML definition files: several `---`-separated documents per file, each with `kind`
//! and `name`.
//!
//! Loading reports every problem it can find in one pass, not only the first: a syntax error
//! skips only its own document, an unknown key is reported and skipped, and a broken state,
//! transition or guard is reported without hiding the others. Diagnostics point at the
//! offending key or value, with lines counted from the top of the file (not of the document).
//!
//! Each document is dispatched on its `kind` (see `KINDS` in this module); adding a kind is adding one line
//! there and a module that compiles it.

use std::collections::HashMap;

use crate::de::{Reader, UnknownKeys};
use crate::drain_test::{self, DRAIN_TEST_KIND, DrainTestDef};
use crate::fleet::{FLEET_KIND, FleetDef};
use crate::fleet_spec;
use crate::machine::MachineDef;
use crate::maintenance_policy::{self, MAINTENANCE_POLICY_KIND, MaintenancePolicyDef};
use crate::names;
use crate::remediation_rule::{self, REMEDIATION_RULE_KIND, RemediationRuleDef};
use crate::runbook::{RunbookDef, TemplateDef};
use crate::runbook_spec::{self, RUNBOOK_KIND, TEMPLATE_KIND};
use crate::state_machine;
use crate::yaml::{self, Loc, Node, abbreviate};
use crate::{Diagnostic, MAX_DEFINITION_BYTES};

/// What loading needs from the outside world, injected so loading stays pure.
#[derive(Clone, Debug)]
pub struct LoadContext {
    /// "Now", epoch milliseconds: absolute timers before it are errors.
    pub now_ms: i64,
    /// Zone for timestamps written without an offset (StateService's `clock` values).
    pub local_tz: jiff::tz::TimeZone,
    /// Accept absolute timers in the past (a restart of a machine whose timer already fired).
    pub allow_past_timers: bool,
}

impl LoadContext {
    /// A context that refuses past timers.
    pub fn new(now_ms: i64, local_tz: jiff::tz::TimeZone) -> Self {
        LoadContext {
            now_ms,
            local_tz,
            allow_past_timers: false,
        }
    }
}

/// One compiled document.
#[derive(Clone, Debug, PartialEq)]
pub enum Definition {
    StateMachine(MachineDef),
    /// Valid on its own; [`crate::link`] checks it against the other definitions.
    Runbook(RunbookDef),
    TaskTemplate(TemplateDef),
    /// Hosts, services, pools and floors; checked whole (see [`crate::fleet`]).
    Fleet(FleetDef),
    /// Valid on its own; `levee_fleet` checks that its service is in the fleet.
    MaintenancePolicy(MaintenancePolicyDef),
    /// Valid on its own; the server checks that its runbook and fleet exist.
    RemediationRule(RemediationRuleDef),
    /// Valid on its own; the server checks that its runbooks exist and take its parameters.
    DrainTest(DrainTestDef),
}

impl Definition {
    /// The document's `kind`, such as `StateMachine`.
    pub fn kind(&self) -> &'static str {
        match self {
            Definition::StateMachine(_) => state_machine::KIND,
            Definition::Runbook(_) => RUNBOOK_KIND,
            Definition::TaskTemplate(_) => TEMPLATE_KIND,
            Definition::Fleet(_) => FLEET_KIND,
            Definition::MaintenancePolicy(_) => MAINTENANCE_POLICY_KIND,
            Definition::RemediationRule(_) => REMEDIATION_RULE_KIND,
            Definition::DrainTest(_) => DRAIN_TEST_KIND,
        }
    }

    /// The document's `name`.
    pub fn name(&self) -> &str {
        match self {
            Definition::StateMachine(machine) => &machine.name,
            Definition::Runbook(runbook) => &runbook.name,
            Definition::TaskTemplate(template) => &template.name,
            Definition::Fleet(fleet) => &fleet.name,
            Definition::MaintenancePolicy(policy) => &policy.name,
            Definition::RemediationRule(rule) => &rule.name,
            Definition::DrainTest(test) => &test.name,
        }
    }

    /// The compiled definition as JSON, the form the server stores and reads back.
    pub fn compiled_json(&self) -> Result<serde_json::Value, serde_json::Error> {
        match self {
            Definition::StateMachine(def) => serde_json::to_value(def),
            Definition::Runbook(def) => serde_json::to_value(def),
            Definition::TaskTemplate(def) => serde_json::to_value(def),
            Definition::Fleet(def) => serde_json::to_value(def),
            Definition::MaintenancePolicy(def) => serde_json::to_value(def),
            Definition::RemediationRule(def) => serde_json::to_value(def),
            Definition::DrainTest(def) => serde_json::to_value(def),
        }
    }

    /// A one-line summary for listings: `Fleet row-a (36 hosts, 3 services)`.
    pub fn summary(&self) -> String {
        fn plural(count: usize, word: &str) -> String {
            if count == 1 {
                format!("1 {word}")
            } else {
                format!("{count} {word}s")
            }
        }
        match self {
            Definition::StateMachine(def) => format!(
                "StateMachine {} ({}, {})",
                def.name,
                plural(def.states.len(), "state"),
                plural(def.instances.len(), "instance")
            ),
            Definition::Runbook(def) => format!(
                "Runbook {} ({}, {})",
                def.name,
                plural(def.tasks.len(), "task"),
                plural(def.includes.len(), "include")
            ),
            Definition::TaskTemplate(def) => format!(
                "TaskTemplate {} ({})",
                def.name,
                plural(def.steps.len(), "step")
            ),
            Definition::Fleet(def) => format!(
                "Fleet {} ({}, {})",
                def.name,
                plural(def.hosts.len(), "host"),
                plural(def.services.len(), "service")
            ),
            Definition::MaintenancePolicy(def) => format!(
                "MaintenancePolicy {} (service {}, {})",
                def.name,
                def.service.value,
                plural(def.rules.len(), "rule")
            ),
            Definition::RemediationRule(def) => format!(
                "RemediationRule {} ({} runs {})",
                def.name,
                def.describe_matchers(),
                def.runbook.value
            ),
            Definition::DrainTest(def) => format!(
                "DrainTest {} ({} on {}{})",
                def.name,
                def.drain.runbook.value,
                match &def.target {
                    crate::drain_test::DrainTarget::Datacenter(dc) => dc.clone(),
                    crate::drain_test::DrainTarget::LeastRecentlyTested(dcs) =>
                        format!("the least recently tested of {}", dcs.join(", ")),
                },
                match &def.schedule {
                    Some(schedule) => format!(", `{}` {}", schedule.cron, schedule.time_zone),
                    None => ", on demand".to_string(),
                }
            ),
        }
    }

    /// The fleet, if this is one.
    pub fn as_fleet(&self) -> Option<&FleetDef> {
        match self {
            Definition::Fleet(fleet) => Some(fleet),
            _ => None,
        }
    }

    /// The maintenance policy, if this is one.
    pub fn as_maintenance_policy(&self) -> Option<&MaintenancePolicyDef> {
        match self {
            Definition::MaintenancePolicy(policy) => Some(policy),
            _ => None,
        }
    }

    /// The remediation rule, if this is one.
    pub fn as_remediation_rule(&self) -> Option<&RemediationRuleDef> {
        match self {
            Definition::RemediationRule(rule) => Some(rule),
            _ => None,
        }
    }

    /// The drain test, if this is one.
    pub fn as_drain_test(&self) -> Option<&DrainTestDef> {
        match self {
            Definition::DrainTest(test) => Some(test),
            _ => None,
        }
    }

    /// The state machine, if this is one.
    pub fn as_state_machine(&self) -> Option<&MachineDef> {
        match self {
            Definition::StateMachine(machine) => Some(machine),
            _ => None,
        }
    }

    /// The state machine, if this is one.
    pub fn into_state_machine(self) -> Option<MachineDef> {
        match self {
            Definition::StateMachine(machine) => Some(machine),
            _ => None,
        }
    }

    /// The runbook, if this is one.
    pub fn as_runbook(&self) -> Option<&RunbookDef> {
        match self {
            Definition::Runbook(runbook) => Some(runbook),
            _ => None,
        }
    }

    /// The task template, if this is one.
    pub fn as_template(&self) -> Option<&TemplateDef> {
        match self {
            Definition::TaskTemplate(template) => Some(template),
            _ => None,
        }
    }
}

/// A file that loaded: its definitions in file order, and warnings worth showing (such as
/// unreachable states), sorted by line.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    pub definitions: Vec<Definition>,
    pub warnings: Vec<Diagnostic>,
}

type CompileFn = fn(&Node, &Reader, &LoadContext) -> Option<Definition>;

/// Every kind of document, with the function that compiles it. The order is the order error
/// messages list them in.
pub(crate) const KINDS: &[(&str, CompileFn)] = &[
    (state_machine::KIND, compile_state_machine),
    (RUNBOOK_KIND, compile_runbook),
    (TEMPLATE_KIND, compile_template),
    (FLEET_KIND, compile_fleet),
    (MAINTENANCE_POLICY_KIND, compile_policy),
    (REMEDIATION_RULE_KIND, compile_remediation_rule),
    (DRAIN_TEST_KIND, compile_drain_test),
];

fn compile_drain_test(root: &Node, reader: &Reader, _ctx: &LoadContext) -> Option<Definition> {
    drain_test::compile_drain_test(root, reader).map(Definition::DrainTest)
}

fn compile_remediation_rule(
    root: &Node,
    reader: &Reader,
    _ctx: &LoadContext,
) -> Option<Definition> {
    remediation_rule::compile_rule(root, reader).map(Definition::RemediationRule)
}

fn compile_fleet(root: &Node, reader: &Reader, _ctx: &LoadContext) -> Option<Definition> {
    fleet_spec::compile_fleet(root, reader).map(Definition::Fleet)
}

fn compile_policy(root: &Node, reader: &Reader, _ctx: &LoadContext) -> Option<Definition> {
    maintenance_policy::compile_policy(root, reader).map(Definition::MaintenancePolicy)
}

fn compile_runbook(root: &Node, reader: &Reader, _ctx: &LoadContext) -> Option<Definition> {
    runbook_spec::compile_runbook(root, reader).map(Definition::Runbook)
}

fn compile_template(root: &Node, reader: &Reader, _ctx: &LoadContext) -> Option<Definition> {
    runbook_spec::compile_template(root, reader).map(Definition::TaskTemplate)
}

fn compile_state_machine(root: &Node, reader: &Reader, ctx: &LoadContext) -> Option<Definition> {
    state_machine::compile(root, reader, ctx).map(Definition::StateMachine)
}

/// The kinds [`load_documents`] understands.
pub fn known_kinds() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|(kind, _)| *kind)
}

/// Parses and validates every document of one file. On any error, returns all the errors
/// found (not only the first), sorted by line; the vector also holds the warnings, which
/// [`Diagnostic::is_error`] tells apart. Warnings alone do not fail: use
/// [`load_documents_with_warnings`] to see them.
pub fn load_documents(
    file: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<Vec<Definition>, Vec<Diagnostic>> {
    load_documents_with_warnings(file, source, ctx).map(|loaded| loaded.definitions)
}

/// Bounds on one file: what [`load_documents`] accepts, or larger ones for bulk imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest file, in bytes.
    pub max_bytes: usize,
    /// Most YAML nodes, counting each use of an alias.
    pub max_nodes: usize,
}

impl LoadLimits {
    /// The limits of definition files: [`MAX_DEFINITION_BYTES`] and [`yaml::MAX_YAML_NODES`].
    pub const DEFINITION: LoadLimits = LoadLimits {
        max_bytes: MAX_DEFINITION_BYTES,
        max_nodes: yaml::MAX_YAML_NODES,
    };
}

/// Like [`load_documents`], and on success also returns the warnings.
pub fn load_documents_with_warnings(
    file: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<Loaded, Vec<Diagnostic>> {
    load_documents_with_limits(file, source, ctx, LoadLimits::DEFINITION)
}

/// Like [`load_documents_with_warnings`], within `limits` instead of the limits of definition
/// files. JSON is YAML, so this also loads JSON documents, with lines and columns.
pub fn load_documents_with_limits(
    file: &str,
    source: &str,
    ctx: &LoadContext,
    limits: LoadLimits,
) -> Result<Loaded, Vec<Diagnostic>> {
    if let Some(too_large) = check_size_within(file, source, limits.max_bytes) {
        return Err(vec![too_large]);
    }
    let parsed = yaml::parse_file_with_limit(file, source, limits.max_nodes);
    let reader = Reader::new(file, UnknownKeys::Deny, state_machine::KEY_HINTS);
    for diagnostic in parsed.diagnostics {
        reader.push_diagnostic(diagnostic);
    }
    if parsed.documents.is_empty() && reader.error_count() == 0 {
        reader.error(
            Loc::FILE,
            "empty-file",
            "The file holds no definitions; add a document that starts with `kind: StateMachine` \
             and `name: ...`.",
        );
    }
    let mut names_seen: HashMap<(String, String), Loc> = HashMap::new();
    let mut definitions = Vec::new();
    for document in &parsed.documents {
        if let Some(definition) = load_document(document, &reader, ctx, &mut names_seen) {
            definitions.push(definition);
        }
    }
    let diagnostics = sorted(reader.into_diagnostics());
    if diagnostics.iter().any(Diagnostic::is_error) {
        Err(diagnostics)
    } else {
        Ok(Loaded {
            definitions,
            warnings: diagnostics,
        })
    }
}

/// The `file-too-large` error, if `source` is over [`MAX_DEFINITION_BYTES`].
pub(crate) fn check_size(file: &str, source: &str) -> Option<Diagnostic> {
    check_size_within(file, source, MAX_DEFINITION_BYTES)
}

fn check_size_within(file: &str, source: &str, max_bytes: usize) -> Option<Diagnostic> {
    (source.len() > max_bytes).then(|| {
        Diagnostic::error(
            file,
            0,
            0,
            "file-too-large",
            format!(
                "The file is {} bytes; definition files may be at most {max_bytes} \
                 bytes. Split it into several files.",
                source.len()
            ),
        )
    })
}

/// Sorts by line and column, keeping the order found for diagnostics at the same place.
pub(crate) fn sorted(mut diagnostics: Vec<Diagnostic>) -> Vec<Diagnostic> {
    diagnostics.sort_by_key(|d| (d.line, d.column));
    diagnostics
}

fn load_document(
    document: &Node,
    reader: &Reader,
    ctx: &LoadContext,
    names_seen: &mut HashMap<(String, String), Loc>,
) -> Option<Definition> {
    if document.as_mapping().is_none() {
        reader.error(
            document.loc,
            "wrong-type",
            format!(
                "A definition must be a mapping that starts with `kind:` and `name:`, not {}.",
                document.describe()
            ),
        );
        return None;
    }
    let Some((_, kind_node)) = document.entry("kind") else {
        match document.entry("current_state") {
            Some((key, _)) => reader.error(
                key.loc,
                "stateservice-file",
                "This is a StateService file (it has `current_state` and no `kind`), which \
                 `levee apply` does not take: serve it with `levee serve --machine FILE`, or \
                 rewrite it as a `kind: StateMachine` definition.",
            ),
            None => reader.error(
                document.loc,
                "missing-key",
                format!(
                    "This document has no `kind`; add one, such as `kind: StateMachine`. The \
                     known kinds are {}.",
                    names::list_of(known_kinds())
                ),
            ),
        }
        return None;
    };
    let Some(kind) = kind_node.as_str() else {
        reader.error(
            kind_node.loc,
            "wrong-type",
            format!(
                "`kind` must be one of {}, not {}.",
                names::list_of(known_kinds()),
                kind_node.describe()
            ),
        );
        return None;
    };
    let Some((_, compile)) = KINDS.iter().find(|(known, _)| *known == kind) else {
        reader.error(
            kind_node.loc,
            "unknown-kind",
            format!(
                "Unknown kind `{}`.{} The known kinds are {}.",
                abbreviate(kind),
                names::did_you_mean(kind, known_kinds()),
                names::list_of(known_kinds())
            ),
        );
        return None;
    };
    if let Some(name_node) = document.get("name")
        && let Some(name) = name_node.as_str()
    {
        let key = (kind.to_string(), name.to_string());
        match names_seen.get(&key) {
            Some(first) => reader.error(
                name_node.loc,
                "duplicate-definition",
                format!(
                    "A {kind} named `{}` is already defined on line {} of this file; rename or \
                     remove one of them.",
                    abbreviate(name),
                    first.line
                ),
            ),
            None => {
                names_seen.insert(key, name_node.loc);
            }
        }
    }
    compile(document, reader, ctx)
}
