//! Levee's fleet core: inventory, capacity, maintenance policy and aggregate preflight.
//!
//! Pure: no I/O, no clock (time is an argument, as epoch milliseconds), no randomness outside
//! [`synthetic`]'s seeded generator. The same inputs always give the same answer, so the
//! store can re-run a preflight inside a write transaction and the simulator can replay it.
//!
//! - [`FleetIndex::build`] arranges a checked [`levee_model::FleetDef`] (loaded from `kind:
//!   Fleet` YAML, [`import_json`], or hosts from [`import_csv`]) for fast questions: hosts by
//!   domain value and label, pools by host.
//! - [`FleetIndex::resolve`] turns a selector into hosts. An empty selector, a malformed one,
//!   or one that matches nothing is an error, never "every host".
//! - [`preflight`] checks a scope against every pool it touches: capacity before, removed by
//!   the scope, already down, held by overlapping maintenance, and after, against the floor,
//!   with the deficit and the hosts that cause it. [`admit`] is the same check for a
//!   [`Reservation`] against the stored ones: the store runs it inside the transaction that
//!   stores the reservation, so two maintenances never both pass against the same headroom.
//! - [`plan_actions`] gives each affected service its action from its
//!   `MaintenancePolicy` ([`PolicySet`]); a service without one gets `human`.
//! - [`blast_radius`] and [`split_by_domain`] size a scope and cut it into one failure domain
//!   per step.
//! - [`parse_webhook`] reads Alertmanager's webhook payloads (version 4, with or without the
//!   fields older Alertmanagers left out) and names the field of anything else; [`decide`]
//!   (and [`decide_payload`] for a whole notification) turns an alert into a repair of one
//!   host under a `kind: RemediationRule`, or a refusal that says why (no rule, unknown host,
//!   already in repair, cooldown, limits, short circuit, capacity).
//!
//! # Selectors
//!
//! ```text
//! selector := term ( "," term )*            terms are ANDed
//! term     := key "=" value                 the host's key has this value
//!           | key "!=" value                the host's key does not have this value
//!           | key "in" "(" values ")"       the host's key has one of these values
//!           | key "notin" "(" values ")"    the host's key has none of these values
//! values   := value ( "," value )*
//! key      := "host" | "region" | "datacenter" | "row" | "rack" | "power" | "switch"
//!           | "label:" NAME
//! value    := NAME
//! NAME     := 1 to 128 of A-Z a-z 0-9 . _ - /, starting with a letter or a digit
//! ```
//!
//! Spaces are allowed around tokens: `rack=a-r1`, `row in (a, b)`,
//! `label:role=web, rack!=a-r3`. A selector needs at least one positive term (`=` or `in`);
//! a host without a value for a key never matches a positive term on it and always matches a
//! negative one. Resolution starts from the positive term with the fewest hosts in the index
//! and filters by the others, so its cost follows the hosts selected, not the fleet.
//!
//! # Capacity
//!
//! A pool's capacity is the sum of its members' weights (1 unless the pool says otherwise).
//! A floor is a count of units or a percentage of the capacity, rounded up. Spares never
//! count toward the floor: a swap may fail. In a preflight each host is counted once, in this
//! order: in the scope, already down (given, or `down: true` in the fleet), held by an
//! overlapping reservation.

pub mod alerts;
pub mod import;
pub mod index;
pub mod policy;
pub mod preflight;
pub mod remediation;
pub mod steps;
pub mod synthetic;

pub use alerts::{Alert, AlertStatus, PayloadError, WebhookPayload, parse_webhook};
pub use import::{import_csv, import_csv_into, import_json};
pub use index::{
    FleetIndex, HostId, IndexError, Membership, Pool, PoolId, ScopeError, Service, ServiceId,
};
pub use policy::{PolicySet, Reason, ServiceAction, plan_actions};
pub use preflight::{
    Held, PoolCheck, PreflightReport, Reservation, Window, admit, overlaps, preflight,
};
pub use remediation::{
    Decision, InRepair, PastRepair, Refusal, RefusalReason, Remediation, RemediationState,
    Unhealthy, decide, decide_payload,
};
pub use steps::{BlastRadius, BlastRadiusLimit, Step, blast_radius, split_by_domain};
