//! Events the scheduler and controllers record about objects, aggregated as Kubernetes' are.
//!
//! One Event object per (object, type, reason, message): its name is the object's name plus a
//! hash of the rest, so a repeat finds it and bumps `count` and `lastTimestamp` instead of
//! adding another. Recording is best effort: a failure is logged, never passed on, because an
//! event must not stop the work it describes.
//!
//! [`Expiry`] deletes Events not seen again for `--event-ttl` (default one hour), as
//! kube-apiserver lets them expire, so a busy cluster's history does not grow without bound.

use serde_json::{Value, json};

use std::sync::Arc;
use std::time::Duration;

use crate::apiserver::registry::{Part, Registry, now_rfc3339};
use crate::apiserver::resources::{EVENTS, ObjectRef, Resource};
use crate::apiserver::status::ApiError;
use crate::runtime::controller::Context;
use crate::runtime::frozen::{AsJson, Json};

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
    /// Events being written. Writing is in the background so a controller never waits on its
    /// own events (they were half the writes of a 3000-pod rollout); past the bound, events
    /// are dropped, as Kubernetes' recorder drops them under load.
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Events one recorder writes at once.
const IN_FLIGHT: usize = 64;

impl Recorder {
    pub fn new(registry: Registry, component: &'static str) -> Recorder {
        Recorder {
            registry,
            component,
            in_flight: Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Records that `reason` happened to `obj` (of `resource`), in the background.
    pub async fn record(
        &self,
        resource: &'static Resource,
        obj: &impl AsJson,
        kind: Type,
        reason: &str,
        message: &str,
    ) {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            tracing::debug!(reason, "dropped an event: too many being written");
            return;
        };
        let this = self.clone();
        let obj = json!({"metadata": obj.json()["metadata"].thaw()});
        let (reason, message) = (reason.to_owned(), message.to_owned());
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this
                .try_record(resource, &obj, kind, &reason, &message)
                .await
            {
                tracing::debug!(error = %e, reason, "could not record an event");
            }
        });
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

/// Deletes Events last seen longer than `ttl` ago. Runs under the controllers lease.
pub struct Expiry {
    pub ttl: Duration,
}

impl Expiry {
    /// How often it looks: a quarter of the time-to-live, between 1 s and 5 min.
    fn period(&self) -> Duration {
        (self.ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }

    pub async fn run(self, ctx: Arc<Context>) {
        loop {
            tokio::time::sleep(self.period()).await;
            match self.sweep(&ctx).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(expired = n, "deleted expired events"),
                Err(e) => tracing::info!(error = %e, "could not expire events"),
            }
        }
    }

    async fn sweep(&self, ctx: &Context) -> Result<usize, ApiError> {
        let now = time::OffsetDateTime::now_utc();
        let (_, events) = ctx.registry.list(&EVENTS, None).await?;
        let mut n = 0;
        for e in events.iter().filter(|e| expired(e, self.ttl, now)) {
            let r = ObjectRef {
                resource: &EVENTS,
                namespace: e["metadata"]["namespace"].as_str().map(str::to_owned),
                name: e["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            };
            match ctx.registry.delete(&r, None).await {
                Ok(_) => n += 1,
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }
}

/// Whether an Event was last seen more than `ttl` before `now`.
fn expired(event: &Value, ttl: Duration, now: time::OffsetDateTime) -> bool {
    let seen = [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .map(|p| super::owner::timestamp(event, p))
    .find(|t| *t != time::OffsetDateTime::UNIX_EPOCH);
    seen.is_some_and(|t| now - t > ttl)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::format_description::well_known::Rfc3339;

    #[test]
    fn events_expire_by_when_they_were_last_seen() {
        let now = time::OffsetDateTime::parse("2026-01-01T02:00:00Z", &Rfc3339).unwrap();
        let hour = Duration::from_secs(3600);
        let seen = |t: &str| json!({"lastTimestamp": t, "metadata": {"creationTimestamp": "2025-01-01T00:00:00Z"}});
        assert!(expired(&seen("2026-01-01T00:59:00Z"), hour, now));
        assert!(!expired(&seen("2026-01-01T01:30:00Z"), hour, now));
        // An event without lastTimestamp goes by its creation.
        assert!(expired(
            &json!({"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"}}),
            hour,
            now
        ));
        assert!(!expired(&json!({}), hour, now), "undatable events stay");
    }
}
