//! Cross-file checks of runbooks: `levee_model::link` against the stages this binary has,
//! then each task's stage arguments against the stage's own types.

use levee_model::{Definition, Diagnostic, StageCatalog};
use levee_stages::Registry;

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

/// Every problem found when the definitions of all files are taken together; empty when
/// there are no runbooks or templates among them.
pub fn lint(definitions: &[Definition]) -> Vec<Diagnostic> {
    let has_runbooks = definitions
        .iter()
        .any(|d| matches!(d, Definition::Runbook(_) | Definition::TaskTemplate(_)));
    if !has_runbooks {
        return Vec::new();
    }
    let registry = Registry::builtin();
    let resolved = match levee_model::link(definitions, &stage_catalog(&registry)) {
        Ok(resolved) => resolved,
        Err(diagnostics) => return diagnostics,
    };
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
    diagnostics
}
