//! Fleets and maintenance policies over HTTP: applying them checked against each other and
//! the stored runbooks, and showing a fleet's capacity.

mod common;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ROW_YAML: &str = include_str!("../../../examples/fleet/row.yaml");
const POLICIES_YAML: &str = include_str!("../../../examples/fleet/policies.yaml");
const RUNBOOKS_YAML: &str = include_str!("../../../examples/fleet/runbooks.yaml");

async fn apply_files(server: &common::TestServer, files: &[(&str, &str)]) -> common::Answer {
    let files: Vec<Value> = files
        .iter()
        .map(|(name, content)| json!({ "name": name, "content": content }))
        .collect();
    server
        .send(
            Method::POST,
            "/api/v1/definitions",
            None,
            Some(&json!({ "files": files })),
        )
        .await
}

#[tokio::test]
async fn a_fleet_and_its_policies_are_stored_and_shown_with_their_headroom() {
    let server = common::start().await;
    let answer = apply_files(
        &server,
        &[
            ("row.yaml", ROW_YAML),
            ("runbooks.yaml", RUNBOOKS_YAML),
            ("policies.yaml", POLICIES_YAML),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let fleets = server.get("/api/v1/fleet").await.json();
    let fleet = &fleets[0];
    assert_eq!(fleet["name"], "row-a");
    assert_eq!(fleet["hosts"], 43, "42 pool members and a spare");
    assert_eq!(fleet["datacenters"][0]["name"], "dc1");
    assert_eq!(fleet["datacenters"][0]["racks"], 6);
    let pools: Vec<(String, i64, i64)> = fleet["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| {
            (
                p["service"].as_str().unwrap_or_default().to_string(),
                p["floor_units"].as_i64().unwrap_or(-1),
                p["headroom_units"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        pools,
        vec![
            ("web".to_string(), 12, 12),
            ("cache".to_string(), 9, 3),
            ("mysql".to_string(), 4, 2),
        ]
    );
}

#[tokio::test]
async fn a_policy_for_an_unknown_service_or_runbook_is_refused_and_nothing_is_stored() {
    let server = common::start().await;
    // The cache policy runs `cache-reload-index`, which is not stored.
    let answer = apply_files(
        &server,
        &[("row.yaml", ROW_YAML), ("policies.yaml", POLICIES_YAML)],
    )
    .await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("cache-reload-index") && answer.body.contains("not stored"),
        "{}",
        answer.body
    );
    let fleets = server.get("/api/v1/fleet").await.json();
    assert_eq!(fleets, json!([]), "nothing was stored");

    let stray = "kind: MaintenancePolicy\nname: queue\nservice: kafka\nrules:\n  - type: any\n    action: nothing\n";
    let answer = apply_files(&server, &[("row.yaml", ROW_YAML), ("queue.yaml", stray)]).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert!(answer.body.contains("`kafka`"), "{}", answer.body);
}

#[tokio::test]
async fn a_fleet_that_drops_a_service_a_stored_policy_is_for_is_refused_naming_the_policy() {
    let server = common::start().await;
    let answer = apply_files(
        &server,
        &[
            ("row.yaml", ROW_YAML),
            ("runbooks.yaml", RUNBOOKS_YAML),
            ("policies.yaml", POLICIES_YAML),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    // The same fleet without its mysql service.
    let start = ROW_YAML.find("  - name: mysql").expect("the mysql service");
    let without_mysql: String = ROW_YAML[..start]
        .lines()
        .filter(|line| !line.contains("service: mysql"))
        .map(|line| format!("{line}\n"))
        .collect();
    let answer = apply_files(&server, &[("row.yaml", &without_mysql)]).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.body
    );
    assert!(
        answer.body.contains("stored MaintenancePolicy `mysql`"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn a_fleet_that_drops_a_host_an_active_maintenance_holds_is_refused_naming_it() {
    let server = common::start().await;
    let answer = apply_files(&server, &[("row.yaml", ROW_YAML)]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let mut held = levee_store::conformance::maintenance("m-1", &["db-r6-1"], 1, 2);
    held.fleet = "row-a".to_string();
    let scheduled = server
        .app
        .store
        .schedule_maintenance(held, Box::new(|_| Ok(())), None)
        .await
        .expect("store a maintenance");
    assert!(matches!(scheduled, levee_store::Scheduled::Stored(_)));
    let without_host: String = ROW_YAML
        .lines()
        .filter(|line| !line.contains("name: db-r6-1,"))
        .map(|line| format!("{line}\n"))
        .collect();
    let answer = apply_files(&server, &[("row.yaml", &without_host)]).await;
    assert_eq!(answer.status, StatusCode::CONFLICT, "{}", answer.body);
    assert!(
        answer.body.contains("maintenance `m-1`") && answer.body.contains("db-r6-1"),
        "{}",
        answer.body
    );
}
