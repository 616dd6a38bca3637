//! The `levee` command line: `serve`, the offline `validate`, `schema` and `token create
//! --database`, and the client commands that talk to a running server (those about runbook
//! runs live in `runs.rs`).
//!
//! Exit codes are part of the interface, because configuration management tools branch on
//! them: 0 is success (or "yes"), 1 is "no" (or invalid definitions or parameters, a run that
//! ended failed or aborted, a control the run's state refuses), and 2 is an error of any other
//! kind, including bad usage (clap's own code). Errors go to stderr as `error: ` followed
//! by a sentence that says what to do; results go to stdout.

use std::fmt::Display;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use levee_model::{Definition, Diagnostic, LoadContext};
use levee_server::auth::{self, Role, Scope};
use levee_server::http::api::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use levee_server::runbooks::PlanView;
use levee_store::{AuditEntry, TokenRecord};
use reqwest::header::{ETAG, IF_MATCH};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::client::{ApiFailure, Client, ClientError, Reply};
use crate::runs::{self, PauseArgs, RunArgs, RunsCommand, UnpauseArgs};
use crate::serve;

/// The server client commands talk to unless `--server` or `LEVEE_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7400";
/// Exit code of success, and of "yes".
pub const EXIT_OK: u8 = 0;
/// Exit code of "no", and of definitions with errors.
pub const EXIT_NO: u8 = 1;
/// Exit code of every other failure.
pub const EXIT_ERROR: u8 = 2;
/// Machines sent per `POST /api/v1/machines` (the server's per-request maximum).
pub const MACHINES_PER_CREATE_REQUEST: usize = 1_000;
/// Machine ids listed by name in a summary; the rest are counted.
pub const IDS_SHOWN_IN_SUMMARY: usize = 20;
/// The actor the audit log records for tokens created offline with `--database`.
pub const OFFLINE_ACTOR: &str = "cli";

/// Levee: state machines for configuration management, and the server that keeps them.
#[derive(Parser, Debug)]
#[command(name = "levee", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the server.
    Serve(serve::ServeArgs),
    /// Plans from the RPC dependency graph: `levee deps plan --jaeger deps.json`.
    #[command(subcommand)]
    Deps(crate::deps::DepsCommand),
    /// Evacuates a datacenter of a simulated fleet, live, on the embedded database: the
    /// quickest way to see what Levee does. Keeps serving afterwards until Ctrl-C.
    Demo(crate::demo::DemoArgs),
    /// The simulated fleet: `levee sim evacuate` rehearses an evacuation in virtual time.
    #[command(subcommand)]
    Sim(crate::demo::SimCommand),
    /// Checks definition files offline, without a server; exits 1 if any has an error.
    Validate(ValidateArgs),
    /// Stores definition files on the server and creates the machines they declare.
    Apply(ApplyArgs),
    /// Shows what a run of a stored runbook would do, without doing it: the order in waves,
    /// predicted durations, the critical path and the speedup; exits 1 on parameter errors.
    Plan(PlanArgs),
    /// Starts a run of a stored runbook; with --wait, follows it and exits 0 only if it
    /// succeeded (1 if it failed or was aborted, or on parameter errors).
    Run(RunArgs),
    /// Lists, shows, follows and steers runbook runs.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Pauses every run (no run starts a new task until `levee unpause`); `--status` shows
    /// whether runs are paused, by whom and why.
    Pause(PauseArgs),
    /// Lifts the pause of every run set by `levee pause`.
    Unpause(UnpauseArgs),
    /// Asks about, reports to, lists and creates machines.
    #[command(subcommand)]
    State(StateCommand),
    /// Creates, lists and revokes API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Shows the audit log: who changed what, and how it went.
    Audit(AuditArgs),
    /// Shows stored fleets: hosts, pools, floors and headroom.
    #[command(subcommand)]
    Fleet(crate::maint::FleetCommand),
    /// Plans, schedules, follows and steers maintenance of racks, switches and power domains.
    #[command(subcommand)]
    Maint(crate::maint::MaintCommand),
    /// Lists, shows and runs drain tests, and shows their history and reports.
    #[command(subcommand, name = "drain-test")]
    DrainTest(crate::drain_tests::DrainTestCommand),
    /// Prints the JSON Schema of `kind: StateMachine` documents, for editors.
    Schema,
}

/// Which server to talk to, and as whom.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// Base URL of the Levee server.
    #[arg(long, env = "LEVEE_SERVER", default_value = DEFAULT_SERVER, value_name = "URL")]
    pub server: String,
    /// API token, sent as `Authorization: Bearer TOKEN`; needed once the server has tokens.
    #[arg(
        long,
        env = "LEVEE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
}

impl ServerArgs {
    pub(crate) fn client(&self) -> Result<Client, CliError> {
        Ok(Client::new(&self.server, self.token.as_deref())?)
    }
}

#[derive(Args, Debug, Clone, Copy)]
pub struct OutputArgs {
    /// How to print results: aligned columns for people, or JSON for programs.
    #[arg(long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct ValidateArgs {
    /// Definition files: `kind: StateMachine` YAML, or StateService's format.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Definition files to store; all are sent together and stored all or nothing.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    /// Name of a runbook stored with `levee apply`.
    pub runbook: String,
    /// A parameter of the runbook, as `key=value`; repeat for several.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `key=value` → (`key`, `value`); the value may itself contain `=`.
pub(crate) fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!(
            "`{text}` is not KEY=VALUE; write a parameter like `-p dc=east`"
        )),
    }
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Exits 0 if MACHINE is in STATE and may take its step now, 1 if not, 2 on errors.
    Check(CheckArgs),
    /// Reports that the step of STATE is done; exits 0 if recorded, 1 if not now, 2 on errors.
    Advance(AdvanceArgs),
    /// Lists machines, ordered by id.
    List(ListArgs),
    /// Shows one machine.
    Show(ShowArgs),
    /// Creates machines of an applied definition; existing ids are left as they are.
    Create(CreateArgs),
    /// Shows a machine's history, or exports it as a shell, Ansible or Chef script.
    History(HistoryArgs),
    /// Sends a machine back to its start to replay its recorded path.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Machine id.
    pub machine: String,
    /// The state whose step the caller wants to take.
    pub state: String,
    /// Print `yes` or `no` on stdout as well.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Print nothing when the answer is no.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct AdvanceArgs {
    /// Machine id.
    pub machine: String,
    /// The state whose step is done (the state the machine is in).
    pub state: String,
    /// Which of the state's events happened (the server's default is `done`).
    #[arg(long)]
    pub event: Option<String>,
    /// Who reports, such as a hostname: a counting transition counts each reporter once.
    #[arg(long)]
    pub reporter: Option<String>,
    /// Apply only if the machine is still at this version (from `state show`).
    #[arg(long, value_name = "N")]
    pub if_version: Option<i64>,
    /// Print what was recorded.
    #[arg(short, long, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Print nothing when the answer is no.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only machines of this definition.
    #[arg(long)]
    pub definition: Option<String>,
    /// Only machines of this group.
    #[arg(long)]
    pub group: Option<String>,
    /// Machines per page (1 to 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Every machine, fetched page by page.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// Machine id.
    pub machine: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Ids of the machines to create.
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
    /// Name of an applied `StateMachine` definition.
    #[arg(long)]
    pub definition: String,
    /// Group of the new machines, for tokens scoped to `group:NAME`.
    #[arg(long)]
    pub group: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryFormat {
    Json,
    Shell,
    Ansible,
    Chef,
}

impl HistoryFormat {
    fn as_str(self) -> &'static str {
        match self {
            HistoryFormat::Json => "json",
            HistoryFormat::Shell => "shell",
            HistoryFormat::Ansible => "ansible",
            HistoryFormat::Chef => "chef",
        }
    }
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Machine id.
    pub machine: String,
    /// `json` prints every entry as JSON; `shell`, `ansible` and `chef` print a script that
    /// walks the recorded path. Without it, entries print as `--output` says.
    #[arg(long, value_enum)]
    pub format: Option<HistoryFormat>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// Machine id.
    pub machine: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Creates a token and prints its secret, once.
    Create(TokenCreateArgs),
    /// Lists tokens (never their secrets).
    List(TokenListArgs),
    /// Revokes a token; its name stays taken.
    Revoke(TokenRevokeArgs),
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoleArg {
    /// Reads what it is scoped to.
    Viewer,
    /// Also reports steps, replays machines and applies definitions.
    Operator,
    /// Also manages tokens.
    Admin,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::Viewer => Role::Viewer,
            RoleArg::Operator => Role::Operator,
            RoleArg::Admin => Role::Admin,
        }
    }
}

#[derive(Args, Debug)]
pub struct TokenCreateArgs {
    /// The token's name, which the audit log records as the actor.
    pub name: String,
    #[arg(long, value_enum)]
    pub role: RoleArg,
    /// `machine:ID` or `group:NAME`; without it the token covers every machine.
    #[arg(long, value_name = "SCOPE")]
    pub scope: Option<String>,
    /// Write the token straight into this store (`sqlite://PATH` or `postgres://...`) instead of
    /// asking a server: how the first admin token is made. A running server sees it after a
    /// restart.
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct TokenListArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct TokenRevokeArgs {
    /// The token's name.
    pub name: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Only entries by this actor (a token name, or `anonymous`).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only entries about this target (a machine id, a definition name, a token name).
    #[arg(long)]
    pub target: Option<String>,
    /// Entries to show (1 to 1000).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Only entries after this sequence number (to page forward).
    #[arg(long, value_name = "SEQ")]
    pub after: Option<i64>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

/// A failure to report as `error: MESSAGE` with exit code 2.
#[derive(Debug)]
pub struct CliError(pub(crate) String);

impl From<ClientError> for CliError {
    fn from(error: ClientError) -> Self {
        CliError(error.to_string())
    }
}

impl From<ApiFailure> for CliError {
    fn from(failure: ApiFailure) -> Self {
        CliError(failure.to_string())
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError(format!("{error:#}"))
    }
}

impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError(message)
    }
}

pub(crate) type Outcome = Result<u8, CliError>;

/// Runs one parsed command line and returns the process's exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        Command::Serve(args) => serve::run(args)
            .await
            .map(|()| EXIT_OK)
            .map_err(CliError::from),
        Command::Deps(command) => crate::deps::deps(command).await,
        Command::Demo(args) => crate::demo::run(args).await.map_err(CliError::from),
        Command::Sim(command) => crate::demo::sim(command).await.map_err(CliError::from),
        Command::Validate(args) => Ok(validate(&args)),
        Command::Apply(args) => apply(&args).await,
        Command::Plan(args) => plan(&args).await,
        Command::Run(args) => runs::run(&args).await,
        Command::Runs(command) => runs::runs(command).await,
        Command::Pause(args) => runs::pause(&args).await,
        Command::Unpause(args) => runs::unpause(&args).await,
        Command::State(command) => match command {
            StateCommand::Check(args) => Ok(state_check(&args).await),
            StateCommand::Advance(args) => Ok(state_advance(&args).await),
            StateCommand::List(args) => state_list(&args).await,
            StateCommand::Show(args) => state_show(&args).await,
            StateCommand::Create(args) => state_create(&args).await,
            StateCommand::History(args) => state_history(&args).await,
            StateCommand::Replay(args) => state_replay(&args).await,
        },
        Command::Token(command) => match command {
            TokenCommand::Create(args) => token_create(&args).await,
            TokenCommand::List(args) => token_list(&args).await,
            TokenCommand::Revoke(args) => token_revoke(&args).await,
        },
        Command::Audit(args) => audit(&args).await,
        Command::Fleet(command) => crate::maint::fleet(command).await,
        Command::Maint(command) => crate::maint::maint(command).await,
        Command::DrainTest(command) => crate::drain_tests::drain_test(command).await,
        Command::Schema => schema(),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(CliError(message)) => {
            eprint_line(format_args!("error: {message}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Writes one line to stdout. A closed pipe (`levee state list | head`) is not an error.
pub(crate) fn print_line(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Writes text to stdout as it is.
pub(crate) fn print_raw(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// Writes one line to stderr.
pub(crate) fn eprint_line(line: impl Display) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

pub(crate) fn print_json(value: &Value) {
    print_line(serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string()));
}

/// `1 state`, `6 states`.
pub(crate) fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

/// `a, b, c` or `a, b, ... and 30 more`.
fn summarize_ids(ids: &[String]) -> String {
    let shown = ids
        .iter()
        .take(IDS_SHOWN_IN_SUMMARY)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() > IDS_SHOWN_IN_SUMMARY {
        format!("{shown} and {} more", ids.len() - IDS_SHOWN_IN_SUMMARY)
    } else {
        shown
    }
}

/// Plain aligned columns separated by two spaces; the last column is not padded.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_cells).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i < last {
                let pad = widths[i].saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A cell for an optional value: the value, or `-`.
pub(crate) fn cell(value: Option<&str>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or("-").to_string()
}

pub(crate) fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Reads a definition file, or says which file could not be read and why.
fn read_file(path: &PathBuf) -> Result<String, CliError> {
    std::fs::read_to_string(path).map_err(|error| {
        CliError(format!(
            "cannot read {}: {error}; check the path and that it is a readable UTF-8 text file",
            path.display()
        ))
    })
}

/// `StateMachine three-tier-db (6 states, 1 instance)`.
fn describe(definition: &Definition) -> String {
    definition.summary()
}

fn validate(args: &ValidateArgs) -> u8 {
    let ctx = LoadContext {
        now_ms: now_ms(),
        local_tz: jiff::tz::TimeZone::system(),
        allow_past_timers: false,
    };
    let mut code = EXIT_OK;
    let mut all_definitions = Vec::new();
    let mut loaded_ok: Vec<(String, String)> = Vec::new();
    for path in &args.files {
        let file = path.display().to_string();
        let text = match read_file(path) {
            Ok(text) => text,
            Err(CliError(message)) => {
                eprint_line(format_args!("error: {message}"));
                code = code.max(EXIT_ERROR);
                continue;
            }
        };
        let loaded = if levee_model::stateservice::looks_like_stateservice(&text) {
            let name = levee_server::machines::machine_name_from_file(&file);
            levee_model::stateservice::load_with_warnings(&file, &name, &text, &ctx)
                .map(|(def, warnings)| (vec![Definition::StateMachine(def)], warnings))
        } else {
            levee_model::load_documents_with_warnings(&file, &text, &ctx)
                .map(|loaded| (loaded.definitions, loaded.warnings))
        };
        match loaded {
            Ok((definitions, warnings)) => {
                for warning in &warnings {
                    eprint_line(warning);
                }
                for definition in &definitions {
                    loaded_ok.push((file.clone(), describe(definition)));
                }
                all_definitions.extend(definitions);
            }
            Err(diagnostics) => {
                for diagnostic in &diagnostics {
                    eprint_line(diagnostic);
                }
                if diagnostics.iter().any(Diagnostic::is_error) {
                    code = code.max(EXIT_NO);
                }
            }
        }
    }
    // References between files (templates, included runbooks, recovery runbooks) and stage
    // arguments can only be checked with every file loaded.
    let linked = levee_server::runbooks::lint(&all_definitions);
    for diagnostic in &linked {
        eprint_line(diagnostic);
    }
    if linked.iter().any(Diagnostic::is_error) {
        code = code.max(EXIT_NO);
    }
    // "ok" only for files that no error points into, once everything has been checked.
    for (file, description) in &loaded_ok {
        if !linked.iter().any(|d| d.is_error() && d.file == *file) {
            print_line(format_args!("ok  {file}: {description}"));
        }
    }
    code
}

#[derive(Deserialize)]
struct ApplyResponse {
    definitions: Vec<AppliedDefinition>,
    created: Vec<String>,
}

#[derive(Deserialize)]
struct AppliedDefinition {
    kind: String,
    name: String,
    version: i64,
    changed: bool,
}

async fn apply(args: &ApplyArgs) -> Outcome {
    let mut files = Vec::with_capacity(args.files.len());
    for path in &args.files {
        let content = read_file(path)?;
        files.push(json!({ "name": path.display().to_string(), "content": content }));
    }
    let client = args.server.client()?;
    let body = json!({ "files": files });
    let reply = client
        .send(
            Method::POST,
            &["api", "v1", "definitions"],
            &[],
            &[],
            Some(&body),
        )
        .await?;
    if reply.status == StatusCode::UNPROCESSABLE_ENTITY {
        let failure = client.failure(&reply);
        let diagnostics: Vec<Diagnostic> = failure
            .error
            .get("diagnostics")
            .cloned()
            .and_then(|d| serde_json::from_value(d).ok())
            .unwrap_or_default();
        if diagnostics.is_empty() {
            return Err(failure.into());
        }
        for diagnostic in &diagnostics {
            eprint_line(diagnostic);
        }
        return Ok(EXIT_NO);
    }
    if !reply.status.is_success() {
        return Err(client.failure(&reply).into());
    }
    if args.output.output == Output::Json {
        print_json(&parse_reply(&client, &reply)?);
        return Ok(EXIT_OK);
    }
    let response: ApplyResponse = serde_json::from_value(parse_reply(&client, &reply)?)
        .map_err(|error| unexpected(&client, "definitions", error))?;
    for definition in &response.definitions {
        let what = match (definition.changed, definition.version) {
            (false, _) => "unchanged",
            (true, 1) => "created",
            (true, _) => "updated",
        };
        print_line(format_args!(
            "{}/{} v{} ({what})",
            definition.kind, definition.name, definition.version
        ));
    }
    if !response.created.is_empty() {
        print_line(format_args!(
            "created {}: {}",
            plural(response.created.len(), "machine"),
            summarize_ids(&response.created)
        ));
    }
    Ok(EXIT_OK)
}

async fn plan(args: &PlanArgs) -> Outcome {
    let client = args.server.client()?;
    let params: serde_json::Map<String, Value> = args
        .params
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    let body = json!({ "params": params });
    let reply = client
        .send(
            Method::POST,
            &["api", "v1", "runbooks", &args.runbook, "plan"],
            &[],
            &[],
            Some(&body),
        )
        .await?;
    if !reply.status.is_success() {
        return param_failure(client.failure(&reply));
    }
    let value = parse_reply(&client, &reply)?;
    if args.output.output == Output::Json {
        print_json(&value);
        return Ok(EXIT_OK);
    }
    let plan: PlanView =
        serde_json::from_value(value).map_err(|error| unexpected(&client, "a plan", error))?;
    print_raw(&plan_table(&plan));
    Ok(EXIT_OK)
}

/// An error answer to a request with runbook parameters (`plan`, `run`): parameter errors are
/// printed, every one of them, and exit 1 (the command line needs fixing, as with invalid
/// definitions); anything else is an error (exit 2).
pub(crate) fn param_failure(failure: ApiFailure) -> Outcome {
    if failure.code != "invalid_params" {
        return Err(failure.into());
    }
    let errors: Vec<levee_model::ParamError> = failure
        .error
        .get("params")
        .cloned()
        .and_then(|p| serde_json::from_value(p).ok())
        .unwrap_or_default();
    if errors.is_empty() {
        eprint_line(format_args!("error: {}", failure.message));
    }
    for error in &errors {
        eprint_line(error);
    }
    Ok(EXIT_NO)
}

/// The table form of a plan, as `levee plan` prints it.
fn plan_table(plan: &PlanView) -> String {
    let mut out = format!("Runbook {} v{}\n", plan.runbook, plan.version);
    out.push_str("\nParameters\n");
    if plan.params.is_empty() {
        out.push_str("(none)\n");
    } else {
        let rows: Vec<Vec<String>> = plan
            .params
            .iter()
            .map(|(name, value)| {
                let text = match value {
                    Value::String(text) => text.clone(),
                    Value::Null => "-".to_string(),
                    other => other.to_string(),
                };
                vec![name.clone(), text]
            })
            .collect();
        out.push_str(&table(&["NAME", "VALUE"], &rows));
    }
    out.push_str("\nWaves\n");
    let mut rows = Vec::new();
    for (number, wave) in plan.waves.iter().enumerate() {
        for (i, id) in wave.iter().enumerate() {
            let Some(task) = plan.tasks.iter().find(|t| &t.id == id) else {
                continue;
            };
            let on_path = if plan.critical_path.tasks.contains(id) {
                "*"
            } else {
                ""
            };
            rows.push(vec![
                if i == 0 {
                    (number + 1).to_string()
                } else {
                    String::new()
                },
                id.clone(),
                task.stage.clone(),
                format!(
                    "{} ({})",
                    human_ms(task.predicted.duration_ms),
                    task.predicted.source
                ),
                on_path.to_string(),
            ]);
        }
    }
    out.push_str(&table(
        &["WAVE", "TASK", "STAGE", "PREDICTED", "CRITICAL"],
        &rows,
    ));
    let path = &plan.critical_path;
    out.push_str(&format!(
        "\nCritical path: {} ({})\n",
        path.tasks.join(" -> "),
        human_ms(path.length_ms)
    ));
    out.push_str(&format!(
        "Sequential-equivalent: {}\n",
        human_ms(path.sequential_ms)
    ));
    out.push_str(&format!("Speedup: {:.2}x\n", path.speedup));
    let checks: Vec<Vec<String>> = plan
        .tasks
        .iter()
        .flat_map(|task| {
            task.pre_now.iter().map(|check| {
                vec![
                    task.id.clone(),
                    if check.ok { "holds" } else { "FAILS" }.to_string(),
                    check.name.clone(),
                    crate::terminal::escape_line(&check.reason),
                ]
            })
        })
        .collect();
    if !checks.is_empty() {
        out.push_str("\nPre-conditions now (evaluated read-only; a run would stall on FAILS)\n");
        out.push_str(&table(&["TASK", "NOW", "CHECK", "WHY"], &checks));
    }
    out
}

/// `850ms`, `10s`, `1.5s`, `2m`, `1h 5m 30s`.
pub(crate) fn human_ms(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let hours = ms / 3_600_000;
    let minutes = ms % 3_600_000 / 60_000;
    let seconds = ms % 60_000 / 1_000;
    let millis = ms % 1_000;
    let mut parts = Vec::new();
    if hours > 0 {
        parts.push(format!("{hours}h"));
    }
    if minutes > 0 {
        parts.push(format!("{minutes}m"));
    }
    if millis > 0 {
        let fraction = format!("{millis:03}");
        parts.push(format!("{seconds}.{}s", fraction.trim_end_matches('0')));
    } else if seconds > 0 {
        parts.push(format!("{seconds}s"));
    }
    parts.join(" ")
}

pub(crate) fn parse_reply(client: &Client, reply: &Reply) -> Result<Value, CliError> {
    serde_json::from_str(&reply.body).map_err(|error| unexpected(client, "JSON", error))
}

pub(crate) fn unexpected(client: &Client, what: &str, error: impl Display) -> CliError {
    CliError(format!(
        "the server at {} answered with {what} this client does not understand ({error}); \
         is it a Levee server of the same version?",
        client.server()
    ))
}

/// Prints a "no" answer: the server's reason on stderr, and `no` on stdout when verbose.
fn say_no(client: &Client, reply: &Reply, verbose: bool, quiet: bool) -> u8 {
    if verbose {
        print_line("no");
    }
    if !quiet {
        eprint_line(format_args!("no: {}", client.failure(reply).message));
    }
    EXIT_NO
}

/// Prints an error of a yes/no command and returns its exit code.
fn yes_no_error(error: impl Into<CliError>) -> u8 {
    let CliError(message) = error.into();
    eprint_line(format_args!("error: {message}"));
    EXIT_ERROR
}

async fn state_check(args: &CheckArgs) -> u8 {
    let client = match args.server.client() {
        Ok(client) => client,
        Err(error) => return yes_no_error(error),
    };
    let query = [("state", args.state.clone())];
    let reply = match client
        .send(
            Method::GET,
            &["machines", &args.machine, "state"],
            &query,
            &[],
            None,
        )
        .await
    {
        Ok(reply) => reply,
        Err(error) => return yes_no_error(error),
    };
    match reply.status {
        StatusCode::OK => {
            if args.verbose {
                print_line("yes");
            }
            EXIT_OK
        }
        StatusCode::NOT_ACCEPTABLE => say_no(&client, &reply, args.verbose, args.quiet),
        _ => yes_no_error(client.failure(&reply)),
    }
}

async fn state_advance(args: &AdvanceArgs) -> u8 {
    let client = match args.server.client() {
        Ok(client) => client,
        Err(error) => return yes_no_error(error),
    };
    let mut query = vec![("state", args.state.clone())];
    if let Some(event) = &args.event {
        query.push(("event", event.clone()));
    }
    if let Some(reporter) = &args.reporter {
        query.push(("reporter", reporter.clone()));
    }
    let headers: Vec<_> = args
        .if_version
        .map(|v| (IF_MATCH, format!("\"{v}\"")))
        .into_iter()
        .collect();
    let path = ["machines", args.machine.as_str(), "state"];
    let reply = match client
        .send(Method::PUT, &path, &query, &headers, None)
        .await
    {
        Ok(reply) => reply,
        Err(error) => return yes_no_error(error),
    };
    match reply.status {
        StatusCode::OK => {
            if args.verbose {
                let version = reply
                    .headers
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.trim_matches('"').to_string());
                let event = args.event.as_deref().unwrap_or(levee_model::DEFAULT_EVENT);
                match version {
                    Some(version) => print_line(format_args!(
                        "recorded `{event}` of `{}` on {} (now at version {version})",
                        args.state, args.machine
                    )),
                    None => print_line(format_args!(
                        "recorded `{event}` of `{}` on {}",
                        args.state, args.machine
                    )),
                }
            }
            EXIT_OK
        }
        StatusCode::NOT_ACCEPTABLE => say_no(&client, &reply, args.verbose, args.quiet),
        _ => yes_no_error(client.failure(&reply)),
    }
}

/// The fields of a machine that tables show.
#[derive(Deserialize)]
struct MachineRow {
    id: String,
    definition: String,
    group: Option<String>,
    state: String,
    counter: u32,
    #[serde(default)]
    reporters: Vec<String>,
    entered_at: String,
    timer_due_at: Option<String>,
    version: i64,
    replay: Option<ReplayRow>,
    created_at: String,
    updated_at: String,
}

#[derive(Deserialize)]
struct ReplayRow {
    done: usize,
    total: usize,
    next_state: Option<String>,
    next_event: Option<String>,
}

impl ReplayRow {
    fn describe(&self) -> String {
        let next = match (&self.next_state, &self.next_event) {
            (Some(state), Some(event)) => format!("; next: `{event}` of `{state}`"),
            (Some(state), None) => format!("; next: `{}` of `{state}`", levee_model::DEFAULT_EVENT),
            _ => String::new(),
        };
        format!(
            "{} of {} recorded steps replayed{next}",
            self.done, self.total
        )
    }
}

fn machine_rows(client: &Client, values: &[Value]) -> Result<Vec<MachineRow>, CliError> {
    values
        .iter()
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|error| unexpected(client, "a machine", error))
        })
        .collect()
}

async fn state_list(args: &ListArgs) -> Outcome {
    let client = args.server.client()?;
    let page_rows = match (args.limit, args.all) {
        (Some(limit), _) => limit,
        (None, true) => MAX_PAGE_LIMIT,
        (None, false) => DEFAULT_PAGE_LIMIT,
    };
    let mut machines: Vec<Value> = Vec::new();
    let mut after: Option<String> = None;
    let more = loop {
        let mut query = vec![("limit", page_rows.to_string())];
        if let Some(definition) = &args.definition {
            query.push(("definition", definition.clone()));
        }
        if let Some(group) = &args.group {
            query.push(("group", group.clone()));
        }
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let page: Vec<Value> = client.get(&["api", "v1", "machines"], &query).await?;
        let full = page.len() >= page_rows as usize;
        after = page
            .last()
            .and_then(|m| m.get("id"))
            .and_then(Value::as_str)
            .map(str::to_string);
        machines.extend(page);
        if !full || after.is_none() {
            break false;
        }
        if !args.all {
            break true;
        }
    };
    if args.output.output == Output::Json {
        print_json(&Value::Array(machines));
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = machine_rows(&client, &machines)?
        .into_iter()
        .map(|m| {
            vec![
                m.id,
                m.definition,
                m.state,
                m.counter.to_string(),
                m.version.to_string(),
                m.updated_at,
            ]
        })
        .collect();
    if rows.is_empty() {
        eprint_line(
            "no machines match; create some with `levee apply FILE` or `levee state create`",
        );
        return Ok(EXIT_OK);
    }
    print_raw(&table(
        &["ID", "DEFINITION", "STATE", "COUNTER", "VERSION", "UPDATED"],
        &rows,
    ));
    if more {
        eprint_line(format_args!(
            "showing the first {}; pass --all to list every machine",
            plural(rows.len(), "machine")
        ));
    }
    Ok(EXIT_OK)
}

async fn state_show(args: &ShowArgs) -> Outcome {
    let client = args.server.client()?;
    let machine: Value = client
        .get(&["api", "v1", "machines", &args.machine], &[])
        .await?;
    if args.output.output == Output::Json {
        print_json(&machine);
        return Ok(EXIT_OK);
    }
    let m: MachineRow =
        serde_json::from_value(machine).map_err(|error| unexpected(&client, "a machine", error))?;
    let reporters = if m.reporters.is_empty() {
        "-".to_string()
    } else {
        m.reporters.join(", ")
    };
    let rows = vec![
        vec!["id".to_string(), m.id],
        vec!["definition".to_string(), m.definition],
        vec!["group".to_string(), cell(m.group.as_deref())],
        vec!["state".to_string(), m.state],
        vec!["counter".to_string(), m.counter.to_string()],
        vec!["reporters".to_string(), reporters],
        vec!["entered".to_string(), m.entered_at],
        vec!["timer due".to_string(), cell(m.timer_due_at.as_deref())],
        vec!["version".to_string(), m.version.to_string()],
        vec![
            "replay".to_string(),
            m.replay.map_or_else(|| "-".to_string(), |r| r.describe()),
        ],
        vec!["created".to_string(), m.created_at],
        vec!["updated".to_string(), m.updated_at],
    ];
    let text = table(&["FIELD", "VALUE"], &rows);
    // The key/value listing reads better without its header line.
    print_raw(
        text.split_once('\n')
            .map_or(text.as_str(), |(_, rest)| rest),
    );
    Ok(EXIT_OK)
}

#[derive(Deserialize)]
struct CreateResponse {
    created: Vec<Value>,
    existing: Vec<String>,
}

async fn state_create(args: &CreateArgs) -> Outcome {
    let client = args.server.client()?;
    let mut created: Vec<String> = Vec::new();
    let mut existing: Vec<String> = Vec::new();
    for batch in args.ids.chunks(MACHINES_PER_CREATE_REQUEST) {
        let machines: Vec<Value> = batch
            .iter()
            .map(|id| json!({ "id": id, "definition": args.definition, "group": args.group }))
            .collect();
        let response: CreateResponse = match client
            .post(&["api", "v1", "machines"], &json!({ "machines": machines }))
            .await
        {
            Ok(response) => response,
            Err(error) => {
                if !created.is_empty() {
                    eprint_line(format_args!(
                        "created {} before this error: {}",
                        plural(created.len(), "machine"),
                        summarize_ids(&created)
                    ));
                }
                return Err(error.into());
            }
        };
        created.extend(
            response
                .created
                .iter()
                .filter_map(|m| m.get("id").and_then(Value::as_str))
                .map(str::to_string),
        );
        existing.extend(response.existing);
    }
    if !created.is_empty() {
        print_line(format_args!(
            "created {} of `{}`: {}",
            plural(created.len(), "machine"),
            args.definition,
            summarize_ids(&created)
        ));
    }
    if !existing.is_empty() {
        print_line(format_args!(
            "{} already existed and {} left unchanged: {}",
            plural(existing.len(), "machine"),
            if existing.len() == 1 { "was" } else { "were" },
            summarize_ids(&existing)
        ));
    }
    Ok(EXIT_OK)
}

#[derive(Deserialize)]
struct HistoryRow {
    seq: i64,
    at: String,
    kind: String,
    from: String,
    to: String,
    event: Option<String>,
    counter: u32,
    actor: String,
    reporter: Option<String>,
}

async fn state_history(args: &HistoryArgs) -> Outcome {
    let client = args.server.client()?;
    let path = ["api", "v1", "machines", args.machine.as_str(), "history"];
    if let Some(format @ (HistoryFormat::Shell | HistoryFormat::Ansible | HistoryFormat::Chef)) =
        args.format
    {
        let reply = client
            .send_ok(
                Method::GET,
                &path,
                &[("format", format.as_str().to_string())],
                None,
            )
            .await?;
        print_raw(&reply.body);
        return Ok(EXIT_OK);
    }
    let mut entries: Vec<Value> = Vec::new();
    let mut after = 0_i64;
    loop {
        let query = [
            ("after", after.to_string()),
            ("limit", MAX_PAGE_LIMIT.to_string()),
        ];
        let page: Vec<Value> = client.get(&path, &query).await?;
        let full = page.len() >= MAX_PAGE_LIMIT as usize;
        let last = page
            .last()
            .and_then(|e| e.get("seq"))
            .and_then(Value::as_i64);
        entries.extend(page);
        match last {
            Some(seq) if full && seq > after => after = seq,
            _ => break,
        }
    }
    if args.format == Some(HistoryFormat::Json) || args.output.output == Output::Json {
        print_json(&Value::Array(entries));
        return Ok(EXIT_OK);
    }
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let h: HistoryRow = serde_json::from_value(entry)
            .map_err(|error| unexpected(&client, "a history entry", error))?;
        rows.push(vec![
            h.seq.to_string(),
            h.at,
            h.kind,
            h.from,
            h.to,
            cell(h.event.as_deref()),
            h.counter.to_string(),
            h.actor,
            cell(h.reporter.as_deref()),
        ]);
    }
    print_raw(&table(
        &[
            "SEQ", "AT", "KIND", "FROM", "TO", "EVENT", "COUNTER", "ACTOR", "REPORTER",
        ],
        &rows,
    ));
    Ok(EXIT_OK)
}

async fn state_replay(args: &ReplayArgs) -> Outcome {
    let client = args.server.client()?;
    let response: Value = client
        .post(
            &["api", "v1", "machines", &args.machine, "replay"],
            &json!({}),
        )
        .await?;
    if args.output.output == Output::Json {
        print_json(&response);
        return Ok(EXIT_OK);
    }
    let machine: MachineRow =
        serde_json::from_value(response.get("machine").cloned().unwrap_or_default())
            .map_err(|error| unexpected(&client, "a machine", error))?;
    let progress = machine.replay.map_or_else(
        || "nothing recorded to replay".to_string(),
        |r| r.describe(),
    );
    print_line(format_args!(
        "{} is back in `{}` (version {}): {progress}",
        machine.id, machine.state, machine.version
    ));
    Ok(EXIT_OK)
}

/// Prints a new token's secret on stdout (alone, so scripts can capture it) and the rest on
/// stderr.
fn print_secret(name: &str, role: &str, scope: Option<&str>, secret: &str) {
    let scope = scope.map_or_else(|| "every machine".to_string(), |s| format!("scope {s}"));
    eprint_line(format_args!(
        "created token `{name}` (role {role}, {scope}); its secret:"
    ));
    print_line(secret);
    eprint_line(
        "This secret is shown only once: store it now, then pass it with --token or LEVEE_TOKEN.",
    );
}

async fn token_create(args: &TokenCreateArgs) -> Outcome {
    let role = args.role.role().as_str();
    Scope::parse(args.scope.as_deref())?;
    let Some(database) = &args.database else {
        let client = args.server.client()?;
        let body = json!({ "name": args.name, "role": role, "scope": args.scope });
        let response: Value = client.post(&["api", "v1", "tokens"], &body).await?;
        let secret = response
            .get("secret")
            .and_then(Value::as_str)
            .ok_or_else(|| unexpected(&client, "a token", "no `secret`"))?;
        print_secret(&args.name, role, args.scope.as_deref(), secret);
        return Ok(EXIT_OK);
    };
    levee_server::machines::validate_id("token name", &args.name).map_err(|error| error.message)?;
    let store = serve::open_store(database).await?;
    let secret = auth::new_secret();
    let now = now_ms();
    let record = TokenRecord {
        name: args.name.clone(),
        role: role.to_string(),
        scope: args.scope.clone(),
        hash: auth::hash_secret(&secret),
        created_at_ms: now,
        created_by: OFFLINE_ACTOR.to_string(),
        revoked_at_ms: None,
    };
    let audit = AuditEntry {
        at_ms: now,
        actor: OFFLINE_ACTOR.to_string(),
        action: "token.create".to_string(),
        target: args.name.clone(),
        outcome: String::new(),
        detail: json!({ "role": role, "scope": args.scope, "via": "database" }),
    };
    let created = store.create_token(record, Some(audit)).await;
    store.close().await;
    match created {
        Ok(()) => {
            print_secret(&args.name, role, args.scope.as_deref(), &secret);
            Ok(EXIT_OK)
        }
        Err(levee_store::Error::Conflict(message)) => Err(CliError(format!(
            "cannot create token `{}`: {message}; names stay taken after revocation, so choose \
             another name",
            args.name
        ))),
        Err(error) => Err(CliError(format!(
            "cannot create token `{}` in {}: {error}",
            args.name,
            levee_store::postgres::redact_url(database)
        ))),
    }
}

#[derive(Deserialize)]
struct TokenRow {
    name: String,
    role: String,
    scope: Option<String>,
    created_at: String,
    created_by: String,
    revoked_at: Option<String>,
}

async fn token_list(args: &TokenListArgs) -> Outcome {
    let client = args.server.client()?;
    let tokens: Vec<Value> = client.get(&["api", "v1", "tokens"], &[]).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(tokens));
        return Ok(EXIT_OK);
    }
    let mut rows = Vec::with_capacity(tokens.len());
    for token in tokens {
        let t: TokenRow =
            serde_json::from_value(token).map_err(|error| unexpected(&client, "a token", error))?;
        rows.push(vec![
            t.name,
            t.role,
            cell(t.scope.as_deref()),
            t.created_at,
            t.created_by,
            cell(t.revoked_at.as_deref()),
        ]);
    }
    if rows.is_empty() {
        eprint_line(
            "no tokens: authentication is off until one is created with `levee token create`",
        );
        return Ok(EXIT_OK);
    }
    print_raw(&table(
        &["NAME", "ROLE", "SCOPE", "CREATED", "CREATED BY", "REVOKED"],
        &rows,
    ));
    Ok(EXIT_OK)
}

async fn token_revoke(args: &TokenRevokeArgs) -> Outcome {
    let client = args.server.client()?;
    client
        .send_ok(
            Method::DELETE,
            &["api", "v1", "tokens", &args.name],
            &[],
            None,
        )
        .await?;
    print_line(format_args!("revoked token `{}`", args.name));
    Ok(EXIT_OK)
}

#[derive(Deserialize)]
struct AuditRow {
    seq: i64,
    at: String,
    actor: String,
    action: String,
    target: String,
    outcome: String,
}

async fn audit(args: &AuditArgs) -> Outcome {
    let client = args.server.client()?;
    let mut query = Vec::new();
    if let Some(actor) = &args.actor {
        query.push(("actor", actor.clone()));
    }
    if let Some(target) = &args.target {
        query.push(("target", target.clone()));
    }
    if let Some(limit) = args.limit {
        query.push(("limit", limit.to_string()));
    }
    if let Some(after) = args.after {
        query.push(("after", after.to_string()));
    }
    let entries: Vec<Value> = client.get(&["api", "v1", "audit"], &query).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(entries));
        return Ok(EXIT_OK);
    }
    let mut rows = Vec::with_capacity(entries.len());
    for entry in entries {
        let a: AuditRow = serde_json::from_value(entry)
            .map_err(|error| unexpected(&client, "an audit entry", error))?;
        rows.push(vec![
            a.seq.to_string(),
            a.at,
            a.actor,
            a.action,
            a.target,
            a.outcome,
        ]);
    }
    if rows.is_empty() {
        eprint_line("no audit entries match");
        return Ok(EXIT_OK);
    }
    print_raw(&table(
        &["SEQ", "AT", "ACTOR", "ACTION", "TARGET", "OUTCOME"],
        &rows,
    ));
    Ok(EXIT_OK)
}

fn schema() -> Outcome {
    print_raw(&levee_model::schema::state_machine_schema_text());
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_leaves_the_last_unpadded() {
        let rows = vec![
            vec!["vm-1".to_string(), "installing".to_string()],
            vec!["a".to_string(), "b".to_string()],
        ];
        assert_eq!(
            table(&["ID", "STATE"], &rows),
            "ID    STATE\nvm-1  installing\na     b\n"
        );
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(human_ms(850), "850ms");
        assert_eq!(human_ms(10_000), "10s");
        assert_eq!(human_ms(1_500), "1.5s");
        assert_eq!(human_ms(120_000), "2m");
        assert_eq!(human_ms(3_930_000), "1h 5m 30s");
    }

    #[test]
    fn parameters_split_at_the_first_equals_sign() {
        assert_eq!(
            parse_param("query=a=b"),
            Ok(("query".to_string(), "a=b".to_string()))
        );
        assert!(parse_param("novalue").is_err());
        assert!(parse_param("=x").is_err());
    }

    #[test]
    fn plural_counts_one_and_many() {
        assert_eq!(plural(1, "state"), "1 state");
        assert_eq!(plural(6, "state"), "6 states");
    }

    #[test]
    fn command_line_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
