//! Prometheus Alertmanager's webhook payloads, read strictly enough to tell Alertmanager's from
//! anything else, and leniently enough to take every payload Alertmanager has sent.
//!
//! Alertmanager's webhook receiver POSTs one JSON object per notification (`notify/webhook`):
//! `version` (always `"4"`), `groupKey`, `truncatedAlerts` (alerts left out by `max_alerts`),
//! `status` (`firing` or `resolved`), `receiver`, `groupLabels`, `commonLabels`,
//! `commonAnnotations`, `externalURL`, and `alerts`, each with `status`, `labels`,
//! `annotations`, `startsAt`, `endsAt` (Go's zero time `0001-01-01T00:00:00Z` while the alert
//! has no end), `generatorURL` and `fingerprint`. Older Alertmanagers sent the same version
//! `"4"` without `truncatedAlerts` and without the alerts' `fingerprint`; those, and the
//! other keys that only describe the group, are optional here. Keys Levee does not know are
//! ignored (senders that mimic Alertmanager, such as Grafana, add their own).
//!
//! What is required, so a payload that is not Alertmanager's is refused naming the field:
//! `version` = `"4"`, `status`, `alerts`, and in each alert `status`, `labels` (an object of
//! strings) and `startsAt` (an RFC 3339 time).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The payload version Alertmanager's webhook sends.
pub const ALERTMANAGER_PAYLOAD_VERSION: &str = "4";
/// Most alerts one payload may carry.
pub const MAX_ALERTS_PER_PAYLOAD: usize = 10_000;
/// Go's zero `time.Time`, in epoch milliseconds: Alertmanager's `endsAt` of an alert with no
/// end yet.
pub const GO_ZERO_TIME_MS: i64 = -62_135_596_800_000;

/// Whether an alert (or a whole notification) is firing or resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Firing,
    Resolved,
}

impl AlertStatus {
    fn parse(text: &str) -> Option<AlertStatus> {
        match text {
            "firing" => Some(AlertStatus::Firing),
            "resolved" => Some(AlertStatus::Resolved),
            _ => None,
        }
    }
}

/// One alert of a notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub status: AlertStatus,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub starts_at_ms: i64,
    /// `None` while the alert has no end (Go's zero time).
    pub ends_at_ms: Option<i64>,
    pub generator_url: Option<String>,
    /// Absent in payloads of older Alertmanagers.
    pub fingerprint: Option<String>,
}

impl Alert {
    /// A firing alert with these labels, for tests and callers that build alerts themselves.
    pub fn firing(labels: &[(&str, &str)], starts_at_ms: i64) -> Alert {
        Alert {
            status: AlertStatus::Firing,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: BTreeMap::new(),
            starts_at_ms,
            ends_at_ms: None,
            generator_url: None,
            fingerprint: None,
        }
    }

    /// The `alertname` label, if any.
    pub fn name(&self) -> Option<&str> {
        self.label("alertname")
    }

    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.get(name).map(String::as_str)
    }
}

/// One webhook notification.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookPayload {
    pub version: String,
    /// Absent only from payloads that never were Alertmanager's; kept optional to be lenient.
    pub group_key: Option<String>,
    /// Alerts Alertmanager left out (`max_alerts`); 0 when the payload does not say.
    pub truncated_alerts: u64,
    pub status: AlertStatus,
    pub receiver: Option<String>,
    pub group_labels: BTreeMap<String, String>,
    pub common_labels: BTreeMap<String, String>,
    pub common_annotations: BTreeMap<String, String>,
    pub external_url: Option<String>,
    pub alerts: Vec<Alert>,
}

/// Why a body is not an Alertmanager webhook payload: the field (a JSON path such as
/// `alerts[2].labels`, or empty for the whole body) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "not an Alertmanager webhook payload: {}", self.message)
        } else {
            write!(
                f,
                "not an Alertmanager webhook payload: `{}` {}",
                self.field, self.message
            )
        }
    }
}

impl std::error::Error for PayloadError {}

fn error(field: impl Into<String>, message: impl Into<String>) -> PayloadError {
    PayloadError {
        field: field.into(),
        message: message.into(),
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn required<'a>(
    object: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<&'a Value, PayloadError> {
    object
        .get(key)
        .ok_or_else(|| error(join(path, key), "is missing"))
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn string<'a>(value: &'a Value, field: &str) -> Result<&'a str, PayloadError> {
    value
        .as_str()
        .ok_or_else(|| error(field, format!("must be a string, not {}", describe(value))))
}

fn optional_string(
    object: &Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<String>, PayloadError> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => string(value, &join(path, key)).map(|s| Some(s.to_string())),
    }
}

fn status(value: &Value, field: &str) -> Result<AlertStatus, PayloadError> {
    let text = string(value, field)?;
    AlertStatus::parse(text).ok_or_else(|| {
        error(
            field,
            format!("must be `firing` or `resolved`, not `{}`", shorten(text)),
        )
    })
}

/// A label or annotation set: an object of strings (`null` or absent is empty).
fn string_map(
    value: Option<&Value>,
    field: &str,
) -> Result<BTreeMap<String, String>, PayloadError> {
    match value {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(entries)) => entries
            .iter()
            .map(|(key, value)| {
                string(value, &format!("{field}.{key}")).map(|s| (key.clone(), s.to_string()))
            })
            .collect(),
        Some(other) => Err(error(
            field,
            format!(
                "must be an object of names to strings, not {}",
                describe(other)
            ),
        )),
    }
}

fn time_ms(value: &Value, field: &str) -> Result<i64, PayloadError> {
    let text = string(value, field)?;
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| {
            error(
                field,
                format!(
                    "must be an RFC 3339 time such as `2025-01-01T00:00:00Z`, not `{}` ({e})",
                    shorten(text)
                ),
            )
        })
}

fn shorten(text: &str) -> String {
    const MAX_QUOTED_CHARS: usize = 60;
    if text.chars().count() > MAX_QUOTED_CHARS {
        let head: String = text.chars().take(MAX_QUOTED_CHARS).collect();
        format!("{head}...")
    } else {
        text.to_string()
    }
}

/// Reads an Alertmanager webhook body. Anything else is refused with the field that is
/// missing or wrong.
pub fn parse_webhook(body: &[u8]) -> Result<WebhookPayload, PayloadError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        error(
            "",
            format!(
                "the body is not JSON (line {}, column {}: {e})",
                e.line(),
                e.column()
            ),
        )
    })?;
    parse_webhook_value(&value)
}

/// [`parse_webhook`] for a body already parsed as JSON.
pub fn parse_webhook_value(value: &Value) -> Result<WebhookPayload, PayloadError> {
    let Value::Object(root) = value else {
        return Err(error(
            "",
            format!("the body must be a JSON object, not {}", describe(value)),
        ));
    };
    let version = string(required(root, "", "version")?, "version")?;
    if version != ALERTMANAGER_PAYLOAD_VERSION {
        return Err(error(
            "version",
            format!(
                "is `{}`; Levee reads version \"{ALERTMANAGER_PAYLOAD_VERSION}\", the one \
                 Alertmanager's webhook receiver sends",
                shorten(version)
            ),
        ));
    }
    let payload_status = status(required(root, "", "status")?, "status")?;
    let truncated_alerts = match root.get("truncatedAlerts") {
        None | Some(Value::Null) => 0,
        Some(value) => value.as_u64().ok_or_else(|| {
            error(
                "truncatedAlerts",
                format!("must be a whole number, not {}", describe(value)),
            )
        })?,
    };
    let alerts_value = required(root, "", "alerts")?;
    let Value::Array(items) = alerts_value else {
        return Err(error(
            "alerts",
            format!("must be a list, not {}", describe(alerts_value)),
        ));
    };
    if items.len() > MAX_ALERTS_PER_PAYLOAD {
        return Err(error(
            "alerts",
            format!(
                "has {} alerts; at most {MAX_ALERTS_PER_PAYLOAD} are accepted in one payload \
                 (set `max_alerts` on the webhook receiver)",
                items.len()
            ),
        ));
    }
    let mut alerts = Vec::with_capacity(items.len());
    for (number, item) in items.iter().enumerate() {
        let path = format!("alerts[{number}]");
        let Value::Object(alert) = item else {
            return Err(error(
                path,
                format!("must be an object, not {}", describe(item)),
            ));
        };
        let alert_status = status(required(alert, &path, "status")?, &join(&path, "status"))?;
        let labels_field = join(&path, "labels");
        let labels = match required(alert, &path, "labels")? {
            Value::Object(_) => string_map(alert.get("labels"), &labels_field)?,
            other => {
                return Err(error(
                    labels_field,
                    format!(
                        "must be an object of label names to strings, not {}",
                        describe(other)
                    ),
                ));
            }
        };
        let annotations = string_map(alert.get("annotations"), &join(&path, "annotations"))?;
        let starts_at_ms = time_ms(
            required(alert, &path, "startsAt")?,
            &join(&path, "startsAt"),
        )?;
        let ends_at_ms = match alert.get("endsAt") {
            None | Some(Value::Null) => None,
            Some(value) => {
                let ms = time_ms(value, &join(&path, "endsAt"))?;
                (ms != GO_ZERO_TIME_MS).then_some(ms)
            }
        };
        alerts.push(Alert {
            status: alert_status,
            labels,
            annotations,
            starts_at_ms,
            ends_at_ms,
            generator_url: optional_string(alert, &path, "generatorURL")?,
            fingerprint: optional_string(alert, &path, "fingerprint")?,
        });
    }
    Ok(WebhookPayload {
        version: version.to_string(),
        group_key: optional_string(root, "", "groupKey")?,
        truncated_alerts,
        status: payload_status,
        receiver: optional_string(root, "", "receiver")?,
        group_labels: string_map(root.get("groupLabels"), "groupLabels")?,
        common_labels: string_map(root.get("commonLabels"), "commonLabels")?,
        common_annotations: string_map(root.get("commonAnnotations"), "commonAnnotations")?,
        external_url: optional_string(root, "", "externalURL")?,
        alerts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Alertmanager 0.25 sends (taken from a real notification's shape).
    const VERSION_4: &str = r#"{
      "receiver": "levee",
      "status": "firing",
      "alerts": [
        {
          "status": "firing",
          "labels": { "alertname": "HostDown", "instance": "web-r1-1:9100", "job": "node" },
          "annotations": { "summary": "web-r1-1 is down" },
          "startsAt": "2025-01-01T10:00:00.123456789+01:00",
          "endsAt": "0001-01-01T00:00:00Z",
          "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
          "fingerprint": "1a30ba71cca2921f"
        }
      ],
      "groupLabels": { "alertname": "HostDown" },
      "commonLabels": { "alertname": "HostDown", "instance": "web-r1-1:9100", "job": "node" },
      "commonAnnotations": { "summary": "web-r1-1 is down" },
      "externalURL": "http://alertmanager:9093",
      "version": "4",
      "groupKey": "{}:{alertname=\"HostDown\"}",
      "truncatedAlerts": 0
    }"#;

    /// What older Alertmanagers sent: no `truncatedAlerts`, no `fingerprint`.
    const OLDER: &str = r#"{
      "receiver": "webhook",
      "status": "resolved",
      "alerts": [
        {
          "status": "resolved",
          "labels": { "alertname": "Test", "instance": "localhost:9090" },
          "annotations": { "description": "some description" },
          "startsAt": "2018-08-03T09:52:26.739266876+02:00",
          "endsAt": "2018-08-03T10:52:26Z",
          "generatorURL": "http://example.com:9090/graph"
        }
      ],
      "groupLabels": { "alertname": "Test" },
      "commonLabels": { "alertname": "Test" },
      "commonAnnotations": {},
      "externalURL": "http://example.com:9093",
      "version": "4",
      "groupKey": "{}:{alertname=\"Test\"}"
    }"#;

    #[test]
    fn reads_version_4() {
        let payload = parse_webhook(VERSION_4.as_bytes()).expect("parses");
        assert_eq!(payload.status, AlertStatus::Firing);
        assert_eq!(payload.truncated_alerts, 0);
        assert_eq!(payload.receiver.as_deref(), Some("levee"));
        let alert = &payload.alerts[0];
        assert_eq!(alert.name(), Some("HostDown"));
        assert_eq!(alert.label("instance"), Some("web-r1-1:9100"));
        assert_eq!(alert.starts_at_ms, 1_735_722_000_123);
        assert_eq!(alert.ends_at_ms, None);
        assert_eq!(alert.fingerprint.as_deref(), Some("1a30ba71cca2921f"));
    }

    #[test]
    fn reads_older_payloads_without_truncated_alerts_or_fingerprints() {
        let payload = parse_webhook(OLDER.as_bytes()).expect("parses");
        assert_eq!(payload.status, AlertStatus::Resolved);
        assert_eq!(payload.truncated_alerts, 0);
        let alert = &payload.alerts[0];
        assert_eq!(alert.fingerprint, None);
        assert_eq!(alert.ends_at_ms, Some(1_533_293_546_000));
    }

    fn refused(body: &str) -> PayloadError {
        parse_webhook(body.as_bytes()).expect_err("refused")
    }

    fn with(change: impl FnOnce(&mut Value)) -> String {
        let mut value: Value = serde_json::from_str(VERSION_4).expect("json");
        change(&mut value);
        value.to_string()
    }

    #[test]
    fn refuses_what_is_not_alertmanager_s_naming_the_field() {
        let e = refused("not json");
        assert_eq!(e.field, "");
        assert!(e.message.contains("not JSON"), "{e}");
        assert!(refused("[1]").message.contains("JSON object"));
        let e = refused(r#"{"text": "hello from slack"}"#);
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("version", "is missing")
        );
        let e = refused(&with(|v| v["version"] = Value::from("3")));
        assert_eq!(e.field, "version");
        assert!(e.message.contains("\"4\""), "{e}");
        let e = refused(&with(|v| v["version"] = Value::from(4)));
        assert!(e.message.contains("must be a string, not a number"), "{e}");
        let e = refused(&with(|v| v["status"] = Value::from("burning")));
        assert_eq!(e.field, "status");
        assert!(e.message.contains("`firing` or `resolved`"), "{e}");
        let e = refused(&with(|v| {
            v.as_object_mut().expect("object").remove("alerts");
        }));
        assert_eq!(e.field, "alerts");
        let e = refused(&with(|v| v["alerts"] = Value::from("x")));
        assert!(e.message.contains("must be a list"), "{e}");
        let e = refused(&with(|v| {
            v["alerts"][0]
                .as_object_mut()
                .expect("alert")
                .remove("labels");
        }));
        assert_eq!(e.field, "alerts[0].labels");
        let e = refused(&with(|v| v["alerts"][0]["labels"]["job"] = Value::from(3)));
        assert_eq!(e.field, "alerts[0].labels.job");
        let e = refused(&with(|v| {
            v["alerts"][0]["startsAt"] = Value::from("yesterday")
        }));
        assert_eq!(e.field, "alerts[0].startsAt");
        assert!(e.message.contains("RFC 3339"), "{e}");
        let e = refused(&with(|v| v["truncatedAlerts"] = Value::from(-1)));
        assert_eq!(e.field, "truncatedAlerts");
        assert!(
            e.to_string()
                .starts_with("not an Alertmanager webhook payload: `truncatedAlerts`")
        );
    }

    #[test]
    fn ignores_keys_other_senders_add() {
        let body = with(|v| {
            v["orgId"] = Value::from(1);
            v["alerts"][0]["silenceURL"] = Value::from("http://x");
        });
        assert!(parse_webhook(body.as_bytes()).is_ok());
    }

    #[test]
    fn bounds_the_alerts_of_one_payload() {
        let body = with(|v| {
            let alert = v["alerts"][0].clone();
            v["alerts"] = Value::Array(vec![alert; MAX_ALERTS_PER_PAYLOAD + 1]);
        });
        let e = refused(&body);
        assert_eq!(e.field, "alerts");
        assert!(e.message.contains("max_alerts"), "{e}");
    }
}
