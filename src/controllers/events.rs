//! Events the scheduler and controllers record about objects, aggregated as Kubernetes' are.
//!
//! One Event object per (object, type, reason, message): its name is the object's name plus a
//! hash of the rest, so a repeat finds it and bumps `count` and `lastTimestamp` instead of
//! adding another. Recording is best effort: a failure is logged, never passed on, because an
//! event must not stop the work it describes.

use serde_json::{Value, json};

use crate::apiserver::registry::{Part, Registry, now_rfc3339};
use crate::apiserver::resources::{EVENTS, ObjectRef, Resource};
use crate::apiserver::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    Normal,
    Warning,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Normal => "Normal",
            Type::Warning => "Warning",
        }
    }
}

/// Who records: the `source.component` of every event it writes.
#[derive(Clone)]
pub struct Recorder {
    registry: Registry,
    component: &'static str,
}

impl Recorder {
    pub fn new(registry: Registry, component: &'static str) -> Recorder {
        Recorder {
            registry,
            component,
        }
    }

    /// Records that `reason` happened to `obj` (of `resource`).
    pub async fn record(
        &self,
        resource: &Resource,
        obj: &Value,
        kind: Type,
        reason: &str,
        message: &str,
    ) {
        if let Err(e) = self.try_record(resource, obj, kind, reason, message).await {
            tracing::debug!(error = %e, reason, "could not record an event");
        }
    }

    async fn try_record(
        &self,
        resource: &Resource,
        obj: &Value,
        kind: Type,
        reason: &str,
        message: &str,
    ) -> Result<(), ApiError> {
        let meta = &obj["metadata"];
        let obj_name = meta["name"].as_str().unwrap_or_default();
        let namespace = meta["namespace"].as_str().unwrap_or("default");
        let uid = meta["uid"].as_str().unwrap_or_default();
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            format!("{uid}\0{}\0{reason}\0{message}", kind.as_str()).as_bytes(),
        );
        // Kubernetes' event names are `<object>.<hex>`; the object part is cut so the whole
        // stays a valid name.
        let short: String = obj_name.chars().take(200).collect();
        let name = format!("{short}.{}", hex::encode(&digest.as_ref()[..8]));
        let r = ObjectRef {
            resource: &EVENTS,
            namespace: Some(namespace.to_owned()),
            name: name.clone(),
        };
        let now = now_rfc3339();
        let event = json!({
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "apiVersion": resource.api_version(),
                "kind": resource.kind,
                "namespace": meta["namespace"],
                "name": obj_name,
                "uid": uid,
                "resourceVersion": meta["resourceVersion"],
            },
            "reason": reason,
            "message": message,
            "type": kind.as_str(),
            "source": {"component": self.component},
            "reportingComponent": self.component,
            "reportingInstance": "",
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        });
        match self.registry.create(&EVENTS, Some(namespace), event).await {
            Err(ApiError::AlreadyExists { .. }) => {
                self.registry
                    .modify(&r, Part::Main, |e| {
                        let count = e["count"].as_i64().unwrap_or(1);
                        e["count"] = json!(count + 1);
                        e["lastTimestamp"] = json!(now);
                    })
                    .await?;
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }
}
