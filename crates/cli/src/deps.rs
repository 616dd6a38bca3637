//! `levee deps plan`: a datacenter evacuation (or restore) runbook generated from the RPC call
//! graph, with the cycles cut, the shared components and the critical path reported.

use std::path::PathBuf;

use levee_sim::deps::{self, Direction};

use crate::commands::{CliError, EXIT_NO, EXIT_OK, Outcome};

#[derive(clap::Subcommand, Debug)]
pub enum DepsCommand {
    /// Prints a runbook (YAML, on stdout) that evacuates every service of a Jaeger
    /// `/api/dependencies` answer, callers first; the findings go to stderr.
    Plan(DepsPlanArgs),
}

#[derive(clap::Args, Debug)]
pub struct DepsPlanArgs {
    /// Jaeger's `/api/dependencies` answer: `[{"parent", "child", "callCount"}]`.
    #[arg(long, value_name = "FILE")]
    pub jaeger: PathBuf,
    /// The generated runbook's name.
    #[arg(long, default_value = "evacuate-generated")]
    pub name: String,
    /// The task template each service's task uses (given `service` and `dc`).
    #[arg(long, default_value = "shift-out")]
    pub template: String,
    /// Generate the restore instead: what is called comes back before its callers.
    #[arg(long)]
    pub restore: bool,
    /// An earlier answer: exit 1 if a dependency new since then lands on the critical path.
    #[arg(long, value_name = "FILE")]
    pub before: Option<PathBuf>,
    /// Each service's kind of traffic, as JSON `{"SERVICE": "stateless" | "sticky" |
    /// "replicated" | "stateful"}`: its task uses that kind's template of
    /// `examples/demo/evacuate.yaml` (`sticky-out`, `replica-in`, ...) instead of
    /// `--template`.
    #[arg(long, value_name = "FILE")]
    pub kinds: Option<PathBuf>,
}

/// Reads `--kinds` into each service's template, refusing services the graph does not have.
fn templates(
    path: &PathBuf,
    plan: &deps::DrainPlan,
    direction: Direction,
) -> Result<std::collections::BTreeMap<String, String>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError(format!("cannot read {}: {error}", path.display())))?;
    let kinds: std::collections::BTreeMap<String, levee_sim::TrafficKind> =
        serde_json::from_str(&text).map_err(|error| {
            CliError(format!(
                "{}: a kinds file maps service names to stateless, sticky, replicated or \
                 stateful: {error}",
                path.display()
            ))
        })?;
    let unknown: Vec<&str> = kinds
        .keys()
        .filter(|service| !plan.drain_after.contains_key(*service))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(CliError(format!(
            "{}: not in the call graph: {}",
            path.display(),
            unknown.join(", ")
        )));
    }
    Ok(kinds
        .into_iter()
        .map(|(service, kind)| (service, kind.template(direction).to_string()))
        .collect())
}

fn read(path: &PathBuf) -> Result<Vec<deps::Edge>, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError(format!("cannot read {}: {error}", path.display())))?;
    deps::parse_jaeger(&text).map_err(|error| CliError(format!("{}: {error}", path.display())))
}

pub async fn deps(command: DepsCommand) -> Outcome {
    let DepsCommand::Plan(args) = command;
    let edges = read(&args.jaeger)?;
    let plan = deps::plan_drain(&edges, &[]).map_err(CliError)?;
    let direction = if args.restore {
        Direction::Restore
    } else {
        Direction::Evacuate
    };
    let options = deps::RunbookOptions {
        templates: match &args.kinds {
            Some(path) => templates(path, &plan, direction)?,
            None => Default::default(),
        },
        ..deps::RunbookOptions::default()
    };
    print!(
        "{}",
        deps::runbook_yaml_with(&plan, &args.name, &args.template, direction, &options)
    );
    eprintln!(
        "{} services, {} entry points (drained first): {}",
        plan.drain_after.len(),
        plan.entry_points.len(),
        plan.entry_points.join(", ")
    );
    for shared in &plan.shared {
        eprintln!(
            "shared component: {} (reached from {} entry points, {} callers): drained after all of them",
            shared.service, shared.reached_from, shared.callers
        );
    }
    for cycle in &plan.cycles {
        eprintln!(
            "cycle: {}; cut at {} -> {} ({} calls), the least-called edge",
            cycle.services.join(" -> "),
            cycle.cut.parent,
            cycle.cut.child,
            cycle.cut.call_count
        );
    }
    eprintln!(
        "critical path ({} drains): {}",
        plan.critical_path.len(),
        plan.critical_path.join(" -> ")
    );
    if let Some(before) = &args.before {
        let flagged =
            deps::new_dependencies_on_critical_path(&read(before)?, &edges).map_err(CliError)?;
        for edge in &flagged {
            eprintln!(
                "NEW dependency on the critical path: {} -> {} ({} calls)",
                edge.parent, edge.child, edge.call_count
            );
        }
        if !flagged.is_empty() {
            return Ok(EXIT_NO);
        }
    }
    Ok(EXIT_OK)
}
