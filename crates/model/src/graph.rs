//! Cycles in dependency graphs, found so that they can be reported whole.

/// Most cycles reported for one graph: after this many, more messages would hide the first.
pub const MAX_REPORTED_CYCLES: usize = 20;

/// Cycles of the graph whose node `i` has an edge to every node of `edges[i]`: one for each
/// tangle of nodes that all reach each other (strongly connected component), so one mistake is
/// reported once. Each cycle is a shortest one through the tangle's lowest-numbered node,
/// listed from that node along the edges (`[a, b, c]` is `a -> b -> c -> a`). A graph has
/// cycles if and only if this is not empty.
pub fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let count = edges.len();
    let edges_of = |node: usize| edges[node].iter().copied().filter(move |t| *t < count);
    // Kosaraju: nodes by DFS finish time, then components on the reversed graph.
    let mut visited = vec![false; count];
    let mut finished: Vec<usize> = Vec::with_capacity(count);
    for start in 0..count {
        if visited[start] {
            continue;
        }
        visited[start] = true;
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        while let Some((node, next_edge)) = path.last_mut() {
            match edges[*node].get(*next_edge) {
                Some(&target) => {
                    *next_edge += 1;
                    if target < count && !visited[target] {
                        visited[target] = true;
                        path.push((target, 0));
                    }
                }
                None => {
                    finished.push(*node);
                    path.pop();
                }
            }
        }
    }
    let mut reversed: Vec<Vec<usize>> = vec![Vec::new(); count];
    for node in 0..count {
        for target in edges_of(node) {
            reversed[target].push(node);
        }
    }
    let mut component = vec![usize::MAX; count];
    let mut components: Vec<Vec<usize>> = Vec::new();
    for &root in finished.iter().rev() {
        if component[root] != usize::MAX {
            continue;
        }
        let id = components.len();
        let mut members = vec![root];
        component[root] = id;
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            for &source in &reversed[node] {
                if component[source] == usize::MAX {
                    component[source] = id;
                    members.push(source);
                    stack.push(source);
                }
            }
        }
        components.push(members);
    }
    let mut cycles: Vec<Vec<usize>> = components
        .iter()
        .enumerate()
        .filter_map(|(id, members)| {
            let lowest = *members.iter().min()?;
            let tangled = members.len() > 1 || edges_of(lowest).any(|t| t == lowest);
            tangled.then(|| shortest_cycle_through(lowest, id, &component, edges))
        })
        .collect();
    cycles.sort();
    cycles.truncate(MAX_REPORTED_CYCLES);
    cycles
}

/// A shortest cycle from `start` back to itself inside its component, by breadth-first search.
fn shortest_cycle_through(
    start: usize,
    id: usize,
    component: &[usize],
    edges: &[Vec<usize>],
) -> Vec<usize> {
    let mut parent = vec![usize::MAX; edges.len()];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &target in &edges[node] {
            if target >= edges.len() || component[target] != id {
                continue;
            }
            if target == start {
                let mut cycle = vec![node];
                let mut current = node;
                while current != start {
                    current = parent[current];
                    cycle.push(current);
                }
                cycle.reverse();
                return cycle;
            }
            if parent[target] == usize::MAX {
                parent[target] = node;
                queue.push_back(target);
            }
        }
    }
    vec![start]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_whole_cycles_from_their_lowest_node() {
        // 0 -> 1 -> 2 -> 3 -> 1, and 4 -> 4.
        let edges = vec![vec![1], vec![2], vec![3], vec![1], vec![4]];
        assert_eq!(find_cycles(&edges), vec![vec![1, 2, 3], vec![4]]);
        assert!(find_cycles(&[vec![1, 2], vec![2], vec![]]).is_empty());
    }
}
