//! Large fleets made up from a seed, for benchmarks and simulations: the same seed always
//! gives the same fleet.
//!
//! The layout: regions of datacenters of rows of racks, [`HOSTS_PER_RACK`] hosts per rack, a
//! power domain per half row and a switch per rack. Each service has one pool of hosts drawn
//! from the whole fleet (so every rack carries many services), two spares, and a floor
//! between 50% and 80%.

use levee_model::runbook::{Located, Origin};
use levee_model::{
    Amount, CapacityPolicy, DomainLevel, FleetDef, HostChoice, HostDef, PoolDef, ServiceDef,
};

/// Hosts in one rack of a synthetic fleet.
pub const HOSTS_PER_RACK: usize = 40;
/// Racks in one row.
pub const RACKS_PER_ROW: usize = 25;
/// Rows in one datacenter.
pub const ROWS_PER_DATACENTER: usize = 25;
/// Datacenters in one region.
pub const DATACENTERS_PER_REGION: usize = 2;
/// Spares of each service's pool.
pub const SPARES_PER_POOL: usize = 2;

/// SplitMix64: a small, good, deterministic generator (no dependency, same numbers on every
/// platform).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
}

fn origin(line: usize) -> Origin {
    Origin {
        file: "synthetic".to_string(),
        line: line as u64 + 1,
        column: 1,
    }
}

/// The name of row `row` (global numbering), as the synthetic fleet writes it.
pub fn row_name(row: usize) -> String {
    format!("row{row}")
}

/// A fleet of `host_count` hosts and `service_count` services of `pool_size` hosts each.
pub fn fleet(seed: u64, host_count: usize, service_count: usize, pool_size: usize) -> FleetDef {
    let mut rng = Rng::new(seed);
    let hosts_per_row = HOSTS_PER_RACK * RACKS_PER_ROW;
    let mut hosts = Vec::with_capacity(host_count);
    for number in 0..host_count {
        let rack = number / HOSTS_PER_RACK;
        let row = rack / RACKS_PER_ROW;
        let datacenter = row / ROWS_PER_DATACENTER;
        let region = datacenter / DATACENTERS_PER_REGION;
        let half_row = (number % hosts_per_row) / (hosts_per_row / 2);
        let mut host = HostDef::named(&format!("h{number}"));
        host.domains
            .set(DomainLevel::Region, Some(format!("region{region}")));
        host.domains
            .set(DomainLevel::Datacenter, Some(format!("dc{datacenter}")));
        host.domains.set(DomainLevel::Row, Some(row_name(row)));
        host.domains
            .set(DomainLevel::Rack, Some(format!("rack{rack}")));
        host.domains
            .set(DomainLevel::Power, Some(format!("pdu{row}-{half_row}")));
        host.domains
            .set(DomainLevel::Switch, Some(format!("tor{rack}")));
        host.labels
            .insert("tier".to_string(), format!("t{}", rng.below(4)));
        host.origin = origin(number);
        hosts.push(host);
    }
    let mut services = Vec::with_capacity(service_count);
    let mut chosen: Vec<usize> = Vec::with_capacity(pool_size + SPARES_PER_POOL);
    for number in 0..service_count {
        chosen.clear();
        let wanted = (pool_size + SPARES_PER_POOL).min(host_count);
        while chosen.len() < wanted {
            let host = rng.below(host_count as u64) as usize;
            if !chosen.contains(&host) {
                chosen.push(host);
            }
        }
        let (members, spares) = chosen.split_at(wanted.min(pool_size));
        let mut members = members.to_vec();
        members.sort_unstable();
        let mut spares = spares.to_vec();
        spares.sort_unstable();
        let names =
            |hosts: &[usize]| -> Vec<String> { hosts.iter().map(|h| format!("h{h}")).collect() };
        let located = |hosts: &[usize]| -> Vec<Located<String>> {
            names(hosts)
                .into_iter()
                .map(|value| Located {
                    value,
                    origin: origin(host_count + number),
                })
                .collect()
        };
        let floor_percent = 50 + rng.below(31) as u32;
        let pool = PoolDef {
            name: "main".to_string(),
            hosts: HostChoice::List(located(&members)),
            spares: (!spares.is_empty()).then(|| HostChoice::List(located(&spares))),
            capacity: CapacityPolicy {
                floor: Located {
                    value: Amount::Percent {
                        basis_points: floor_percent * 100,
                    },
                    origin: origin(host_count + number),
                },
                weight: 1,
                weights: Vec::new(),
            },
            members: names(&members),
            spare_hosts: names(&spares),
            origin: origin(host_count + number),
        };
        services.push(ServiceDef {
            name: format!("svc{number}"),
            owner: None,
            pools: vec![pool],
            dependencies: Vec::new(),
            origin: origin(host_count + number),
        });
    }
    FleetDef {
        name: "synthetic".to_string(),
        description: Some(format!("Made up from seed {seed}.")),
        hosts,
        services,
        origin: origin(0),
    }
}
