//! `levee validate` on runbooks spread over several files: references between files and
//! stage arguments are checked with every file loaded, and errors name file, line and column.

use std::path::Path;
use std::process::{Command, Stdio};

const TEMPLATE_YAML: &str = "\
kind: TaskTemplate
name: announce
params:
  what: { required: true }
steps:
  - id: note
    stage: log
    with: { message: \"starting {{ params.what }}\" }
  - id: settle
    stage: wait
    with: { duration: 1s }
";

const RUNBOOK_YAML: &str = "\
kind: Runbook
name: drain-web
purpose: drain
recovery: restore-web
params:
  dc: { required: true }
tasks:
  - id: announce
    template: announce
    with: { what: \"drain of {{ params.dc }}\" }
  - id: shift
    stage: shell
    needs: [announce]
    with: { command: [echo, \"{{ params.dc }}\"] }
---
kind: Runbook
name: restore-web
purpose: restore
tasks:
  - id: restore
    stage: log
    with: { message: restored }
";

const BAD_RUNBOOK_YAML: &str = "\
kind: Runbook
name: broken
tasks:
  - id: first
    stage: shell
    with: { comand: [true] }
  - id: second
    stage: wait
    needs: [frist]
    with: { duration: 1s }
";

fn validate(dir: &Path, files: &[&str]) -> (i32, String) {
    let (code, _, stderr) = validate_out(dir, files);
    (code, stderr)
}

fn validate_out(dir: &Path, files: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_levee"))
        .current_dir(dir)
        .arg("validate")
        .args(files)
        .stdin(Stdio::null())
        .output()
        .expect("run levee validate");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn a_runbook_and_its_template_in_two_files_validate_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("template.yaml"), TEMPLATE_YAML).expect("write");
    std::fs::write(dir.path().join("runbook.yaml"), RUNBOOK_YAML).expect("write");

    let (code, stderr) = validate(dir.path(), &["template.yaml", "runbook.yaml"]);
    assert_eq!(code, 0, "{stderr}");

    let (code, stderr) = validate(dir.path(), &["runbook.yaml"]);
    assert_eq!(code, 1, "the template lives in another file: {stderr}");
    assert!(stderr.contains("runbook.yaml:"), "{stderr}");
    assert!(stderr.contains("unknown-template"), "{stderr}");
}

#[test]
fn unknown_stage_arguments_and_dependencies_point_at_their_lines() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("broken.yaml"), BAD_RUNBOOK_YAML).expect("write");
    let (code, stdout, stderr) = validate_out(dir.path(), &["broken.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        !stdout.contains("ok"),
        "no `ok` for a file with errors: {stdout}"
    );
    assert!(
        stderr.contains("broken.yaml:6:"),
        "the `comand` typo's line: {stderr}"
    );
    assert!(stderr.contains("comand"), "{stderr}");
    assert!(
        stderr.contains("broken.yaml:9:"),
        "the `frist` typo's line: {stderr}"
    );
    assert!(stderr.contains("frist"), "{stderr}");
}
