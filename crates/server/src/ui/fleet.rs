//! The fleet and its maintenance: capacity and headroom per pool by datacenter, hosts in
//! repair, the calendar of maintenance per failure domain, and one maintenance's page (state,
//! why it waits, what unblocks it, capacity per pool before and after, and its controls).
//! Every read is the function behind the matching `/api/v1/` endpoint; every control is sent
//! by the script to `POST /api/v1/maintenances/{id}/controls`.

use askama::Template;
use axum::extract::{Path, State};
use axum::response::Response;
use serde::Deserialize;

use super::pages::{Nav, error_page, time_text};
use super::{UiCaller, html};
use crate::SharedApp;
use crate::fleet::FleetView;
use crate::http::QueryParams;
use crate::maint::flow::{Details, ServiceStatus};
use crate::maint::{CalendarQuery, MaintenanceQuery, MaintenanceView};
use crate::remediation::REPAIR_KIND;

/// Maintenances listed under the calendar, newest start first.
pub const MAINTENANCE_PAGE_ROWS: u32 = 200;
/// Days the calendar shows unless the query asks for another number.
pub const CALENDAR_UI_DAYS: u32 = 14;
/// One day, in milliseconds.
const DAY_MS: i64 = 86_400_000;

/// One host in repair, for the fleet page.
pub struct RepairRow {
    pub id: String,
    pub host: String,
    pub fleet: String,
    pub state: String,
    pub why: String,
    pub since: String,
}

#[derive(Template)]
#[template(path = "fleet.html")]
struct FleetPage {
    nav: Nav,
    fleets: Vec<FleetView>,
    repairs: Vec<RepairRow>,
    /// Hosts held out of service by maintenances (not repairs), with the maintenance.
    out: Vec<(String, String)>,
}

pub async fn fleet(State(app): State<SharedApp>, UiCaller(caller): UiCaller) -> Response {
    let fleets = match app.fleet_views(&caller).await {
        Ok(fleets) => fleets,
        Err(error) => return error_page(&error),
    };
    let active = match app
        .maintenance_views(
            &caller,
            &MaintenanceQuery {
                active: Some(true),
                limit: Some(MAINTENANCE_PAGE_ROWS),
                ..MaintenanceQuery::default()
            },
        )
        .await
    {
        Ok(active) => active,
        Err(error) => return error_page(&error),
    };
    let repairs = active
        .iter()
        .filter(|m| m.kind == REPAIR_KIND)
        .map(|m| RepairRow {
            id: m.id.clone(),
            host: m.hosts.join(", "),
            fleet: m.fleet.clone(),
            state: m.state.clone(),
            why: m.why.clone(),
            since: time_text(Some(m.created_at_ms)),
        })
        .collect();
    let out = active
        .iter()
        .filter(|m| m.kind != REPAIR_KIND)
        .flat_map(|m| m.hosts_out.iter().map(|h| (h.clone(), m.id.clone())))
        .collect();
    html(
        FleetPage {
            nav: Nav::of(&app, &caller),
            fleets,
            repairs,
            out,
        }
        .render(),
    )
}

/// The query of `/ui/maintenances`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalendarForm {
    #[serde(default)]
    pub fleet: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub days: Option<u32>,
}

/// One failure domain's row of the calendar: a cell per day, each with the maintenances
/// holding some of the domain's hosts that day.
pub struct CalendarRow {
    pub domain: String,
    pub days: Vec<Vec<CalendarCell>>,
}

pub struct CalendarCell {
    pub id: String,
    pub kind: String,
    pub state: String,
    pub hosts: usize,
    pub title: String,
}

#[derive(Template)]
#[template(path = "maintenances.html")]
struct MaintenancesPage {
    nav: Nav,
    fleets: Vec<String>,
    fleet: String,
    by: String,
    levels: Vec<&'static str>,
    days: Vec<String>,
    rows: Vec<CalendarRow>,
    problem: String,
    maintenances: Vec<MaintenanceView>,
}

fn parse_ms(text: &str) -> Option<i64> {
    text.parse::<jiff::Timestamp>()
        .ok()
        .map(|t| t.as_millisecond())
}

pub async fn maintenances(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    QueryParams(form): QueryParams<CalendarForm>,
) -> Response {
    let fleets: Vec<String> = match app.fleet_views(&caller).await {
        Ok(fleets) => fleets.into_iter().map(|f| f.name).collect(),
        Err(error) => return error_page(&error),
    };
    let fleet = form
        .fleet
        .clone()
        .filter(|f| !f.is_empty())
        .or_else(|| fleets.first().cloned())
        .unwrap_or_default();
    let by = form.by.clone().unwrap_or_else(|| "rack".to_string());
    let days_asked = form.days.unwrap_or(CALENDAR_UI_DAYS);
    let mut problem = String::new();
    let mut rows = Vec::new();
    let mut days = Vec::new();
    if !fleet.is_empty() {
        let query = CalendarQuery {
            fleet: Some(fleet.clone()),
            by: Some(by.clone()),
            from: None,
            days: Some(days_asked),
        };
        match app.maintenance_calendar(&caller, &query).await {
            Ok(calendar) => {
                // Days start at midnight UTC, from the calendar's first day.
                let from_ms = parse_ms(&calendar.from).unwrap_or(0);
                let first_day_ms = from_ms - from_ms.rem_euclid(DAY_MS);
                let count = usize::try_from(days_asked).unwrap_or(0);
                days = (0..count)
                    .map(|d| {
                        time_text(Some(first_day_ms + DAY_MS * d as i64))
                            .get(..10)
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect();
                for domain in calendar.domains {
                    let mut cells: Vec<Vec<CalendarCell>> =
                        (0..count).map(|_| Vec::new()).collect();
                    for entry in &domain.entries {
                        let (Some(start), Some(end)) =
                            (parse_ms(&entry.start), parse_ms(&entry.end))
                        else {
                            continue;
                        };
                        for (d, cell) in cells.iter_mut().enumerate() {
                            let day_start = first_day_ms + DAY_MS * d as i64;
                            if start < day_start + DAY_MS && end > day_start {
                                cell.push(CalendarCell {
                                    id: entry.id.clone(),
                                    kind: entry.kind.clone(),
                                    state: entry.state.clone(),
                                    hosts: entry.hosts,
                                    title: format!(
                                        "{} ({}, {}): {} to {}, {} hosts of {}, owner {}",
                                        entry.id,
                                        entry.kind,
                                        entry.state,
                                        entry.start,
                                        entry.end,
                                        entry.hosts,
                                        domain.domain,
                                        entry.owner
                                    ),
                                });
                            }
                        }
                    }
                    rows.push(CalendarRow {
                        domain: domain.domain,
                        days: cells,
                    });
                }
            }
            Err(error) => problem = error.message,
        }
    }
    let maintenances = match app
        .maintenance_views(
            &caller,
            &MaintenanceQuery {
                fleet: (!fleet.is_empty()).then(|| fleet.clone()),
                active: None,
                limit: Some(MAINTENANCE_PAGE_ROWS),
            },
        )
        .await
    {
        Ok(list) => list,
        Err(error) => return error_page(&error),
    };
    html(
        MaintenancesPage {
            nav: Nav::of(&app, &caller),
            fleets,
            fleet,
            by,
            levels: levee_model::DomainLevel::ALL
                .into_iter()
                .map(|l| l.key())
                .collect(),
            days,
            rows,
            problem,
            maintenances,
        }
        .render(),
    )
}

/// One pool's capacity before and after the maintenance, from its last preflight.
pub struct PoolRow {
    pub service: String,
    pub pool: String,
    pub before: u64,
    pub removed: u64,
    pub down: u64,
    pub held: u64,
    pub after: u64,
    pub floor: u64,
    pub passed: bool,
    pub deficit: u64,
    /// Bar widths in percent of the pool's capacity, for the small capacity chart.
    pub after_pct: u64,
    pub floor_pct: u64,
}

pub struct ServiceRow {
    pub service: String,
    pub action: String,
    pub status: String,
    pub hosts: String,
    pub disabled: String,
    pub note: String,
    pub needs_person: bool,
    pub confirmed: String,
}

#[derive(Template)]
#[template(path = "maintenance.html")]
struct MaintenancePage {
    nav: Nav,
    m: MaintenanceView,
    repair: bool,
    start: String,
    end: String,
    approval_required: Vec<String>,
    approved: String,
    pools: Vec<PoolRow>,
    preflight_at: String,
    services: Vec<ServiceRow>,
    history: Vec<(String, String, String)>,
    /// The details as JSON, for a repair (its rule, alert, run and ticket).
    details_json: String,
    ended: bool,
}

fn percent(part: u64, whole: u64) -> u64 {
    (part * 100).checked_div(whole).unwrap_or(0).min(100)
}

pub async fn maintenance(
    State(app): State<SharedApp>,
    UiCaller(caller): UiCaller,
    Path(id): Path<String>,
) -> Response {
    let m = match app.maintenance_view(&caller, &id).await {
        Ok(m) => m,
        Err(error) => return error_page(&error),
    };
    let repair = m.kind == REPAIR_KIND;
    let details = if repair {
        None
    } else {
        match Details::from_value(&m.details) {
            Ok(details) => Some(details),
            Err(why) => return error_page(&crate::error::ApiError::internal(why)),
        }
    };
    let mut pools = Vec::new();
    let mut services = Vec::new();
    let mut history = Vec::new();
    let mut approval_required = Vec::new();
    let mut approved = String::new();
    let mut preflight_at = String::new();
    if let Some(details) = &details {
        approval_required = details.approval_required.clone();
        if let Some(signed) = &details.approved {
            approved = format!(
                "approved by {} at {}: {}",
                signed.by,
                time_text(Some(signed.at_ms)),
                signed.reason
            );
        }
        preflight_at = time_text(details.preflight_at_ms);
        if let Some(report) = &details.preflight {
            for pool in &report.pools {
                pools.push(PoolRow {
                    service: pool.service.clone(),
                    pool: pool.pool.clone(),
                    before: pool.capacity_units,
                    removed: pool.removed_by_scope_units,
                    down: pool.already_down_units,
                    held: pool.held_by_overlapping_units,
                    after: pool.after_units,
                    floor: pool.floor_units,
                    passed: pool.passed,
                    deficit: pool.deficit_units,
                    after_pct: percent(pool.after_units, pool.capacity_units),
                    floor_pct: percent(pool.floor_units, pool.capacity_units),
                });
            }
        }
        for service in &details.services {
            services.push(ServiceRow {
                service: service.service.clone(),
                action: service.action_name.clone(),
                status: serde_json::to_value(service.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                hosts: service.hosts.join(", "),
                disabled: service.disabled.join(", "),
                note: service.note.clone(),
                needs_person: service.status == ServiceStatus::NeedsHuman,
                confirmed: service
                    .confirmed
                    .as_ref()
                    .map(|s| format!("{}: {}", s.by, s.reason))
                    .unwrap_or_default(),
            });
        }
        history = details
            .history
            .iter()
            .map(|h| (time_text(Some(h.at_ms)), h.state.clone(), h.why.clone()))
            .collect();
    }
    let details_json = if repair {
        serde_json::to_string_pretty(&m.details).unwrap_or_default()
    } else {
        String::new()
    };
    let ended = matches!(m.state.as_str(), "done" | "cancelled" | "failed");
    html(
        MaintenancePage {
            nav: Nav::of(&app, &caller),
            repair,
            start: time_text(Some(m.start_ms)),
            end: time_text(Some(m.end_ms)),
            approval_required,
            approved,
            pools,
            preflight_at,
            services,
            history,
            details_json,
            ended,
            m,
        }
        .render(),
    )
}
