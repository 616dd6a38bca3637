//! Linking: checking runbooks against every other definition (templates, included runbooks,
//! recovery runbooks, the stage library) and flattening each into a [`ResolvedRunbook`], the
//! form the engine runs.
//!
//! Linking needs all definitions together, possibly from many files, so it is a separate step
//! from loading: `levee validate a.yaml b.yaml` and `levee apply` load every file, then link
//! what they loaded. The stage library lives in another crate; it is passed in as a
//! [`StageCatalog`] so this crate stays free of I/O.
//!
//! Flattening:
//! - A task with a `template` becomes one task per step, named `TASK/STEP`, chained as the
//!   template says. The template task's `needs` and `after` go to its first steps (those that
//!   need no other step); tasks that depend on the template task depend on its last steps
//!   (those no other step needs). Its `pre` checks go to the first steps, `post` to the last,
//!   `health` to every step; its `timeout` and `retries` are the default of every step.
//! - An include becomes the included runbook's flattened tasks, named `INCLUDE/TASK`, with the
//!   included runbook's placeholders replaced by the include's `with` values (which may hold
//!   this runbook's placeholders: those stay, to be rendered at run start). Dependencies on the
//!   include work as for a template task.
//!
//! Every problem is reported at the reference that causes it, with a did-you-mean where one
//! helps; a runbook that includes a broken one is not reported again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Diagnostic;
use crate::graph::find_cycles;
use crate::load::Definition;
use crate::names;
use crate::params::{placeholder_names, substitute, substitute_text};
use crate::runbook::{
    Arguments, Check, Located, Origin, ParamDef, Purpose, RetryPolicy, RunbookDef, TaskAction,
    TaskDef, TemplateDef,
};
use crate::runbook_spec::cycle_message;
use crate::yaml::abbreviate;

/// Most tasks a runbook may have once templates and includes are expanded. It bounds the
/// memory of a run and the size of plans; a bigger evacuation is several runbooks.
pub const MAX_TASKS_PER_RUNBOOK: usize = 10_000;
/// Deepest nesting of includes (a runbook including one that includes another ...).
pub const MAX_INCLUDE_DEPTH: usize = 16;
/// Most names listed in a message about an unknown one; beyond this only a suggestion is given.
const MAX_LISTED_NAMES: usize = 20;

/// One argument a stage takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageArg {
    pub name: String,
    pub required: bool,
}

/// The stages linking checks tasks against: each stage's name and arguments. The stage
/// implementations (another crate) build it, so a typo in a stage argument is caught when a
/// runbook is applied, not when the task runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StageCatalog {
    stages: BTreeMap<String, Vec<StageArg>>,
}

impl StageCatalog {
    /// A catalog from `(stage, [(argument, required)])` lists.
    pub fn new(stages: &[(&str, &[(&str, bool)])]) -> Self {
        let mut catalog = StageCatalog::default();
        for (name, args) in stages {
            catalog.add(name, args);
        }
        catalog
    }

    /// Adds (or replaces) a stage.
    pub fn add(&mut self, name: &str, args: &[(&str, bool)]) {
        self.stages.insert(
            name.to_string(),
            args.iter()
                .map(|(arg, required)| StageArg {
                    name: arg.to_string(),
                    required: *required,
                })
                .collect(),
        );
    }

    /// The arguments of `stage`, if the catalog has it.
    pub fn args(&self, stage: &str) -> Option<&[StageArg]> {
        self.stages.get(stage).map(Vec::as_slice)
    }

    /// Every stage name, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.stages.keys().map(String::as_str)
    }
}

/// One task of a flattened runbook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedTask {
    /// Unique in the runbook; `INCLUDE/TASK` and `TASK/STEP` for expanded tasks.
    pub id: String,
    pub stage: String,
    /// The stage's arguments; strings may still hold `{{ params.NAME }}` of the runbook.
    pub with: Value,
    /// Ids of the tasks that must succeed first, in runbook order.
    pub needs: Vec<String>,
    /// Ids of the tasks waited for, unless an operator overrides the wait.
    pub after: Vec<String>,
    pub pre: Vec<Check>,
    pub post: Vec<Check>,
    pub health: Vec<Check>,
    pub timeout_ms: Option<u64>,
    pub retries: RetryPolicy,
    /// Run only when this renders `true` with the run's parameters; `false` skips the task
    /// at the start. A template's steps carry their task's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    /// Where the task (or template step) was written, for run-time errors.
    pub origin: Origin,
}

/// A runbook with templates and includes expanded: a flat list of stage tasks in an order
/// that respects every dependency.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ResolvedRunbook {
    pub name: String,
    pub description: Option<String>,
    pub purpose: Purpose,
    pub params: Vec<ParamDef>,
    pub recovery: Option<String>,
    pub max_parallel: Option<u32>,
    pub tasks: Vec<ResolvedTask>,
    pub origin: Origin,
}

impl ResolvedRunbook {
    /// The task with this id.
    pub fn task(&self, id: &str) -> Option<&ResolvedTask> {
        self.tasks.iter().find(|task| task.id == id)
    }
}

/// Checks every runbook and template of `defs` against each other and the stage catalog, and
/// flattens every runbook. State machines are ignored. On error, returns every problem found,
/// sorted by file, line and column.
pub fn link(
    defs: &[Definition],
    stages: &StageCatalog,
) -> Result<Vec<ResolvedRunbook>, Vec<Diagnostic>> {
    let mut linker = Linker {
        runbooks: HashMap::new(),
        templates: HashMap::new(),
        stages,
        diagnostics: Vec::new(),
        memo: HashMap::new(),
    };
    let mut runbooks = Vec::new();
    for def in defs {
        match def {
            Definition::Runbook(runbook) => {
                if let Some(first) = linker.runbooks.get(runbook.name.as_str()) {
                    let message = duplicate_message("Runbook", &runbook.name, &first.origin);
                    linker.error(&runbook.origin, "duplicate-definition", message);
                } else {
                    linker.runbooks.insert(&runbook.name, runbook);
                    runbooks.push(runbook);
                }
            }
            Definition::TaskTemplate(template) => {
                if let Some(first) = linker.templates.get(template.name.as_str()) {
                    let message = duplicate_message("TaskTemplate", &template.name, &first.origin);
                    linker.error(&template.origin, "duplicate-definition", message);
                } else {
                    linker.templates.insert(&template.name, template);
                }
            }
            Definition::StateMachine(_)
            | Definition::Fleet(_)
            | Definition::MaintenancePolicy(_)
            | Definition::RemediationRule(_)
            | Definition::DrainTest(_) => {}
        }
    }
    for def in defs {
        if let Definition::TaskTemplate(template) = def {
            for step in &template.steps {
                linker.check_stage(&step.stage, &step.with);
            }
        }
    }
    let mut resolved = Vec::new();
    for runbook in runbooks {
        linker.check_runbook(runbook);
        let expansion = linker.expand(&runbook.name, None, &mut Vec::new());
        if let Some(expansion) = expansion {
            resolved.push(flatten(runbook, &expansion));
        }
    }
    let mut diagnostics = linker.diagnostics;
    if diagnostics.is_empty() {
        return Ok(resolved);
    }
    diagnostics.sort_by(|a, b| (&a.file, a.line, a.column).cmp(&(&b.file, b.line, b.column)));
    diagnostics.dedup();
    Err(diagnostics)
}

fn duplicate_message(kind: &str, name: &str, first: &Origin) -> String {
    format!("A {kind} named `{name}` is already defined at {first}; rename or remove one of them.")
}

/// A task of an expansion, with dependencies as indices into the expansion's task list.
#[derive(Clone, Debug)]
struct Leaf {
    id: String,
    stage: String,
    with: Value,
    needs: BTreeSet<usize>,
    after: BTreeSet<usize>,
    pre: Vec<Check>,
    post: Vec<Check>,
    health: Vec<Check>,
    timeout_ms: Option<u64>,
    retries: RetryPolicy,
    when: Option<String>,
    origin: Origin,
}

/// A runbook's flattened tasks, shared by every runbook that includes it.
#[derive(Debug)]
struct Expansion {
    leaves: Vec<Leaf>,
}

enum Memo {
    /// Being expanded: meeting it again is an include cycle.
    InProgress,
    /// Expanded; `None` if it has errors (already reported).
    Done(Option<Rc<Expansion>>),
}

/// A task or include of the runbook being expanded, and the tasks it became.
struct Item<'d> {
    id: &'d str,
    leaves: std::ops::Range<usize>,
    /// A stage task is its own leaf; a group's dependencies go to its first leaves.
    is_group: bool,
    needs: &'d [Located<String>],
    after: &'d [Located<String>],
    origin: &'d Origin,
}

struct Linker<'a> {
    runbooks: HashMap<&'a str, &'a RunbookDef>,
    templates: HashMap<&'a str, &'a TemplateDef>,
    stages: &'a StageCatalog,
    diagnostics: Vec<Diagnostic>,
    memo: HashMap<String, Memo>,
}

impl<'a> Linker<'a> {
    fn error(&mut self, origin: &Origin, code: &str, message: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(
            &origin.file,
            origin.line,
            origin.column,
            code,
            message,
        ));
    }

    fn check_runbook(&mut self, runbook: &RunbookDef) {
        match &runbook.recovery {
            Some(recovery) if !self.runbooks.contains_key(recovery.value.as_str()) => {
                let message = format!(
                    "The recovery runbook `{}` is not defined.{} Define it, or correct the name.",
                    abbreviate(&recovery.value),
                    self.did_you_mean_runbook(&recovery.value)
                );
                self.error(&recovery.origin, "unknown-runbook", message);
            }
            None if runbook.purpose.value == Purpose::Drain => {
                let message = format!(
                    "`{}` is a drain runbook, and a drain runbook needs a recovery runbook that \
                     undoes it: add `recovery: NAME` naming the runbook that restores what it \
                     drains.",
                    runbook.name
                );
                self.error(&runbook.purpose.origin, "drain-without-recovery", message);
            }
            _ => {}
        }
    }

    fn did_you_mean_runbook(&self, name: &str) -> String {
        names::did_you_mean(name, self.runbooks.keys().copied())
    }

    fn check_stage(&mut self, stage: &Located<String>, with: &Arguments) {
        let Some(args) = self.stages.args(&stage.value) else {
            let message = format!(
                "Unknown stage `{}`.{} The stages are {}.",
                abbreviate(&stage.value),
                names::did_you_mean(&stage.value, self.stages.names()),
                names::list_of(self.stages.names())
            );
            self.error(&stage.origin, "unknown-stage", message);
            return;
        };
        let arg_names = || args.iter().map(|arg| arg.name.as_str());
        for key in &with.keys {
            if !args.iter().any(|arg| arg.name == key.value) {
                let valid = if args.is_empty() {
                    "it takes no arguments".to_string()
                } else {
                    format!("its arguments are {}", names::list_of(arg_names()))
                };
                let message = format!(
                    "The stage `{}` has no argument `{}`.{} Remove it; {valid}.",
                    stage.value,
                    abbreviate(&key.value),
                    names::did_you_mean(&key.value, arg_names()),
                );
                self.error(&key.origin, "unknown-stage-argument", message);
            }
        }
        for arg in args.iter().filter(|arg| arg.required) {
            if !with.value.contains_key(&arg.name) {
                let message = format!(
                    "The stage `{}` needs the argument `{}`; add it under `with:`.",
                    stage.value, arg.name
                );
                self.error(&stage.origin, "missing-stage-argument", message);
            }
        }
    }

    /// Checks the `with` of a template task or include against the parameters it fills.
    fn check_params_given(
        &mut self,
        with: &Arguments,
        params: &[ParamDef],
        what: &str,
        reference: &Located<String>,
    ) {
        let param_names = || params.iter().map(|p| p.name.as_str());
        for key in &with.keys {
            let Some(param) = params.iter().find(|p| p.name == key.value) else {
                let valid = if params.is_empty() {
                    "it takes no parameters".to_string()
                } else {
                    format!("its parameters are {}", names::list_of(param_names()))
                };
                let message = format!(
                    "The {what} `{}` has no parameter `{}`.{} Remove it; {valid}.",
                    reference.value,
                    abbreviate(&key.value),
                    names::did_you_mean(&key.value, param_names()),
                );
                self.error(&key.origin, "unknown-param", message);
                continue;
            };
            let Some(value) = with.value.get(&key.value) else {
                continue;
            };
            let text = match value {
                Value::String(text) => {
                    if placeholder_names(text).is_ok_and(|names| !names.is_empty()) {
                        continue;
                    }
                    text.clone()
                }
                Value::Number(_) | Value::Bool(_) => value.to_string(),
                _ => {
                    let message = format!(
                        "The parameter `{}` of the {what} `{}` takes one value of type {}, not a \
                         list or mapping.",
                        param.name,
                        reference.value,
                        param.ty.name()
                    );
                    self.error(&key.origin, "invalid-param-value", message);
                    continue;
                }
            };
            if let Err(reason) = param.ty.parse(&text) {
                let message = format!(
                    "The parameter `{}` of the {what} `{}` is of type {}: {reason}",
                    param.name,
                    reference.value,
                    param.ty.name()
                );
                self.error(&key.origin, "invalid-param-value", message);
            }
        }
        for param in params {
            if param.required && param.default.is_none() && !with.value.contains_key(&param.name) {
                let message = format!(
                    "The {what} `{}` needs the parameter `{}` ({}{}); add `{}: ...` under \
                     `with:`.",
                    reference.value,
                    param.name,
                    param.ty.name(),
                    param
                        .description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
                    param.name
                );
                self.error(&reference.origin, "missing-param", message);
            }
        }
    }

    /// The flattened tasks of the runbook `name`, expanded once and shared. `via` is the
    /// include that asks for it (for the error if it is part of an include cycle), `stack`
    /// the runbooks being expanded.
    fn expand(
        &mut self,
        name: &str,
        via: Option<&Located<String>>,
        stack: &mut Vec<String>,
    ) -> Option<Rc<Expansion>> {
        match self.memo.get(name) {
            Some(Memo::Done(expansion)) => return expansion.clone(),
            Some(Memo::InProgress) => {
                if let Some(via) = via {
                    let start = stack.iter().position(|n| n == name).unwrap_or(0);
                    let mut path: Vec<&str> = stack[start..].iter().map(String::as_str).collect();
                    path.push(name);
                    let message = format!(
                        "The runbook `{name}` includes itself: `{}` (each includes the next). \
                         Remove one of these includes.",
                        path.join(" -> ")
                    );
                    self.error(&via.origin, "include-cycle", message);
                }
                return None;
            }
            None => {}
        }
        let runbook = *self.runbooks.get(name)?;
        if stack.len() >= MAX_INCLUDE_DEPTH {
            if let Some(via) = via {
                let message = format!(
                    "Including `{name}` here nests includes {} deep; at most \
                     {MAX_INCLUDE_DEPTH} levels are allowed. Flatten some of them.",
                    stack.len() + 1
                );
                self.error(&via.origin, "include-too-deep", message);
            }
            return None;
        }
        self.memo.insert(name.to_string(), Memo::InProgress);
        stack.push(name.to_string());
        let expansion = self.expand_runbook(runbook, stack).map(Rc::new);
        stack.pop();
        self.memo
            .insert(name.to_string(), Memo::Done(expansion.clone()));
        expansion
    }

    fn expand_runbook(
        &mut self,
        runbook: &'a RunbookDef,
        stack: &mut Vec<String>,
    ) -> Option<Expansion> {
        let errors_before = self.diagnostics.len();
        enum Entry<'d> {
            Task(&'d TaskDef),
            Include(&'d crate::runbook::IncludeDef),
        }
        let mut entries: Vec<(&Origin, Entry)> = runbook
            .tasks
            .iter()
            .map(|t| (&t.origin, Entry::Task(t)))
            .chain(
                runbook
                    .includes
                    .iter()
                    .map(|i| (&i.origin, Entry::Include(i))),
            )
            .collect();
        entries.sort_by_key(|(origin, _)| (origin.line, origin.column));
        let mut leaves: Vec<Leaf> = Vec::new();
        let mut items: Vec<Item> = Vec::new();
        let mut failed: HashSet<&str> = HashSet::new();
        for (_, entry) in entries {
            let first = leaves.len();
            match entry {
                Entry::Task(task) => match &task.action {
                    TaskAction::Stage(stage) => {
                        self.check_stage(stage, &task.with);
                        leaves.push(Leaf {
                            id: task.id.clone(),
                            stage: stage.value.clone(),
                            with: Value::Object(task.with.value.clone()),
                            needs: BTreeSet::new(),
                            after: BTreeSet::new(),
                            pre: task.pre.clone(),
                            post: task.post.clone(),
                            health: task.health.clone(),
                            timeout_ms: task.timeout_ms,
                            retries: task.retries.unwrap_or_default(),
                            when: task.when.as_ref().map(|when| when.value.clone()),
                            origin: task.origin.clone(),
                        });
                    }
                    TaskAction::Template(name) => {
                        let Some(template) = self.templates.get(name.value.as_str()).copied()
                        else {
                            let message = format!(
                                "Unknown template `{}`.{} Define a `kind: TaskTemplate` with this \
                                 name, or correct it.",
                                abbreviate(&name.value),
                                names::did_you_mean(&name.value, self.templates.keys().copied())
                            );
                            self.error(&name.origin, "unknown-template", message);
                            failed.insert(&task.id);
                            continue;
                        };
                        self.check_params_given(&task.with, &template.params, "template", name);
                        if !self.expand_template(task, template, &mut leaves) {
                            failed.insert(&task.id);
                            continue;
                        }
                    }
                },
                Entry::Include(include) => {
                    let Some(included) = self.runbooks.get(include.runbook.value.as_str()).copied()
                    else {
                        let message = format!(
                            "Unknown runbook `{}`.{} Define a `kind: Runbook` with this name, or \
                             correct it.",
                            abbreviate(&include.runbook.value),
                            self.did_you_mean_runbook(&include.runbook.value)
                        );
                        self.error(&include.runbook.origin, "unknown-runbook", message);
                        failed.insert(&include.id);
                        continue;
                    };
                    self.check_params_given(
                        &include.with,
                        &included.params,
                        "runbook",
                        &include.runbook,
                    );
                    let Some(expansion) =
                        self.expand(&included.name, Some(&include.runbook), stack)
                    else {
                        failed.insert(&include.id);
                        continue;
                    };
                    if !self.include_leaves(include, included, &expansion, &mut leaves) {
                        failed.insert(&include.id);
                        continue;
                    }
                }
            }
            if leaves.len() > MAX_TASKS_PER_RUNBOOK {
                let message = format!(
                    "The runbook `{}` has more than {MAX_TASKS_PER_RUNBOOK} tasks once its \
                     templates and includes are expanded; split it into several runbooks.",
                    runbook.name
                );
                self.error(&runbook.origin, "too-many-tasks", message);
                return None;
            }
            let (id, needs, after, origin, is_group) = match entry {
                Entry::Task(task) => (
                    task.id.as_str(),
                    &task.needs[..],
                    &task.after[..],
                    &task.origin,
                    matches!(task.action, TaskAction::Template(_)),
                ),
                Entry::Include(include) => (
                    include.id.as_str(),
                    &include.needs[..],
                    &include.after[..],
                    &include.origin,
                    true,
                ),
            };
            items.push(Item {
                id,
                leaves: first..leaves.len(),
                is_group,
                needs,
                after,
                origin,
            });
        }
        self.resolve_references(&mut leaves, &items, &failed);
        if self.diagnostics.len() > errors_before || !failed.is_empty() {
            return None;
        }
        let edges: Vec<Vec<usize>> = leaves
            .iter()
            .map(|leaf| leaf.needs.union(&leaf.after).copied().collect())
            .collect();
        for cycle in find_cycles(&edges) {
            let item = items
                .iter()
                .find(|item| item.leaves.contains(&cycle[0]))
                .map_or(&runbook.origin, |item| item.origin);
            let message = cycle_message(cycle.iter().map(|&i| leaves[i].id.as_str()), "tasks");
            self.error(item, "dependency-cycle", message);
        }
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Expansion { leaves })
    }

    /// Adds the steps of `template` as tasks `TASK/STEP`; `false` if a placeholder failed.
    fn expand_template(
        &mut self,
        task: &TaskDef,
        template: &TemplateDef,
        leaves: &mut Vec<Leaf>,
    ) -> bool {
        let lookup = param_lookup(&task.with, &template.params);
        let base = leaves.len();
        let step_index = |id: &str| template.steps.iter().position(|s| s.id == id);
        for step in &template.steps {
            let with = match substitute(&Value::Object(step.with.value.clone()), &lookup) {
                Ok(with) => with,
                Err(message) => {
                    self.error(&task.origin, "invalid-placeholder", message);
                    return false;
                }
            };
            leaves.push(Leaf {
                id: format!("{}/{}", task.id, step.id),
                stage: step.stage.value.clone(),
                with,
                needs: step
                    .needs
                    .iter()
                    .filter_map(|need| step_index(&need.value))
                    .map(|index| base + index)
                    .collect(),
                after: BTreeSet::new(),
                pre: Vec::new(),
                post: Vec::new(),
                health: task.health.clone(),
                timeout_ms: step.timeout_ms.or(task.timeout_ms),
                retries: step.retries.or(task.retries).unwrap_or_default(),
                when: task.when.as_ref().map(|when| when.value.clone()),
                origin: step.origin.clone(),
            });
        }
        let members: Vec<usize> = (base..leaves.len()).collect();
        let deps: Vec<BTreeSet<usize>> = leaves.iter().map(|l| l.needs.clone()).collect();
        for index in sources(&members, &deps) {
            leaves[index].pre = task.pre.clone();
        }
        for index in sinks(&members, &deps) {
            leaves[index].post = task.post.clone();
        }
        true
    }

    /// Adds the tasks of an included runbook as `INCLUDE/TASK`, its placeholders replaced by
    /// the include's values; `false` if a placeholder failed.
    fn include_leaves(
        &mut self,
        include: &crate::runbook::IncludeDef,
        included: &RunbookDef,
        expansion: &Expansion,
        leaves: &mut Vec<Leaf>,
    ) -> bool {
        let lookup = param_lookup(&include.with, &included.params);
        let base = leaves.len();
        for leaf in &expansion.leaves {
            let substituted = (|| -> Result<Leaf, String> {
                let mut text = |t: &str| substitute_text(t, &lookup);
                let mut value = |v: &Value| substitute(v, &lookup);
                let mut map_checks = |checks: &[Check]| -> Result<Vec<Check>, String> {
                    checks
                        .iter()
                        .map(|check| check.map_text(&mut text, &mut value))
                        .collect()
                };
                Ok(Leaf {
                    id: format!("{}/{}", include.id, leaf.id),
                    stage: leaf.stage.clone(),
                    pre: map_checks(&leaf.pre)?,
                    post: map_checks(&leaf.post)?,
                    health: map_checks(&leaf.health)?,
                    with: substitute(&leaf.with, &lookup)?,
                    needs: leaf.needs.iter().map(|i| base + i).collect(),
                    after: leaf.after.iter().map(|i| base + i).collect(),
                    timeout_ms: leaf.timeout_ms,
                    retries: leaf.retries,
                    when: leaf.when.as_deref().map(&mut text).transpose()?,
                    origin: leaf.origin.clone(),
                })
            })();
            match substituted {
                Ok(new_leaf) => leaves.push(new_leaf),
                Err(message) => {
                    self.error(&include.origin, "invalid-placeholder", message);
                    return false;
                }
            }
        }
        true
    }

    /// Turns every `needs` and `after` of this runbook's items into edges between leaves.
    fn resolve_references(&mut self, leaves: &mut [Leaf], items: &[Item], failed: &HashSet<&str>) {
        let leaf_index: HashMap<&str, usize> = leaves
            .iter()
            .enumerate()
            .map(|(index, leaf)| (leaf.id.as_str(), index))
            .collect();
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (index, leaf) in leaves.iter().enumerate() {
            for (position, _) in leaf.id.match_indices('/') {
                groups
                    .entry(leaf.id[..position].to_string())
                    .or_default()
                    .push(index);
            }
        }
        // Edges inside groups, before this level adds any: what "first" and "last" mean.
        let internal: Vec<BTreeSet<usize>> = leaves
            .iter()
            .map(|leaf| leaf.needs.union(&leaf.after).copied().collect())
            .collect();
        let mut additions: Vec<(usize, usize, bool)> = Vec::new();
        for item in items {
            let members: Vec<usize> = item.leaves.clone().collect();
            let dependents = if item.is_group {
                sources(&members, &internal)
            } else {
                members
            };
            for (references, weak) in [(item.needs, false), (item.after, true)] {
                for reference in references {
                    let head = reference.value.split('/').next().unwrap_or("");
                    if failed.contains(head) {
                        continue;
                    }
                    let targets = if let Some(&index) = leaf_index.get(reference.value.as_str()) {
                        vec![index]
                    } else if let Some(group) = groups.get(&reference.value) {
                        sinks(group, &internal)
                    } else {
                        self.unknown_reference(item, reference, weak, &leaf_index, &groups);
                        continue;
                    };
                    for &dependent in &dependents {
                        for &target in &targets {
                            additions.push((dependent, target, weak));
                        }
                    }
                }
            }
        }
        for (dependent, target, weak) in additions {
            if weak {
                leaves[dependent].after.insert(target);
            } else {
                leaves[dependent].needs.insert(target);
            }
        }
        for leaf in leaves.iter_mut() {
            let needs = leaf.needs.clone();
            leaf.after.retain(|target| !needs.contains(target));
        }
    }

    fn unknown_reference(
        &mut self,
        item: &Item,
        reference: &Located<String>,
        weak: bool,
        leaf_index: &HashMap<&str, usize>,
        groups: &BTreeMap<String, Vec<usize>>,
    ) {
        let mut candidates: Vec<&str> = leaf_index.keys().copied().collect();
        candidates.extend(groups.keys().map(String::as_str));
        candidates.sort_unstable();
        let suggestion = names::did_you_mean(&reference.value, candidates.iter().copied());
        let listed = if candidates.len() <= MAX_LISTED_NAMES {
            format!(
                " The tasks are {}.",
                names::list_of(candidates.iter().copied())
            )
        } else {
            String::new()
        };
        let key = if weak { "after" } else { "needs" };
        let message = format!(
            "`{}` in the `{key}` of `{}` is not a task or include of this runbook.{suggestion}{listed}",
            abbreviate(&reference.value),
            item.id,
        );
        self.error(&reference.origin, "unknown-task", message);
    }
}

/// The value of each of `params` in a template task or include: the one given, the default,
/// or null.
fn param_lookup<'p>(
    with: &'p Arguments,
    params: &'p [ParamDef],
) -> impl Fn(&str) -> Option<Value> + 'p {
    move |name: &str| {
        let param = params.iter().find(|p| p.name == name)?;
        Some(
            with.value
                .get(name)
                .cloned()
                .or_else(|| param.default.clone())
                .unwrap_or(Value::Null),
        )
    }
}

/// Members that depend on no other member: where a group starts.
fn sources(members: &[usize], deps: &[BTreeSet<usize>]) -> Vec<usize> {
    let set: BTreeSet<usize> = members.iter().copied().collect();
    members
        .iter()
        .copied()
        .filter(|m| deps[*m].iter().all(|d| !set.contains(d)))
        .collect()
}

/// Members no other member depends on: where a group ends.
fn sinks(members: &[usize], deps: &[BTreeSet<usize>]) -> Vec<usize> {
    let set: BTreeSet<usize> = members.iter().copied().collect();
    let depended: BTreeSet<usize> = members
        .iter()
        .flat_map(|m| deps[*m].iter().copied())
        .filter(|d| set.contains(d))
        .collect();
    members
        .iter()
        .copied()
        .filter(|m| !depended.contains(m))
        .collect()
}

/// Indices of `leaves` in an order where every task comes after its dependencies, and
/// otherwise in the order written (the expansion has no cycles).
fn dependency_order(leaves: &[Leaf]) -> Vec<usize> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let mut waiting_on: Vec<usize> = leaves
        .iter()
        .map(|l| l.needs.len() + l.after.len())
        .collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); leaves.len()];
    for (index, leaf) in leaves.iter().enumerate() {
        for &target in leaf.needs.iter().chain(&leaf.after) {
            dependents[target].push(index);
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..leaves.len())
        .filter(|i| waiting_on[*i] == 0)
        .map(Reverse)
        .collect();
    let mut order = Vec::with_capacity(leaves.len());
    while let Some(Reverse(index)) = ready.pop() {
        order.push(index);
        for &dependent in &dependents[index] {
            waiting_on[dependent] -= 1;
            if waiting_on[dependent] == 0 {
                ready.push(Reverse(dependent));
            }
        }
    }
    order
}

fn flatten(runbook: &RunbookDef, expansion: &Expansion) -> ResolvedRunbook {
    let leaves = &expansion.leaves;
    let order = dependency_order(leaves);
    let mut rank = vec![0; leaves.len()];
    for (position, index) in order.iter().enumerate() {
        rank[*index] = position;
    }
    let ids = |set: &BTreeSet<usize>| {
        let mut targets: Vec<usize> = set.iter().copied().collect();
        targets.sort_by_key(|i| rank[*i]);
        targets.into_iter().map(|i| leaves[i].id.clone()).collect()
    };
    ResolvedRunbook {
        name: runbook.name.clone(),
        description: runbook.description.clone(),
        purpose: runbook.purpose.value,
        params: runbook.params.clone(),
        recovery: runbook.recovery.as_ref().map(|r| r.value.clone()),
        max_parallel: runbook.max_parallel,
        tasks: order
            .iter()
            .map(|&index| &leaves[index])
            .map(|leaf| ResolvedTask {
                id: leaf.id.clone(),
                stage: leaf.stage.clone(),
                with: leaf.with.clone(),
                needs: ids(&leaf.needs),
                after: ids(&leaf.after),
                pre: leaf.pre.clone(),
                post: leaf.post.clone(),
                health: leaf.health.clone(),
                timeout_ms: leaf.timeout_ms,
                retries: leaf.retries,
                when: leaf.when.clone(),
                origin: leaf.origin.clone(),
            })
            .collect(),
        origin: runbook.origin.clone(),
    }
}
