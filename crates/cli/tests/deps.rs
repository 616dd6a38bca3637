//! `levee deps plan`: a runbook generated from a Jaeger dependencies file, cycles cut, that
//! `levee validate` accepts next to the templates it names; a new dependency on the critical
//! path is flagged with exit 1.

use std::process::Command;

fn levee(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_levee"))
        .args(args)
        .output()
        .expect("run levee")
}

#[test]
fn a_generated_evacuation_validates_and_new_critical_dependencies_are_flagged() {
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before.json");
    let now = dir.path().join("now.json");
    std::fs::write(
        &before,
        r#"[{"parent":"web","child":"auth","callCount":900},
            {"parent":"mobile","child":"auth","callCount":400},
            {"parent":"auth","child":"db","callCount":800},
            {"parent":"db","child":"auth","callCount":2}]"#,
    )
    .unwrap();
    std::fs::write(
        &now,
        r#"{"data":[{"parent":"web","child":"auth","callCount":900},
            {"parent":"mobile","child":"auth","callCount":400},
            {"parent":"auth","child":"db","callCount":800},
            {"parent":"db","child":"auth","callCount":2},
            {"parent":"db","child":"ledger","callCount":5}]}"#,
    )
    .unwrap();
    let plan = levee(&["deps", "plan", "--jaeger", before.to_str().unwrap()]);
    assert!(
        plan.status.success(),
        "{}",
        String::from_utf8_lossy(&plan.stderr)
    );
    let findings = String::from_utf8_lossy(&plan.stderr);
    assert!(
        findings.contains("cut at db -> auth (2 calls)"),
        "{findings}"
    );
    assert!(findings.contains("shared component: auth"), "{findings}");
    let generated = dir.path().join("generated.yaml");
    std::fs::write(&generated, &plan.stdout).unwrap();
    let templates = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/evacuate.yaml"
    );
    let valid = levee(&["validate", templates, generated.to_str().unwrap()]);
    assert!(
        valid.status.success(),
        "{}{}",
        String::from_utf8_lossy(&valid.stdout),
        String::from_utf8_lossy(&valid.stderr)
    );
    let flagged = levee(&[
        "deps",
        "plan",
        "--jaeger",
        now.to_str().unwrap(),
        "--before",
        before.to_str().unwrap(),
    ]);
    assert_eq!(flagged.status.code(), Some(1));
    let findings = String::from_utf8_lossy(&flagged.stderr);
    assert!(
        findings.contains("NEW dependency on the critical path: db -> ledger"),
        "{findings}"
    );
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "[{\"parent\": \"a\"}]").unwrap();
    let refused = levee(&["deps", "plan", "--jaeger", broken.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("callCount"));
}

#[test]
fn each_service_gets_the_template_of_its_kind_of_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let graph = dir.path().join("graph.json");
    std::fs::write(
        &graph,
        r#"[{"parent":"web","child":"chat","callCount":9},
            {"parent":"chat","child":"db","callCount":8},
            {"parent":"web","child":"cache","callCount":7}]"#,
    )
    .unwrap();
    let kinds = dir.path().join("kinds.json");
    std::fs::write(
        &kinds,
        r#"{"web": "stateless", "chat": "sticky", "db": "stateful", "cache": "replicated"}"#,
    )
    .unwrap();
    let templates = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/evacuate.yaml"
    );
    for (direction, expected) in [
        (
            None,
            [
                "web\n    template: shift-out",
                "chat\n    template: sticky-out",
                "db\n    template: primary-out",
                "cache\n    template: replica-out",
            ],
        ),
        (
            Some("--restore"),
            [
                "web\n    template: shift-in",
                "chat\n    template: sticky-in",
                "db\n    template: replica-in",
                "cache\n    template: replica-in",
            ],
        ),
    ] {
        let mut args = vec![
            "deps",
            "plan",
            "--jaeger",
            graph.to_str().unwrap(),
            "--kinds",
            kinds.to_str().unwrap(),
        ];
        args.extend(direction);
        let plan = levee(&args);
        assert!(
            plan.status.success(),
            "{}",
            String::from_utf8_lossy(&plan.stderr)
        );
        let runbook = String::from_utf8_lossy(&plan.stdout);
        for task in expected {
            assert!(
                runbook.contains(&format!("  - id: {task}")),
                "{task}:\n{runbook}"
            );
        }
        let generated = dir.path().join("generated.yaml");
        std::fs::write(&generated, &plan.stdout).unwrap();
        let valid = levee(&["validate", templates, generated.to_str().unwrap()]);
        assert!(
            valid.status.success(),
            "{}{}",
            String::from_utf8_lossy(&valid.stdout),
            String::from_utf8_lossy(&valid.stderr)
        );
    }
    std::fs::write(&kinds, r#"{"chta": "sticky"}"#).unwrap();
    let refused = levee(&[
        "deps",
        "plan",
        "--jaeger",
        graph.to_str().unwrap(),
        "--kinds",
        kinds.to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not in the call graph: chta"));
}
