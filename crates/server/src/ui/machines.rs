//! State machines: the definitions with their instances, an instance's current state and
//! history, and a definition drawn as a graph (states in columns by their distance from the
//! initial state, laid out by the same code as a run's task graph). Reads go through the
//! functions behind `GET /api/v1/machines[/{id}[/history]]`, so scopes apply as in the API.

use std::collections::{BTreeMap, HashMap, VecDeque};

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use levee_model::MachineDef;
use levee_store::MachineFilter;
use serde::Deserialize;

use super::layout::{self, Graph, TaskTimes, duration_text};
use super::pages::{Nav, error_page};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::auth::Role;
use crate::error::ApiError;
use crate::http::QueryParams;
use crate::http::api::{HistoryView, MachineView, machines_visible};

/// Instances listed per page.
pub const MACHINES_PAGE_ROWS: u32 = 200;
/// History entries shown on an instance's page (the latest).
pub const MACHINE_HISTORY_ROWS: u32 = 1_000;

/// A definition's row on the state machines page.
pub struct DefinitionRow {
    pub name: String,
    pub states: usize,
    pub initial: String,
    pub description: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachinesQuery {
    #[serde(default)]
    pub definition: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
}

#[derive(Template)]
#[template(path = "machines.html")]
struct MachinesPage {
    nav: Nav,
    definitions: Vec<DefinitionRow>,
    definition: String,
    machines: Vec<MachineView>,
    /// The cursor of the next page, when this one is full.
    next: Option<String>,
}

pub async fn machines(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    QueryParams(query): QueryParams<MachinesQuery>,
) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    let defs = app.defs();
    let mut definitions: Vec<DefinitionRow> = defs
        .values()
        .map(|def| DefinitionRow {
            name: def.name.clone(),
            states: def.states.len(),
            initial: def.initial.clone(),
            description: def.description.clone().unwrap_or_default(),
        })
        .collect();
    definitions.sort_by(|a, b| a.name.cmp(&b.name));
    let definition = query.definition.clone().unwrap_or_default();
    let filter = MachineFilter {
        definition: query.definition.filter(|d| !d.is_empty()),
        group: None,
        after_id: query.after,
        limit: MACHINES_PAGE_ROWS,
    };
    let records = match machines_visible(&app, &caller, filter).await {
        Ok(records) => records,
        Err(error) => return error_page(&error),
    };
    let next = (records.len() >= MACHINES_PAGE_ROWS as usize)
        .then(|| records.last().map(|r| r.id.clone()))
        .flatten();
    html(
        MachinesPage {
            nav: Nav::of(&app, &caller),
            definitions,
            definition,
            machines: records.iter().map(MachineView::from).collect(),
            next,
        }
        .render(),
    )
}

/// One transition of a definition, for the table under its graph.
pub struct TransitionRow {
    pub from: String,
    pub on: String,
    pub to: String,
}

/// A definition's graph: states in columns by their distance (in transitions) from the
/// initial state; states it cannot reach come last. `current` is drawn as running.
fn machine_graph(def: &MachineDef, current: Option<&str>) -> (Graph, Vec<TransitionRow>) {
    let index: HashMap<&str, usize> = def
        .states
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut rows = Vec::new();
    let mut targets: Vec<Vec<usize>> = vec![Vec::new(); def.states.len()];
    for (i, state) in def.states.iter().enumerate() {
        for on in &state.on {
            rows.push(TransitionRow {
                from: state.name.clone(),
                on: if on.count > 1 {
                    format!("{} ×{}", on.event, on.count)
                } else {
                    on.event.clone()
                },
                to: on.to.clone(),
            });
            if let Some(&t) = index.get(on.to.as_str()) {
                targets[i].push(t);
            }
        }
        if let Some(timer) = &state.timer {
            let when = match timer {
                levee_model::Timer::After { duration_ms, .. } => {
                    format!("timer after {}", duration_text(*duration_ms))
                }
                levee_model::Timer::At { at_ms, .. } => {
                    format!("timer at {}", super::pages::time_text(Some(*at_ms)))
                }
            };
            rows.push(TransitionRow {
                from: state.name.clone(),
                on: when,
                to: timer.target().to_string(),
            });
            if let Some(&t) = index.get(timer.target()) {
                targets[i].push(t);
            }
        }
    }
    // Breadth-first from the initial state.
    let mut depth: Vec<Option<usize>> = vec![None; def.states.len()];
    let mut queue = VecDeque::new();
    if let Some(&start) = index.get(def.initial.as_str()) {
        depth[start] = Some(0);
        queue.push_back(start);
    }
    while let Some(i) = queue.pop_front() {
        let next = depth[i].unwrap_or(0) + 1;
        for &t in &targets[i] {
            if depth[t].is_none() {
                depth[t] = Some(next);
                queue.push_back(t);
            }
        }
    }
    let deepest = depth.iter().flatten().copied().max().unwrap_or(0);
    let mut waves: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, d) in depth.iter().enumerate() {
        waves.entry(d.unwrap_or(deepest + 1)).or_default().push(i);
    }
    let mut sources: Vec<Vec<usize>> = vec![Vec::new(); def.states.len()];
    for (from, list) in targets.iter().enumerate() {
        for &to in list {
            if to != from && !sources[to].contains(&from) {
                sources[to].push(from);
            }
        }
    }
    let times: Vec<TaskTimes> = def
        .states
        .iter()
        .enumerate()
        .map(|(i, state)| TaskTimes {
            id: state.name.clone(),
            status: if Some(state.name.as_str()) == current {
                "running".to_string()
            } else if state.is_final {
                "succeeded".to_string()
            } else if state.name == def.initial {
                "ready".to_string()
            } else {
                "waiting".to_string()
            },
            deps: sources[i].clone(),
            started_at_ms: None,
            finished_at_ms: None,
            predicted_ms: 0,
            critical: Some(state.name.as_str()) == current,
        })
        .collect();
    let waves: Vec<Vec<usize>> = waves.into_values().collect();
    (layout::graph(&times, &waves), rows)
}

#[derive(Template)]
#[template(path = "definition.html")]
struct DefinitionPage {
    nav: Nav,
    name: String,
    description: String,
    initial: String,
    states: usize,
    graph: Graph,
    transitions: Vec<TransitionRow>,
    machines: Vec<MachineView>,
}

pub async fn definition(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(name): Path<String>,
) -> Response {
    if let Err(error) = caller.require(Role::Viewer) {
        return error_page(&error);
    }
    let Some(def) = app.def(&name) else {
        return error_page(&ApiError::not_found(format!(
            "no state machine definition named `{name}`; /ui/machines lists them"
        )));
    };
    let filter = MachineFilter {
        definition: Some(name.clone()),
        group: None,
        after_id: None,
        limit: MACHINES_PAGE_ROWS,
    };
    let machines = match machines_visible(&app, &caller, filter).await {
        Ok(records) => records.iter().map(MachineView::from).collect(),
        Err(error) => return error_page(&error),
    };
    let (graph, transitions) = machine_graph(&def, None);
    html(
        DefinitionPage {
            nav: Nav::of(&app, &caller),
            name,
            description: def.description.clone().unwrap_or_default(),
            initial: def.initial.clone(),
            states: def.states.len(),
            graph,
            transitions,
            machines,
        }
        .render(),
    )
}

#[derive(Template)]
#[template(path = "machine.html")]
struct MachinePage {
    nav: Nav,
    m: MachineView,
    graph: Option<Graph>,
    history: Vec<HistoryView>,
}

pub async fn machine(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(id): Path<String>,
) -> Response {
    match machine_page(&app, &caller, &id).await {
        Ok(page) => html(page.render()),
        Err(error) => error_page(&error),
    }
}

async fn machine_page(
    app: &SharedApp,
    caller: &crate::auth::Caller,
    id: &str,
) -> Result<MachinePage, ApiError> {
    caller.require(Role::Viewer)?;
    let (record, _) = app.machine(id).await?;
    caller.require_machine(&record)?;
    // The latest entries: count them by paging, then read the last page.
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = app.store.history(id, after, MACHINE_HISTORY_ROWS).await?;
        let full = page.len() >= MACHINE_HISTORY_ROWS as usize;
        if let Some(last) = page.last() {
            after = last.seq;
        }
        entries.extend(page);
        let excess = entries.len().saturating_sub(MACHINE_HISTORY_ROWS as usize);
        entries.drain(..excess);
        if !full {
            break;
        }
    }
    let graph = app
        .def(&record.definition)
        .map(|def| machine_graph(&def, Some(&record.state)).0);
    Ok(MachinePage {
        nav: Nav::of(app, caller),
        m: MachineView::from(record.as_ref()),
        graph,
        history: entries.iter().rev().map(HistoryView::from).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_drawn_by_their_distance_from_the_initial_state() {
        let yaml = "kind: StateMachine\nname: deploy\nstates:\n  - name: idle\n    on: { done: draining }\n  - name: draining\n    on: { done: upgrading, fail: idle }\n  - name: upgrading\n    on: { done: live }\n  - name: live\n    final: true\n  - name: orphan\n    on: { done: live }\n";
        let context = levee_model::LoadContext::new(0, jiff::tz::TimeZone::UTC);
        let loaded = levee_model::load_documents("deploy.yaml", yaml, &context);
        let Ok(defs) = loaded else {
            panic!("{loaded:?}")
        };
        let def = defs
            .into_iter()
            .find_map(|d| match d {
                levee_model::Definition::StateMachine(def) => Some(def),
                _ => None,
            })
            .expect("a state machine");
        let (graph, rows) = machine_graph(&def, Some("draining"));
        let x_of = |name: &str| graph.nodes.iter().find(|n| n.id == name).unwrap().x;
        assert!(x_of("idle") < x_of("draining"));
        assert!(x_of("draining") < x_of("upgrading"));
        assert!(x_of("upgrading") < x_of("live"));
        assert!(
            x_of("live") < x_of("orphan"),
            "unreachable states come last"
        );
        let current = graph.nodes.iter().find(|n| n.id == "draining").unwrap();
        assert_eq!(current.status, "running");
        assert!(
            rows.iter()
                .any(|r| r.from == "draining" && r.on == "fail" && r.to == "idle")
        );
    }
}
