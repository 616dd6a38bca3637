//! The compiled form of `kind: Fleet`: hosts with their failure domains and labels, services
//! with pools of hosts and spares, each pool's capacity policy, and service dependencies.
//!
//! A [`FleetDef`] only exists checked (see [`check_and_resolve`]): host names are unique, each
//! failure domain sits in one parent (a rack in one row, a row in one datacenter, a datacenter
//! in one region), every pool resolved to at least one existing host, its floor fits its
//! capacity, and every dependency names a service of the fleet. Pools keep what was written
//! (`selector` or `hosts`) and the hosts it resolved to (`members`, `spare_hosts`), so
//! [`FleetDef::with_hosts`] can re-check a fleet against a new host list (a CSV import) and
//! point at the pool that no longer fits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::graph::find_cycles;
use crate::names::{self, DEFINITION_NAME_RULE, MACHINE_ID_RULE};
use crate::runbook::{Located, Origin};
use crate::selector::{
    HostIndex, HostNumber, SELECTOR_NAME_RULE, Selector, is_valid_selector_name,
};
use crate::yaml::abbreviate;

/// The `kind` of a fleet.
pub const FLEET_KIND: &str = "Fleet";
/// Most hosts one fleet may have.
pub const MAX_FLEET_HOSTS: usize = 200_000;
/// Most services one fleet may have.
pub const MAX_FLEET_SERVICES: usize = 20_000;
/// Most pools one service may have.
pub const MAX_POOLS_PER_SERVICE: usize = 100;
/// Most labels one host may have.
pub const MAX_LABELS_PER_HOST: usize = 64;
/// Most dependencies one service may declare.
pub const MAX_DEPENDENCIES_PER_SERVICE: usize = 100;
/// Largest capacity weight of one host in a pool, in capacity units.
pub const MAX_HOST_WEIGHT_UNITS: u32 = 1_000_000;
/// Capacity weight of a host in a pool when the pool does not say, in capacity units.
pub const DEFAULT_HOST_WEIGHT_UNITS: u32 = 1;

/// A level of failure domain, from the widest to the narrowest, then power and network,
/// which cut across racks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DomainLevel {
    Region = 0,
    Datacenter = 1,
    Row = 2,
    Rack = 3,
    Power = 4,
    Switch = 5,
}

impl DomainLevel {
    /// How many levels there are.
    pub const COUNT: usize = 6;
    /// Every level, widest first.
    pub const ALL: [DomainLevel; DomainLevel::COUNT] = [
        DomainLevel::Region,
        DomainLevel::Datacenter,
        DomainLevel::Row,
        DomainLevel::Rack,
        DomainLevel::Power,
        DomainLevel::Switch,
    ];

    /// The key written in hosts, selectors and CSV headers: `rack`, `power`, ...
    pub fn key(self) -> &'static str {
        match self {
            DomainLevel::Region => "region",
            DomainLevel::Datacenter => "datacenter",
            DomainLevel::Row => "row",
            DomainLevel::Rack => "rack",
            DomainLevel::Power => "power",
            DomainLevel::Switch => "switch",
        }
    }

    pub fn from_key(key: &str) -> Option<DomainLevel> {
        DomainLevel::ALL
            .into_iter()
            .find(|level| level.key() == key)
    }

    /// The level this one must sit in exactly once (a rack in one row), if any. Power
    /// domains and switches cut across racks and rows, so they have none.
    pub fn parent(self) -> Option<DomainLevel> {
        match self {
            DomainLevel::Datacenter => Some(DomainLevel::Region),
            DomainLevel::Row => Some(DomainLevel::Datacenter),
            DomainLevel::Rack => Some(DomainLevel::Row),
            _ => None,
        }
    }
}

impl fmt::Display for DomainLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// A host's failure domains; any may be unknown.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domains {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switch: Option<String>,
}

impl Domains {
    pub fn get(&self, level: DomainLevel) -> Option<&str> {
        match level {
            DomainLevel::Region => self.region.as_deref(),
            DomainLevel::Datacenter => self.datacenter.as_deref(),
            DomainLevel::Row => self.row.as_deref(),
            DomainLevel::Rack => self.rack.as_deref(),
            DomainLevel::Power => self.power.as_deref(),
            DomainLevel::Switch => self.switch.as_deref(),
        }
    }

    pub fn set(&mut self, level: DomainLevel, value: Option<String>) {
        let slot = match level {
            DomainLevel::Region => &mut self.region,
            DomainLevel::Datacenter => &mut self.datacenter,
            DomainLevel::Row => &mut self.row,
            DomainLevel::Rack => &mut self.rack,
            DomainLevel::Power => &mut self.power,
            DomainLevel::Switch => &mut self.switch,
        };
        *slot = value;
    }
}

/// One host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostDef {
    pub name: String,
    #[serde(flatten)]
    pub domains: Domains,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Known to be out of service: counted as already down by every preflight.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub down: bool,
    pub origin: Origin,
}

impl HostDef {
    /// A host with a name only, written nowhere (for programs that build fleets).
    pub fn named(name: &str) -> HostDef {
        HostDef {
            name: name.to_string(),
            domains: Domains::default(),
            labels: BTreeMap::new(),
            down: false,
            origin: Origin {
                file: String::new(),
                line: 0,
                column: 0,
            },
        }
    }
}

/// A count or a percentage: a floor (`8`, `60%`) or a failure threshold (`2`, `10%`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Amount {
    /// Capacity units (hosts, with the default weight of 1).
    Count(u64),
    /// Hundredths of a percent: `12.5%` is 1250.
    Percent { basis_points: u32 },
}

/// How an [`Amount`] is written, for messages.
pub const AMOUNT_RULE: &str = "write a whole number such as `8`, or a percentage from 0% to 100% \
     with at most two decimals such as `60%` or `12.5%`";

impl Amount {
    /// Parses `8`, `60%` or `12.5%`.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let invalid = || {
            format!(
                "`{}` is not a count or a percentage; {AMOUNT_RULE}.",
                abbreviate(text)
            )
        };
        if let Some(number) = text.strip_suffix('%') {
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty()
                || whole.len() > 3
                || !digits(whole)
                || fraction.len() > 2
                || !digits(fraction)
                || (number.contains('.') && fraction.is_empty())
            {
                return Err(invalid());
            }
            let whole: u32 = whole.parse().map_err(|_| invalid())?;
            let mut fraction_bp: u32 = if fraction.is_empty() {
                0
            } else {
                fraction.parse().map_err(|_| invalid())?
            };
            if fraction.len() == 1 {
                fraction_bp *= 10;
            }
            let basis_points = whole * 100 + fraction_bp;
            if basis_points > 10_000 {
                return Err(format!(
                    "`{text}` is more than 100%; a percentage is of the pool's capacity."
                ));
            }
            return Ok(Amount::Percent { basis_points });
        }
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse::<u64>()
            .map(Amount::Count)
            .map_err(|_| invalid())
    }

    /// The amount in units out of `total_units`, rounded up: a floor of 60% of 5 hosts is 3.
    pub fn units_rounded_up(self, total_units: u64) -> u64 {
        match self {
            Amount::Count(count) => count,
            Amount::Percent { basis_points } => {
                let product = u128::from(total_units) * u128::from(basis_points);
                product.div_ceil(10_000) as u64
            }
        }
    }

    /// The amount in units out of `total_units`, rounded down: 10% of 15 failed hosts
    /// tolerated is 1.
    pub fn units_rounded_down(self, total_units: u64) -> u64 {
        match self {
            Amount::Count(count) => count,
            Amount::Percent { basis_points } => {
                (u128::from(total_units) * u128::from(basis_points) / 10_000) as u64
            }
        }
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(count) => write!(f, "{count}"),
            Amount::Percent { basis_points } => {
                let (whole, fraction) = (basis_points / 100, basis_points % 100);
                match fraction {
                    0 => write!(f, "{whole}%"),
                    f10 if f10 % 10 == 0 => write!(f, "{whole}.{}%", f10 / 10),
                    _ => write!(f, "{whole}.{fraction:02}%"),
                }
            }
        }
    }
}

impl TryFrom<String> for Amount {
    type Error = String;
    fn try_from(text: String) -> Result<Amount, String> {
        Amount::parse(&text)
    }
}

impl From<Amount> for String {
    fn from(amount: Amount) -> String {
        amount.to_string()
    }
}

/// How a pool or a spare list names its hosts, as written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostChoice {
    /// A selector such as `rack=a-r1, label:role=web`.
    Selector(Located<String>),
    /// Host names.
    List(Vec<Located<String>>),
}

/// A pool's capacity policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityPolicy {
    /// The least capacity the pool may ever be left with.
    pub floor: Located<Amount>,
    /// Each member's weight in capacity units unless `weights` says otherwise.
    pub weight: u32,
    /// Weights of particular members.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<(Located<String>, u32)>,
}

/// A pool of hosts serving a service, and its spares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolDef {
    pub name: String,
    pub hosts: HostChoice,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spares: Option<HostChoice>,
    pub capacity: CapacityPolicy,
    /// The hosts serving in the pool, in fleet order.
    pub members: Vec<String>,
    /// Standby hosts that may replace a member, in fleet order. They never count toward the
    /// floor: a swap may fail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub spare_hosts: Vec<String>,
    pub origin: Origin,
}

impl PoolDef {
    /// The weight of `member` in capacity units.
    pub fn weight_of(&self, member: &str) -> u32 {
        self.capacity
            .weights
            .iter()
            .find(|(host, _)| host.value == member)
            .map_or(self.capacity.weight, |(_, weight)| *weight)
    }
}

/// What one service needs from another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DependencyKind {
    /// Needed to start at all: must be up before this service comes back.
    Bootstrap,
    /// Called while serving.
    Rpc,
    /// Holds this service's state (a database, a queue).
    State,
}

impl DependencyKind {
    pub fn name(self) -> &'static str {
        match self {
            DependencyKind::Bootstrap => "bootstrap",
            DependencyKind::Rpc => "rpc",
            DependencyKind::State => "state",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DependencyDef {
    pub service: Located<String>,
    pub kind: DependencyKind,
}

/// A service: its pools and what it depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDef {
    pub name: String,
    /// Who is told when the service's maintenance needs a human.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub pools: Vec<PoolDef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<DependencyDef>,
    pub origin: Origin,
}

/// A fleet (`kind: Fleet`), checked: see the module documentation for what that guarantees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FleetDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub hosts: Vec<HostDef>,
    pub services: Vec<ServiceDef>,
    pub origin: Origin,
}

impl FleetDef {
    /// This fleet with its hosts replaced (a CSV import), pools resolved again. Errors point
    /// at the new hosts, or at the pools (in the fleet's own file) that no longer fit.
    pub fn with_hosts(&self, hosts: Vec<HostDef>) -> Result<FleetDef, Vec<Diagnostic>> {
        let mut fleet = FleetDef {
            hosts,
            ..self.clone()
        };
        let diagnostics = check_and_resolve(&mut fleet);
        if diagnostics.iter().any(Diagnostic::is_error) {
            Err(diagnostics)
        } else {
            Ok(fleet)
        }
    }

    pub fn service(&self, name: &str) -> Option<&ServiceDef> {
        self.services.iter().find(|service| service.name == name)
    }
}

fn error_at(origin: &Origin, code: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic::error(&origin.file, origin.line, origin.column, code, message)
}

fn warning_at(origin: &Origin, code: &str, message: impl Into<String>) -> Diagnostic {
    Diagnostic::warning(&origin.file, origin.line, origin.column, code, message)
}

/// "line 12" for an origin in `file`, "file:12:3" for one elsewhere.
fn place(origin: &Origin, file: &str) -> String {
    if origin.file == file {
        format!("line {}", origin.line)
    } else {
        origin.to_string()
    }
}

/// Checks the hosts of a fleet on their own: limits, names, labels, duplicates (a host listed
/// twice, or in two racks) and failure domains that sit in two parents. Returns the
/// diagnostics; hosts after the first of a duplicated name are ignored by indexes.
pub fn check_hosts(hosts: &[HostDef]) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    if hosts.len() > MAX_FLEET_HOSTS {
        diagnostics.push(error_at(
            &hosts[MAX_FLEET_HOSTS].origin,
            "too-many-hosts",
            format!(
                "The fleet has {} hosts; at most {MAX_FLEET_HOSTS} are allowed. Split it into \
                 several fleets.",
                hosts.len()
            ),
        ));
        return diagnostics;
    }
    let mut first: HashMap<&str, usize> = HashMap::with_capacity(hosts.len());
    // For each level with a parent: value -> (parent value, host that said so).
    let mut parents: [HashMap<&str, (&str, usize)>; DomainLevel::COUNT] = Default::default();
    for (number, host) in hosts.iter().enumerate() {
        let here = &host.origin;
        if !names::is_valid_machine_id(&host.name) {
            diagnostics.push(error_at(
                here,
                "invalid-name",
                format!(
                    "`{}` is not a valid host name: {MACHINE_ID_RULE}.",
                    abbreviate(&host.name)
                ),
            ));
        }
        for level in DomainLevel::ALL {
            if let Some(value) = host.domains.get(level)
                && !is_valid_selector_name(value)
            {
                diagnostics.push(error_at(
                    here,
                    "invalid-name",
                    format!(
                        "The {level} `{}` of host `{}` is not a valid name: {SELECTOR_NAME_RULE}.",
                        abbreviate(value),
                        host.name
                    ),
                ));
            }
        }
        if host.labels.len() > MAX_LABELS_PER_HOST {
            diagnostics.push(error_at(
                here,
                "too-many-labels",
                format!(
                    "The host `{}` has {} labels; at most {MAX_LABELS_PER_HOST} are allowed.",
                    host.name,
                    host.labels.len()
                ),
            ));
        }
        for (key, value) in &host.labels {
            for (what, text) in [("label key", key), ("label value", value)] {
                if !is_valid_selector_name(text) {
                    diagnostics.push(error_at(
                        here,
                        "invalid-name",
                        format!(
                            "The {what} `{}` of host `{}` is not valid: {SELECTOR_NAME_RULE}.",
                            abbreviate(text),
                            host.name
                        ),
                    ));
                }
            }
        }
        if let Some(&earlier) = first.get(host.name.as_str()) {
            let before = &hosts[earlier];
            let racks = match (before.domains.rack.as_deref(), host.domains.rack.as_deref()) {
                (Some(a), Some(b)) if a != b => {
                    format!(" A host is in one rack only; here it is in `{a}` and `{b}`.")
                }
                _ => String::new(),
            };
            diagnostics.push(error_at(
                here,
                "duplicate-host",
                format!(
                    "The host `{}` is listed twice (first on {}).{racks} List each host once.",
                    host.name,
                    place(&before.origin, &here.file)
                ),
            ));
            continue;
        }
        first.insert(&host.name, number);
        for level in DomainLevel::ALL {
            let (Some(parent_level), Some(value)) = (level.parent(), host.domains.get(level))
            else {
                continue;
            };
            let Some(parent_value) = host.domains.get(parent_level) else {
                continue;
            };
            match parents[level as usize].get(value) {
                None => {
                    parents[level as usize].insert(value, (parent_value, number));
                }
                Some((known, _)) if *known == parent_value => {}
                Some((known, witness)) => {
                    let witness = &hosts[*witness];
                    diagnostics.push(error_at(
                        here,
                        "domain-conflict",
                        format!(
                            "The {level} `{value}` is in {parent_level} `{parent_value}` for \
                             host `{}`, but in {parent_level} `{known}` for host `{}` ({}). A \
                             {level} sits in one {parent_level}: give {level}s names unique \
                             across the fleet, such as `{parent_value}-{value}`.",
                            host.name,
                            witness.name,
                            place(&witness.origin, &here.file)
                        ),
                    ));
                }
            }
        }
    }
    diagnostics
}

/// Checks a fleet whose hosts, services and pools are filled in as written, and resolves every
/// pool's `members` and `spare_hosts`. Returns every problem found (errors and warnings).
pub fn check_and_resolve(fleet: &mut FleetDef) -> Vec<Diagnostic> {
    let mut diagnostics = check_hosts(&fleet.hosts);
    if diagnostics.iter().any(|d| d.code == "too-many-hosts") {
        return diagnostics;
    }
    let index = HostIndex::new(&fleet.hosts);
    if fleet.services.len() > MAX_FLEET_SERVICES {
        diagnostics.push(error_at(
            &fleet.services[MAX_FLEET_SERVICES].origin,
            "too-many-services",
            format!(
                "The fleet has {} services; at most {MAX_FLEET_SERVICES} are allowed.",
                fleet.services.len()
            ),
        ));
        return diagnostics;
    }
    let mut service_names: HashMap<String, usize> = HashMap::new();
    for (position, service) in fleet.services.iter().enumerate() {
        if !names::is_valid_definition_name(&service.name) {
            diagnostics.push(error_at(
                &service.origin,
                "invalid-name",
                format!(
                    "`{}` is not a valid service name: {DEFINITION_NAME_RULE}.",
                    abbreviate(&service.name)
                ),
            ));
        }
        match service_names.get(&service.name) {
            Some(&earlier) => diagnostics.push(error_at(
                &service.origin,
                "duplicate-service",
                format!(
                    "The service `{}` is already defined on {}; rename or merge them.",
                    service.name,
                    place(&fleet.services[earlier].origin, &service.origin.file)
                ),
            )),
            None => {
                service_names.insert(service.name.clone(), position);
            }
        }
    }
    for service in &mut fleet.services {
        check_service(service, &fleet.hosts, &index, &mut diagnostics);
    }
    check_dependencies(fleet, &service_names, &mut diagnostics);
    diagnostics
}

fn check_service(
    service: &mut ServiceDef,
    hosts: &[HostDef],
    index: &HostIndex,
    diagnostics: &mut Vec<Diagnostic>,
) {
    if service.pools.is_empty() {
        diagnostics.push(error_at(
            &service.origin,
            "no-pools",
            format!(
                "The service `{}` has no pools; add one with `pools: [{{ name: main, selector: \
                 ..., capacity: {{ floor: ... }} }}]`.",
                service.name
            ),
        ));
    }
    if service.pools.len() > MAX_POOLS_PER_SERVICE {
        diagnostics.push(error_at(
            &service.origin,
            "too-many-pools",
            format!(
                "The service `{}` has {} pools; at most {MAX_POOLS_PER_SERVICE} are allowed.",
                service.name,
                service.pools.len()
            ),
        ));
    }
    let mut pool_names: HashMap<String, Origin> = HashMap::new();
    for pool in &mut service.pools {
        if !names::is_valid_definition_name(&pool.name) {
            diagnostics.push(error_at(
                &pool.origin,
                "invalid-name",
                format!(
                    "`{}` is not a valid pool name: {DEFINITION_NAME_RULE}.",
                    abbreviate(&pool.name)
                ),
            ));
        }
        if let Some(first) = pool_names.get(&pool.name) {
            diagnostics.push(error_at(
                &pool.origin,
                "duplicate-pool",
                format!(
                    "The service `{}` already has a pool `{}` (on {}); pool names are unique \
                     in a service.",
                    service.name,
                    pool.name,
                    place(first, &pool.origin.file)
                ),
            ));
        } else {
            pool_names.insert(pool.name.clone(), pool.origin.clone());
        }
        let what = format!("pool `{}/{}`", service.name, pool.name);
        let members = resolve_choice(&pool.hosts, &what, &pool.origin, index, diagnostics);
        let spares = match &pool.spares {
            Some(choice) => resolve_choice(
                choice,
                &format!("spares of {what}"),
                &pool.origin,
                index,
                diagnostics,
            ),
            None => Some(Vec::new()),
        };
        if let (Some(members), Some(spares)) = (&members, &spares) {
            for spare in spares {
                if members.binary_search(spare).is_ok() {
                    let origin = match &pool.spares {
                        Some(HostChoice::Selector(selector)) => &selector.origin,
                        Some(HostChoice::List(list)) => list
                            .iter()
                            .find(|name| index.host(&name.value) == Some(*spare))
                            .map_or(&pool.origin, |name| &name.origin),
                        None => &pool.origin,
                    };
                    diagnostics.push(error_at(
                        origin,
                        "spare-in-pool",
                        format!(
                            "The host `{}` is both a member and a spare of the {what}; a spare \
                             stands by outside the pool.",
                            hosts[*spare as usize].name
                        ),
                    ));
                }
            }
        }
        pool.members = members
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|n| hosts[*n as usize].name.clone())
            .collect();
        pool.spare_hosts = spares
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|n| hosts[*n as usize].name.clone())
            .collect();
        if let Some(members) = &members {
            check_capacity(pool, &what, members, hosts, index, diagnostics);
        }
    }
}

/// The hosts a pool or spare list names, sorted by host number; `None` when it names none
/// that exist (reported).
fn resolve_choice(
    choice: &HostChoice,
    what: &str,
    written_at: &Origin,
    index: &HostIndex,
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Vec<HostNumber>> {
    match choice {
        HostChoice::Selector(text) => {
            let selector = match Selector::parse(&text.value) {
                Ok(selector) => selector,
                Err(error) => {
                    let code = if text.value.trim().is_empty() {
                        "empty-selector"
                    } else {
                        "invalid-selector"
                    };
                    diagnostics.push(error_at(
                        &text.origin,
                        code,
                        format!(
                            "The selector of the {what} is not valid (at character {}): {}",
                            error.position + 1,
                            error.message
                        ),
                    ));
                    return None;
                }
            };
            let matched = index.resolve(&selector);
            if matched.is_empty() {
                diagnostics.push(error_at(
                    &text.origin,
                    "selector-matches-nothing",
                    format!(
                        "The selector `{selector}` of the {what} matches no host. {}",
                        index.explain_no_match(&selector)
                    ),
                ));
                return None;
            }
            Some(matched)
        }
        HostChoice::List(names) => {
            let mut numbers = Vec::with_capacity(names.len());
            let mut seen: HashSet<&str> = HashSet::with_capacity(names.len());
            let mut broken = false;
            for name in names {
                if !seen.insert(&name.value) {
                    diagnostics.push(error_at(
                        &name.origin,
                        "duplicate-host",
                        format!(
                            "The host `{}` is listed twice in the {what}.",
                            abbreviate(&name.value)
                        ),
                    ));
                    broken = true;
                    continue;
                }
                match index.host(&name.value) {
                    Some(number) => numbers.push(number),
                    None => {
                        diagnostics.push(error_at(
                            &name.origin,
                            "unknown-host",
                            format!(
                                "The {what} lists `{}`, which is not a host of this fleet.{}",
                                abbreviate(&name.value),
                                names::did_you_mean(&name.value, index.host_names())
                            ),
                        ));
                        broken = true;
                    }
                }
            }
            if names.is_empty() {
                diagnostics.push(error_at(
                    written_at,
                    "empty-pool",
                    format!(
                        "The {what} lists no hosts. An empty list selects nothing (never \"every \
                         host\"); list hosts or write a `selector`."
                    ),
                ));
                return None;
            }
            if broken {
                return None;
            }
            numbers.sort_unstable();
            Some(numbers)
        }
    }
}

fn check_capacity(
    pool: &PoolDef,
    what: &str,
    members: &[HostNumber],
    hosts: &[HostDef],
    index: &HostIndex,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let capacity = &pool.capacity;
    if !(1..=MAX_HOST_WEIGHT_UNITS).contains(&capacity.weight) {
        diagnostics.push(error_at(
            &pool.origin,
            "invalid-weight",
            format!(
                "The weight of the {what} is {}; it must be between 1 and \
                 {MAX_HOST_WEIGHT_UNITS}.",
                capacity.weight
            ),
        ));
    }
    let mut weighted: HashSet<&str> = HashSet::new();
    for (host, weight) in &capacity.weights {
        let is_member = index
            .host(&host.value)
            .is_some_and(|number| members.binary_search(&number).is_ok());
        if !is_member {
            diagnostics.push(error_at(
                &host.origin,
                "weight-not-member",
                format!(
                    "`weights` names `{}`, which is not a member of the {what}.{}",
                    abbreviate(&host.value),
                    names::did_you_mean(&host.value, pool.members.iter().map(String::as_str))
                ),
            ));
        }
        if !weighted.insert(&host.value) {
            diagnostics.push(error_at(
                &host.origin,
                "duplicate-host",
                format!("`weights` names `{}` twice.", abbreviate(&host.value)),
            ));
        }
        if !(1..=MAX_HOST_WEIGHT_UNITS).contains(weight) {
            diagnostics.push(error_at(
                &host.origin,
                "invalid-weight",
                format!(
                    "The weight of `{}` is {weight}; it must be between 1 and \
                     {MAX_HOST_WEIGHT_UNITS}.",
                    host.value
                ),
            ));
        }
    }
    let total: u64 = pool
        .members
        .iter()
        .map(|member| u64::from(pool.weight_of(member)))
        .sum();
    let floor = capacity.floor.value.units_rounded_up(total);
    if floor > total {
        diagnostics.push(error_at(
            &capacity.floor.origin,
            "floor-exceeds-pool",
            format!(
                "The floor of the {what} is {floor} units, but the pool has only {total} ({} \
                 hosts); lower the floor or add hosts.",
                members.len()
            ),
        ));
        return;
    }
    let down: u64 = members
        .iter()
        .filter(|n| hosts[**n as usize].down)
        .map(|n| u64::from(pool.weight_of(&hosts[*n as usize].name)))
        .sum();
    if down > 0 && total - down < floor {
        diagnostics.push(warning_at(
            &capacity.floor.origin,
            "pool-below-floor",
            format!(
                "The {what} is already below its floor: {} of {total} units are on hosts \
                 marked `down`, leaving {} for a floor of {floor}. Every maintenance touching \
                 it will fail preflight.",
                down,
                total - down
            ),
        ));
    }
}

fn check_dependencies(
    fleet: &FleetDef,
    service_names: &HashMap<String, usize>,
    diagnostics: &mut Vec<Diagnostic>,
) {
    let mut bootstrap_edges: Vec<Vec<usize>> = vec![Vec::new(); fleet.services.len()];
    for (position, service) in fleet.services.iter().enumerate() {
        if service.dependencies.len() > MAX_DEPENDENCIES_PER_SERVICE {
            diagnostics.push(error_at(
                &service.origin,
                "too-many-dependencies",
                format!(
                    "The service `{}` declares {} dependencies; at most \
                     {MAX_DEPENDENCIES_PER_SERVICE} are allowed.",
                    service.name,
                    service.dependencies.len()
                ),
            ));
        }
        let mut seen: HashSet<(&str, DependencyKind)> = HashSet::new();
        for dependency in &service.dependencies {
            let target = &dependency.service;
            if target.value == service.name {
                diagnostics.push(error_at(
                    &target.origin,
                    "self-dependency",
                    format!("The service `{}` depends on itself.", service.name),
                ));
                continue;
            }
            if !seen.insert((&target.value, dependency.kind)) {
                diagnostics.push(error_at(
                    &target.origin,
                    "duplicate-dependency",
                    format!(
                        "The {} dependency on `{}` is declared twice.",
                        dependency.kind.name(),
                        target.value
                    ),
                ));
            }
            match service_names.get(&target.value) {
                Some(&index) => {
                    if dependency.kind == DependencyKind::Bootstrap {
                        bootstrap_edges[position].push(index);
                    }
                }
                None => diagnostics.push(error_at(
                    &target.origin,
                    "unknown-service",
                    format!(
                        "The service `{}` depends on `{}`, which is not a service of this \
                         fleet.{}",
                        service.name,
                        abbreviate(&target.value),
                        names::did_you_mean(
                            &target.value,
                            fleet.services.iter().map(|s| s.name.as_str())
                        )
                    ),
                )),
            }
        }
    }
    for cycle in find_cycles(&bootstrap_edges) {
        let mut path: Vec<&str> = cycle
            .iter()
            .map(|i| fleet.services[*i].name.as_str())
            .collect();
        path.push(path[0]);
        diagnostics.push(error_at(
            &fleet.services[cycle[0]].origin,
            "dependency-cycle",
            format!(
                "These services need each other to start (bootstrap dependencies in a \
                 cycle), so none of them could ever come back after a full outage: `{}`. \
                 Remove one of these bootstrap dependencies.",
                path.join(" -> ")
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_parse_print_and_round() {
        assert_eq!(Amount::parse("8"), Ok(Amount::Count(8)));
        assert_eq!(
            Amount::parse("60%"),
            Ok(Amount::Percent {
                basis_points: 6_000
            })
        );
        assert_eq!(
            Amount::parse("12.5%"),
            Ok(Amount::Percent {
                basis_points: 1_250
            })
        );
        assert_eq!(
            Amount::parse("0.05%"),
            Ok(Amount::Percent { basis_points: 5 })
        );
        for bad in [
            "", "-1", "1.5", "%", "101%", "5.%", "1.234%", "abc", "1000%", " 5",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} was accepted");
        }
        for text in ["8", "60%", "12.5%", "0.05%", "100%"] {
            assert_eq!(
                Amount::parse(text).map(|a| a.to_string()).as_deref(),
                Ok(text)
            );
        }
        let sixty = Amount::Percent {
            basis_points: 6_000,
        };
        assert_eq!(sixty.units_rounded_up(5), 3);
        assert_eq!(sixty.units_rounded_up(6), 4);
        assert_eq!(sixty.units_rounded_down(6), 3);
        assert_eq!(Amount::Count(4).units_rounded_up(100), 4);
    }
}
