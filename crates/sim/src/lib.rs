//! A simulated fleet to rehearse drains on: datacenters, services of the four traffic types
//! with capacity, demand and dependencies, load-balancer weights, and health metrics that
//! respond to them.
//!
//! The model is pure and deterministic: [`Sim`] holds the state, [`Sim::advance`] moves it
//! by a duration (virtual time; nothing here reads a clock), and every metric is a function
//! of the state. [`SimHandle`] shares one `Sim` with the engine as a traffic backend
//! (`traffic_shift` with `backend: sim`, targets `SERVICE/DC`) and a metric source (queries
//! such as `max(levee_sim_error_ratio{service="web"})`), advancing it in real time.
//!
//! How the metrics respond:
//! - a service's demand splits over its datacenters by weight; `utilisation` is load over
//!   capacity, and the error ratio climbs once utilisation passes [`OVERLOAD_UTILISATION`]
//!   (draining too fast into too little capacity breaks the receiving side);
//! - a service still taking traffic in a datacenter where one of its dependencies has been
//!   drained calls across datacenters: its latency and errors rise (drain dependents first);
//! - sticky services keep their sessions for a while after their weight reaches zero, so a
//!   drain must wait for sessions to fall;
//! - with every weight at zero, the whole demand is unserved;
//! - replicated and stateful services replicate into every datacenter but the primary's
//!   (replicated: into all of them) at their write rate ([`REPLICATION_MB_PER_REQUEST`] per
//!   request/s); while replication into a target is stopped (or the target is in
//!   maintenance) a backlog grows, and the replication lag is that backlog in seconds of
//!   writes; started again, the target catches up at its throttle (unthrottled:
//!   [`UNTHROTTLED_CATCHUP_MBPS`]) minus the write rate;
//! - a datacenter's replication traffic shares [`NETWORK_CAPACITY_MBPS_PER_DC`]: past it,
//!   every catch-up there slows to its share and every service serving there sees errors
//!   rise ([`SATURATION_ERROR_RATIO`] per 100% over) — the restore that saturates the
//!   network;
//! - a stateful service has one primary datacenter; with its primary in maintenance, every
//!   datacenter serving the service fails its writes ([`PRIMARY_DOWN_ERROR_RATIO`]), so a
//!   drain must promote a replica elsewhere first. A replica more than
//!   [`PROMOTE_MAX_LAG_S`] behind refuses to be promoted (it would lose writes).

pub mod deps;
pub mod rehearsal;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use levee_stages::{MetricError, MetricSource, Replication, ServerStatus, TrafficBackend};
use serde::{Deserialize, Serialize};

/// Utilisation above which a datacenter's errors start to rise.
pub const OVERLOAD_UTILISATION: f64 = 0.85;
/// The error ratio of a healthy service.
pub const BASE_ERROR_RATIO: f64 = 0.001;
/// Errors added while a dependency is drained under a service still taking traffic.
pub const DRAINED_DEPENDENCY_ERROR_RATIO: f64 = 0.05;
/// How long sticky sessions take to fall by about two thirds once no new ones arrive, in
/// milliseconds.
pub const SESSION_DECAY_MS: f64 = 1_000.0;
/// Sessions per request/s of load on a sticky service.
pub const SESSIONS_PER_RPS: f64 = 2.0;
/// The utilisation of a generated fleet's datacenters once one datacenter is drained.
pub const GENERATED_UTILISATION_WITH_ONE_DOWN: f64 = 0.75;
/// The weight every target starts at.
pub const FULL_WEIGHT: u32 = 100;
/// Megabytes per second a replicated or stateful service writes (and replicates) per
/// request/s of demand.
pub const REPLICATION_MB_PER_REQUEST: f64 = 0.001;
/// How fast one replica catches up when nothing throttles it, in megabytes per second.
pub const UNTHROTTLED_CATCHUP_MBPS: f64 = 100.0;
/// The network each datacenter has for replication, in megabytes per second.
pub const NETWORK_CAPACITY_MBPS_PER_DC: f64 = 60.0;
/// Errors added to every service serving in a datacenter per 100% of replication traffic
/// beyond its network.
pub const SATURATION_ERROR_RATIO: f64 = 0.5;
/// Errors of a stateful service whose primary is in maintenance.
pub const PRIMARY_DOWN_ERROR_RATIO: f64 = 0.5;
/// The most lag, in seconds, a replica may have and still be promoted.
pub const PROMOTE_MAX_LAG_S: f64 = 1.0;
/// How often [`SimHandle::run_real_time`] advances the simulation, in milliseconds.
pub const REAL_TIME_TICK_MS: u64 = 100;

/// How a service's traffic must be moved (Maelstrom's four kinds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficKind {
    Stateless,
    Sticky,
    Replicated,
    Stateful,
}

impl TrafficKind {
    /// The template of `examples/demo/evacuate.yaml` that moves this kind of traffic: the
    /// stage Maelstrom's kind needs (a stateful service comes back as a replica catching up;
    /// its primary stays where the evacuation promoted it).
    pub fn template(self, direction: deps::Direction) -> &'static str {
        use deps::Direction::{Evacuate, Restore};
        match (self, direction) {
            (TrafficKind::Stateless, Evacuate) => "shift-out",
            (TrafficKind::Stateless, Restore) => "shift-in",
            (TrafficKind::Sticky, Evacuate) => "sticky-out",
            (TrafficKind::Sticky, Restore) => "sticky-in",
            (TrafficKind::Replicated, Evacuate) => "replica-out",
            (TrafficKind::Replicated | TrafficKind::Stateful, Restore) => "replica-in",
            (TrafficKind::Stateful, Evacuate) => "primary-out",
        }
    }
}

impl SimSpec {
    /// Each service's template for `direction`, by its kind of traffic.
    pub fn templates(&self, direction: deps::Direction) -> BTreeMap<String, String> {
        self.services
            .iter()
            .map(|service| {
                (
                    service.name.clone(),
                    service.kind.template(direction).to_string(),
                )
            })
            .collect()
    }
}

/// One service as the simulation sees it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub kind: TrafficKind,
    /// Requests per second over all datacenters.
    pub demand_rps: f64,
    /// Requests per second each datacenter can serve.
    pub capacity_rps: BTreeMap<String, f64>,
    /// Services this one calls (RPC) or needs.
    #[serde(default)]
    pub depends_on: Vec<String>,
}

/// A fleet to simulate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SimSpec {
    pub datacenters: Vec<String>,
    pub services: Vec<ServiceSpec>,
    /// How long sticky sessions take to fall by about two thirds once no new ones arrive, in
    /// milliseconds ([`SESSION_DECAY_MS`] unless set: a real-time demo; a rehearsal in
    /// virtual time uses minutes, as real sessions do).
    #[serde(default = "default_session_decay_ms")]
    pub session_decay_ms: f64,
}

fn default_session_decay_ms() -> f64 {
    SESSION_DECAY_MS
}

impl SimSpec {
    /// Two datacenters and four services, one of each traffic kind, with a dependency chain:
    /// `web` (stateless) calls `sessions` (sticky) and `api` (stateless)... The fleet `levee
    /// demo` drains. Each datacenter can carry the whole demand of every service (at 77% utilisation).
    /// A fleet of `services` services over `datacenters`, with the layered call graph of
    /// [`deps::generated_graph`] (deterministic from `seed`): about 60% stateless, 15% sticky,
    /// 15% replicated and 10% stateful services; entry points carry the most demand. Every
    /// datacenter has the capacity to carry its share of the demand with one datacenter gone,
    /// at [`GENERATED_UTILISATION_WITH_ONE_DOWN`].
    pub fn generated(
        services: usize,
        datacenters: &[&str],
        seed: u64,
    ) -> (SimSpec, Vec<deps::Edge>) {
        let edges = deps::generated_graph(services, seed);
        let mut callers: BTreeMap<&str, usize> = BTreeMap::new();
        let mut names: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
        for edge in &edges {
            *callers.entry(edge.child.as_str()).or_default() += 1;
            names.insert(&edge.parent);
            names.insert(&edge.child);
        }
        let survivors = datacenters.len().saturating_sub(1).max(1) as f64;
        let specs = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let kind = match (i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 20 {
                    0..=11 => TrafficKind::Stateless,
                    12..=14 => TrafficKind::Sticky,
                    15..=17 => TrafficKind::Replicated,
                    _ => TrafficKind::Stateful,
                };
                let demand = if callers.contains_key(name) {
                    300.0
                } else {
                    1_000.0
                };
                ServiceSpec {
                    name: name.to_string(),
                    kind,
                    demand_rps: demand,
                    capacity_rps: datacenters
                        .iter()
                        .map(|dc| {
                            (
                                dc.to_string(),
                                demand / survivors / GENERATED_UTILISATION_WITH_ONE_DOWN,
                            )
                        })
                        .collect(),
                    depends_on: edges
                        .iter()
                        .filter(|e| e.parent == *name)
                        .map(|e| e.child.clone())
                        .collect(),
                }
            })
            .collect();
        (
            SimSpec {
                datacenters: datacenters.iter().map(|d| d.to_string()).collect(),
                services: specs,
                session_decay_ms: SESSION_DECAY_MS,
            },
            edges,
        )
    }

    pub fn demo() -> SimSpec {
        let dcs = ["east", "west"];
        let service = |name: &str, kind, demand: f64, depends: &[&str]| ServiceSpec {
            name: name.to_string(),
            kind,
            demand_rps: demand,
            capacity_rps: dcs
                .iter()
                .map(|dc| (dc.to_string(), demand * 1.3))
                .collect(),
            depends_on: depends.iter().map(|d| d.to_string()).collect(),
        };
        SimSpec {
            datacenters: dcs.iter().map(|d| d.to_string()).collect(),
            session_decay_ms: SESSION_DECAY_MS,
            services: vec![
                service("web", TrafficKind::Stateless, 1_000.0, &["sessions", "api"]),
                service("sessions", TrafficKind::Sticky, 400.0, &["db"]),
                service("api", TrafficKind::Stateless, 2_000.0, &["db"]),
                service("db", TrafficKind::Stateful, 800.0, &[]),
            ],
        }
    }
}

/// One metric value with its labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    pub service: String,
    pub dc: Option<String>,
    pub value: f64,
}

#[derive(Clone, Debug, Default)]
struct Target {
    weight: u32,
    maintenance: bool,
    draining: bool,
    sessions: f64,
    /// Whether replication into the target is on (for services that replicate into it).
    replicating: bool,
    /// Writes not yet replicated into the target, in megabytes.
    backlog_mb: f64,
    /// The catch-up's throttle, in megabytes per second; `None`: unthrottled.
    catchup_limit_mbps: Option<f64>,
}

/// The simulated fleet's state.
#[derive(Clone, Debug)]
pub struct Sim {
    spec: SimSpec,
    targets: HashMap<(String, String), Target>,
    /// The primary datacenter of each stateful service.
    primaries: HashMap<String, String>,
    now_ms: i64,
}

impl Sim {
    /// A fleet with every target at full weight and sticky sessions at their steady state.
    pub fn new(spec: SimSpec) -> Result<Sim, String> {
        if spec.datacenters.is_empty() {
            return Err("a simulated fleet needs at least one datacenter".to_string());
        }
        let names: Vec<&str> = spec.services.iter().map(|s| s.name.as_str()).collect();
        for service in &spec.services {
            for dep in &service.depends_on {
                if !names.contains(&dep.as_str()) {
                    return Err(format!(
                        "service `{}` depends on `{dep}`, which is not in the fleet",
                        service.name
                    ));
                }
            }
            for dc in service.capacity_rps.keys() {
                if !spec.datacenters.contains(dc) {
                    return Err(format!(
                        "service `{}` has capacity in `{dc}`, which is not a datacenter",
                        service.name
                    ));
                }
            }
        }
        let mut sim = Sim {
            targets: HashMap::new(),
            primaries: HashMap::new(),
            now_ms: 0,
            spec,
        };
        for service in &sim.spec.services {
            if service.kind == TrafficKind::Stateful {
                sim.primaries
                    .insert(service.name.clone(), sim.spec.datacenters[0].clone());
            }
            for dc in &sim.spec.datacenters {
                sim.targets.insert(
                    (service.name.clone(), dc.clone()),
                    Target {
                        weight: FULL_WEIGHT,
                        replicating: true,
                        ..Target::default()
                    },
                );
            }
        }
        for service in sim.spec.services.clone() {
            if service.kind == TrafficKind::Sticky {
                for dc in sim.spec.datacenters.clone() {
                    let load = sim.load(&service, &dc);
                    if let Some(target) = sim.targets.get_mut(&(service.name.clone(), dc)) {
                        target.sessions = load * SESSIONS_PER_RPS;
                    }
                }
            }
        }
        Ok(sim)
    }

    pub fn spec(&self) -> &SimSpec {
        &self.spec
    }

    /// Virtual time since the start, in milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    fn key(target: &str) -> Result<(String, String), String> {
        match target.split_once('/') {
            Some((service, dc)) if !service.is_empty() && !dc.is_empty() => {
                Ok((service.to_string(), dc.to_string()))
            }
            _ => Err(format!("`{target}` is not SERVICE/DC")),
        }
    }

    fn target(&self, target: &str) -> Result<&Target, String> {
        let key = Self::key(target)?;
        self.targets
            .get(&key)
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))
    }

    /// Sets a target's weight (`SERVICE/DC`).
    pub fn set_weight(&mut self, target: &str, weight: u32) -> Result<(), String> {
        let key = Self::key(target)?;
        let entry = self
            .targets
            .get_mut(&key)
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))?;
        entry.weight = weight;
        Ok(())
    }

    /// `ready`, `drain` or `maint`.
    pub fn set_state(&mut self, target: &str, state: &str) -> Result<(), String> {
        let key = Self::key(target)?;
        let entry = self
            .targets
            .get_mut(&key)
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))?;
        match state {
            "ready" => {
                entry.maintenance = false;
                entry.draining = false;
            }
            "drain" => entry.draining = true,
            "maint" => {
                entry.maintenance = true;
                entry.draining = false;
            }
            other => return Err(format!("`{other}` is not ready, drain or maint")),
        }
        Ok(())
    }

    fn effective_weight(&self, service: &str, dc: &str) -> f64 {
        self.targets
            .get(&(service.to_string(), dc.to_string()))
            .map_or(0.0, |t| {
                if t.maintenance || t.draining {
                    0.0
                } else {
                    f64::from(t.weight)
                }
            })
    }

    /// Requests per second a datacenter receives for a service.
    fn load(&self, service: &ServiceSpec, dc: &str) -> f64 {
        let total: f64 = self
            .spec
            .datacenters
            .iter()
            .map(|d| self.effective_weight(&service.name, d))
            .sum();
        if total <= 0.0 {
            return 0.0;
        }
        service.demand_rps * self.effective_weight(&service.name, dc) / total
    }

    /// Moves virtual time on: sticky sessions follow their load, replication backlogs grow
    /// or catch up.
    pub fn advance(&mut self, by: Duration) {
        let dt = by.as_millis() as f64;
        self.now_ms += by.as_millis() as i64;
        let dt_s = dt / 1_000.0;
        let mut moved: Vec<((String, String), f64)> = Vec::new();
        for dc in &self.spec.datacenters {
            let share = self.network_share(dc);
            for service in &self.spec.services {
                if !self.replicates_into(service, dc) {
                    continue;
                }
                let key = (service.name.clone(), dc.clone());
                let target = &self.targets[&key];
                let write = write_mbps(service);
                let backlog = if self.flowing(target) {
                    let rate = self.wanted_mbps(service, target) * share;
                    target.backlog_mb + (write - rate) * dt_s
                } else {
                    target.backlog_mb + write * dt_s
                };
                moved.push((key, backlog.max(0.0)));
            }
        }
        for (key, backlog) in moved {
            if let Some(target) = self.targets.get_mut(&key) {
                target.backlog_mb = backlog;
            }
        }
        let factor = 1.0 - (-dt / self.spec.session_decay_ms.max(1.0)).exp();
        for service in self.spec.services.clone() {
            if service.kind != TrafficKind::Sticky {
                continue;
            }
            for dc in self.spec.datacenters.clone() {
                let goal = self.load(&service, &dc) * SESSIONS_PER_RPS;
                if let Some(target) = self.targets.get_mut(&(service.name.clone(), dc)) {
                    target.sessions += (goal - target.sessions) * factor;
                    if target.sessions < 0.5 {
                        target.sessions = 0.0;
                    }
                }
            }
        }
    }

    /// Whether `service` replicates into its target in `dc` (replicated: everywhere;
    /// stateful: everywhere but its primary).
    fn replicates_into(&self, service: &ServiceSpec, dc: &str) -> bool {
        match service.kind {
            TrafficKind::Replicated => true,
            TrafficKind::Stateful => {
                self.primaries.get(&service.name).map(String::as_str) != Some(dc)
            }
            TrafficKind::Stateless | TrafficKind::Sticky => false,
        }
    }

    fn flowing(&self, target: &Target) -> bool {
        target.replicating && !target.maintenance
    }

    /// What a flowing replica asks of the network: its writes, plus its catch-up (up to its
    /// throttle) while it has a backlog.
    fn wanted_mbps(&self, service: &ServiceSpec, target: &Target) -> f64 {
        let write = write_mbps(service);
        if target.backlog_mb > 0.0 {
            target
                .catchup_limit_mbps
                .unwrap_or(UNTHROTTLED_CATCHUP_MBPS)
                .max(write)
        } else {
            write
        }
    }

    /// Replication traffic into `dc` that its replicas ask for, in megabytes per second.
    fn network_demand_mbps(&self, dc: &str) -> f64 {
        self.spec
            .services
            .iter()
            .filter(|service| self.replicates_into(service, dc))
            .filter_map(|service| {
                let target = &self.targets[&(service.name.clone(), dc.to_string())];
                self.flowing(target)
                    .then(|| self.wanted_mbps(service, target))
            })
            .sum()
    }

    /// The share of what they ask that `dc`'s replicas get: 1 unless the network is
    /// saturated.
    fn network_share(&self, dc: &str) -> f64 {
        let demand = self.network_demand_mbps(dc);
        if demand > NETWORK_CAPACITY_MBPS_PER_DC {
            NETWORK_CAPACITY_MBPS_PER_DC / demand
        } else {
            1.0
        }
    }

    /// Ends `fraction` of a target's sessions (restarting that share of its jobs).
    pub fn end_sessions(&mut self, target: &str, fraction: f64) -> Result<u64, String> {
        let key = Self::key(target)?;
        let entry = self
            .targets
            .get_mut(&key)
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))?;
        let ended = (entry.sessions * fraction.clamp(0.0, 1.0)).round();
        entry.sessions = (entry.sessions - ended).max(0.0);
        if entry.sessions < 0.5 {
            entry.sessions = 0.0;
        }
        Ok(ended as u64)
    }

    fn service(&self, name: &str) -> Result<&ServiceSpec, String> {
        self.spec
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("the simulated fleet has no service `{name}`"))
    }

    /// Stops replication into a target, or starts it with its catch-up throttled to
    /// `limit_mbps` (`None`: unthrottled).
    pub fn set_replication(
        &mut self,
        target: &str,
        running: bool,
        limit_mbps: Option<f64>,
    ) -> Result<(), String> {
        let (service, dc) = Self::key(target)?;
        let spec = self.service(&service)?.clone();
        if !self.replicates_into(&spec, &dc) {
            return Err(format!(
                "nothing replicates into `{target}`: `{service}` is {}",
                match spec.kind {
                    TrafficKind::Stateful => "stateful and this is its primary",
                    TrafficKind::Stateless => "stateless",
                    TrafficKind::Sticky => "sticky",
                    TrafficKind::Replicated => "replicated",
                }
            ));
        }
        let entry = self
            .targets
            .get_mut(&(service, dc))
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))?;
        entry.replicating = running;
        entry.catchup_limit_mbps = limit_mbps;
        Ok(())
    }

    /// Makes a stateful service's target its primary; the old primary becomes a replica.
    pub fn promote(&mut self, target: &str) -> Result<(), String> {
        let (service, dc) = Self::key(target)?;
        let spec = self.service(&service)?.clone();
        if spec.kind != TrafficKind::Stateful {
            return Err(format!("`{service}` is not stateful: it has no primary"));
        }
        let old = self.primaries.get(&service).cloned().unwrap_or_default();
        if old == dc {
            return Ok(());
        }
        let entry = self
            .targets
            .get(&(service.clone(), dc.clone()))
            .ok_or_else(|| format!("the simulated fleet has no `{target}`"))?;
        let lag_s = entry.backlog_mb / write_mbps(&spec).max(f64::MIN_POSITIVE);
        if lag_s > PROMOTE_MAX_LAG_S || entry.maintenance {
            return Err(format!(
                "`{target}` cannot be promoted: it is {lag_s:.0} s behind{}; promoting it \
                 would lose writes",
                if entry.maintenance {
                    " and in maintenance"
                } else {
                    ""
                }
            ));
        }
        self.primaries.insert(service.clone(), dc);
        if let Some(old_target) = self.targets.get_mut(&(service, old)) {
            old_target.replicating = true;
            old_target.backlog_mb = 0.0;
            old_target.catchup_limit_mbps = None;
        }
        Ok(())
    }

    /// The primary datacenter of a stateful service.
    pub fn primary(&self, service: &str) -> Option<&str> {
        self.primaries.get(service).map(String::as_str)
    }

    /// Every metric now.
    pub fn samples(&self) -> Vec<Sample> {
        let mut samples = Vec::new();
        // Once per datacenter, not per service: every query reads every sample.
        let network: HashMap<&str, f64> = self
            .spec
            .datacenters
            .iter()
            .map(|dc| (dc.as_str(), self.network_demand_mbps(dc)))
            .collect();
        let share = |dc: &str| {
            let demand = network.get(dc).copied().unwrap_or(0.0);
            if demand > NETWORK_CAPACITY_MBPS_PER_DC {
                NETWORK_CAPACITY_MBPS_PER_DC / demand
            } else {
                1.0
            }
        };
        for service in &self.spec.services {
            let total_weight: f64 = self
                .spec
                .datacenters
                .iter()
                .map(|d| self.effective_weight(&service.name, d))
                .sum();
            samples.push(Sample {
                name: "levee_sim_unserved_ratio",
                service: service.name.clone(),
                dc: None,
                value: if total_weight > 0.0 { 0.0 } else { 1.0 },
            });
            for dc in &self.spec.datacenters {
                let load = self.load(service, dc);
                let capacity = service.capacity_rps.get(dc).copied().unwrap_or(0.0);
                let utilisation = if capacity > 0.0 {
                    load / capacity
                } else if load > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                };
                let serving = load > 0.0;
                let drained_deps = service
                    .depends_on
                    .iter()
                    .filter(|dep| serving && self.effective_weight(dep, dc) <= 0.0)
                    .count() as f64;
                let overload = (utilisation - OVERLOAD_UTILISATION).max(0.0) * 2.0;
                let saturation = (network[dc.as_str()] / NETWORK_CAPACITY_MBPS_PER_DC - 1.0)
                    .max(0.0)
                    * SATURATION_ERROR_RATIO;
                let primary_down = self
                    .primaries
                    .get(&service.name)
                    .and_then(|primary| self.targets.get(&(service.name.clone(), primary.clone())))
                    .is_some_and(|primary| primary.maintenance);
                let errors = if serving {
                    (BASE_ERROR_RATIO
                        + overload
                        + saturation
                        + drained_deps * DRAINED_DEPENDENCY_ERROR_RATIO
                        + if primary_down {
                            PRIMARY_DOWN_ERROR_RATIO
                        } else {
                            0.0
                        })
                    .min(1.0)
                } else {
                    0.0
                };
                let latency = if serving {
                    20.0 * (1.0 + utilisation.min(4.0).powi(4)) + drained_deps * 40.0
                } else {
                    0.0
                };
                let target = &self.targets[&(service.name.clone(), dc.clone())];
                let dc = Some(dc.clone());
                let mut push = |name, value| {
                    samples.push(Sample {
                        name,
                        service: service.name.clone(),
                        dc: dc.clone(),
                        value,
                    })
                };
                push("levee_sim_weight", f64::from(target.weight));
                push("levee_sim_load_rps", load);
                push("levee_sim_utilisation", utilisation);
                push("levee_sim_error_ratio", errors);
                push("levee_sim_latency_ms", latency);
                push("levee_sim_sessions", target.sessions.round());
                if self.replicates_into(service, dc.as_deref().unwrap_or_default()) {
                    let write = write_mbps(service);
                    push(
                        "levee_sim_replication_lag_seconds",
                        target.backlog_mb / write.max(f64::MIN_POSITIVE),
                    );
                    let dc_name = dc.as_deref().unwrap_or_default();
                    push(
                        "levee_sim_replication_mbps",
                        if self.flowing(target) {
                            self.wanted_mbps(service, target) * share(dc_name)
                        } else {
                            0.0
                        },
                    );
                }
                if let Some(primary) = self.primaries.get(&service.name) {
                    push(
                        "levee_sim_primary",
                        if Some(primary) == dc.as_ref() {
                            1.0
                        } else {
                            0.0
                        },
                    );
                }
            }
        }
        for dc in &self.spec.datacenters {
            samples.push(Sample {
                name: "levee_sim_network_utilisation",
                service: String::new(),
                dc: Some(dc.clone()),
                value: network[dc.as_str()] / NETWORK_CAPACITY_MBPS_PER_DC,
            });
        }
        samples
    }

    /// The metrics in Prometheus's text format.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        let mut samples = self.samples();
        samples.sort_by(|a, b| a.name.cmp(b.name));
        for sample in samples {
            if sample.name != last {
                out.push_str(&format!("# TYPE {} gauge\n", sample.name));
                last = sample.name;
            }
            let value = if sample.value.is_infinite() {
                "+Inf".to_string()
            } else {
                sample.value.to_string()
            };
            match &sample.dc {
                Some(dc) if sample.service.is_empty() => {
                    out.push_str(&format!("{}{{dc=\"{}\"}} {value}\n", sample.name, dc))
                }
                Some(dc) => out.push_str(&format!(
                    "{}{{service=\"{}\",dc=\"{}\"}} {value}\n",
                    sample.name, sample.service, dc
                )),
                None => out.push_str(&format!(
                    "{}{{service=\"{}\"}} {value}\n",
                    sample.name, sample.service
                )),
            }
        }
        out
    }

    /// Answers a query of the form `[max|min|sum|avg(]NAME[{label="value",...}][)]`.
    pub fn query(&self, query: &str) -> Result<f64, MetricError> {
        let parsed = Query::parse(query).map_err(|reason| MetricError::Unreachable {
            reason: format!("the simulator cannot read `{query}`: {reason}"),
        })?;
        let values: Vec<f64> = self
            .samples()
            .into_iter()
            .filter(|s| s.name == parsed.name)
            .filter(|s| {
                parsed.labels.iter().all(|(k, v)| match k.as_str() {
                    "service" => &s.service == v,
                    "dc" => s.dc.as_deref() == Some(v.as_str()),
                    _ => false,
                })
            })
            .map(|s| s.value)
            .collect();
        if values.is_empty() {
            return Err(MetricError::NoData {
                query: query.to_string(),
            });
        }
        let value = match parsed.aggregate.as_deref() {
            None if values.len() == 1 => values[0],
            None => {
                return Err(MetricError::Ambiguous {
                    query: query.to_string(),
                    series: values.len(),
                });
            }
            Some("max") => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            Some("min") => values.iter().copied().fold(f64::INFINITY, f64::min),
            Some("sum") => values.iter().sum(),
            Some(_) => values.iter().sum::<f64>() / values.len() as f64,
        };
        if value.is_nan() {
            return Err(MetricError::NotANumber {
                query: query.to_string(),
            });
        }
        Ok(value)
    }

    fn status(&self, target: &str) -> Result<ServerStatus, String> {
        let t = self.target(target)?;
        Ok(ServerStatus {
            weight: t.weight,
            initial_weight: FULL_WEIGHT,
            maintenance: t.maintenance,
            draining: t.draining,
            up: true,
            sessions: t.sessions.round() as u64,
        })
    }
}

/// What a service writes, and so replicates, in megabytes per second.
fn write_mbps(service: &ServiceSpec) -> f64 {
    service.demand_rps * REPLICATION_MB_PER_REQUEST
}

struct Query {
    aggregate: Option<String>,
    name: String,
    labels: Vec<(String, String)>,
}

impl Query {
    fn parse(text: &str) -> Result<Query, String> {
        let text = text.trim();
        let (aggregate, inner) = match text.split_once('(') {
            Some((agg, rest)) => {
                let agg = agg.trim();
                if !matches!(agg, "max" | "min" | "sum" | "avg") {
                    return Err(format!("`{agg}` is not max, min, sum or avg"));
                }
                let inner = rest
                    .trim_end()
                    .strip_suffix(')')
                    .ok_or("a `(` without its `)`")?;
                (Some(agg.to_string()), inner.trim())
            }
            None => (None, text),
        };
        let (name, labels) = match inner.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or("a `{` without its `}`")?;
                let mut labels = Vec::new();
                for pair in body.split(',').filter(|p| !p.trim().is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or("a label without `=`")?;
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .ok_or("label values are quoted")?;
                    labels.push((k.trim().to_string(), v.to_string()));
                }
                (name.trim(), labels)
            }
            None => (inner, Vec::new()),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`{name}` is not a metric name"));
        }
        Ok(Query {
            aggregate,
            name: name.to_string(),
            labels,
        })
    }
}

/// One simulation shared by the engine (as a traffic backend and a metric source) and
/// whatever advances it.
#[derive(Clone, Debug)]
pub struct SimHandle {
    sim: Arc<Mutex<Sim>>,
    /// With [`SimHandle::on_tokio_clock`]: when the simulation's time 0 was on Tokio's clock.
    origin: Option<tokio::time::Instant>,
}

impl SimHandle {
    /// A simulation that moves only when told to ([`Sim::advance`] through
    /// [`SimHandle::with`], or [`SimHandle::run_real_time`]).
    pub fn new(sim: Sim) -> SimHandle {
        SimHandle {
            sim: Arc::new(Mutex::new(sim)),
            origin: None,
        }
    }

    /// A simulation that follows Tokio's clock: before every read or change it is advanced
    /// to the time elapsed since now. On a paused Tokio clock (a rehearsal) that is virtual
    /// time, and the simulation's state is a function of the virtual times of the changes
    /// made to it, whatever the wall clock did meanwhile.
    pub fn on_tokio_clock(sim: Sim) -> SimHandle {
        let origin = tokio::time::Instant::now() - Duration::from_millis(sim.now_ms.max(0) as u64);
        SimHandle {
            sim: Arc::new(Mutex::new(sim)),
            origin: Some(origin),
        }
    }

    /// Reads or changes the simulation.
    pub fn with<T>(&self, f: impl FnOnce(&mut Sim) -> T) -> T {
        let mut sim = self.sim.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(origin) = self.origin {
            let elapsed_ms = origin.elapsed().as_millis() as i64;
            if elapsed_ms > sim.now_ms {
                let by = Duration::from_millis((elapsed_ms - sim.now_ms) as u64);
                sim.advance(by);
            }
        }
        f(&mut sim)
    }

    /// Advances the simulation with the wall clock, every [`REAL_TIME_TICK_MS`], until the
    /// handle's last other clone is dropped... or forever; run it in its own task.
    pub async fn run_real_time(self) {
        let mut tick = tokio::time::interval(Duration::from_millis(REAL_TIME_TICK_MS));
        let mut last = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            let now = tokio::time::Instant::now();
            let by = now - last;
            last = now;
            self.with(|sim| sim.advance(by));
        }
    }
}

#[async_trait]
impl MetricSource for SimHandle {
    async fn query(&self, query: &str) -> Result<f64, MetricError> {
        self.with(|sim| sim.query(query))
    }
}

#[async_trait]
impl TrafficBackend for SimHandle {
    fn name(&self) -> &'static str {
        "sim"
    }

    async fn status(&self, target: &str) -> Result<ServerStatus, String> {
        self.with(|sim| sim.status(target))
    }

    async fn set_weight(&self, target: &str, weight: u32) -> Result<(), String> {
        self.with(|sim| sim.set_weight(target, weight))
    }

    async fn set_state(&self, target: &str, state: &str) -> Result<(), String> {
        self.with(|sim| sim.set_state(target, state))
    }

    async fn end_sessions(&self, target: &str, fraction: f64) -> Result<u64, String> {
        self.with(|sim| sim.end_sessions(target, fraction))
    }

    async fn set_replication(&self, target: &str, replication: Replication) -> Result<(), String> {
        self.with(|sim| match replication {
            Replication::Stopped => sim.set_replication(target, false, None),
            Replication::Running { bandwidth_mbps } => {
                sim.set_replication(target, true, bandwidth_mbps)
            }
        })
    }

    async fn promote(&self, target: &str) -> Result<(), String> {
        self.with(|sim| sim.promote(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Sim {
        Sim::new(SimSpec::demo()).unwrap()
    }

    #[test]
    fn a_balanced_fleet_is_healthy() {
        let sim = demo();
        assert_eq!(
            sim.query("max(levee_sim_error_ratio{service=\"web\"})"),
            Ok(BASE_ERROR_RATIO)
        );
        assert!(matches!(
            sim.query("levee_sim_error_ratio{service=\"web\"}"),
            Err(MetricError::Ambiguous { series: 2, .. })
        ));
        assert!(matches!(
            sim.query("levee_sim_nothing"),
            Err(MetricError::NoData { .. })
        ));
        assert!(sim.query("rate(x[5m])").is_err());
    }

    #[test]
    fn draining_a_service_before_its_dependents_raises_their_errors() {
        let mut sim = demo();
        sim.set_weight("db/east", 0).unwrap();
        let api_east = sim
            .query("levee_sim_error_ratio{service=\"api\",dc=\"east\"}")
            .unwrap();
        assert!(api_east >= DRAINED_DEPENDENCY_ERROR_RATIO, "{api_east}");
        // Dependents first: with api and web gone from east, nothing there calls db.
        let mut sim = demo();
        for target in ["web/east", "sessions/east", "api/east", "db/east"] {
            sim.set_weight(target, 0).unwrap();
            sim.advance(Duration::from_secs(60));
        }
        assert!(
            sim.query("max(levee_sim_error_ratio)").unwrap() < 0.05,
            "{}",
            sim.render_prometheus()
        );
    }

    #[test]
    fn overloading_the_receiving_side_raises_its_errors() {
        let mut sim = demo();
        let mut spec = SimSpec::demo();
        spec.services[0].capacity_rps.insert("west".into(), 600.0);
        sim = Sim::new(spec).unwrap_or(sim);
        sim.set_weight("web/east", 0).unwrap();
        let west = sim
            .query("levee_sim_error_ratio{service=\"web\",dc=\"west\"}")
            .unwrap();
        assert!(west > 0.5, "{west}");
    }

    #[test]
    fn sticky_sessions_fall_over_time_after_the_weight_reaches_zero() {
        let mut sim = demo();
        sim.set_weight("sessions/east", 0).unwrap();
        let before = sim.status("sessions/east").unwrap().sessions;
        assert!(before > 300, "{before}");
        sim.advance(Duration::from_secs(5));
        let later = sim.status("sessions/east").unwrap().sessions;
        assert!(later < before && later > 0, "{later}");
        sim.advance(Duration::from_secs(60));
        assert_eq!(sim.status("sessions/east").unwrap().sessions, 0);
    }

    #[test]
    fn replication_lag_grows_while_stopped_and_falls_at_the_throttled_rate() {
        let mut sim = demo();
        let lag = |sim: &Sim| {
            sim.query("levee_sim_replication_lag_seconds{service=\"db\",dc=\"west\"}")
                .unwrap()
        };
        assert_eq!(lag(&sim), 0.0);
        // db is stateful, its primary in east: replicas elsewhere only.
        assert!(
            sim.query("levee_sim_replication_lag_seconds{service=\"db\",dc=\"east\"}")
                .is_err()
        );
        sim.set_replication("db/west", false, None).unwrap();
        sim.advance(Duration::from_secs(600));
        assert!((lag(&sim) - 600.0).abs() < 1e-6, "{}", lag(&sim));
        // db writes 0.8 MB/s; a 2 MB/s budget catches up 1.2 MB/s: 480 MB in 400 s.
        sim.set_replication("db/west", true, Some(2.0)).unwrap();
        sim.advance(Duration::from_secs(200));
        assert!((lag(&sim) - 300.0).abs() < 1e-6, "{}", lag(&sim));
        sim.advance(Duration::from_secs(200));
        assert_eq!(lag(&sim), 0.0);
        assert!(sim.set_replication("web/east", false, None).is_err());
    }

    #[test]
    fn an_unthrottled_catch_up_saturates_the_network_and_raises_errors() {
        let (spec, _) = SimSpec::generated(100, &["east", "west", "central"], 7);
        let mut sim = Sim::new(spec).unwrap();
        let replicas: Vec<String> = sim
            .spec()
            .services
            .iter()
            .filter(|s| s.kind == TrafficKind::Replicated)
            .map(|s| format!("{}/east", s.name))
            .collect();
        assert!(replicas.len() >= 5, "{}", replicas.len());
        for replica in &replicas {
            sim.set_replication(replica, false, None).unwrap();
        }
        sim.advance(Duration::from_secs(3_600));
        let mut throttled = sim.clone();
        for replica in &replicas {
            sim.set_replication(replica, true, None).unwrap();
            throttled.set_replication(replica, true, Some(2.0)).unwrap();
        }
        let network = "levee_sim_network_utilisation{dc=\"east\"}";
        assert!(sim.query(network).unwrap() > 1.0);
        let errors = sim.query("max(levee_sim_error_ratio)").unwrap();
        assert!(errors > 0.05, "saturated but errors at {errors}");
        assert!(throttled.query(network).unwrap() < 1.0);
        assert!(throttled.query("max(levee_sim_error_ratio)").unwrap() < 0.01);
    }

    #[test]
    fn a_stateful_primary_must_move_before_its_datacenter_is_taken_out() {
        let mut sim = demo();
        let db_errors = |sim: &Sim| {
            sim.query("max(levee_sim_error_ratio{service=\"db\"})")
                .unwrap()
        };
        let mut wrong = sim.clone();
        wrong.set_state("db/east", "maint").unwrap();
        assert!(db_errors(&wrong) >= PRIMARY_DOWN_ERROR_RATIO);
        assert_eq!(
            sim.query("levee_sim_primary{service=\"db\",dc=\"east\"}"),
            Ok(1.0)
        );
        sim.promote("db/west").unwrap();
        assert_eq!(sim.primary("db"), Some("west"));
        sim.set_state("db/east", "maint").unwrap();
        assert!(db_errors(&sim) < 0.01);
        // The old primary is now a replica, behind while in maintenance; it refuses to be
        // promoted back until it has caught up.
        sim.advance(Duration::from_secs(60));
        let refused = sim.promote("db/east").unwrap_err();
        assert!(refused.contains("would lose writes"), "{refused}");
    }

    #[test]
    fn the_exposition_is_prometheus_text() {
        let text = demo().render_prometheus();
        assert!(text.contains("# TYPE levee_sim_error_ratio gauge"));
        assert!(text.contains("levee_sim_weight{service=\"web\",dc=\"east\"} 100"));
        assert!(
            text.contains("levee_sim_network_utilisation{dc=\"east\"} "),
            "{text}"
        );
    }
}

#[cfg(test)]
mod generated_tests {
    use super::*;

    #[test]
    fn draining_a_generated_fleet_callers_first_keeps_every_service_healthy() {
        let (spec, edges) = SimSpec::generated(100, &["east", "west", "central"], 7);
        let mut sim = Sim::new(spec).unwrap();
        assert!(sim.query("max(levee_sim_error_ratio)").unwrap() < 0.01);
        let plan = deps::plan_drain(&edges, &[]).unwrap();
        let mut drained: std::collections::BTreeSet<String> = Default::default();
        while drained.len() < plan.drain_after.len() {
            let next: Vec<String> = plan
                .drain_after
                .iter()
                .filter(|(s, before)| {
                    !drained.contains(*s) && before.iter().all(|b| drained.contains(b))
                })
                .map(|(s, _)| s.clone())
                .collect();
            assert!(!next.is_empty(), "the plan is stuck");
            for service in next {
                sim.set_weight(&format!("{service}/east"), 0).unwrap();
                drained.insert(service);
            }
            let worst = sim.query("max(levee_sim_error_ratio)").unwrap();
            assert!(worst < 0.05, "errors rose to {worst}");
        }
        // Draining what is called before its callers breaks them.
        let (spec, _) = SimSpec::generated(100, &["east", "west", "central"], 7);
        let mut sim = Sim::new(spec).unwrap();
        let callee = &edges[0].child;
        sim.set_weight(&format!("{callee}/east"), 0).unwrap();
        assert!(sim.query("max(levee_sim_error_ratio)").unwrap() >= 0.05);
    }
}
