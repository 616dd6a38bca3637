//! Runbooks and task templates on the server: the lint that `levee validate` and
//! `POST /api/v1/definitions` share, the stored runbooks and templates, and plans.
//!
//! A plan (`POST /api/v1/runbooks/{name}/plan`, `levee plan`) has no side effects: it binds
//! the parameters, renders every task's arguments, and predicts the waves, each task's duration,
//! the critical path and the speedup of the parallel schedule. A task with past successes is
//! predicted from their median ([`PREDICTION_SOURCE_HISTORY`]); one without from its stage's
//! estimate (see [`predict_task_ms`], [`PREDICTION_SOURCE_ESTIMATE`]). Every pre-condition is
//! evaluated once, read-only, so the operator sees which gates would hold now.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::StatusCode;
use levee_engine::runbook::{
    self as engine, CheckCounts, CriticalPath, MAX_ATTEMPTS_PER_TASK, MAX_BACKOFF_MS, PlanTask,
    RunPlan,
};
use levee_model::{
    Definition, Diagnostic, ParamError, ResolvedRunbook, ResolvedTask, RunbookDef, StageCatalog,
    TemplateDef,
};
use levee_stages::Registry;
use levee_store::{DefinitionRecord, NewDefinition};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::machines::{App, invalid_definitions};

/// The definition kind of runbooks, as stored.
pub const KIND_RUNBOOK: &str = levee_model::RUNBOOK_KIND;
/// The definition kind of task templates, as stored.
pub const KIND_TASK_TEMPLATE: &str = levee_model::TEMPLATE_KIND;
/// The predicted duration of a task whose stage gives no better estimate and for which no run
/// history exists, in milliseconds.
pub const DEFAULT_PREDICTED_TASK_MS: u64 = 10_000;
/// The stage whose duration is known before it runs: its `duration` argument.
pub const WAIT_STAGE: &str = "wait";
/// The source of a prediction made without run history: the stage's own estimate, or
/// [`DEFAULT_PREDICTED_TASK_MS`].
pub const PREDICTION_SOURCE_ESTIMATE: &str = "estimate";
/// The source of a prediction from past runs: the median of the task's latest successes.
pub const PREDICTION_SOURCE_HISTORY: &str = "history";
/// The source of a whole-run prediction built from both.
pub const PREDICTION_SOURCE_MIXED: &str = "mixed";
/// Most pre-conditions a plan evaluates; a plan stays quick however large the runbook.
pub const MAX_PLAN_PRE_CHECKS: usize = 200;
/// Pre-conditions a plan evaluates at once.
pub const PLAN_PRE_CHECK_CONCURRENCY: usize = 16;
/// Growth of the wait between two retries, as the engine's retry policy needs it: the model's
/// `backoff` doubles until `max_backoff`.
const RETRY_BACKOFF_MULTIPLIER: u32 = 2;

/// The stages the linker accepts: every stage of `registry`, local or run by the server.
pub fn stage_catalog(registry: &Registry) -> StageCatalog {
    let mut catalog = StageCatalog::new(&[]);
    for name in registry.stage_names() {
        let args: Vec<(&str, bool)> = registry
            .stage_args(name)
            .unwrap_or(&[])
            .iter()
            .map(|arg| (arg.name, arg.required))
            .collect();
        catalog.add(name, &args);
    }
    catalog
}

/// Links the runbooks and templates of `definitions` together, then checks each task's stage
/// arguments against the stage's own types. Returns the flattened runbooks, or every problem
/// found.
pub fn link_and_lint(
    definitions: &[Definition],
    registry: &Registry,
) -> Result<Vec<ResolvedRunbook>, Vec<Diagnostic>> {
    let resolved = levee_model::link(definitions, &stage_catalog(registry))?;
    let mut diagnostics = Vec::new();
    for runbook in &resolved {
        for task in &runbook.tasks {
            if let Err(error) = registry.lint_stage(&task.stage, &task.with) {
                diagnostics.push(Diagnostic::error(
                    &task.origin.file,
                    task.origin.line,
                    task.origin.column,
                    "invalid-stage-argument",
                    format!("task `{}` of runbook `{}`: {error}", task.id, runbook.name),
                ));
            }
        }
    }
    if diagnostics.is_empty() {
        Ok(resolved)
    } else {
        Err(diagnostics)
    }
}

/// Every problem found when the definitions of all files are taken together, with the
/// built-in stages; empty when there are no runbooks or templates among them. `levee
/// validate` and the server's apply both use it, so they accept exactly the same files.
pub fn lint(definitions: &[Definition]) -> Vec<Diagnostic> {
    let has_runbooks = definitions
        .iter()
        .any(|d| matches!(d, Definition::Runbook(_) | Definition::TaskTemplate(_)));
    if !has_runbooks {
        return Vec::new();
    }
    link_and_lint(definitions, &Registry::builtin())
        .err()
        .unwrap_or_default()
}

/// A stored runbook or template, read back from its compiled JSON.
pub struct StoredDefinition {
    pub record: DefinitionRecord,
    pub definition: Definition,
}

/// The predicted duration of `task` (arguments rendered) without run history: a `wait` takes
/// its `duration`, any other stage [`DEFAULT_PREDICTED_TASK_MS`]; a `timeout` shorter than
/// that bounds the prediction, since the attempt is stopped there.
pub fn predict_task_ms(stage: &str, with: &Value, timeout_ms: Option<u64>) -> u64 {
    let estimate = if stage == WAIT_STAGE {
        with.get("duration")
            .and_then(Value::as_str)
            .and_then(|text| levee_model::parse_duration_ms(text).ok())
            .unwrap_or(DEFAULT_PREDICTED_TASK_MS)
    } else {
        DEFAULT_PREDICTED_TASK_MS
    };
    timeout_ms.map_or(estimate, |timeout| estimate.min(timeout))
}

/// A stored runbook as `GET /api/v1/runbooks` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct RunbookSummary {
    pub name: String,
    pub version: i64,
    pub description: Option<String>,
    /// `drain`, `restore`, `maintenance` or `other`.
    pub purpose: String,
    /// The runbook that undoes this one.
    pub recovery: Option<String>,
    pub params: Vec<ParamView>,
    /// Tasks once templates and included runbooks are expanded.
    pub tasks: usize,
}

/// A declared parameter.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ParamView {
    pub name: String,
    /// `string`, `int`, `bool`, `duration`, `percent` or `enum`.
    #[serde(rename = "type")]
    pub ty: String,
    pub required: bool,
    #[schema(value_type = Option<Object>)]
    pub default: Option<Value>,
    pub description: Option<String>,
    /// The allowed values of an `enum` parameter.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// The body of `POST /api/v1/runbooks/{name}/plan`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Parameter values as `levee plan -p key=value` gives them: strings (numbers and booleans
    /// are taken as their text), each checked against the parameter's declared type.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    /// Evaluate every task's pre-conditions now (read-only checks; at most
    /// `MAX_PLAN_PRE_CHECKS`). On by default.
    #[serde(default = "default_true")]
    pub check_pre: bool,
}

fn default_true() -> bool {
    true
}

/// What a run of a runbook would do, computed without doing any of it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlanView {
    pub runbook: String,
    pub version: i64,
    /// Every declared parameter with the value the run would use.
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, Value>,
    /// The flattened tasks, in an order that respects every dependency.
    pub tasks: Vec<PlannedTask>,
    /// Wave 0 holds the tasks without dependencies, wave k those whose deepest dependency is
    /// in wave k-1.
    pub waves: Vec<Vec<String>>,
    /// The whole run with unlimited parallelism: the length of the critical path. A
    /// `max_parallel` smaller than the widest wave can make the run longer.
    pub predicted: Prediction,
    pub critical_path: CriticalPathView,
    pub max_parallel: Option<u32>,
}

/// One task of a plan.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct PlannedTask {
    pub id: String,
    pub stage: String,
    /// The stage's arguments with every `{{ params.NAME }}` rendered.
    #[serde(rename = "with")]
    #[schema(value_type = Object)]
    pub with_args: Value,
    pub needs: Vec<String>,
    pub after: Vec<String>,
    pub checks: ChecksView,
    pub timeout_ms: Option<u64>,
    pub retries: RetriesView,
    /// Whether re-running the stage after an interruption is safe, given its arguments.
    pub idempotent: bool,
    /// Index into `waves`.
    pub wave: usize,
    pub predicted: Prediction,
    /// Each pre-condition evaluated now, without running anything (a dry run of the gate).
    #[serde(default)]
    pub pre_now: Vec<CheckNow>,
    /// Why the task will not run (its `when` is false with these parameters); absent when
    /// it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
}

/// A check evaluated now, for a plan.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckNow {
    pub name: String,
    pub ok: bool,
    pub observed: String,
    pub reason: String,
}

/// How many `pre`, `post` and `health` checks a task has.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct ChecksView {
    pub pre: u32,
    pub post: u32,
    pub health: u32,
}

/// A task's retry policy: `max` retries after the first attempt, waiting `backoff_ms` before
/// the first and doubling up to `max_backoff_ms`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema)]
pub struct RetriesView {
    pub max: u32,
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
}

/// A predicted duration and what it is based on.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Prediction {
    pub duration_ms: u64,
    /// `estimate`: the stage's own estimate, without run history.
    pub source: String,
}

/// The predicted critical path: the longest chain of dependent work.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CriticalPathView {
    /// The chain, first task to last.
    pub tasks: Vec<String>,
    /// The earliest the whole run can finish, however parallel.
    pub length_ms: u64,
    /// The time of every task run one after another.
    pub sequential_ms: u64,
    /// `sequential_ms / length_ms`.
    pub speedup: f64,
}

impl From<CriticalPath> for CriticalPathView {
    fn from(path: CriticalPath) -> Self {
        CriticalPathView {
            tasks: path.tasks,
            length_ms: path.length_ms,
            sequential_ms: path.sequential_ms,
            speedup: path.speedup,
        }
    }
}

fn purpose_name(purpose: levee_model::Purpose) -> String {
    serde_json::to_value(purpose)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn params_error(errors: &[ParamError]) -> ApiError {
    let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_params",
        format!("{} parameter error(s): {}", errors.len(), text.join("; ")),
    )
    .with_details(json!({ "params": errors }))
}

/// The lines of each file that a definition's origins point into, so that a diagnostic can be
/// attributed to the definition it is in.
fn spans(definition: &Definition) -> BTreeMap<String, (u64, u64)> {
    fn walk(value: &Value, spans: &mut BTreeMap<String, (u64, u64)>) {
        match value {
            Value::Object(map) => {
                if let (Some(Value::String(file)), Some(line)) =
                    (map.get("file"), map.get("line").and_then(Value::as_u64))
                {
                    let span = spans.entry(file.clone()).or_insert((line, line));
                    span.0 = span.0.min(line);
                    span.1 = span.1.max(line);
                }
                map.values().for_each(|v| walk(v, spans));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, spans)),
            _ => {}
        }
    }
    let value = definition.compiled_json();
    let mut spans = BTreeMap::new();
    if let Ok(value) = value {
        walk(&value, &mut spans);
    }
    spans
}

fn within(spans: &BTreeMap<String, (u64, u64)>, diagnostic: &Diagnostic) -> bool {
    spans
        .get(&diagnostic.file)
        .is_some_and(|(first, last)| (*first..=*last).contains(&diagnostic.line))
}

fn compiled(definition: &Definition) -> Result<Value, ApiError> {
    definition.compiled_json().map_err(ApiError::internal)
}

/// A runbook ready to run: parameters bound, arguments rendered, the plan built.
pub struct Prepared {
    /// The runbook definition's stored version.
    pub version: i64,
    pub runbook: ResolvedRunbook,
    pub bound: levee_model::BoundParams,
    /// Each task's `with`, rendered, in plan order.
    pub rendered: Vec<Value>,
    pub plan: RunPlan,
}

impl App {
    /// Every stored runbook and template, latest versions.
    pub async fn stored_runbook_definitions(&self) -> Result<Vec<StoredDefinition>, ApiError> {
        let mut stored = Vec::new();
        for kind in [KIND_TASK_TEMPLATE, KIND_RUNBOOK] {
            for record in self.store.definitions(Some(kind)).await? {
                let parsed = if kind == KIND_RUNBOOK {
                    serde_json::from_value::<RunbookDef>(record.compiled.clone())
                        .map(Definition::Runbook)
                } else {
                    serde_json::from_value::<TemplateDef>(record.compiled.clone())
                        .map(Definition::TaskTemplate)
                };
                let definition = parsed.map_err(|error| {
                    ApiError::internal(format!(
                        "stored {kind} {} v{} does not parse: {error}",
                        record.name, record.version
                    ))
                })?;
                stored.push(StoredDefinition { record, definition });
            }
        }
        Ok(stored)
    }

    /// Links runbooks and templates about to be applied together with the stored ones they do
    /// not replace, and returns them ready to store. A problem in a stored definition (a new
    /// template that breaks a runbook applied earlier) names that definition.
    pub(crate) async fn prepare_runbook_defs(
        &self,
        caller: &Caller,
        applied: Vec<(Definition, String)>,
    ) -> Result<Vec<NewDefinition>, ApiError> {
        if applied.is_empty() {
            return Ok(Vec::new());
        }
        let replaced: BTreeSet<(&str, &str)> = applied
            .iter()
            .map(|(def, _)| (def.kind(), def.name()))
            .collect();
        let stored: Vec<StoredDefinition> = self
            .stored_runbook_definitions()
            .await?
            .into_iter()
            .filter(|s| !replaced.contains(&(s.definition.kind(), s.definition.name())))
            .collect();
        let mut all: Vec<Definition> = applied.iter().map(|(def, _)| def.clone()).collect();
        all.extend(stored.iter().map(|s| s.definition.clone()));
        if let Err(mut diagnostics) = link_and_lint(&all, &self.stages) {
            let applied_spans: Vec<_> = applied.iter().map(|(def, _)| spans(def)).collect();
            let stored_spans: Vec<_> = stored.iter().map(|s| spans(&s.definition)).collect();
            let mut broken = BTreeSet::new();
            for diagnostic in &mut diagnostics {
                if applied_spans.iter().any(|spans| within(spans, diagnostic)) {
                    continue;
                }
                if let Some(i) = stored_spans.iter().position(|s| within(s, diagnostic)) {
                    let def = &stored[i].definition;
                    let name = format!("{} `{}`", def.kind(), def.name());
                    diagnostic.message = format!(
                        "in the stored {name} (v{}), which these files would break: {}",
                        stored[i].record.version, diagnostic.message
                    );
                    broken.insert(name);
                }
            }
            let mut error = invalid_definitions(diagnostics);
            if !broken.is_empty() {
                let names: Vec<String> = broken.into_iter().collect();
                error.message = format!(
                    "these files would break the stored {}; change them or apply fixed \
                     versions of those definitions in the same request. {}",
                    names.join(", "),
                    error.message
                );
                if let Some(details) = error.details.as_object_mut() {
                    details.insert("broken".to_string(), json!(names));
                }
            }
            return Err(error);
        }
        let now = self.now_ms();
        let mut new_defs = Vec::with_capacity(applied.len());
        for (definition, source) in applied {
            let compiled = compiled(&definition)?;
            new_defs.push(NewDefinition {
                kind: definition.kind().to_string(),
                name: definition.name().to_string(),
                digest: hex::encode(Sha256::digest(compiled.to_string().as_bytes())),
                compiled,
                source,
                created_at_ms: now,
                created_by: caller.name.clone(),
            });
        }
        Ok(new_defs)
    }

    /// Links every stored runbook and template; they linked when they were applied.
    async fn resolved_runbooks(
        &self,
    ) -> Result<(Vec<StoredDefinition>, Vec<ResolvedRunbook>), ApiError> {
        let stored = self.stored_runbook_definitions().await?;
        let definitions: Vec<Definition> = stored.iter().map(|s| s.definition.clone()).collect();
        let resolved = link_and_lint(&definitions, &self.stages).map_err(|diagnostics| {
            let mut error = invalid_definitions(diagnostics);
            error.message = format!(
                "the stored runbooks no longer link with this server's stages; apply fixed \
                 versions. {}",
                error.message
            );
            error
        })?;
        Ok((stored, resolved))
    }

    /// Every stored runbook, by name.
    pub async fn list_runbooks(&self, caller: &Caller) -> Result<Vec<RunbookSummary>, ApiError> {
        caller.require(Role::Viewer)?;
        let (stored, resolved) = self.resolved_runbooks().await?;
        let version = |name: &str| {
            stored
                .iter()
                .find(|s| s.record.kind == KIND_RUNBOOK && s.record.name == name)
                .map_or(0, |s| s.record.version)
        };
        let mut summaries: Vec<RunbookSummary> = resolved
            .iter()
            .map(|runbook| RunbookSummary {
                name: runbook.name.clone(),
                version: version(&runbook.name),
                description: runbook.description.clone(),
                purpose: purpose_name(runbook.purpose),
                recovery: runbook.recovery.clone(),
                params: runbook
                    .params
                    .iter()
                    .map(|param| ParamView {
                        name: param.name.clone(),
                        ty: param.ty.name().to_string(),
                        required: param.required,
                        default: param.default.clone(),
                        description: param.description.clone(),
                        values: match &param.ty {
                            levee_model::ParamType::Enum(values) => values.clone(),
                            _ => Vec::new(),
                        },
                    })
                    .collect(),
                tasks: runbook.tasks.len(),
            })
            .collect();
        summaries.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(summaries)
    }

    /// Binds `params` to the stored runbook `name`, renders every task's arguments and builds
    /// the engine's plan: everything a plan shows and a run executes. Reads only.
    pub async fn prepare_run(
        &self,
        name: &str,
        params: BTreeMap<String, Value>,
    ) -> Result<Prepared, ApiError> {
        let Some(record) = self.store.definition(KIND_RUNBOOK, name).await? else {
            return Err(ApiError::not_found(format!(
                "no runbook named `{name}`; `GET /api/v1/runbooks` lists them, and `levee apply \
                 FILE` stores one"
            )));
        };
        let (_, resolved) = self.resolved_runbooks().await?;
        let runbook = resolved
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no runbook named `{name}`")))?;
        let mut given = BTreeMap::new();
        let mut errors = Vec::new();
        for (param, value) in params {
            match value {
                Value::String(text) => {
                    given.insert(param, text);
                }
                Value::Number(_) | Value::Bool(_) => {
                    given.insert(param, value.to_string());
                }
                other => errors.push(ParamError {
                    param: param.clone(),
                    code: "invalid-param-value".to_string(),
                    message: format!(
                        "The parameter `{param}` is given as {other}; give its value as a string."
                    ),
                }),
            }
        }
        let bound = match levee_model::bind_params(&runbook, &given) {
            Ok(bound) if errors.is_empty() => bound,
            Ok(_) => return Err(params_error(&errors)),
            Err(more) => {
                errors.extend(more);
                return Err(params_error(&errors));
            }
        };
        let mut rendered = Vec::with_capacity(runbook.tasks.len());
        for task in &runbook.tasks {
            let with = levee_model::render(&task.with, &bound).map_err(|reason| {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_params",
                    format!("task `{}` ({}): {reason}", task.id, task.origin),
                )
            })?;
            rendered.push(with);
        }
        let mut plan_tasks: Vec<PlanTask> = Vec::with_capacity(runbook.tasks.len());
        for (task, with) in runbook.tasks.iter().zip(&rendered) {
            let mut planned = self.plan_task(task, with);
            planned.skip = skip_reason(task, &bound)?;
            plan_tasks.push(planned);
        }
        let plan = RunPlan::new(plan_tasks).map_err(|error| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plan",
                format!("runbook `{name}` cannot run: {error}"),
            )
        })?;
        Ok(Prepared {
            version: record.version,
            runbook,
            bound,
            rendered,
            plan,
        })
    }

    /// What a run of `name` with `params` would do. Reads only; changes nothing.
    pub async fn plan_runbook(
        &self,
        caller: &Caller,
        name: &str,
        request: PlanRequest,
    ) -> Result<PlanView, ApiError> {
        caller.require(Role::Viewer)?;
        let Prepared {
            version,
            runbook,
            bound,
            rendered,
            plan,
        } = self.prepare_run(name, request.params.clone()).await?;
        let mut history: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for past in self
            .store
            .task_durations(name, crate::runs::DURATION_HISTORY_PER_TASK)
            .await?
        {
            history.entry(past.task).or_default().push(past.duration_ms);
        }
        let mut from_history = 0;
        let predicted: BTreeMap<&str, Prediction> = runbook
            .tasks
            .iter()
            .zip(&rendered)
            .zip(plan.tasks())
            .map(|((task, with), planned)| {
                let prediction = match history.get_mut(&task.id) {
                    // Skipped from the start: it takes no time.
                    _ if planned.skip.is_some() => Prediction {
                        duration_ms: 0,
                        source: PREDICTION_SOURCE_ESTIMATE.to_string(),
                    },
                    Some(past) if !past.is_empty() => {
                        past.sort_unstable();
                        from_history += 1;
                        Prediction {
                            duration_ms: past[past.len() / 2],
                            source: PREDICTION_SOURCE_HISTORY.to_string(),
                        }
                    }
                    _ => Prediction {
                        duration_ms: predict_task_ms(&task.stage, with, task.timeout_ms),
                        source: PREDICTION_SOURCE_ESTIMATE.to_string(),
                    },
                };
                (task.id.as_str(), prediction)
            })
            .collect();
        let whole_source = if from_history == 0 {
            PREDICTION_SOURCE_ESTIMATE
        } else if from_history == runbook.tasks.len() {
            PREDICTION_SOURCE_HISTORY
        } else {
            PREDICTION_SOURCE_MIXED
        };
        let pre_now = if request.check_pre {
            self.evaluate_pre_now(&runbook, &bound).await
        } else {
            BTreeMap::new()
        };
        let waves = engine::plan_waves(&plan);
        let wave_of: BTreeMap<&str, usize> = waves
            .iter()
            .enumerate()
            .flat_map(|(i, wave)| wave.iter().map(move |id| (id.as_str(), i)))
            .collect();
        let path = engine::critical_path(&plan, &|id| {
            predicted
                .get(id)
                .map_or(DEFAULT_PREDICTED_TASK_MS, |p| p.duration_ms)
        });
        let tasks = runbook
            .tasks
            .iter()
            .zip(rendered)
            .zip(plan.tasks())
            .map(|((task, with), planned)| PlannedTask {
                id: task.id.clone(),
                stage: task.stage.clone(),
                with_args: with,
                needs: task.needs.clone(),
                after: task.after.clone(),
                checks: ChecksView {
                    pre: planned.checks.pre,
                    post: planned.checks.post,
                    health: planned.checks.health,
                },
                timeout_ms: task.timeout_ms,
                retries: RetriesView {
                    max: task.retries.max,
                    backoff_ms: task.retries.backoff_ms,
                    max_backoff_ms: task.retries.max_backoff_ms,
                },
                idempotent: planned.idempotent,
                wave: wave_of.get(task.id.as_str()).copied().unwrap_or(0),
                predicted: predicted[task.id.as_str()].clone(),
                pre_now: pre_now.get(&task.id).cloned().unwrap_or_default(),
                skip: planned.skip.clone(),
            })
            .collect();
        Ok(PlanView {
            runbook: runbook.name.clone(),
            version,
            params: bound.values,
            tasks,
            waves,
            predicted: Prediction {
                duration_ms: path.length_ms,
                source: whole_source.to_string(),
            },
            critical_path: path.into(),
            max_parallel: runbook.max_parallel,
        })
    }

    /// Every task's pre-conditions evaluated now, concurrently and bounded, by task id.
    async fn evaluate_pre_now(
        &self,
        runbook: &ResolvedRunbook,
        bound: &levee_model::BoundParams,
    ) -> BTreeMap<String, Vec<CheckNow>> {
        use futures::StreamExt;
        let mut checks = Vec::new();
        for task in &runbook.tasks {
            for check in &task.pre {
                if checks.len() >= MAX_PLAN_PRE_CHECKS {
                    break;
                }
                match crate::runs::spec::check_spec(check, bound) {
                    Ok(spec) => checks.push((task.id.clone(), spec)),
                    Err(reason) => tracing::debug!(%reason, "pre-condition does not render"),
                }
            }
        }
        let cancel = levee_stages::CancelToken::never();
        let results: Vec<(String, CheckNow)> = futures::stream::iter(checks)
            .map(|(task, spec)| {
                let cancel = cancel.clone();
                async move {
                    let outcome = crate::runs::evaluate_check(self, &cancel, &spec).await;
                    (
                        task,
                        CheckNow {
                            name: spec.name,
                            ok: outcome.ok,
                            observed: outcome.observed,
                            reason: outcome.reason,
                        },
                    )
                }
            })
            .buffered(PLAN_PRE_CHECK_CONCURRENCY)
            .collect()
            .await;
        let mut by_task: BTreeMap<String, Vec<CheckNow>> = BTreeMap::new();
        for (task, now) in results {
            by_task.entry(task).or_default().push(now);
        }
        by_task
    }

    /// The engine's view of one task, with its arguments rendered (`skip` is left to the
    /// caller, which knows the run's parameters).
    pub(crate) fn plan_task(&self, task: &ResolvedTask, with: &Value) -> PlanTask {
        let count = |checks: &[levee_model::Check]| u32::try_from(checks.len()).unwrap_or(u32::MAX);
        let retries = engine::RetryPolicy {
            max_attempts: task
                .retries
                .max
                .saturating_add(1)
                .min(MAX_ATTEMPTS_PER_TASK),
            backoff_initial_ms: task.retries.backoff_ms.min(MAX_BACKOFF_MS),
            backoff_max_ms: task
                .retries
                .max_backoff_ms
                .max(task.retries.backoff_ms)
                .min(MAX_BACKOFF_MS),
            multiplier: RETRY_BACKOFF_MULTIPLIER,
        };
        PlanTask {
            id: task.id.clone(),
            stage: task.stage.clone(),
            needs: task.needs.clone(),
            after: task.after.clone(),
            idempotent: self
                .stages
                .stage_idempotent_for(&task.stage, with)
                .unwrap_or(false),
            retries,
            timeout_ms: task.timeout_ms,
            checks: CheckCounts {
                pre: count(&task.pre),
                post: count(&task.post),
                health: count(&task.health),
            },
            steps: None,
            skip: None,
        }
    }
}

/// Why `task` is skipped from the start: its `when`, rendered with `bound`, is `false`.
/// `None` when it runs; a 422 when `when` gives anything but `true` or `false`.
fn skip_reason(
    task: &ResolvedTask,
    bound: &levee_model::BoundParams,
) -> Result<Option<String>, ApiError> {
    let Some(when) = &task.when else {
        return Ok(None);
    };
    let invalid = |reason: String| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_params",
            format!("task `{}` ({}): {reason}", task.id, task.origin),
        )
    };
    let rendered = levee_model::render_text(when, bound).map_err(invalid)?;
    match rendered.trim() {
        "true" => Ok(None),
        "false" => Ok(Some(format!("not run: `when: {when}` is false"))),
        other => Err(invalid(format!(
            "`when: {when}` gives `{other}`; it must give `true` or `false` (declare the \
             parameter with `type: bool`)"
        ))),
    }
}
