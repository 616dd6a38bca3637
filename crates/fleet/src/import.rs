//! Fleets from JSON (the shape of `kind: Fleet`) and host lists from CSV, with errors that name
//! the file, line and column.
//!
//! CSV is for large host lists exported from an inventory system:
//!
//! ```text
//! name,region,datacenter,row,rack,power,switch,labels
//! web-1,eu,dc1,a,a-r1,a-pdu1,a-r1-tor,role=web;tier=front
//! db-1,eu,dc1,a,a-r2,a-pdu1,a-r2-tor,role=mysql
//! ```
//!
//! The header is exactly those eight columns. Empty fields are unknown domains; `labels` is
//! `key=value` pairs joined by `;`. A field may be quoted with `"` (a quote inside doubled);
//! a record is one line. [`import_csv_into`] puts the hosts into a fleet and resolves its
//! pools again.

use std::collections::BTreeMap;

use levee_model::fleet::check_hosts;
use levee_model::runbook::Origin;
use levee_model::selector::{SELECTOR_NAME_RULE, is_valid_selector_name};
use levee_model::{
    Definition, Diagnostic, DomainLevel, FleetDef, HostDef, LoadContext, LoadLimits,
    load_documents_with_limits,
};

/// Largest JSON fleet accepted, in bytes.
pub const MAX_JSON_IMPORT_BYTES: usize = 32 * 1024 * 1024;
/// Most JSON values one imported fleet may hold (a host with a few labels is about 20).
pub const MAX_JSON_IMPORT_NODES: usize = 4_000_000;
/// Largest CSV host list accepted, in bytes.
pub const MAX_CSV_IMPORT_BYTES: usize = 64 * 1024 * 1024;
/// The CSV header, column by column.
pub const CSV_COLUMNS: [&str; 8] = [
    "name",
    "region",
    "datacenter",
    "row",
    "rack",
    "power",
    "switch",
    "labels",
];
/// Most errors one import reports before it stops: a wrong file would otherwise report one
/// per line.
pub const MAX_IMPORT_ERRORS: usize = 100;

/// A fleet from JSON with the same keys as `kind: Fleet` in YAML, checked the same way.
pub fn import_json(file: &str, text: &str) -> Result<FleetDef, Vec<Diagnostic>> {
    // Fleets read no clock: the context only fills the loader's signature.
    let ctx = LoadContext::new(0, jiff::tz::TimeZone::UTC);
    let limits = LoadLimits {
        max_bytes: MAX_JSON_IMPORT_BYTES,
        max_nodes: MAX_JSON_IMPORT_NODES,
    };
    let loaded = load_documents_with_limits(file, text, &ctx, limits)?;
    let mut definitions = loaded.definitions.into_iter();
    match (definitions.next(), definitions.next()) {
        (Some(Definition::Fleet(fleet)), None) => Ok(fleet),
        (Some(other), None) => Err(vec![Diagnostic::error(
            file,
            0,
            0,
            "not-a-fleet",
            format!(
                "This file holds a {} (`{}`), not a Fleet; write `\"kind\": \"Fleet\"`.",
                other.kind(),
                other.name()
            ),
        )]),
        _ => Err(vec![Diagnostic::error(
            file,
            0,
            0,
            "not-a-fleet",
            "A fleet import holds exactly one Fleet object.",
        )]),
    }
}

/// Hosts from CSV (see the module documentation), checked on their own: names, labels, a
/// host listed twice or in two racks, a rack in two rows.
pub fn import_csv(file: &str, text: &str) -> Result<Vec<HostDef>, Vec<Diagnostic>> {
    if text.len() > MAX_CSV_IMPORT_BYTES {
        return Err(vec![Diagnostic::error(
            file,
            0,
            0,
            "file-too-large",
            format!(
                "The file is {} bytes; a CSV host list may be at most {MAX_CSV_IMPORT_BYTES} \
                 bytes. Split the fleet.",
                text.len()
            ),
        )]);
    }
    let mut errors: Vec<Diagnostic> = Vec::new();
    let mut hosts = Vec::new();
    let mut lines = text.lines().enumerate();
    let header = lines.find(|(_, line)| !line.trim().is_empty());
    let Some((header_index, header_line)) = header else {
        return Err(vec![Diagnostic::error(
            file,
            0,
            0,
            "empty-file",
            format!(
                "The file is empty; start it with the header `{}`.",
                CSV_COLUMNS.join(",")
            ),
        )]);
    };
    let header_fields = match split_record(header_line) {
        Ok(fields) => fields,
        Err((column, message)) => {
            return Err(vec![Diagnostic::error(
                file,
                header_index as u64 + 1,
                column,
                "csv-syntax",
                message,
            )]);
        }
    };
    for (position, expected) in CSV_COLUMNS.iter().enumerate() {
        let found = header_fields.get(position);
        if found.map(|f| f.text.trim()) != Some(*expected) {
            let column = found.map_or(header_line.chars().count() as u64 + 1, |f| f.column);
            return Err(vec![Diagnostic::error(
                file,
                header_index as u64 + 1,
                column,
                "csv-header",
                format!(
                    "Column {} of the header must be `{expected}`, found {}; the header is \
                     `{}`.",
                    position + 1,
                    found.map_or("nothing".to_string(), |f| format!("`{}`", f.text)),
                    CSV_COLUMNS.join(",")
                ),
            )]);
        }
    }
    if let Some(extra) = header_fields.get(CSV_COLUMNS.len()) {
        return Err(vec![Diagnostic::error(
            file,
            header_index as u64 + 1,
            extra.column,
            "csv-header",
            format!(
                "The header has more than {} columns; it is `{}`.",
                CSV_COLUMNS.len(),
                CSV_COLUMNS.join(",")
            ),
        )]);
    }
    for (index, line) in lines {
        if errors.len() >= MAX_IMPORT_ERRORS {
            break;
        }
        if line.trim().is_empty() {
            continue;
        }
        let line_number = index as u64 + 1;
        let mut error = |column: u64, code: &str, message: String| {
            errors.push(Diagnostic::error(file, line_number, column, code, message));
        };
        let fields = match split_record(line) {
            Ok(fields) => fields,
            Err((column, message)) => {
                error(column, "csv-syntax", message);
                continue;
            }
        };
        if fields.len() != CSV_COLUMNS.len() {
            let column = fields
                .get(CSV_COLUMNS.len())
                .map_or(line.chars().count() as u64 + 1, |f| f.column);
            error(
                column,
                "csv-columns",
                format!(
                    "This line has {} fields; every line has {} (`{}`).",
                    fields.len(),
                    CSV_COLUMNS.len(),
                    CSV_COLUMNS.join(",")
                ),
            );
            continue;
        }
        let name = &fields[0];
        if !levee_model::names::is_valid_machine_id(&name.text) {
            error(
                name.column,
                "invalid-name",
                format!(
                    "`{}` is not a valid host name: {}.",
                    name.text,
                    levee_model::names::MACHINE_ID_RULE
                ),
            );
            continue;
        }
        let mut host = HostDef::named(&name.text);
        host.origin = Origin {
            file: file.to_string(),
            line: line_number,
            column: name.column,
        };
        let mut valid = true;
        for (level, field) in DomainLevel::ALL.into_iter().zip(&fields[1..7]) {
            if field.text.is_empty() {
                continue;
            }
            if !is_valid_selector_name(&field.text) {
                error(
                    field.column,
                    "invalid-name",
                    format!(
                        "The {level} `{}` is not a valid name: {SELECTOR_NAME_RULE}.",
                        field.text
                    ),
                );
                valid = false;
            }
            host.domains.set(level, Some(field.text.clone()));
        }
        match parse_labels(&fields[7]) {
            Ok(labels) => host.labels = labels,
            Err((column, message)) => {
                error(column, "invalid-label", message);
                valid = false;
            }
        }
        if valid {
            hosts.push(host);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let diagnostics = check_hosts(&hosts);
    if diagnostics.iter().any(Diagnostic::is_error) {
        return Err(diagnostics);
    }
    Ok(hosts)
}

/// `fleet` with its hosts replaced by the CSV's, its pools resolved again. Errors name the
/// CSV line, or the pool (in the fleet's file) that no longer fits.
pub fn import_csv_into(
    fleet: &FleetDef,
    file: &str,
    text: &str,
) -> Result<FleetDef, Vec<Diagnostic>> {
    let hosts = import_csv(file, text)?;
    fleet.with_hosts(hosts)
}

/// One field of a record and the 1-based column it starts at.
struct Field {
    text: String,
    column: u64,
    /// Characters before the text inside the field (1 for a quoted field).
    text_offset: u64,
}

/// Splits one CSV line into fields; the error is a column and a sentence.
fn split_record(line: &str) -> Result<Vec<Field>, (u64, String)> {
    let chars: Vec<char> = line.trim_end_matches('\r').chars().collect();
    let mut fields = Vec::new();
    let mut at = 0;
    loop {
        let column = at as u64 + 1;
        let mut text = String::new();
        if chars.get(at) == Some(&'"') {
            at += 1;
            loop {
                match chars.get(at) {
                    None => {
                        return Err((
                            column,
                            "This quoted field is not closed on its line; add the closing `\"`."
                                .to_string(),
                        ));
                    }
                    Some('"') if chars.get(at + 1) == Some(&'"') => {
                        text.push('"');
                        at += 2;
                    }
                    Some('"') => {
                        at += 1;
                        break;
                    }
                    Some(c) => {
                        text.push(*c);
                        at += 1;
                    }
                }
            }
            if let Some(c) = chars.get(at)
                && *c != ','
            {
                return Err((
                    at as u64 + 1,
                    format!("Expected `,` after the quoted field, found `{c}`."),
                ));
            }
            fields.push(Field {
                text,
                column,
                text_offset: 1,
            });
        } else {
            while let Some(c) = chars.get(at)
                && *c != ','
            {
                text.push(*c);
                at += 1;
            }
            fields.push(Field {
                text: text.trim().to_string(),
                column,
                text_offset: 0,
            });
        }
        if chars.get(at) == Some(&',') {
            at += 1;
        } else {
            return Ok(fields);
        }
    }
}

/// `role=web;tier=front`; the error is a column and a sentence.
fn parse_labels(field: &Field) -> Result<BTreeMap<String, String>, (u64, String)> {
    let mut labels = BTreeMap::new();
    if field.text.trim().is_empty() {
        return Ok(labels);
    }
    let mut offset = 0u64;
    for pair in field.text.split(';') {
        let column = field.column + field.text_offset + offset;
        offset += pair.chars().count() as u64 + 1;
        let Some((key, value)) = pair.split_once('=') else {
            return Err((
                column,
                format!("The label `{pair}` has no `=`; write labels as `key=value;key=value`."),
            ));
        };
        let (key, value) = (key.trim(), value.trim());
        for text in [key, value] {
            if !is_valid_selector_name(text) {
                return Err((
                    column,
                    format!("The label `{pair}` is not valid: {SELECTOR_NAME_RULE}."),
                ));
            }
        }
        if labels.insert(key.to_string(), value.to_string()).is_some() {
            return Err((column, format!("The label `{key}` is given twice.")));
        }
    }
    Ok(labels)
}
