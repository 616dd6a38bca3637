//! The JSON Schema in `schemas/` must match the serde types. Regenerate it with
//! `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model --test schema`.

use std::path::PathBuf;

use levee_model::schema::{
    STATE_MACHINE_SCHEMA_PATH, state_machine_schema, state_machine_schema_text,
};

fn repository_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

#[test]
fn state_machine_schema_file_is_up_to_date() {
    let path = repository_path(STATE_MACHINE_SCHEMA_PATH);
    let expected = state_machine_schema_text();
    if std::env::var("LEVEE_UPDATE_SCHEMAS").as_deref() == Ok("1") {
        let directory = path.parent().expect("the schema path has a directory");
        std::fs::create_dir_all(directory).expect("create the schemas directory");
        std::fs::write(&path, &expected).expect("write the schema");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is out of date with the serde types; regenerate it with \
         `LEVEE_UPDATE_SCHEMAS=1 cargo test -p levee-model --test schema`",
        path.display()
    );
}

#[test]
fn schema_describes_the_native_format() {
    let schema = state_machine_schema();
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["properties"]["kind"]["const"], "StateMachine");
    let required: Vec<&str> = schema["required"]
        .as_array()
        .expect("required keys")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(required, ["kind", "name", "states"]);
    let state = &schema["definitions"]["State"];
    assert_eq!(state["additionalProperties"], false);
    assert!(state["properties"]["final"].is_object());
    // `on` values are a state name or a mapping; `in` is a name or a list.
    let transition = &schema["definitions"]["Transition"];
    assert_eq!(transition["anyOf"][0]["type"], "string");
    assert_eq!(transition["anyOf"][1]["additionalProperties"], false);
    let guard_in = &schema["definitions"]["Guard"]["properties"]["in"];
    assert!(guard_in["anyOf"][1]["type"] == "array", "{guard_in}");
}
