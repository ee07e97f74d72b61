//! events.k8s.io/v1 Events through the real kubectl: the same stored objects as core/v1
//! Events, each written through one API read, listed and watched through the other with
//! Kubernetes' field mapping (`note` is `message`, `regarding` is `involvedObject`, …), and
//! events.k8s.io's own checks on what a new Event must say.

mod common;

use common::{Options, Server, cell, create, get_rows, refused};
use serde_json::Value;

const V1_EVENT: &str = "apiVersion: events.k8s.io/v1
kind: Event
metadata:
  name: boot-1
  namespace: default
eventTime: \"2026-01-10T12:00:00.000000Z\"
reportingController: example.com/boot-watcher
reportingInstance: pi-1
action: Start
reason: Booted
type: Normal
note: board up
regarding:
  kind: Node
  name: pi-1
";

const CORE_EVENT: &str = "apiVersion: v1
kind: Event
metadata:
  name: pulled-1
  namespace: default
involvedObject:
  kind: Pod
  name: web
  namespace: default
reason: Pulled
message: pulled busybox
type: Normal
count: 3
firstTimestamp: \"2026-01-10T12:00:00Z\"
lastTimestamp: \"2026-01-10T12:05:00Z\"
source:
  component: kubelet
  host: pi-1
";

fn item<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["metadata"]["name"] == name))
        .unwrap_or_else(|| panic!("no event {name} in {list}"))
}

#[test]
fn an_event_written_through_one_api_reads_through_the_other() {
    let s = Server::start(Options::default());

    // Discovery lists both, so kubectl resolves `events.events.k8s.io`.
    let resources = s.kubectl_ok(&["api-resources", "--no-headers"]);
    let events: Vec<&str> = resources
        .lines()
        .filter(|l| l.split_whitespace().next() == Some("events"))
        .collect();
    assert!(
        events.iter().any(|l| l.contains(" v1 "))
            && events.iter().any(|l| l.contains("events.k8s.io/v1")),
        "kubectl api-resources does not list both events:\n{resources}"
    );

    // events.k8s.io → core/v1 (`kubectl create -f` validates against the served schema).
    create(&s, "v1-event", V1_EVENT);
    let core = s.kubectl_json(&["get", "events", "-o", "json"]);
    let e = item(&core, "boot-1");
    assert_eq!(e["apiVersion"], "v1", "{e}");
    assert_eq!(e["message"], "board up", "{e}");
    assert_eq!(e["involvedObject"]["kind"], "Node", "{e}");
    assert_eq!(e["involvedObject"]["name"], "pi-1", "{e}");
    assert_eq!(e["reportingComponent"], "example.com/boot-watcher", "{e}");
    assert_eq!(e["reportingInstance"], "pi-1", "{e}");
    assert_eq!(e["action"], "Start", "{e}");
    assert!(
        e.get("note").is_none() && e.get("regarding").is_none(),
        "{e}"
    );

    // core/v1 → events.k8s.io, deprecated fields and all.
    create(&s, "core-event", CORE_EVENT);
    let v1 = s.kubectl_json(&["get", "events.events.k8s.io", "-o", "json"]);
    let e = item(&v1, "pulled-1");
    assert_eq!(e["apiVersion"], "events.k8s.io/v1", "{e}");
    assert_eq!(e["note"], "pulled busybox", "{e}");
    assert_eq!(e["regarding"]["name"], "web", "{e}");
    assert_eq!(e["deprecatedCount"], 3, "{e}");
    assert_eq!(e["deprecatedLastTimestamp"], "2026-01-10T12:05:00Z", "{e}");
    assert_eq!(e["deprecatedSource"]["component"], "kubelet", "{e}");
    assert!(
        e.get("message").is_none() && e.get("count").is_none(),
        "{e}"
    );
    assert_eq!(item(&v1, "boot-1")["note"], "board up");

    // One object: the same uid and resourceVersion through both.
    let through_core = s.kubectl_json(&["get", "event", "pulled-1", "-o", "json"]);
    assert_eq!(through_core["metadata"]["uid"], e["metadata"]["uid"]);
    assert_eq!(
        through_core["metadata"]["resourceVersion"],
        e["metadata"]["resourceVersion"]
    );

    // kube-apiserver's event columns, over events.k8s.io's fields.
    let rows = get_rows(&s, &["get", "events.events.k8s.io"]);
    let row = rows
        .iter()
        .find(|r| cell(r, "OBJECT") == "pod/web")
        .unwrap_or_else(|| panic!("no pod/web row in {rows:?}"));
    assert_eq!(cell(row, "TYPE"), "Normal");
    assert_eq!(cell(row, "REASON"), "Pulled");
    assert_eq!(cell(row, "MESSAGE"), "pulled busybox");
    let row = rows
        .iter()
        .find(|r| cell(r, "OBJECT") == "node/pi-1")
        .unwrap_or_else(|| panic!("no node/pi-1 row in {rows:?}"));
    assert_eq!(cell(row, "MESSAGE"), "board up");

    // Deleted through one, gone from both.
    s.kubectl_ok(&["delete", "events.events.k8s.io", "pulled-1"]);
    let core = s.kubectl_json(&["get", "events", "-o", "json"]);
    assert!(
        core["items"]
            .as_array()
            .is_some_and(|i| i.iter().all(|e| e["metadata"]["name"] != "pulled-1")),
        "{core}"
    );
}

#[test]
fn a_watch_through_one_api_sees_changes_made_through_the_other() {
    let s = Server::start(Options::default());
    create(&s, "v1-event", V1_EVENT);

    let v1_watch = s.watch(&["events.events.k8s.io"]);
    create(&s, "core-event", CORE_EVENT);
    let seen = v1_watch.next(
        |o| o["metadata"]["name"] == "pulled-1",
        "the core Event pulled-1",
    );
    assert_eq!(seen["apiVersion"], "events.k8s.io/v1", "{seen}");
    assert_eq!(seen["note"], "pulled busybox", "{seen}");
    assert_eq!(seen["regarding"]["kind"], "Pod", "{seen}");
    v1_watch.stop();

    // An events.k8s.io change (a series: the event happened again) seen by a core watch.
    let core_watch = s.watch(&["events"]);
    s.kubectl_ok(&[
        "patch",
        "events.events.k8s.io",
        "boot-1",
        "--type=merge",
        "-p",
        r#"{"series":{"count":2,"lastObservedTime":"2026-01-10T12:01:00.000000Z"}}"#,
    ]);
    let seen = core_watch.next(
        |o| o["metadata"]["name"] == "boot-1" && o["series"]["count"] == 2,
        "boot-1 with its series",
    );
    assert_eq!(seen["apiVersion"], "v1", "{seen}");
    assert_eq!(seen["message"], "board up", "{seen}");
    assert_eq!(seen["involvedObject"]["name"], "pi-1", "{seen}");
    core_watch.stop();

    // What may not change, through events.k8s.io.
    let err = refused(
        &s,
        &[
            "patch",
            "events.events.k8s.io",
            "boot-1",
            "--type=merge",
            "-p",
            r#"{"note":"rewritten"}"#,
        ],
    );
    assert!(
        err.contains("note: Invalid value: field is immutable"),
        "{err}"
    );
}

#[test]
fn a_new_events_k8s_io_event_must_name_its_reporter() {
    let s = Server::start(Options::default());
    let bad = V1_EVENT
        .replace("name: boot-1", "name: bad-1")
        .replace("reportingController: example.com/boot-watcher\n", "");
    let path = s.dir().join("bad.yaml");
    std::fs::write(&path, &bad).unwrap();
    let err = refused(&s, &["create", "-f", &path.display().to_string()]);
    assert!(
        err.contains("reportingController: Required value"),
        "kubectl did not name the missing field:\n{err}"
    );

    // The API answer itself: 422 Invalid with the field as its cause.
    let body = r#"{"apiVersion":"events.k8s.io/v1","kind":"Event","metadata":{"name":"bad-2"},
        "eventTime":"2026-01-10T12:00:00.000000Z","reportingInstance":"pi-1","action":"Start",
        "reason":"Booted","type":"Normal","regarding":{"kind":"Node","name":"pi-1"}}"#;
    let reply = s.post_json("/apis/events.k8s.io/v1/namespaces/default/events", body);
    assert_eq!(reply.status, Some(422), "{}", reply.body);
    let status = reply.json();
    assert_eq!(status["reason"], "Invalid", "{status}");
    let fields: Vec<&str> = status["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["field"].as_str())
        .collect();
    assert_eq!(fields, ["reportingController"], "{status}");

    // The same Event without eventTime through core/v1 is a legacy Event: accepted.
    let legacy = r#"{"apiVersion":"v1","kind":"Event","metadata":{"name":"legacy-1"},
        "involvedObject":{"kind":"Node","name":"pi-1"},"reason":"Booted","message":"up"}"#;
    let reply = s.post_json("/api/v1/namespaces/default/events", legacy);
    assert_eq!(reply.status, Some(201), "{}", reply.body);
}
