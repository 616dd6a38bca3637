//! Properties of linking over random dependency graphs: acyclic runbooks always link and keep
//! every dependency; one back edge always gives a cycle error naming a whole cycle through it.

use std::collections::BTreeSet;

use levee_model::{LoadContext, StageCatalog, link, load_documents};
use proptest::prelude::*;

fn catalog() -> StageCatalog {
    StageCatalog::new(&[("log", &[("message", true)])])
}

/// A random DAG: task `i` depends on some tasks before it, each strongly or weakly.
#[derive(Clone, Debug)]
struct Dag {
    /// `deps[i]`: `(j, weak)` with `j < i`.
    deps: Vec<Vec<(usize, bool)>>,
}

fn dag() -> impl Strategy<Value = Dag> {
    (2usize..40).prop_flat_map(|count| {
        let rows: Vec<_> = (0..count)
            .map(|i| proptest::collection::btree_set((0..i.max(1), any::<bool>()), 0..=i.min(4)))
            .collect();
        rows.prop_map(move |rows| Dag {
            deps: rows
                .into_iter()
                .enumerate()
                .map(|(i, row)| {
                    let mut seen = BTreeSet::new();
                    row.into_iter()
                        .filter(|(j, _)| *j < i && seen.insert(*j))
                        .collect()
                })
                .collect(),
        })
    })
}

/// The runbook's YAML, tasks written in reverse so that written order is not dependency order.
fn source(deps: &[Vec<(usize, bool)>]) -> String {
    let mut text = String::from("kind: Runbook\nname: random\ntasks:\n");
    for (i, row) in deps.iter().enumerate().rev() {
        let needs: Vec<String> = row
            .iter()
            .filter(|d| !d.1)
            .map(|d| format!("t{}", d.0))
            .collect();
        let after: Vec<String> = row
            .iter()
            .filter(|d| d.1)
            .map(|d| format!("t{}", d.0))
            .collect();
        text.push_str(&format!(
            "  - id: t{i}\n    stage: log\n    with: {{ message: m }}\n    needs: [{}]\n    after: [{}]\n",
            needs.join(", "),
            after.join(", ")
        ));
    }
    text
}

fn context() -> LoadContext {
    LoadContext::new(0, jiff::tz::TimeZone::UTC)
}

proptest! {
    #[test]
    fn acyclic_runbooks_link_and_keep_every_dependency(dag in dag()) {
        let defs = load_documents("dag.yaml", &source(&dag.deps), &context()).expect("loads");
        let runbooks = link(&defs, &catalog()).expect("links");
        let runbook = &runbooks[0];
        prop_assert_eq!(runbook.tasks.len(), dag.deps.len());
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for task in &runbook.tasks {
            let i: usize = task.id[1..].parse().expect("t<number>");
            let needs: BTreeSet<String> =
                dag.deps[i].iter().filter(|d| !d.1).map(|d| format!("t{}", d.0)).collect();
            let after: BTreeSet<String> =
                dag.deps[i].iter().filter(|d| d.1).map(|d| format!("t{}", d.0)).collect();
            prop_assert_eq!(task.needs.iter().cloned().collect::<BTreeSet<_>>(), needs);
            prop_assert_eq!(task.after.iter().cloned().collect::<BTreeSet<_>>(), after);
            // The flat list is in dependency order.
            for dependency in task.needs.iter().chain(&task.after) {
                prop_assert!(done.contains(dependency.as_str()), "{} before {}", dependency, task.id);
            }
            done.insert(&task.id);
        }
    }

    #[test]
    fn a_back_edge_is_reported_as_a_whole_cycle(dag in dag(), seed in any::<u64>()) {
        // Walk down from some task along its dependencies, then make the walk's end depend on
        // its start: a cycle.
        let mut deps = dag.deps.clone();
        let start = (seed as usize) % deps.len();
        let mut end = start;
        let mut step = seed;
        while !deps[end].is_empty() {
            step = step.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            end = deps[end][(step >> 33) as usize % deps[end].len()].0;
        }
        deps[end].retain(|d| d.0 != start);
        deps[end].push((start, step % 2 == 0));
        let defs = load_documents("dag.yaml", &source(&deps), &context()).expect("loads");
        let errors = link(&defs, &catalog()).expect_err("a cycle");
        let cycles: Vec<&str> = errors
            .iter()
            .filter(|e| e.code == "dependency-cycle")
            .map(|e| e.message.as_str())
            .collect();
        prop_assert_eq!(cycles.len(), 1, "{:#?}", errors);
        let path = cycles[0].split('`').nth(1).expect("the cycle between backquotes");
        let ids: Vec<usize> = path.split(" -> ").map(|id| id[1..].parse().expect("t<number>")).collect();
        prop_assert_eq!(ids.first(), ids.last());
        for pair in ids.windows(2) {
            prop_assert!(
                deps[pair[0]].iter().any(|d| d.0 == pair[1]),
                "t{} does not depend on t{} in {}", pair[0], pair[1], path
            );
        }
        prop_assert!(ids.contains(&start) && ids.contains(&end), "{}", path);
    }
}
