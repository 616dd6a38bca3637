//! `levee-fleet-bench`: the time to resolve and preflight a maintenance scope in a large
//! fleet, next to the time to merely load that fleet, measured in the same run.
//!
//! ```sh
//! cargo run --release -p levee-fleet --bin levee-fleet-bench
//! cargo run --release -p levee-fleet --bin levee-fleet-bench -- --hosts 20000 --services 2000
//! ```
//!
//! The fleet is made up from `--seed` (see `levee_fleet::synthetic`), stored as the compiled
//! JSON the server keeps, and then timed: loading it back (JSON to `FleetDef`), building the
//! index, resolving a scope of two rows, and the preflight of that scope with 1% of the
//! hosts down and overlapping maintenance holding more. Each time is the median of
//! `--repeat` runs. Goal: preflight under 50 ms.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use levee_fleet::synthetic::{self, HOSTS_PER_RACK, RACKS_PER_ROW, Rng};
use levee_fleet::{FleetIndex, HostId, Reservation, Window, preflight};
use levee_model::FleetDef;

/// The goal for resolve + preflight of the scope, in milliseconds.
const PREFLIGHT_GOAL_MS: f64 = 50.0;
/// Most repeats accepted, so a typo cannot start a run that never ends.
const MAX_REPEATS: usize = 1_000;
/// Share of the fleet already down, in hundredths of a percent.
const DOWN_BASIS_POINTS: u64 = 100;
/// Overlapping maintenances holding hosts during the benchmark's window.
const OVERLAPPING_MAINTENANCES: usize = 50;
/// Hosts each overlapping maintenance holds (one rack's worth and a few more).
const HOSTS_PER_OVERLAPPING_MAINTENANCE: usize = 100;
const HOUR_MS: i64 = 3_600_000;

struct Options {
    seed: u64,
    hosts: usize,
    services: usize,
    pool_size: usize,
    scope_rows: usize,
    repeat: usize,
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        seed: 1,
        hosts: 100_000,
        services: 10_000,
        pool_size: 30,
        scope_rows: 2,
        repeat: 21,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number: u64 = value
            .parse()
            .map_err(|_| format!("{flag} takes a whole number, not {value:?}"))?;
        match flag.as_str() {
            "--seed" => options.seed = number,
            "--hosts" => options.hosts = number as usize,
            "--services" => options.services = number as usize,
            "--pool-size" => options.pool_size = number as usize,
            "--scope-rows" => options.scope_rows = number as usize,
            "--repeat" => options.repeat = number as usize,
            other => {
                return Err(format!(
                    "unknown option {other}; the options are --seed, --hosts, --services, \
                     --pool-size, --scope-rows and --repeat"
                ));
            }
        }
    }
    let rows = options.hosts.div_ceil(HOSTS_PER_RACK * RACKS_PER_ROW);
    if options.hosts == 0 || options.scope_rows == 0 || options.scope_rows > rows {
        return Err(format!(
            "--scope-rows must be between 1 and the fleet's {rows} rows, with at least one host"
        ));
    }
    if !(1..=MAX_REPEATS).contains(&options.repeat) {
        return Err(format!("--repeat must be between 1 and {MAX_REPEATS}"));
    }
    if options.pool_size == 0 || options.pool_size > options.hosts {
        return Err("--pool-size must be between 1 and --hosts".to_string());
    }
    Ok(options)
}

/// Runs `work` `repeat` times and returns the median duration and the last result.
fn median<T>(repeat: usize, mut work: impl FnMut() -> T) -> (Duration, T) {
    let mut times = Vec::with_capacity(repeat);
    let mut last = None;
    for _ in 0..repeat {
        let started = Instant::now();
        let result = std::hint::black_box(work());
        times.push(started.elapsed());
        last = Some(result);
    }
    times.sort_unstable();
    let result = last.expect("repeat is at least 1");
    (times[times.len() / 2], result)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("levee-fleet-bench: {message}");
            return ExitCode::from(2);
        }
    };
    let made = Instant::now();
    let fleet = synthetic::fleet(
        options.seed,
        options.hosts,
        options.services,
        options.pool_size,
    );
    let stored = serde_json::to_string(&fleet).expect("a fleet serializes");
    println!(
        "fleet: {} hosts, {} services of {} hosts, seed {} (made in {:.0} ms, {:.1} MB as \
         stored JSON)",
        options.hosts,
        options.services,
        options.pool_size,
        options.seed,
        ms(made.elapsed()),
        stored.len() as f64 / 1e6
    );
    let repeat_slow = options.repeat.min(5);
    let (load_time, loaded) = median(repeat_slow, || {
        serde_json::from_str::<FleetDef>(&stored).expect("the stored fleet loads")
    });
    let (index_time, index) = median(repeat_slow, || {
        FleetIndex::build(&loaded).expect("the synthetic fleet indexes")
    });

    let mut rng = Rng::new(options.seed ^ 0xD0_7E);
    let rows: Vec<String> = (0..options.scope_rows)
        .map(|i| synthetic::row_name(i + 1))
        .collect();
    let selector = format!("row in ({})", rows.join(", "));
    let down: Vec<HostId> = (0..index.host_count() as HostId)
        .filter(|_| rng.below(10_000) < DOWN_BASIS_POINTS)
        .collect();
    let window = Window {
        start_ms: 10 * HOUR_MS,
        end_ms: 14 * HOUR_MS,
    };
    let reservations: Vec<Reservation> = (0..OVERLAPPING_MAINTENANCES)
        .map(|k| Reservation {
            maintenance_id: format!("m{k}"),
            hosts: (0..HOSTS_PER_OVERLAPPING_MAINTENANCE)
                .map(|_| format!("h{}", rng.below(options.hosts as u64)))
                .collect(),
            window: Window {
                start_ms: window.start_ms + (k as i64 % 4 - 2) * HOUR_MS,
                end_ms: window.end_ms + (k as i64 % 3) * HOUR_MS,
            },
        })
        .collect();
    let (resolve_time, scope) = median(options.repeat, || {
        index.resolve(&selector).expect("the scope resolves")
    });
    let (preflight_time, report) = median(options.repeat, || {
        preflight(&index, &scope, &down, &reservations, window)
    });
    let failing = report.failing().count();
    let baseline = load_time + index_time;
    let checked = resolve_time + preflight_time;
    println!(
        "scope: `{selector}`: {} hosts, {} pools touched, {} failing, {} hosts down, {} \
         overlapping maintenances",
        report.scope_hosts,
        report.pools.len(),
        failing,
        down.len(),
        report.overlapping.len()
    );
    println!(
        "load the stored fleet (JSON -> FleetDef): {:>9.2} ms",
        ms(load_time)
    );
    println!(
        "build the index:                          {:>9.2} ms",
        ms(index_time)
    );
    println!(
        "baseline, merely loading the fleet:       {:>9.2} ms",
        ms(baseline)
    );
    println!(
        "resolve the scope:                        {:>9.2} ms",
        ms(resolve_time)
    );
    println!(
        "preflight the scope:                      {:>9.2} ms",
        ms(preflight_time)
    );
    println!(
        "resolve + preflight:                      {:>9.2} ms",
        ms(checked)
    );
    println!(
        "ratio, resolve + preflight / loading:     {:>9.4} (1/{:.0})",
        ms(checked) / ms(baseline),
        ms(baseline) / ms(checked).max(f64::MIN_POSITIVE)
    );
    let met = ms(checked) < PREFLIGHT_GOAL_MS;
    println!(
        "goal: resolve + preflight under {PREFLIGHT_GOAL_MS} ms: {}",
        if met { "met" } else { "MISSED" }
    );
    if met {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
