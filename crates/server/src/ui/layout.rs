//! Geometry of the run page's pictures, computed on the server so the browser only draws: the
//! task graph laid out in waves (`levee_engine::runbook::plan_waves`) and the Gantt timeline of
//! actual against predicted task times. Pure: plans, times and sizes in, coordinates out.

use std::collections::HashMap;

/// Above this many tasks the graph drops labels and draws small squares (the task's id is in
/// its tooltip and in the table below), so 1,000 tasks stay on a few screens.
pub const GRAPH_LABELLED_MAX_TASKS: usize = 120;
/// Above this many tasks no graph is drawn at all; the task table (which lists each task's
/// wave and dependencies) is the view.
pub const GRAPH_MAX_TASKS: usize = 5_000;
/// Above this many dependency lines a labelled graph draws only those of the critical path.
pub const GRAPH_MAX_EDGES: usize = 1_000;
/// A compact graph wraps a wave into another column after this many tasks.
pub const GRAPH_COMPACT_COLUMN_TASKS: usize = 50;
/// Width of a labelled node, in pixels.
pub const NODE_WIDTH_PX: u32 = 150;
/// Height of a labelled node, in pixels.
pub const NODE_HEIGHT_PX: u32 = 22;
/// Side of a compact node, in pixels.
pub const COMPACT_NODE_PX: u32 = 9;
/// Extra space between two waves of a compact graph, in pixels.
pub const GRAPH_WAVE_GAP_PX: u32 = 24;
/// Space between nodes and around the picture, in pixels.
pub const GRAPH_GAP_PX: u32 = 10;
/// Longest label drawn in a labelled node, in characters (the full id is in the tooltip).
pub const NODE_LABEL_MAX_CHARS: usize = 20;
/// Width of the Gantt timeline's time axis, in pixels.
pub const GANTT_AXIS_WIDTH_PX: u32 = 900;
/// Width of the Gantt's task-name column, in pixels (labelled layout only).
pub const GANTT_LABEL_WIDTH_PX: u32 = 170;
/// Height of one Gantt row with labels, in pixels.
pub const GANTT_ROW_PX: u32 = 16;
/// Height of one Gantt row without labels (more than [`GRAPH_LABELLED_MAX_TASKS`] tasks).
pub const GANTT_COMPACT_ROW_PX: u32 = 4;
/// Time-axis ticks drawn on the Gantt.
pub const GANTT_TICKS: u32 = 6;

/// One task as the pictures need it.
#[derive(Clone, Debug)]
pub struct TaskTimes {
    pub id: String,
    pub status: String,
    /// Indexes of the tasks it depends on (`needs` and `after`).
    pub deps: Vec<usize>,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub predicted_ms: u64,
    pub critical: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub id: String,
    pub label: String,
    pub status: String,
    pub critical: bool,
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
    /// Where the label's text starts and its baseline.
    pub text_x: u32,
    pub text_y: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Edge {
    pub x1: u32,
    pub y1: u32,
    pub x2: u32,
    pub y2: u32,
    pub critical: bool,
}

/// The task graph, or why it is not drawn.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    pub width: u32,
    pub height: u32,
    pub labelled: bool,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    /// Set when the graph is not drawn (too many tasks).
    pub omitted: Option<String>,
}

/// Lays the tasks out in columns, one per wave (wrapped into several columns in the compact
/// layout), dependencies as lines from a task's right edge to its dependent's left edge.
pub fn graph(tasks: &[TaskTimes], waves: &[Vec<usize>]) -> Graph {
    if tasks.len() > GRAPH_MAX_TASKS {
        return Graph {
            width: 0,
            height: 0,
            labelled: false,
            nodes: Vec::new(),
            edges: Vec::new(),
            omitted: Some(format!(
                "{} tasks: the graph is drawn up to {GRAPH_MAX_TASKS}; the table below lists \
                 every task with its wave and dependencies",
                tasks.len()
            )),
        };
    }
    let labelled = tasks.len() <= GRAPH_LABELLED_MAX_TASKS;
    let (w, h) = if labelled {
        (NODE_WIDTH_PX, NODE_HEIGHT_PX)
    } else {
        (COMPACT_NODE_PX, COMPACT_NODE_PX)
    };
    let per_column = if labelled {
        usize::MAX
    } else {
        GRAPH_COMPACT_COLUMN_TASKS
    };
    let column_gap = if labelled {
        GRAPH_GAP_PX * 4
    } else {
        GRAPH_GAP_PX
    };
    let row_gap = if labelled {
        GRAPH_GAP_PX
    } else {
        GRAPH_GAP_PX / 3
    };
    let mut at: HashMap<usize, (u32, u32)> = HashMap::with_capacity(tasks.len());
    let mut column = 0_u32;
    let mut height = 0_u32;
    // A wave wrapped into several columns is set apart from the next by a wider gap.
    let mut wave_offset = 0_u32;
    for (wave_index, wave) in waves.iter().enumerate() {
        if !labelled && wave_index > 0 {
            wave_offset += GRAPH_WAVE_GAP_PX;
        }
        for chunk in wave.chunks(per_column.max(1)) {
            for (row, &task) in chunk.iter().enumerate() {
                let x = GRAPH_GAP_PX + wave_offset + column * (w + column_gap);
                let y = GRAPH_GAP_PX + u32::try_from(row).unwrap_or(u32::MAX) * (h + row_gap);
                at.insert(task, (x, y));
                height = height.max(y + h + GRAPH_GAP_PX);
            }
            column += 1;
        }
    }
    let width = GRAPH_GAP_PX + wave_offset + column * (w + column_gap);
    let nodes = tasks
        .iter()
        .enumerate()
        .filter_map(|(i, task)| {
            let (x, y) = *at.get(&i)?;
            Some(Node {
                id: task.id.clone(),
                label: if labelled {
                    shorten(&task.id, NODE_LABEL_MAX_CHARS)
                } else {
                    String::new()
                },
                status: task.status.clone(),
                critical: task.critical,
                x,
                y,
                w,
                h,
                text_x: x + 6,
                text_y: y + h / 2 + 4,
            })
        })
        .collect();
    let total_edges: usize = tasks.iter().map(|t| t.deps.len()).sum();
    let all_edges = labelled && total_edges <= GRAPH_MAX_EDGES;
    let mut edges = Vec::new();
    for (i, task) in tasks.iter().enumerate() {
        for &dep in &task.deps {
            let critical = task.critical && tasks.get(dep).is_some_and(|d| d.critical);
            if !(all_edges || critical) {
                continue;
            }
            let (Some(&(dx, dy)), Some(&(tx, ty))) = (at.get(&dep), at.get(&i)) else {
                continue;
            };
            edges.push(Edge {
                x1: dx + w,
                y1: dy + h / 2,
                x2: tx,
                y2: ty + h / 2,
                critical,
            });
        }
    }
    Graph {
        width,
        height,
        labelled,
        nodes,
        edges,
        omitted: None,
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct GanttRow {
    pub id: String,
    pub label: String,
    pub status: String,
    pub critical: bool,
    pub y: u32,
    pub h: u32,
    pub text_y: u32,
    pub actual_x: u32,
    pub actual_w: u32,
    pub predicted_x: u32,
    pub predicted_w: u32,
    /// For the tooltip: actual and predicted durations in words.
    pub actual: String,
    pub predicted: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tick {
    pub x: u32,
    pub label: String,
}

/// The Gantt timeline: every task that started, in order of start, its actual bar (to now
/// while it runs) over its predicted bar from the same start.
#[derive(Clone, Debug, PartialEq)]
pub struct Gantt {
    pub width: u32,
    pub height: u32,
    pub labelled: bool,
    pub label_width: u32,
    pub rows: Vec<GanttRow>,
    pub ticks: Vec<Tick>,
    pub axis_y: u32,
}

pub fn gantt(tasks: &[TaskTimes], now_ms: i64) -> Gantt {
    let labelled = tasks.len() <= GRAPH_LABELLED_MAX_TASKS;
    let label_width = if labelled { GANTT_LABEL_WIDTH_PX } else { 0 };
    let row_px = if labelled {
        GANTT_ROW_PX
    } else {
        GANTT_COMPACT_ROW_PX
    };
    let mut started: Vec<&TaskTimes> = tasks.iter().filter(|t| t.started_at_ms.is_some()).collect();
    started.sort_by_key(|t| t.started_at_ms);
    let origin = started
        .first()
        .and_then(|t| t.started_at_ms)
        .unwrap_or(now_ms);
    let end = started
        .iter()
        .map(|t| {
            let start = t.started_at_ms.unwrap_or(origin);
            let actual_end = t.finished_at_ms.unwrap_or(now_ms.max(start));
            let predicted_end =
                start.saturating_add(i64::try_from(t.predicted_ms).unwrap_or(i64::MAX));
            actual_end.max(predicted_end)
        })
        .max()
        .unwrap_or(origin);
    let span_ms = (end - origin).max(1);
    let scale = |ms: i64| -> u32 {
        let px = (ms.max(0) as f64) * f64::from(GANTT_AXIS_WIDTH_PX) / span_ms as f64;
        px.round().clamp(0.0, f64::from(GANTT_AXIS_WIDTH_PX)) as u32
    };
    let axis_y = 14;
    let first_row_y = axis_y + 6;
    let rows = started
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let start = t.started_at_ms.unwrap_or(origin);
            let actual_ms = t.finished_at_ms.unwrap_or(now_ms.max(start)) - start;
            let predicted_ms = i64::try_from(t.predicted_ms).unwrap_or(i64::MAX);
            let y = first_row_y + u32::try_from(i).unwrap_or(u32::MAX) * row_px;
            let x = label_width + scale(start - origin);
            GanttRow {
                id: t.id.clone(),
                label: if labelled {
                    shorten(&t.id, NODE_LABEL_MAX_CHARS)
                } else {
                    String::new()
                },
                status: t.status.clone(),
                critical: t.critical,
                y,
                h: row_px.saturating_sub(2).max(1),
                text_y: y + row_px - 4,
                actual_x: x,
                actual_w: scale(actual_ms).max(1),
                predicted_x: x,
                predicted_w: scale(predicted_ms).max(1),
                actual: duration_text(u64::try_from(actual_ms).unwrap_or(0)),
                predicted: duration_text(t.predicted_ms),
            }
        })
        .collect::<Vec<_>>();
    let ticks = (0..=GANTT_TICKS)
        .map(|k| {
            let ms = span_ms * i64::from(k) / i64::from(GANTT_TICKS);
            Tick {
                x: label_width + scale(ms),
                label: format!("+{}", duration_text(u64::try_from(ms).unwrap_or(0))),
            }
        })
        .collect();
    let height =
        first_row_y + u32::try_from(rows.len()).unwrap_or(u32::MAX) * row_px + GRAPH_GAP_PX;
    Gantt {
        width: label_width + GANTT_AXIS_WIDTH_PX + 60,
        height,
        labelled,
        label_width,
        rows,
        ticks,
        axis_y,
    }
}

/// `text` cut to `max` characters, with an ellipsis when cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut short: String = text.chars().take(max.saturating_sub(1)).collect();
    short.push('…');
    short
}

/// A duration as people read it: `850ms`, `12.5s`, `4m 05s`, `2h 03m`.
pub fn duration_text(ms: u64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1_000.0)
    } else if ms < 3_600_000 {
        format!("{}m {:02}s", ms / 60_000, (ms % 60_000) / 1_000)
    } else {
        format!("{}h {:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// Width of a health chart, in pixels.
pub const SPARK_WIDTH_PX: u32 = 320;
/// Height of a health chart, in pixels.
pub const SPARK_HEIGHT_PX: u32 = 60;
/// Space around a health chart's plot, in pixels.
pub const SPARK_PAD_PX: u32 = 6;

/// One observation drawn on a health chart.
#[derive(Clone, Debug, PartialEq)]
pub struct SparkDot {
    pub x: u32,
    pub y: u32,
    pub ok: bool,
    pub title: String,
}

/// A threshold line across a health chart.
#[derive(Clone, Debug, PartialEq)]
pub struct SparkLine {
    pub y: u32,
    pub label: String,
}

/// A small chart of one health check's observations against its thresholds: numbers as a
/// line on a value axis that covers them and the thresholds; other observations (a command's
/// exit) as a row of pass/fail dots.
#[derive(Clone, Debug, PartialEq)]
pub struct Spark {
    pub width: u32,
    pub height: u32,
    /// `x,y` pairs for an SVG polyline; empty without numbers.
    pub points: String,
    pub dots: Vec<SparkDot>,
    pub thresholds: Vec<SparkLine>,
    /// The value axis' bounds as text, top and bottom; empty without numbers.
    pub top: String,
    pub bottom: String,
}

/// Lays out `samples` (time in epoch ms, value if a number, passed, observed text), oldest
/// first, against the thresholds `below` and `above` (a metric check's bounds).
pub fn spark(
    samples: &[(i64, Option<f64>, bool, String)],
    below: Option<f64>,
    above: Option<f64>,
) -> Spark {
    let (w, h, pad) = (SPARK_WIDTH_PX, SPARK_HEIGHT_PX, SPARK_PAD_PX);
    let mut spark = Spark {
        width: w,
        height: h,
        points: String::new(),
        dots: Vec::new(),
        thresholds: Vec::new(),
        top: String::new(),
        bottom: String::new(),
    };
    if samples.is_empty() {
        return spark;
    }
    let first = samples.iter().map(|s| s.0).min().unwrap_or(0);
    let last = samples.iter().map(|s| s.0).max().unwrap_or(0);
    let span = (last - first).max(1) as f64;
    let plot_w = f64::from(w - 2 * pad);
    let plot_h = f64::from(h - 2 * pad);
    let x_of = |at: i64| {
        if samples.len() == 1 {
            pad + (w - 2 * pad) / 2
        } else {
            pad + ((at - first) as f64 / span * plot_w).round() as u32
        }
    };
    let numbers: Vec<f64> = samples
        .iter()
        .filter_map(|s| s.1)
        .chain(below)
        .chain(above)
        .collect();
    let numeric = samples.iter().any(|s| s.1.is_some());
    if !numeric {
        for (at, _, ok, observed) in samples {
            spark.dots.push(SparkDot {
                x: x_of(*at),
                y: h / 2,
                ok: *ok,
                title: observed.clone(),
            });
        }
        return spark;
    }
    let mut low = numbers.iter().copied().fold(f64::INFINITY, f64::min);
    let mut high = numbers.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (high - low).abs() < f64::EPSILON {
        low -= 1.0;
        high += 1.0;
    }
    let margin = (high - low) * 0.1;
    low -= margin;
    high += margin;
    let y_of = |v: f64| pad + ((high - v) / (high - low) * plot_h).round() as u32;
    let mut points = Vec::new();
    for (at, value, ok, observed) in samples {
        let Some(value) = value else { continue };
        let (x, y) = (x_of(*at), y_of(*value));
        points.push(format!("{x},{y}"));
        spark.dots.push(SparkDot {
            x,
            y,
            ok: *ok,
            title: observed.clone(),
        });
    }
    spark.points = points.join(" ");
    if let Some(below) = below {
        spark.thresholds.push(SparkLine {
            y: y_of(below),
            label: format!("below {below}"),
        });
    }
    if let Some(above) = above {
        spark.thresholds.push(SparkLine {
            y: y_of(above),
            label: format!("above {above}"),
        });
    }
    spark.top = format!("{high:.3}");
    spark.bottom = format!("{low:.3}");
    spark
}

/// Width of a trend chart, in pixels.
pub const TREND_WIDTH_PX: u32 = 460;
/// Height of a trend chart, in pixels.
pub const TREND_HEIGHT_PX: u32 = 150;
/// Space left of a trend's plot for the value axis' labels, in pixels.
pub const TREND_AXIS_LABEL_PX: u32 = 56;
/// Space around a trend's plot (and below it for the executions' labels), in pixels.
pub const TREND_PAD_PX: u32 = 8;
/// Height of the row of labels under a trend's plot, in pixels.
pub const TREND_X_LABEL_PX: u32 = 16;
/// Value-axis ticks drawn on a trend (0 included).
pub const TREND_TICKS: u32 = 2;

/// One line of a trend: a value per execution (none where it has none).
pub struct TrendInput<'a> {
    pub name: &'a str,
    /// The CSS class that colours it.
    pub class: &'static str,
    pub values: Vec<Option<f64>>,
}

/// One point of a trend's line.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendDot {
    pub x: u32,
    pub y: u32,
    pub title: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrendLine {
    pub name: String,
    pub class: &'static str,
    /// `x,y` pairs for an SVG polyline (a gap where a value is missing starts no new line:
    /// the line joins the values there are).
    pub points: String,
    pub dots: Vec<TrendDot>,
}

/// A label on one of a trend's axes.
#[derive(Clone, Debug, PartialEq)]
pub struct TrendTick {
    pub x: u32,
    pub y: u32,
    pub label: String,
}

/// A small chart of values over a drain test's executions, oldest left: one line per
/// series on a value axis from 0 to the largest value.
#[derive(Clone, Debug, PartialEq)]
pub struct Trend {
    pub width: u32,
    pub height: u32,
    pub plot_left: u32,
    pub plot_right: u32,
    pub plot_top: u32,
    pub plot_bottom: u32,
    pub lines: Vec<TrendLine>,
    /// Value-axis ticks (`x` unused) and execution labels under the plot (first and last).
    pub y_ticks: Vec<TrendTick>,
    pub x_ticks: Vec<TrendTick>,
    /// Values drawn, over every line.
    pub values: usize,
}

/// Lays out `series` over the executions `labels` (oldest first; every series has a value
/// slot per label), with `format` writing a value as text (axis labels and tooltips).
pub fn trend(labels: &[String], series: &[TrendInput<'_>], format: fn(f64) -> String) -> Trend {
    let (w, h, pad) = (TREND_WIDTH_PX, TREND_HEIGHT_PX, TREND_PAD_PX);
    let plot_left = TREND_AXIS_LABEL_PX;
    let plot_right = w - pad;
    let plot_top = pad;
    let plot_bottom = h - pad - TREND_X_LABEL_PX;
    let count = labels.len();
    let x_of = |i: usize| -> u32 {
        if count <= 1 {
            plot_left + (plot_right - plot_left) / 2
        } else {
            let step = f64::from(plot_right - plot_left) / (count - 1) as f64;
            plot_left + (i as f64 * step).round() as u32
        }
    };
    let high = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let high = if high > 0.0 { high } else { 1.0 };
    let plot_h = f64::from(plot_bottom - plot_top);
    let y_of = |v: f64| -> u32 {
        let v = v.clamp(0.0, high);
        plot_top + ((high - v) / high * plot_h).round() as u32
    };
    let mut values = 0;
    let lines = series
        .iter()
        .map(|s| {
            let mut points = Vec::new();
            let mut dots = Vec::new();
            for (i, value) in s.values.iter().enumerate().take(count) {
                let Some(v) = value.filter(|v| v.is_finite()) else {
                    continue;
                };
                let (x, y) = (x_of(i), y_of(v));
                points.push(format!("{x},{y}"));
                dots.push(TrendDot {
                    x,
                    y,
                    title: format!("{}: {} {}", labels[i], s.name, format(v)),
                });
                values += 1;
            }
            TrendLine {
                name: s.name.to_string(),
                class: s.class,
                points: points.join(" "),
                dots,
            }
        })
        .collect();
    let y_ticks = (0..=TREND_TICKS)
        .map(|k| {
            let v = high * f64::from(k) / f64::from(TREND_TICKS);
            TrendTick {
                x: 0,
                y: y_of(v),
                label: format(v),
            }
        })
        .collect();
    let mut x_ticks = Vec::new();
    if let Some(first) = labels.first() {
        x_ticks.push(TrendTick {
            x: x_of(0),
            y: h - pad,
            label: first.clone(),
        });
    }
    if count > 1 {
        x_ticks.push(TrendTick {
            x: x_of(count - 1),
            y: h - pad,
            label: labels[count - 1].clone(),
        });
    }
    Trend {
        width: w,
        height: h,
        plot_left,
        plot_right,
        plot_top,
        plot_bottom,
        lines,
        y_ticks,
        x_ticks,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str, deps: &[usize], critical: bool) -> TaskTimes {
        TaskTimes {
            id: id.to_string(),
            status: "waiting".to_string(),
            deps: deps.to_vec(),
            started_at_ms: None,
            finished_at_ms: None,
            predicted_ms: 1_000,
            critical,
        }
    }

    #[test]
    fn a_small_graph_is_labelled_with_a_column_per_wave_and_every_edge() {
        let tasks = vec![
            task("a", &[], true),
            task("b", &[0], true),
            task("c", &[0], false),
        ];
        let g = graph(&tasks, &[vec![0], vec![1, 2]]);
        assert!(g.labelled);
        assert_eq!(g.nodes.len(), 3);
        assert_eq!(g.nodes[1].x, g.nodes[2].x, "one wave, one column");
        assert!(g.nodes[1].x > g.nodes[0].x);
        assert!(g.nodes[2].y > g.nodes[1].y);
        assert_eq!(g.edges.len(), 2);
        assert_eq!(g.edges.iter().filter(|e| e.critical).count(), 1);
        assert!(
            g.nodes
                .iter()
                .all(|n| n.x + n.w <= g.width && n.y + n.h <= g.height)
        );
    }

    #[test]
    fn a_thousand_tasks_get_the_compact_layout_with_only_critical_edges() {
        let mut tasks = Vec::new();
        for i in 0..1_000 {
            let deps = if i >= 100 { vec![i - 100] } else { Vec::new() };
            tasks.push(task(&format!("t{i}"), &deps, i % 100 == 0));
        }
        let waves: Vec<Vec<usize>> = (0..10)
            .map(|w| (w * 100..(w + 1) * 100).collect())
            .collect();
        let g = graph(&tasks, &waves);
        assert!(!g.labelled);
        assert_eq!(g.nodes.len(), 1_000);
        assert_eq!(
            g.edges.len(),
            9,
            "only the critical chain t0 → t100 → ... → t900"
        );
        assert!(
            g.height < 100 * COMPACT_NODE_PX,
            "a wave of 100 wraps into columns: {}",
            g.height
        );
        assert!(
            g.nodes
                .iter()
                .all(|n| n.x + n.w <= g.width && n.y + n.h <= g.height)
        );
    }

    #[test]
    fn too_many_tasks_are_not_drawn_and_say_why() {
        let tasks: Vec<TaskTimes> = (0..=GRAPH_MAX_TASKS)
            .map(|i| task(&format!("t{i}"), &[], false))
            .collect();
        let g = graph(&tasks, &[(0..tasks.len()).collect()]);
        assert!(g.nodes.is_empty());
        assert!(g.omitted.unwrap().contains("table"));
    }

    #[test]
    fn the_gantt_draws_started_tasks_in_start_order_against_their_prediction() {
        let mut a = task("a", &[], true);
        a.started_at_ms = Some(10_000);
        a.finished_at_ms = Some(12_000);
        let mut b = task("b", &[0], true);
        b.started_at_ms = Some(12_000);
        b.predicted_ms = 6_000;
        let c = task("c", &[1], false);
        let g = gantt(&[b.clone(), a.clone(), c], 14_000);
        assert_eq!(
            g.rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let (ra, rb) = (&g.rows[0], &g.rows[1]);
        assert_eq!(ra.actual_x, g.label_width);
        // The span runs from 10 s to b's predicted end at 18 s: 8 s over the axis.
        assert_eq!(ra.actual_w, GANTT_AXIS_WIDTH_PX / 4);
        assert_eq!(rb.actual_x, g.label_width + GANTT_AXIS_WIDTH_PX / 4);
        assert_eq!(rb.actual_w, GANTT_AXIS_WIDTH_PX / 4, "running: to now");
        assert_eq!(rb.predicted_w, GANTT_AXIS_WIDTH_PX * 3 / 4);
        assert_eq!(g.ticks.len() as u32, GANTT_TICKS + 1);
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration_text(850), "850ms");
        assert_eq!(duration_text(12_500), "12.5s");
        assert_eq!(duration_text(245_000), "4m 05s");
        assert_eq!(duration_text(7_380_000), "2h 03m");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abc", 4), "abc");
    }

    #[test]
    fn a_health_chart_covers_values_and_thresholds() {
        let samples = vec![
            (1_000, Some(0.01), true, "0.01".to_string()),
            (2_000, Some(0.02), true, "0.02".to_string()),
            (3_000, Some(0.09), false, "0.09".to_string()),
        ];
        let chart = spark(&samples, Some(0.05), None);
        assert_eq!(chart.dots.len(), 3);
        assert_eq!(chart.dots[0].x, SPARK_PAD_PX);
        assert_eq!(chart.dots[2].x, SPARK_WIDTH_PX - SPARK_PAD_PX);
        // Higher values are drawn higher (smaller y); the threshold lies between.
        assert!(chart.dots[2].y < chart.thresholds[0].y);
        assert!(chart.thresholds[0].y < chart.dots[1].y);
        assert!(chart.dots.iter().all(|d| d.y <= SPARK_HEIGHT_PX));
        let exits = spark(&[(5, None, false, "exit 1".to_string())], None, None);
        assert!(exits.points.is_empty());
        assert_eq!(exits.dots[0].x, SPARK_WIDTH_PX / 2);
    }

    #[test]
    fn a_trend_spreads_executions_and_scales_values_from_zero() {
        let labels: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let series = [
            TrendInput {
                name: "drain",
                class: "s-drain",
                values: vec![Some(10.0), None, Some(40.0)],
            },
            TrendInput {
                name: "restore",
                class: "s-restore",
                values: vec![Some(0.0), Some(20.0), Some(30.0)],
            },
        ];
        let t = trend(&labels, &series, |v| format!("{v}"));
        assert_eq!(t.values, 5);
        let drain = &t.lines[0];
        assert_eq!(drain.dots.len(), 2, "the missing value is not drawn");
        assert_eq!(drain.dots[0].x, t.plot_left);
        assert_eq!(drain.dots[1].x, t.plot_right);
        assert_eq!(
            drain.dots[1].y, t.plot_top,
            "the largest value is at the top"
        );
        assert_eq!(t.lines[1].dots[0].y, t.plot_bottom, "0 is at the bottom");
        assert_eq!(drain.dots[1].title, "c: drain 40");
        assert_eq!(t.y_ticks.last().map(|l| l.label.as_str()), Some("40"));
        assert_eq!(t.x_ticks.len(), 2);
        let empty = trend(&[], &[], |v| format!("{v}"));
        assert_eq!(empty.values, 0);
        assert!(empty.x_ticks.is_empty());
    }
}
