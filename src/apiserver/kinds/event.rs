//! core/v1 Event: stored and listed with `kubectl get events` columns.

use serde_json::json;

use super::{Column, Strategy, age, plain, text};

pub struct Events;

impl Strategy for Events {
    fn columns(&self) -> &'static [Column] {
        &COLUMNS
    }
}

static COLUMNS: [Column; 5] = [
    plain(
        "Last Seen",
        "The last time the event was seen",
        0,
        |e, now| {
            let at = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .map(|p| text(e, p))
            .find(|t| !t.is_empty())
            .unwrap_or_default();
            json!(age(&at, now))
        },
    ),
    plain("Type", "Type of this event (Normal, Warning)", 0, |e, _| {
        json!(text(e, "/type"))
    }),
    plain(
        "Reason",
        "Short, machine understandable string that gives the reason for the transition into the object's current status.",
        0,
        |e, _| json!(text(e, "/reason")),
    ),
    plain(
        "Object",
        "The object that this event is about.",
        0,
        |e, _| {
            json!(format!(
                "{}/{}",
                text(e, "/involvedObject/kind").to_lowercase(),
                text(e, "/involvedObject/name")
            ))
        },
    ),
    plain(
        "Message",
        "A human-readable description of the status of this operation.",
        0,
        |e, _| json!(text(e, "/message")),
    ),
];
