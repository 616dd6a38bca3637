//! Dependency discovery and generated evacuation runbooks.
//!
//! The input is the RPC call graph: Jaeger's `/api/dependencies` answer (a list of `{parent,
//! child, callCount}`, `parent` calling `child`). From it:
//! - cycles are found (strongly connected components) and each is reported with a proposed
//!   cut: its least-called edge, which the plan then ignores;
//! - shared components are the services that several user-facing chains converge on (reached
//!   from two or more entry points and called by two or more services): draining one of them
//!   early would break every chain above it;
//! - the evacuation drains callers before what they call (entry points, the user-facing
//!   services, first; a shared component only after all its callers; its children then
//!   concurrently), and the restore brings services back in the reverse order, what is called
//!   before its callers, so nothing is restored into a datacenter where its dependencies are
//!   still missing;
//! - a new dependency is flagged when it lands on the evacuation's critical path (it makes the
//!   drain longer).
//!
//! Everything here is pure; the caller reads the file and prints the runbook.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Most services one graph may hold.
pub const MAX_GRAPH_SERVICES: usize = 100_000;

/// One RPC edge as Jaeger reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub parent: String,
    pub child: String,
    #[serde(rename = "callCount", default)]
    pub call_count: u64,
}

/// A cycle and the edge proposed to cut it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cycle {
    /// The services of the cycle, sorted.
    pub services: Vec<String>,
    /// The least-called edge inside it.
    pub cut: Edge,
}

/// A service several user-facing chains converge on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SharedComponent {
    pub service: String,
    /// Entry points (services nobody calls) whose chains reach it.
    pub reached_from: usize,
    /// Services that call it directly.
    pub callers: usize,
}

/// The evacuation plan of a call graph.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DrainPlan {
    /// For each service, the services that must be drained before it (its callers).
    pub drain_after: BTreeMap<String, Vec<String>>,
    /// Services nobody calls: the user-facing ones, drained first.
    pub entry_points: Vec<String>,
    pub shared: Vec<SharedComponent>,
    pub cycles: Vec<Cycle>,
    /// The longest chain of drains, entry point first (each drain counted once).
    pub critical_path: Vec<String>,
}

/// Reads Jaeger's `/api/dependencies` answer: either the bare list or `{"data": [...]}`.
pub fn parse_jaeger(text: &str) -> Result<Vec<Edge>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
    let list = match &value {
        serde_json::Value::Array(_) => value.clone(),
        serde_json::Value::Object(map) => map.get("data").cloned().ok_or(
            "a Jaeger dependencies answer is a list of {parent, child, callCount}, or {\"data\": \
             [...]}",
        )?,
        _ => return Err("a Jaeger dependencies answer is a list".to_string()),
    };
    let edges: Vec<Edge> = serde_json::from_value(list).map_err(|error| {
        format!("an edge is {{\"parent\": ..., \"child\": ..., \"callCount\": N}}: {error}")
    })?;
    for (i, edge) in edges.iter().enumerate() {
        if edge.parent.trim().is_empty() || edge.child.trim().is_empty() {
            return Err(format!("edge {i} has an empty service name"));
        }
    }
    Ok(edges)
}

struct Graph {
    names: Vec<String>,
    /// Callees of each service (parent -> child), deduplicated, with call counts.
    out: Vec<BTreeMap<usize, u64>>,
}

impl Graph {
    fn new(edges: &[Edge], services: &[String]) -> Result<Graph, String> {
        let mut index = BTreeMap::new();
        let mut names = Vec::new();
        let mut id = |name: &str, names: &mut Vec<String>| -> usize {
            *index.entry(name.to_string()).or_insert_with(|| {
                names.push(name.to_string());
                names.len() - 1
            })
        };
        for service in services {
            id(service, &mut names);
        }
        let mut pairs = Vec::new();
        for edge in edges {
            let parent = id(&edge.parent, &mut names);
            let child = id(&edge.child, &mut names);
            pairs.push((parent, child, edge.call_count));
        }
        if names.len() > MAX_GRAPH_SERVICES {
            return Err(format!(
                "{} services; at most {MAX_GRAPH_SERVICES} are planned at once",
                names.len()
            ));
        }
        let mut out = vec![BTreeMap::new(); names.len()];
        for (parent, child, calls) in pairs {
            *out[parent].entry(child).or_insert(0) += calls;
        }
        Ok(Graph { names, out })
    }

    /// Strongly connected components (Tarjan, iterative), each sorted.
    fn components(&self) -> Vec<Vec<usize>> {
        let n = self.names.len();
        let mut index = vec![usize::MAX; n];
        let mut low = vec![0; n];
        let mut on_stack = vec![false; n];
        let mut stack = Vec::new();
        let mut next = 0;
        let mut components = Vec::new();
        for root in 0..n {
            if index[root] != usize::MAX {
                continue;
            }
            let mut work: Vec<(usize, Vec<usize>, usize)> = Vec::new();
            let children: Vec<usize> = self.out[root].keys().copied().collect();
            index[root] = next;
            low[root] = next;
            next += 1;
            stack.push(root);
            on_stack[root] = true;
            work.push((root, children, 0));
            while let Some((v, children, at)) = work.last_mut() {
                let v = *v;
                if *at < children.len() {
                    let w = children[*at];
                    *at += 1;
                    if index[w] == usize::MAX {
                        index[w] = next;
                        low[w] = next;
                        next += 1;
                        stack.push(w);
                        on_stack[w] = true;
                        let grand: Vec<usize> = self.out[w].keys().copied().collect();
                        work.push((w, grand, 0));
                    } else if on_stack[w] {
                        low[v] = low[v].min(index[w]);
                    }
                } else {
                    work.pop();
                    if let Some((parent, _, _)) = work.last() {
                        low[*parent] = low[*parent].min(low[v]);
                    }
                    if low[v] == index[v] {
                        let mut component = Vec::new();
                        while let Some(w) = stack.pop() {
                            on_stack[w] = false;
                            component.push(w);
                            if w == v {
                                break;
                            }
                        }
                        component.sort_unstable();
                        components.push(component);
                    }
                }
            }
        }
        components
    }
}

/// Plans the evacuation of a call graph. `services` adds services that have no edges (they
/// are drained at once).
pub fn plan_drain(edges: &[Edge], services: &[String]) -> Result<DrainPlan, String> {
    let mut graph = Graph::new(edges, services)?;
    // Cut every cycle at its least-called edge until none is left.
    let mut cycles = Vec::new();
    loop {
        let cyclic: Vec<Vec<usize>> = graph
            .components()
            .into_iter()
            .filter(|c| c.len() > 1 || graph.out[c[0]].contains_key(&c[0]))
            .collect();
        if cyclic.is_empty() {
            break;
        }
        for component in cyclic {
            let members: BTreeSet<usize> = component.iter().copied().collect();
            let (parent, child, calls) = component
                .iter()
                .flat_map(|&p| {
                    graph.out[p]
                        .iter()
                        .filter(|(c, _)| members.contains(c))
                        .map(move |(&c, &calls)| (p, c, calls))
                })
                .min_by(|a, b| a.2.cmp(&b.2).then(a.0.cmp(&b.0)).then(a.1.cmp(&b.1)))
                .expect("a cyclic component has an inner edge");
            graph.out[parent].remove(&child);
            cycles.push(Cycle {
                services: component.iter().map(|&i| graph.names[i].clone()).collect(),
                cut: Edge {
                    parent: graph.names[parent].clone(),
                    child: graph.names[child].clone(),
                    call_count: calls,
                },
            });
        }
    }
    let n = graph.names.len();
    let mut callers: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (parent, children) in graph.out.iter().enumerate() {
        for &child in children.keys() {
            callers[child].push(parent);
        }
    }
    // Topological order (Kahn), callers first.
    let mut remaining: Vec<usize> = callers.iter().map(Vec::len).collect();
    let mut ready: BTreeSet<(String, usize)> = (0..n)
        .filter(|&i| remaining[i] == 0)
        .map(|i| (graph.names[i].clone(), i))
        .collect();
    let entry_points: Vec<String> = ready.iter().map(|(name, _)| name.clone()).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(first) = ready.pop_first() {
        let v = first.1;
        order.push(v);
        for &child in graph.out[v].keys() {
            remaining[child] -= 1;
            if remaining[child] == 0 {
                ready.insert((graph.names[child].clone(), child));
            }
        }
    }
    // Which entry points reach each service, counted with bit sets per 64 entries.
    let entries: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&v| callers[v].is_empty())
        .collect();
    let words = entries.len().div_ceil(64).max(1);
    let mut reach = vec![vec![0_u64; words]; n];
    for (bit, &entry) in entries.iter().enumerate() {
        reach[entry][bit / 64] |= 1 << (bit % 64);
    }
    // Longest chain of drains ending at each service.
    let mut depth = vec![1_usize; n];
    let mut best_parent: Vec<Option<usize>> = vec![None; n];
    for &v in &order {
        for &child in graph.out[v].keys() {
            let from = reach[v].clone();
            for (into, bits) in reach[child].iter_mut().zip(from) {
                *into |= bits;
            }
            if depth[v] + 1 > depth[child] {
                depth[child] = depth[v] + 1;
                best_parent[child] = Some(v);
            }
        }
    }
    let mut shared: Vec<SharedComponent> = (0..n)
        .filter_map(|v| {
            let reached_from: usize = reach[v].iter().map(|w| w.count_ones() as usize).sum();
            (reached_from >= 2 && callers[v].len() >= 2).then(|| SharedComponent {
                service: graph.names[v].clone(),
                reached_from,
                callers: callers[v].len(),
            })
        })
        .collect();
    shared.sort_by(|a, b| {
        b.reached_from
            .cmp(&a.reached_from)
            .then(a.service.cmp(&b.service))
    });
    let mut critical_path = Vec::new();
    if let Some(mut v) = (0..n).max_by(|&a, &b| depth[a].cmp(&depth[b]).then(b.cmp(&a))) {
        critical_path.push(graph.names[v].clone());
        while let Some(parent) = best_parent[v] {
            critical_path.push(graph.names[parent].clone());
            v = parent;
        }
        critical_path.reverse();
    }
    let drain_after = (0..n)
        .map(|v| {
            let mut before: Vec<String> =
                callers[v].iter().map(|&c| graph.names[c].clone()).collect();
            before.sort();
            (graph.names[v].clone(), before)
        })
        .collect();
    Ok(DrainPlan {
        drain_after,
        entry_points,
        shared,
        cycles,
        critical_path,
    })
}

/// The new edges of `now` (not in `before`) that lie on `now`'s evacuation critical path.
pub fn new_dependencies_on_critical_path(
    before: &[Edge],
    now: &[Edge],
) -> Result<Vec<Edge>, String> {
    let known: BTreeSet<(&str, &str)> = before
        .iter()
        .map(|e| (e.parent.as_str(), e.child.as_str()))
        .collect();
    let plan = plan_drain(now, &[])?;
    let on_path: BTreeSet<(&str, &str)> = plan
        .critical_path
        .windows(2)
        .map(|pair| (pair[0].as_str(), pair[1].as_str()))
        .collect();
    Ok(now
        .iter()
        .filter(|e| {
            let key = (e.parent.as_str(), e.child.as_str());
            !known.contains(&key) && on_path.contains(&key)
        })
        .cloned()
        .collect())
}

/// Which way a generated runbook moves traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Evacuate,
    Restore,
}

/// The task id a generated runbook gives a service's task.
pub fn task_id(service: &str) -> String {
    let id: String = service
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    if id.starts_with(|c: char| c.is_ascii_alphabetic()) {
        id
    } else {
        format!("s-{id}")
    }
}

/// A `kind: Runbook` that evacuates (callers first) or restores (callees first) every service
/// of the plan, each task an instance of `template` with `service` and `dc` parameters.
pub fn runbook_yaml(plan: &DrainPlan, name: &str, template: &str, direction: Direction) -> String {
    runbook_yaml_with_health(plan, name, template, direction, None)
}

/// [`runbook_yaml`], each task also gated on `max(METRIC{service="S"}) < BELOW` when
/// `health` is `Some((METRIC, BELOW))`.
pub fn runbook_yaml_with_health(
    plan: &DrainPlan,
    name: &str,
    template: &str,
    direction: Direction,
    health: Option<(&str, f64)>,
) -> String {
    runbook_yaml_with(
        plan,
        name,
        template,
        direction,
        &RunbookOptions {
            health,
            ..RunbookOptions::default()
        },
    )
}

/// What a generated runbook holds besides one task per service.
#[derive(Clone, Debug, Default)]
pub struct RunbookOptions<'a> {
    /// Gate each task on `max(METRIC{service="S"}) < BELOW`.
    pub health: Option<(&'a str, f64)>,
    /// Runbook parameters (name, default value) that every task passes on to its template
    /// under the same name, such as a pace: `wait: "{{ params.wait }}"`.
    pub pass_params: Vec<(&'a str, &'a str)>,
    /// The template of each service whose traffic is moved otherwise than by the default
    /// template (by its kind: `sticky-out`, `replica-in`, ...).
    pub templates: BTreeMap<String, String>,
    /// An evacuation's storm-only tasks, for a storm drain test; `None`: none.
    pub storm: Option<StormOptions<'a>>,
}

/// The tasks an evacuation runs only in a storm test (`storm=true`, which a `storm: true`
/// DrainTest passes): each has `when: "{{ params.storm }}"`, so an ordinary drain skips them.
#[derive(Clone, Debug, Default)]
pub struct StormOptions<'a> {
    /// `(service, template)`: the template runs again, as task `storm-ID`, after the
    /// service's own task; a stateful service's `replica-out` stops replicating into the
    /// datacenter its primary has left.
    pub tasks: BTreeMap<String, String>,
    /// The default of `storm_hold`: how long task `storm-hold` keeps the evacuated datacenter
    /// cut off, after every other task, such as `30m`.
    pub hold: &'a str,
    /// `(QUERY, BELOW)`: the health gate of the hold, over every service at once.
    pub health: (&'a str, f64),
}

/// The id of the storm-only hold task of a generated evacuation.
pub const STORM_HOLD_TASK: &str = "storm-hold";

/// [`runbook_yaml`] with [`RunbookOptions`].
pub fn runbook_yaml_with(
    plan: &DrainPlan,
    name: &str,
    template: &str,
    direction: Direction,
    options: &RunbookOptions<'_>,
) -> String {
    let mut needs: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (service, before) in &plan.drain_after {
        needs.entry(service.as_str()).or_default();
        for caller in before {
            match direction {
                Direction::Evacuate => needs.entry(service).or_default().push(caller),
                Direction::Restore => needs.entry(caller).or_default().push(service),
            }
        }
    }
    let mut out = String::new();
    out.push_str(&format!(
        "# Generated by `levee deps plan` from the RPC call graph: {}.\n",
        match direction {
            Direction::Evacuate => "callers are drained before what they call",
            Direction::Restore => "what is called comes back before its callers",
        }
    ));
    if !plan.cycles.is_empty() {
        out.push_str("# Cycles were cut at their least-called edge:\n");
        for cycle in &plan.cycles {
            out.push_str(&format!(
                "#   {} (cut {} -> {}, {} calls)\n",
                cycle.services.join(", "),
                cycle.cut.parent,
                cycle.cut.child,
                cycle.cut.call_count
            ));
        }
    }
    out.push_str(&format!(
        "kind: Runbook\nname: {name}\nparams:\n  dc: {{ required: true }}\n"
    ));
    for (param, default) in &options.pass_params {
        out.push_str(&format!("  {param}: {{ default: \"{default}\" }}\n"));
    }
    let storm = options
        .storm
        .as_ref()
        .filter(|_| direction == Direction::Evacuate);
    if let Some(storm) = storm {
        out.push_str(&format!(
            "  storm: {{ type: bool, default: false, description: \"A storm test: also stop \
             replication into the datacenter and hold it cut off.\" }}\n  storm_hold: {{ type: \
             duration, default: \"{}\" }}\n",
            storm.hold
        ));
    }
    out.push_str("max_parallel: 64\ntasks:\n");
    let passed: String = options
        .pass_params
        .iter()
        .map(|(param, _)| format!(", {param}: \"{{{{ params.{param} }}}}\""))
        .collect();
    for (service, before) in &needs {
        let template = options
            .templates
            .get(*service)
            .map_or(template, String::as_str);
        out.push_str(&format!(
            "  - id: {}\n    template: {template}\n",
            task_id(service)
        ));
        if !before.is_empty() {
            let mut ids: Vec<String> = before.iter().map(|s| task_id(s)).collect();
            ids.sort();
            ids.dedup();
            out.push_str(&format!("    needs: [{}]\n", ids.join(", ")));
        }
        out.push_str(&format!(
            "    with: {{ service: \"{service}\", dc: \"{{{{ params.dc }}}}\"{passed} }}\n"
        ));
        if let Some((metric, below)) = options.health {
            out.push_str(&format!(
                "    health:\n      - metric: {{ query: 'max({metric}{{service=\"{service}\"}})', below: {below} }}\n"
            ));
        }
    }
    if let Some(storm) = storm {
        out.push_str(&storm_tasks(storm, &needs, &passed));
    }
    out
}

/// The storm-only tasks of an evacuation whose service tasks have these `needs`.
fn storm_tasks(
    storm: &StormOptions<'_>,
    needs: &BTreeMap<&str, Vec<&str>>,
    passed: &str,
) -> String {
    let mut out = String::new();
    // The hold waits for every task nothing else waits for.
    let needed: BTreeSet<&str> = needs.values().flatten().copied().collect();
    let mut last: BTreeSet<String> = needs
        .keys()
        .filter(|service| !needed.contains(*service))
        .map(|service| task_id(service))
        .collect();
    for (service, template) in &storm.tasks {
        if !needs.contains_key(service.as_str()) {
            continue;
        }
        let own = task_id(service);
        let id = format!("storm-{own}");
        out.push_str(&format!(
            "  - id: {id}\n    template: {template}\n    needs: [{own}]\n    when: \
             \"{{{{ params.storm }}}}\"\n    with: {{ service: \"{service}\", dc: \
             \"{{{{ params.dc }}}}\"{passed} }}\n"
        ));
        last.remove(&own);
        last.insert(id);
    }
    let (query, below) = storm.health;
    out.push_str(&format!(
        "  - id: {STORM_HOLD_TASK}\n    stage: wait\n    needs: [{}]\n    when: \
         \"{{{{ params.storm }}}}\"\n    with: {{ duration: \"{{{{ params.storm_hold }}}}\" }}\n    \
         health:\n      - metric: {{ query: '{query}', below: {below} }}\n",
        last.into_iter().collect::<Vec<_>>().join(", ")
    ));
    out
}

/// A call graph with `services` services in layers (entry points on top, each calling one to
/// three services of the next layers, some of them shared), deterministic from `seed`: for
/// benchmarks and the demo.
pub fn generated_graph(services: usize, seed: u64) -> Vec<Edge> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move |bound: usize| -> usize {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound.max(1)
    };
    let layers = ((services as f64).log2().ceil() as usize).clamp(2, 12);
    let per_layer = services.div_ceil(layers);
    let name = |i: usize| format!("svc-{i:05}");
    let mut edges = Vec::new();
    for i in 0..services {
        let layer = i / per_layer;
        if layer + 1 >= layers {
            continue;
        }
        let below_start = (layer + 1) * per_layer;
        let below = services.saturating_sub(below_start);
        if below == 0 {
            continue;
        }
        for _ in 0..1 + next(3) {
            let child = below_start + next(below.min(per_layer * 2));
            if child < services {
                edges.push(Edge {
                    parent: name(i),
                    child: name(child),
                    call_count: 1 + next(10_000) as u64,
                });
            }
        }
    }
    edges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(parent: &str, child: &str, calls: u64) -> Edge {
        Edge {
            parent: parent.to_string(),
            child: child.to_string(),
            call_count: calls,
        }
    }

    #[test]
    fn callers_drain_first_and_shared_components_wait_for_every_chain() {
        let edges = vec![
            edge("web", "auth", 100),
            edge("mobile", "auth", 50),
            edge("auth", "db", 80),
            edge("web", "search", 10),
        ];
        let plan = plan_drain(&edges, &[]).unwrap();
        assert_eq!(plan.entry_points, ["mobile", "web"]);
        assert_eq!(plan.drain_after["auth"], ["mobile", "web"]);
        assert_eq!(plan.drain_after["db"], ["auth"]);
        assert_eq!(plan.shared.len(), 1);
        assert_eq!(plan.shared[0].service, "auth");
        assert_eq!(plan.critical_path.len(), 3);
        assert!(plan.cycles.is_empty());
        let yaml = runbook_yaml(&plan, "evacuate", "shift-out", Direction::Evacuate);
        assert!(yaml.contains("  - id: auth\n    template: shift-out\n    needs: [mobile, web]"));
        let back = runbook_yaml(&plan, "restore", "shift-in", Direction::Restore);
        assert!(back.contains("  - id: web\n    template: shift-in\n    needs: [auth, search]"));
        // Each service's kind of traffic picks its template.
        let options = RunbookOptions {
            templates: BTreeMap::from([("db".to_string(), "primary-out".to_string())]),
            ..RunbookOptions::default()
        };
        let kinds = runbook_yaml_with(
            &plan,
            "evacuate",
            "shift-out",
            Direction::Evacuate,
            &options,
        );
        assert!(kinds.contains("  - id: db\n    template: primary-out\n    needs: [auth]"));
        assert!(kinds.contains("  - id: auth\n    template: shift-out\n"));
    }

    #[test]
    fn a_storm_evacuation_adds_storm_only_tasks_after_everything_else() {
        let edges = vec![
            edge("web", "auth", 100),
            edge("auth", "db", 80),
            edge("web", "search", 10),
        ];
        let plan = plan_drain(&edges, &[]).unwrap();
        let options = RunbookOptions {
            storm: Some(StormOptions {
                tasks: BTreeMap::from([("db".to_string(), "replica-out".to_string())]),
                hold: "30m",
                health: ("max(errors)", 0.05),
            }),
            ..RunbookOptions::default()
        };
        let yaml = runbook_yaml_with(
            &plan,
            "evacuate",
            "shift-out",
            Direction::Evacuate,
            &options,
        );
        assert!(
            yaml.contains("  storm: { type: bool, default: false"),
            "{yaml}"
        );
        assert!(
            yaml.contains("  storm_hold: { type: duration, default: \"30m\" }"),
            "{yaml}"
        );
        assert!(
            yaml.contains(
                "  - id: storm-db\n    template: replica-out\n    needs: [db]\n    when: \
                 \"{{ params.storm }}\"\n"
            ),
            "{yaml}"
        );
        // The hold comes after what nothing else waits for: search, and db's storm task.
        assert!(
            yaml.contains(
                "  - id: storm-hold\n    stage: wait\n    needs: [search, storm-db]\n    \
                 when: \"{{ params.storm }}\"\n    with: { duration: \"{{ params.storm_hold }}\" }\n    \
                 health:\n      - metric: { query: 'max(errors)', below: 0.05 }\n"
            ),
            "{yaml}"
        );
        // A restore has none.
        let back = runbook_yaml_with(&plan, "restore", "shift-in", Direction::Restore, &options);
        assert!(!back.contains("storm"), "{back}");
    }

    #[test]
    fn a_cycle_is_reported_and_cut_at_its_least_called_edge() {
        let edges = vec![
            edge("a", "b", 100),
            edge("b", "c", 100),
            edge("c", "a", 3),
            edge("c", "d", 1),
        ];
        let plan = plan_drain(&edges, &[]).unwrap();
        assert_eq!(plan.cycles.len(), 1);
        assert_eq!(plan.cycles[0].services, ["a", "b", "c"]);
        assert_eq!(plan.cycles[0].cut, edge("c", "a", 3));
        assert_eq!(plan.entry_points, ["a"]);
        assert_eq!(plan.critical_path, ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_new_edge_on_the_critical_path_is_flagged() {
        let before = vec![
            edge("web", "api", 1),
            edge("api", "db", 1),
            edge("web", "img", 1),
        ];
        let mut now = before.clone();
        now.push(edge("db", "ledger", 1));
        now.push(edge("web", "cdn", 1));
        let flagged = new_dependencies_on_critical_path(&before, &now).unwrap();
        assert_eq!(flagged, vec![edge("db", "ledger", 1)]);
    }

    #[test]
    fn jaeger_answers_are_read_and_bad_ones_refused() {
        let wrapped = r#"{"data":[{"parent":"a","child":"b","callCount":3}]}"#;
        assert_eq!(parse_jaeger(wrapped).unwrap(), vec![edge("a", "b", 3)]);
        assert!(parse_jaeger("[{\"parent\":\"a\"}]").is_err());
        assert!(parse_jaeger("[{\"parent\":\"\",\"child\":\"b\"}]").is_err());
        assert!(parse_jaeger("nope").is_err());
    }

    #[test]
    fn a_generated_graph_plans_without_cycles() {
        let edges = generated_graph(1_000, 7);
        let plan = plan_drain(&edges, &[]).unwrap();
        assert!(plan.cycles.is_empty());
        assert!(plan.critical_path.len() >= 3, "{:?}", plan.critical_path);
        assert_eq!(generated_graph(1_000, 7), edges);
    }
}
