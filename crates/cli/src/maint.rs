//! `levee fleet show` and `levee maint ...`: a fleet's capacity, and planning, scheduling and
//! following maintenance.

use clap::{Args, Subcommand};
use levee_server::fleet::FleetView;
use serde_json::Value;

use serde_json::json;

use crate::client::Client;
use crate::commands::{
    EXIT_NO, EXIT_OK, Outcome, Output, OutputArgs, ServerArgs, eprint_line, plural, print_json,
    print_line, print_raw, table, unexpected,
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

/// `levee maint ...`: plan, schedule, follow and steer maintenance.
#[derive(Subcommand, Debug)]
pub enum MaintCommand {
    /// Shows what scheduling a maintenance would do, changing nothing: the hosts, each pool's
    /// capacity before and after against its floor, each service's action, and whether a
    /// second person must approve. Exits 0 if it would be scheduled, 1 if not.
    Plan(MaintRequestArgs),
    /// Schedules a maintenance: its capacity is reserved at once, or it is refused with the
    /// reason (exit 1).
    Schedule(MaintScheduleArgs),
    /// Lists maintenances by start time.
    List(MaintListArgs),
    /// Shows one maintenance: its state, why, what would unblock it, each service.
    Show(MaintIdArgs),
    /// Confirms a service's hosts were handled by hand, so the maintenance goes on.
    Confirm(MaintConfirmArgs),
    /// Approves a maintenance whose scope needs a second person.
    Approve(MaintReasonArgs),
    /// Cancels a maintenance; hosts automation took out are given back first.
    Cancel(MaintReasonArgs),
    /// Confirms a host in repair (an alert-driven repair) is fixed: it goes back in service.
    ConfirmRepair(MaintReasonArgs),
    /// Says the work ended early: the hosts are enabled now.
    Finish(MaintReasonArgs),
    /// Puts one host back in service now; automation leaves it alone afterwards.
    EnableHost(MaintHostArgs),
    /// Upcoming maintenance per failure domain.
    Calendar(MaintCalendarArgs),
}

#[derive(Args, Debug)]
pub struct MaintRequestArgs {
    /// The hosts: a selector such as `rack=a-r1` or `rack in (a-r4, a-r5)`.
    #[arg(long)]
    pub scope: String,
    /// network, power, reboot, or a custom type.
    #[arg(long = "type", value_name = "TYPE")]
    pub kind: String,
    /// When the work starts: RFC 3339, `now`, or `+DURATION` (`+2h`).
    #[arg(long, default_value = "now")]
    pub start: String,
    /// How long the work lasts (`2h`, `30m`).
    #[arg(long)]
    pub duration: String,
    /// The fleet, when several are stored.
    #[arg(long)]
    pub fleet: Option<String>,
    /// Store it waiting for people when its preflight fails, instead of refusing it.
    #[arg(long)]
    pub needs_human_on_failure: bool,
    /// Take the scope one failure domain at a time: region, datacenter, row, rack, power or
    /// switch (`rack`: one rack per step, the next only once the last is out).
    #[arg(long, value_name = "LEVEL")]
    pub one_domain_per_step: Option<String>,
    /// Least time between the starts of two disable steps (`5m`).
    #[arg(long, value_name = "DURATION")]
    pub step_interval: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintScheduleArgs {
    #[command(flatten)]
    pub request: MaintRequestArgs,
    /// Who does the work; you when left out.
    #[arg(long)]
    pub owner: Option<String>,
    /// An id of your choosing.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// Until when people may answer (approve, confirm): RFC 3339 or `+DURATION`; the end of
    /// the window by default.
    #[arg(long)]
    pub human_deadline: Option<String>,
    /// What happens if nobody answers by then: cancel (default) or fail.
    #[arg(long, value_name = "cancel|fail")]
    pub on_deadline: Option<String>,
}

#[derive(Args, Debug)]
pub struct MaintListArgs {
    /// Only those still holding capacity (not done or cancelled).
    #[arg(long)]
    pub active: bool,
    #[arg(long)]
    pub fleet: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintIdArgs {
    pub id: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintReasonArgs {
    pub id: String,
    /// Why; it goes to the audit log.
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintConfirmArgs {
    pub id: String,
    /// The service whose hosts were handled by hand.
    #[arg(long)]
    pub service: String,
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintHostArgs {
    pub id: String,
    pub host: String,
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Args, Debug)]
pub struct MaintCalendarArgs {
    /// The failure domain to group by: rack, row, power, switch, datacenter, region.
    #[arg(long, default_value = "rack")]
    pub by: String,
    /// Days from now to show.
    #[arg(long, default_value_t = 14)]
    pub days: u32,
    #[arg(long)]
    pub fleet: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    #[command(flatten)]
    pub output: OutputArgs,
}

fn request_body(args: &MaintRequestArgs) -> Value {
    let mut body = json!({
        "scope": args.scope,
        "type": args.kind,
        "start": args.start,
        "duration": args.duration,
    });
    if let Some(fleet) = &args.fleet {
        body["fleet"] = json!(fleet);
    }
    if args.needs_human_on_failure {
        body["on_preflight_failure"] = json!("needs_human");
    }
    if let Some(level) = &args.one_domain_per_step {
        body["one_domain_per_step"] = json!(level);
    }
    if let Some(interval) = &args.step_interval {
        body["step_interval"] = json!(interval);
    }
    body
}

pub async fn maint(command: MaintCommand) -> Outcome {
    match command {
        MaintCommand::Plan(args) => maint_plan(&args).await,
        MaintCommand::Schedule(args) => maint_schedule(&args).await,
        MaintCommand::List(args) => maint_list(&args).await,
        MaintCommand::Show(args) => {
            let client = args.server.client()?;
            let view: Value = client
                .get(&["api", "v1", "maintenances", &args.id], &[])
                .await?;
            print_maintenance(&client, &view, args.output.output)
        }
        MaintCommand::Confirm(args) => {
            control(
                &args.server,
                &args.id,
                json!({ "action": "confirm", "service": args.service, "reason": args.reason }),
                args.output.output,
            )
            .await
        }
        MaintCommand::Approve(args) => simple_control(&args, "approve").await,
        MaintCommand::Cancel(args) => simple_control(&args, "cancel").await,
        MaintCommand::ConfirmRepair(args) => simple_control(&args, "confirm_repair").await,
        MaintCommand::Finish(args) => simple_control(&args, "finish").await,
        MaintCommand::EnableHost(args) => {
            control(
                &args.server,
                &args.id,
                json!({ "action": "enable_host", "host": args.host, "reason": args.reason }),
                args.output.output,
            )
            .await
        }
        MaintCommand::Calendar(args) => maint_calendar(&args).await,
    }
}

async fn simple_control(args: &MaintReasonArgs, action: &str) -> Outcome {
    control(
        &args.server,
        &args.id,
        json!({ "action": action, "reason": args.reason }),
        args.output.output,
    )
    .await
}

async fn control(server: &ServerArgs, id: &str, body: Value, output: Output) -> Outcome {
    let client = server.client()?;
    let view: Value = client
        .post(&["api", "v1", "maintenances", id, "controls"], &body)
        .await?;
    print_maintenance(&client, &view, output)
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

async fn maint_plan(args: &MaintRequestArgs) -> Outcome {
    let client = args.server.client()?;
    let plan: Value = client
        .post(&["api", "v1", "maintenances", "plan"], &request_body(args))
        .await?;
    let outcome = text(&plan, "outcome");
    if args.output.output == Output::Json {
        print_json(&plan);
    } else {
        let hosts = plan["hosts"].as_array().map_or(0, Vec::len);
        print_line(format_args!(
            "{} maintenance of {} ({}) in fleet {}, {} to {}",
            text(&plan, "type"),
            text(&plan, "scope"),
            plural(hosts, "host"),
            text(&plan, "fleet"),
            text(&plan, "start"),
            text(&plan, "end"),
        ));
        print_preflight(&plan["preflight"]);
        print_services(&plan["services"]);
        print_steps(&plan);
        if let Some(reasons) = plan["approval_required"].as_array()
            && !reasons.is_empty()
        {
            let reasons: Vec<String> = reasons
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect();
            print_line(format_args!(
                "needs a second person's approval: {}",
                reasons.join(", ")
            ));
        }
        if let Some(conflicts) = plan["conflicts"].as_array()
            && !conflicts.is_empty()
        {
            print_line(format_args!(
                "hosts already in an overlapping maintenance: {}",
                conflicts
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        print_line(format_args!(
            "{}",
            match outcome.as_str() {
                "schedule" => "would be scheduled: every pool keeps its floor",
                "needs_approval" => "would wait for a second person's approval",
                "needs_human" => "would wait for people to handle the failing services",
                _ if plan["conflicts"].as_array().is_some_and(|c| !c.is_empty()) =>
                    "would be refused: its hosts are already in maintenance then",
                _ =>
                    "would be refused: pools would drop below their floor (people can handle \
                      them: --needs-human-on-failure)",
            }
        ));
    }
    Ok(if outcome == "refuse" {
        EXIT_NO
    } else {
        EXIT_OK
    })
}

/// The disable steps a plan would take, and the server's removal rate limits that may hold
/// them back.
fn print_steps(plan: &Value) {
    let steps = plan["steps"].as_array().map_or(&[][..], Vec::as_slice);
    if steps.len() > 1 || plan["rollout"]["one_domain_per_step"].is_string() {
        print_line(format_args!("disable steps:"));
        for step in steps {
            let hosts: Vec<&str> = step["hosts"]
                .as_array()
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(Value::as_str)
                .collect();
            print_line(format_args!(
                "  {:>3}. {}{}",
                step["number"],
                step["domain"]
                    .as_str()
                    .map_or(String::new(), |domain| format!("{domain}: ")),
                hosts.join(", ")
            ));
        }
    }
    let limits = &plan["removal_limits"];
    let window = limits["window_ms"].as_u64().unwrap_or(0) / 60_000;
    let per_pool = limits["max_per_pool"]
        .as_u64()
        .map_or("no limit".to_string(), |n| plural(n as usize, "host"));
    let overall = limits["max_overall"]
        .as_u64()
        .map_or("no limit".to_string(), |n| plural(n as usize, "host"));
    print_line(format_args!(
        "removal rate limits: {per_pool} per pool and {overall} overall per {window} min"
    ));
}

async fn maint_schedule(args: &MaintScheduleArgs) -> Outcome {
    let client = args.request.server.client()?;
    let mut body = request_body(&args.request);
    for (key, value) in [
        ("owner", &args.owner),
        ("id", &args.id),
        ("description", &args.description),
        ("human_deadline", &args.human_deadline),
        ("on_deadline", &args.on_deadline),
    ] {
        if let Some(value) = value {
            body[key] = json!(value);
        }
    }
    let reply = client
        .send(
            reqwest::Method::POST,
            &["api", "v1", "maintenances"],
            &[],
            &[],
            Some(&body),
        )
        .await?;
    if !reply.status.is_success() {
        let failure = client.failure(&reply);
        if reply.status == reqwest::StatusCode::CONFLICT {
            eprint_line(format_args!(
                "refused ({}): {}",
                failure.code, failure.message
            ));
            return Ok(EXIT_NO);
        }
        return Err(failure.into());
    }
    let view: Value = serde_json::from_str(&reply.body)
        .map_err(|error| unexpected(&client, "a maintenance", error))?;
    print_maintenance(&client, &view, args.request.output.output)
}

async fn maint_list(args: &MaintListArgs) -> Outcome {
    let client = args.server.client()?;
    let mut query = Vec::new();
    if args.active {
        query.push(("active", "true".to_string()));
    }
    if let Some(fleet) = &args.fleet {
        query.push(("fleet", fleet.clone()));
    }
    let list: Vec<Value> = client.get(&["api", "v1", "maintenances"], &query).await?;
    if args.output.output == Output::Json {
        print_json(&Value::Array(list));
        return Ok(EXIT_OK);
    }
    if list.is_empty() {
        eprint_line("no maintenance");
        return Ok(EXIT_OK);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            vec![
                text(m, "id"),
                text(m, "type"),
                text(m, "scope"),
                m["hosts"].as_array().map_or(0, Vec::len).to_string(),
                text(m, "start"),
                text(m, "end"),
                text(m, "state"),
                text(m, "why"),
            ]
        })
        .collect();
    print_raw(&table(
        &[
            "ID", "TYPE", "SCOPE", "HOSTS", "START", "END", "STATE", "WHY",
        ],
        &rows,
    ));
    Ok(EXIT_OK)
}

async fn maint_calendar(args: &MaintCalendarArgs) -> Outcome {
    let client = args.server.client()?;
    let mut query = vec![("by", args.by.clone()), ("days", args.days.to_string())];
    if let Some(fleet) = &args.fleet {
        query.push(("fleet", fleet.clone()));
    }
    let calendar: Value = client
        .get(&["api", "v1", "maintenances", "calendar"], &query)
        .await?;
    if args.output.output == Output::Json {
        print_json(&calendar);
        return Ok(EXIT_OK);
    }
    print_line(format_args!(
        "fleet {} by {}, {} to {}",
        text(&calendar, "fleet"),
        text(&calendar, "by"),
        text(&calendar, "from"),
        text(&calendar, "to")
    ));
    let mut rows = Vec::new();
    for domain in calendar["domains"].as_array().into_iter().flatten() {
        for entry in domain["entries"].as_array().into_iter().flatten() {
            rows.push(vec![
                text(domain, "domain"),
                text(entry, "start"),
                text(entry, "end"),
                text(entry, "type"),
                text(entry, "id"),
                text(entry, "hosts"),
                text(entry, "state"),
                text(entry, "owner"),
            ]);
        }
    }
    if rows.is_empty() {
        print_line("nothing scheduled");
    } else {
        print_raw(&table(
            &[
                "DOMAIN", "START", "END", "TYPE", "ID", "HOSTS", "STATE", "OWNER",
            ],
            &rows,
        ));
    }
    Ok(EXIT_OK)
}

fn print_preflight(report: &Value) {
    let rows: Vec<Vec<String>> = report["pools"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pool| {
            vec![
                format!("{}/{}", text(pool, "service"), text(pool, "pool")),
                text(pool, "capacity_units"),
                text(pool, "removed_by_scope_units"),
                (pool["already_down_units"].as_u64().unwrap_or(0)
                    + pool["held_by_overlapping_units"].as_u64().unwrap_or(0))
                .to_string(),
                text(pool, "after_units"),
                text(pool, "floor_units"),
                if pool["passed"].as_bool() == Some(true) {
                    "ok".to_string()
                } else {
                    format!("SHORT BY {}", text(pool, "deficit_units"))
                },
            ]
        })
        .collect();
    print_raw(&table(
        &[
            "POOL",
            "BEFORE",
            "IN SCOPE",
            "DOWN/HELD",
            "AFTER",
            "FLOOR",
            "PREFLIGHT",
        ],
        &rows,
    ));
}

fn print_services(services: &Value) {
    let rows: Vec<Vec<String>> = services
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(s, "service"),
                s["hosts"].as_array().map_or(0, Vec::len).to_string(),
                text(s, "action_name"),
                text(s, "status"),
                text(s, "note"),
            ]
        })
        .collect();
    print_raw(&table(
        &["SERVICE", "HOSTS", "ACTION", "STATUS", "NOTE"],
        &rows,
    ));
}

fn print_maintenance(client: &Client, view: &Value, output: Output) -> Outcome {
    if output == Output::Json {
        print_json(view);
        return Ok(EXIT_OK);
    }
    if view.get("id").is_none() {
        return Err(unexpected(client, "a maintenance", "no `id`"));
    }
    print_line(format_args!(
        "maintenance {}: {} of {} ({}), {} to {}, owner {}",
        text(view, "id"),
        text(view, "type"),
        text(view, "scope"),
        plural(view["hosts"].as_array().map_or(0, Vec::len), "host"),
        text(view, "start"),
        text(view, "end"),
        text(view, "owner"),
    ));
    print_line(format_args!("state: {}", text(view, "state")));
    print_line(format_args!("why: {}", text(view, "why")));
    let unblock = text(view, "unblock");
    if !unblock.is_empty() {
        print_line(format_args!("to unblock: {unblock}"));
    }
    if let Some(out) = view["hosts_out"].as_array()
        && !out.is_empty()
    {
        print_line(format_args!("hosts out of service now: {}", out.len()));
    }
    print_services(&view["details"]["services"]);
    Ok(EXIT_OK)
}
