//! `levee fleet show` and `levee maint ...`: a fleet's capacity, and planning, scheduling and
//! following maintenance.

use clap::{Args, Subcommand};
use levee_server::fleet::FleetView;
use serde_json::Value;

use crate::commands::{
    EXIT_OK, Outcome, Output, OutputArgs, ServerArgs, eprint_line, plural, print_json, print_line,
    print_raw, table, unexpected,
};

#[derive(Subcommand, Debug)]
pub enum FleetCommand {
    /// Shows every stored fleet: hosts per datacenter, and each pool's size, floor and
    /// headroom.
    Show(FleetShowArgs),
}

#[derive(Args, Debug)]
pub struct FleetShowArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

pub async fn fleet(command: FleetCommand) -> Outcome {
    match command {
        FleetCommand::Show(args) => fleet_show(&args).await,
    }
}

async fn fleet_show(args: &FleetShowArgs) -> Outcome {
    let client = args.server.client()?;
    let fleets: Vec<Value> = client.get(&["api", "v1", "fleet"], &[]).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(fleets));
        return Ok(EXIT_OK);
    }
    if fleets.is_empty() {
        eprint_line("no fleet is stored: apply a `kind: Fleet` file with `levee apply`");
        return Ok(EXIT_OK);
    }
    for (i, fleet) in fleets.into_iter().enumerate() {
        let fleet: FleetView =
            serde_json::from_value(fleet).map_err(|error| unexpected(&client, "a fleet", error))?;
        if i > 0 {
            print_line("");
        }
        print_line(format_args!(
            "fleet {} (v{}): {}, {} down, {}",
            fleet.name,
            fleet.version,
            plural(fleet.hosts, "host"),
            fleet.hosts_down,
            plural(fleet.services, "service")
        ));
        let rows: Vec<Vec<String>> = fleet
            .datacenters
            .iter()
            .map(|dc| {
                vec![
                    dc.name.clone(),
                    dc.hosts.to_string(),
                    dc.hosts_down.to_string(),
                    dc.racks.to_string(),
                ]
            })
            .collect();
        print_raw(&table(&["DATACENTER", "HOSTS", "DOWN", "RACKS"], &rows));
        let rows: Vec<Vec<String>> = fleet
            .pools
            .iter()
            .map(|pool| {
                vec![
                    format!("{}/{}", pool.service, pool.pool),
                    pool.size.to_string(),
                    pool.spares.to_string(),
                    pool.capacity_units.to_string(),
                    format!("{} ({})", pool.floor_units, pool.floor),
                    pool.down_units.to_string(),
                    pool.headroom_units.to_string(),
                    pool.by_datacenter
                        .iter()
                        .map(|(dc, n)| format!("{dc}:{n}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                ]
            })
            .collect();
        print_raw(&table(
            &[
                "POOL",
                "SIZE",
                "SPARES",
                "CAPACITY",
                "FLOOR",
                "DOWN",
                "HEADROOM",
                "PER DATACENTER",
            ],
            &rows,
        ));
    }
    Ok(EXIT_OK)
}
