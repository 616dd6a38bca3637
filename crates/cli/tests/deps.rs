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
