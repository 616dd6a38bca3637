//! `kind: Fleet` as written, and its compilation into a [`FleetDef`].
//!
//! The `*Spec` types parse the format (through [`crate::de`]) and describe it (through
//! schemars, for [`crate::schema`]). Compiling reads every host, service and pool with its
//! place in the file, then [`crate::fleet::check_and_resolve`] checks what needs the whole
//! fleet (duplicates, failure domains, selectors, floors, dependencies).

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::Deserialize;

use crate::de::{Field, OrderedMap, Reader, Recover, Spanned, field};
use crate::fleet::{
    Amount, CapacityPolicy, DEFAULT_HOST_WEIGHT_UNITS, DependencyDef, DependencyKind, DomainLevel,
    Domains, FLEET_KIND, FleetDef, HostChoice, HostDef, MAX_HOST_WEIGHT_UNITS, PoolDef, ServiceDef,
    check_and_resolve,
};
use crate::names::{self, DEFINITION_NAME_PATTERN, DEFINITION_NAME_RULE, MACHINE_ID_PATTERN};
use crate::runbook::{Located, Origin};
use crate::yaml::{Loc, Node, abbreviate};

macro_rules! text_schema {
    ($(#[$doc:meta])* $name:ident, $schema:expr) => {
        $(#[$doc])*
        pub(crate) struct $name;

        impl JsonSchema for $name {
            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
                $schema
            }
        }
    };
}

text_schema!(
    /// A definition, service or pool name.
    FleetName,
    json_schema!({
        "type": "string",
        "pattern": DEFINITION_NAME_PATTERN,
        "description": "A name: 1 to 63 lowercase letters, digits, `.`, `_` or `-`, starting \
                        with a letter or a digit."
    })
);
text_schema!(
    /// A host name.
    HostName,
    json_schema!({
        "type": "string",
        "pattern": MACHINE_ID_PATTERN,
        "description": "A host name: 1 to 128 letters, digits, `.`, `_` or `-`, starting with \
                        a letter or a digit."
    })
);
text_schema!(
    /// A failure domain value or label.
    DomainValue,
    json_schema!({
        "type": "string",
        "pattern": "^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$",
        "description": "1 to 128 letters, digits, `.`, `_`, `-` or `/`, starting with a letter \
                        or a digit."
    })
);
text_schema!(
    /// A selector.
    SelectorText,
    json_schema!({
        "type": "string",
        "minLength": 1,
        "description": "A selector: terms joined by `,`, all of which must hold. A term is \
                        `KEY=VALUE`, `KEY!=VALUE`, `KEY in (A, B)` or `KEY notin (A, B)`, with \
                        KEY one of `host`, `region`, `datacenter`, `row`, `rack`, `power`, \
                        `switch` or `label:NAME`. Empty is an error, never \"every host\".",
        "examples": ["rack=a-r1", "row in (a, b), label:role=web"]
    })
);
text_schema!(
    /// A count or a percentage.
    AmountText,
    json_schema!({
        "type": ["string", "integer"],
        "pattern": "^([0-9]+|[0-9]{1,3}(\\.[0-9]{1,2})?%)$",
        "minimum": 0,
        "description": "A count of capacity units (hosts, at the default weight of 1) such as \
                        `8`, or a percentage of the pool's capacity such as `60%`.",
        "examples": [8, "60%"]
    })
);

/// The schema of `kind:` in a fleet.
pub(crate) struct FleetKindSchema;

impl JsonSchema for FleetKindSchema {
    fn schema_name() -> Cow<'static, str> {
        "FleetKind".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_generator: &mut SchemaGenerator) -> Schema {
        json_schema!({ "const": FLEET_KIND, "description": "The kind of definition: `Fleet`." })
    }
}

/// A fleet (`kind: Fleet`): hosts with their failure domains and labels, and the services
/// that run on them, each with pools whose capacity must never drop below a floor.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Levee Fleet")]
pub(crate) struct FleetSpec {
    /// The kind of definition: `Fleet`.
    #[schemars(with = "FleetKindSchema")]
    #[allow(dead_code, reason = "read by the loader's dispatch on `kind`")]
    pub kind: Spanned<String>,
    /// The fleet's name, unique among fleets.
    #[schemars(with = "FleetName")]
    pub name: Field<Spanned<String>>,
    /// What the fleet is, in a sentence or two.
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub description: Field<String>,
    /// The hosts. Each is listed once.
    #[serde(default)]
    #[schemars(with = "Option<Vec<HostSpec>>")]
    pub hosts: Field<Spanned<Vec<Spanned<Recover<HostSpec>>>>>,
    /// The services and their pools.
    #[serde(default)]
    #[schemars(with = "Option<Vec<ServiceSpec>>")]
    pub services: Field<Spanned<Vec<Spanned<Recover<ServiceSpec>>>>>,
}

/// One host and its failure domains. A rack sits in one row, a row in one datacenter, a
/// datacenter in one region.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Host")]
pub(crate) struct HostSpec {
    /// The host's name, unique in the fleet.
    #[schemars(with = "HostName")]
    pub name: Spanned<String>,
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub region: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub datacenter: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub row: Option<Spanned<String>>,
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub rack: Option<Spanned<String>>,
    /// The power domain (a PDU, a busway, a UPS).
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub power: Option<Spanned<String>>,
    /// The network switch the host hangs off.
    #[serde(default)]
    #[schemars(with = "Option<DomainValue>")]
    pub switch: Option<Spanned<String>>,
    /// Labels, selected with `label:KEY=VALUE`.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<DomainValue, DomainValue>>")]
    pub labels: Option<OrderedMap<Spanned<String>, Spanned<String>>>,
    /// `true` for a host known to be out of service: every preflight counts it as down.
    #[serde(default)]
    pub down: Option<bool>,
}

/// A service: its pools, who owns it, what it depends on.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Service")]
pub(crate) struct ServiceSpec {
    /// The service's name, unique in the fleet. Its `MaintenancePolicy` names it.
    #[schemars(with = "FleetName")]
    pub name: Spanned<String>,
    /// Who is told when a maintenance of this service needs a human.
    #[serde(default)]
    pub owner: Option<String>,
    /// The pools of hosts serving the service.
    #[schemars(length(min = 1))]
    pub pools: Spanned<Vec<Spanned<Recover<PoolSpec>>>>,
    /// Services this one needs.
    #[serde(default)]
    pub dependencies: Option<Vec<Spanned<Recover<DependencySpec>>>>,
}

/// A pool: its hosts (a `selector` or a list of `hosts`), its spares and its capacity policy.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    rename = "Pool",
    extend("oneOf" = [{ "required": ["selector"] }, { "required": ["hosts"] }])
)]
pub(crate) struct PoolSpec {
    /// The pool's name, unique in its service.
    #[schemars(with = "FleetName")]
    pub name: Spanned<String>,
    /// The pool's hosts, by selector.
    #[serde(default)]
    #[schemars(with = "Option<SelectorText>")]
    pub selector: Option<Spanned<String>>,
    /// The pool's hosts, by name.
    #[serde(default)]
    #[schemars(with = "Option<Vec<HostName>>")]
    pub hosts: Option<Spanned<Vec<Spanned<String>>>>,
    /// Standby hosts, by selector. They never count toward the floor.
    #[serde(default)]
    #[schemars(with = "Option<SelectorText>")]
    pub spare_selector: Option<Spanned<String>>,
    /// Standby hosts, by name. They never count toward the floor.
    #[serde(default)]
    #[schemars(with = "Option<Vec<HostName>>")]
    pub spares: Option<Spanned<Vec<Spanned<String>>>>,
    /// The pool's capacity policy.
    pub capacity: Spanned<CapacitySpec>,
}

/// A capacity policy: the floor, and the weight of each host.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Capacity")]
pub(crate) struct CapacitySpec {
    /// The least capacity the pool may be left with, at every instant of every maintenance:
    /// a count of units such as `8`, or a percentage of the pool's capacity such as `60%`.
    #[schemars(with = "AmountText")]
    pub floor: Spanned<String>,
    /// Each host's capacity in units (default 1).
    #[serde(default)]
    #[schemars(with = "Option<u32>", range(min = 1, max = MAX_HOST_WEIGHT_UNITS))]
    pub weight: Option<Spanned<i64>>,
    /// Capacity of particular hosts, by name.
    #[serde(default)]
    #[schemars(with = "Option<BTreeMap<HostName, u32>>")]
    pub weights: Option<OrderedMap<Spanned<String>, Spanned<i64>>>,
}

/// A dependency on another service of the fleet.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "Dependency")]
pub(crate) struct DependencySpec {
    /// The service depended on.
    #[schemars(with = "FleetName")]
    pub service: Spanned<String>,
    /// `bootstrap` (needed to start), `rpc` (called while serving) or `state` (holds this
    /// service's data).
    pub kind: DependencyKindSpec,
}

#[derive(Clone, Copy, Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
#[schemars(rename = "DependencyKind")]
pub(crate) enum DependencyKindSpec {
    Bootstrap,
    Rpc,
    State,
}

struct Compiler<'a> {
    reader: &'a Reader<'a>,
}

impl Compiler<'_> {
    fn origin(&self, loc: Loc) -> Origin {
        Origin {
            file: self.reader.file.to_string(),
            line: loc.line,
            column: loc.column,
        }
    }

    fn located<T: Clone>(&self, value: &Spanned<T>) -> Located<T> {
        Located {
            value: value.value.clone(),
            origin: self.origin(value.loc),
        }
    }

    fn host(&self, loc: Loc, spec: &HostSpec) -> HostDef {
        let mut domains = Domains::default();
        for (level, value) in [
            (DomainLevel::Region, &spec.region),
            (DomainLevel::Datacenter, &spec.datacenter),
            (DomainLevel::Row, &spec.row),
            (DomainLevel::Rack, &spec.rack),
            (DomainLevel::Power, &spec.power),
            (DomainLevel::Switch, &spec.switch),
        ] {
            domains.set(level, value.as_ref().map(|v| v.value.clone()));
        }
        let labels = spec
            .labels
            .as_ref()
            .map(|labels| {
                labels
                    .0
                    .iter()
                    .map(|(k, v)| (k.value.clone(), v.value.clone()))
                    .collect()
            })
            .unwrap_or_default();
        HostDef {
            name: spec.name.value.clone(),
            domains,
            labels,
            down: spec.down.unwrap_or(false),
            origin: self.origin(if spec.name.loc == Loc::FILE {
                loc
            } else {
                spec.name.loc
            }),
        }
    }

    /// `selector`/`hosts` (or `spare_selector`/`spares`): exactly one for members, at most
    /// one for spares.
    fn choice(
        &self,
        pool_loc: Loc,
        selector: &Option<Spanned<String>>,
        list: &Option<Spanned<Vec<Spanned<String>>>>,
        keys: (&str, &str),
        required: bool,
    ) -> Result<Option<HostChoice>, ()> {
        match (selector, list) {
            (Some(selector), None) => Ok(Some(HostChoice::Selector(self.located(selector)))),
            (None, Some(list)) => {
                if !required && list.value.is_empty() {
                    return Ok(None);
                }
                if required && list.value.is_empty() {
                    self.reader.error(
                        list.loc,
                        "empty-pool",
                        format!(
                            "`{}` is empty. An empty list selects nothing (never \"every \
                             host\"); list the pool's hosts or write a `{}`.",
                            keys.1, keys.0
                        ),
                    );
                    return Err(());
                }
                Ok(Some(HostChoice::List(
                    list.value.iter().map(|name| self.located(name)).collect(),
                )))
            }
            (Some(selector), Some(_)) => {
                self.reader.error(
                    selector.loc,
                    "conflicting-keys",
                    format!("Write either `{}` or `{}`, not both.", keys.0, keys.1),
                );
                Err(())
            }
            (None, None) if required => {
                self.reader.error(
                    pool_loc,
                    "missing-key",
                    format!(
                        "This pool has no hosts; add `{}: \"rack=a-r1\"` or `{}: [HOST, ...]`.",
                        keys.0, keys.1
                    ),
                );
                Err(())
            }
            (None, None) => Ok(None),
        }
    }

    fn pool(&self, loc: Loc, spec: &PoolSpec) -> Option<PoolDef> {
        let hosts = self.choice(
            loc,
            &spec.selector,
            &spec.hosts,
            ("selector", "hosts"),
            true,
        );
        let spares = self.choice(
            loc,
            &spec.spare_selector,
            &spec.spares,
            ("spare_selector", "spares"),
            false,
        );
        let capacity = &spec.capacity.value;
        let floor = match Amount::parse(&capacity.floor.value) {
            Ok(amount) => Some(Located {
                value: amount,
                origin: self.origin(capacity.floor.loc),
            }),
            Err(message) => {
                self.reader
                    .error(capacity.floor.loc, "invalid-floor", message);
                None
            }
        };
        let weight = |value: &Spanned<i64>| match u32::try_from(value.value) {
            Ok(weight) if (1..=MAX_HOST_WEIGHT_UNITS).contains(&weight) => Some(weight),
            _ => {
                self.reader.error(
                    value.loc,
                    "invalid-weight",
                    format!(
                        "The weight {} is out of range; a host's weight is between 1 and \
                         {MAX_HOST_WEIGHT_UNITS} capacity units.",
                        value.value
                    ),
                );
                None
            }
        };
        let default_weight = match &capacity.weight {
            Some(value) => weight(value),
            None => Some(DEFAULT_HOST_WEIGHT_UNITS),
        };
        let mut weights = Vec::new();
        let mut weights_ok = true;
        for (host, value) in capacity.weights.as_ref().map_or(&[][..], |w| &w.0[..]) {
            match weight(value) {
                Some(w) => weights.push((self.located(host), w)),
                None => weights_ok = false,
            }
        }
        let (Ok(hosts), Ok(spares), Some(floor), Some(weight)) =
            (hosts, spares, floor, default_weight)
        else {
            return None;
        };
        if !weights_ok {
            return None;
        }
        Some(PoolDef {
            name: spec.name.value.clone(),
            hosts: hosts?,
            spares,
            capacity: CapacityPolicy {
                floor,
                weight,
                weights,
            },
            members: Vec::new(),
            spare_hosts: Vec::new(),
            origin: self.origin(spec.name.loc),
        })
    }

    fn service(&self, spec: &ServiceSpec) -> Option<ServiceDef> {
        let mut pools = Vec::new();
        let mut complete = true;
        for pool in &spec.pools.value {
            match pool.value.0.as_ref().and_then(|p| self.pool(pool.loc, p)) {
                Some(pool) => pools.push(pool),
                None => complete = false,
            }
        }
        let mut dependencies = Vec::new();
        for dependency in spec.dependencies.as_deref().unwrap_or(&[]) {
            let Some(dependency) = &dependency.value.0 else {
                complete = false;
                continue;
            };
            dependencies.push(DependencyDef {
                service: self.located(&dependency.service),
                kind: match dependency.kind {
                    DependencyKindSpec::Bootstrap => DependencyKind::Bootstrap,
                    DependencyKindSpec::Rpc => DependencyKind::Rpc,
                    DependencyKindSpec::State => DependencyKind::State,
                },
            });
        }
        complete.then(|| ServiceDef {
            name: spec.name.value.clone(),
            owner: spec.owner.clone(),
            pools,
            dependencies,
            origin: self.origin(spec.name.loc),
        })
    }
}

/// Compiles one `kind: Fleet` document; `None` if it has errors (recorded in `reader`).
pub(crate) fn compile_fleet(root: &Node, reader: &Reader) -> Option<FleetDef> {
    let errors_before = reader.error_count();
    let spec: FleetSpec = reader.read(root)?;
    let c = Compiler { reader };
    if spec.name.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            format!("This Fleet has no `name`; add `name: ...` ({DEFINITION_NAME_RULE})."),
        );
    }
    if let Some(name) = field(&spec.name)
        && !names::is_valid_definition_name(&name.value)
    {
        reader.error(
            name.loc,
            "invalid-name",
            format!(
                "`{}` is not a valid fleet name: {DEFINITION_NAME_RULE}.",
                abbreviate(&name.value)
            ),
        );
    }
    if spec.hosts.is_none() {
        reader.error(
            root.loc,
            "missing-key",
            "This Fleet has no `hosts`; add a list such as `hosts: [{ name: web-1, rack: a-r1 }]`.",
        );
    }
    let mut hosts = Vec::new();
    let mut hosts_complete = true;
    for host in field(&spec.hosts).map_or(&[][..], |h| &h.value[..]) {
        match &host.value.0 {
            Some(spec) => hosts.push(c.host(host.loc, spec)),
            None => hosts_complete = false,
        }
    }
    let mut services = Vec::new();
    let mut services_complete = true;
    for service in field(&spec.services).map_or(&[][..], |s| &s.value[..]) {
        match service.value.0.as_ref().and_then(|s| c.service(s)) {
            Some(service) => services.push(service),
            None => services_complete = false,
        }
    }
    let name = field(&spec.name)?.value.clone();
    let mut fleet = FleetDef {
        origin: c.origin(field(&spec.name).map_or(root.loc, |n| n.loc)),
        name,
        description: field(&spec.description).cloned(),
        hosts,
        services,
    };
    if !hosts_complete {
        // A host that did not parse may be the one a pool names: checking pools now would
        // report errors that are only echoes of the first.
        return None;
    }
    for diagnostic in check_and_resolve(&mut fleet) {
        // A service that did not parse is missing from the list: a dependency on it is not
        // a second mistake.
        if services_complete || diagnostic.code != "unknown-service" {
            reader.push_diagnostic(diagnostic);
        }
    }
    if reader.error_count() > errors_before {
        return None;
    }
    Some(fleet)
}
