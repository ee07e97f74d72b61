//! The TokenRequest API: `POST /api/v1/namespaces/<ns>/serviceaccounts/<name>/token`, which
//! `kubectl create token` calls, answered with a signed token for that service account.
//!
//! Kubernetes' rules: lifetime 1 hour unless asked, at least 10 minutes (the server's
//! minimum), at most 2^32 seconds; audiences default to the API's own; a token may be bound
//! to a Pod (by name, and uid if given), and then lives only as long as that pod does.

use serde_json::{Value, json};

use super::Api;
use super::resources::{ObjectRef, PODS, SERVICEACCOUNTS};
use super::status::{ApiError, Result};
use super::tokens::Bound;

/// Lifetime of a token whose request names none (Kubernetes' default).
pub const DEFAULT_SECONDS: i64 = 3600;
/// Longest lifetime accepted, as in Kubernetes.
const MAX_SECONDS: i64 = 1 << 32;

/// Issues a token for `namespace/name` as `body` (a `TokenRequest`) asks; the answer is the
/// request with its `status` (token and expiry) filled in.
pub async fn create(api: &Api, namespace: &str, name: &str, body: Value) -> Result<Value> {
    let invalid = |cause: String| ApiError::Invalid {
        kind: "TokenRequest.authentication.k8s.io".into(),
        name: name.to_owned(),
        causes: vec![cause],
    };
    let spec = body.get("spec").cloned().unwrap_or_else(|| json!({}));
    let seconds = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_SECONDS,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::BadRequest("spec.expirationSeconds must be a whole number of seconds".into())
        })?,
    };
    let min = api.access.min_token_seconds;
    if seconds < min {
        return Err(invalid(format!(
            "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration less than {}",
            if min == 600 {
                "10 minutes".to_owned()
            } else {
                format!("{min} seconds")
            }
        )));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid(format!(
            "spec.expirationSeconds: Invalid value: {seconds}: may not specify a duration larger than 2^32 seconds"
        )));
    }
    let audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::BadRequest("spec.audiences must be strings".into()))
            })
            .collect::<Result<_>>()?,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "spec.audiences must be a list of strings".into(),
            ));
        }
    };
    let account = api
        .registry
        .get(&ObjectRef::namespaced(&SERVICEACCOUNTS, namespace, name))
        .await?;
    let account = Bound {
        name: name.to_owned(),
        uid: uid_of(&account),
    };
    let bound = spec.get("boundObjectRef").filter(|b| !b.is_null());
    let pod = match bound {
        None => None,
        Some(b) => Some(bound_pod(api, namespace, b).await?),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signer = &api.access.signer;
    let claims = signer.claims(namespace, account, pod, audiences, now, seconds);
    let token = signer
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires = time::OffsetDateTime::from_unix_timestamp(claims.exp)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut spec = spec;
    spec["audiences"] = json!(claims.aud);
    spec["expirationSeconds"] = json!(seconds);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// What a node asks for one of its pods (the node-side checks are the tunnel's).
pub struct PodToken<'a> {
    pub namespace: &'a str,
    pub pod: &'a str,
    pub pod_uid: &'a str,
    pub service_account: &'a str,
    /// Empty for the API's own audience.
    pub audience: &'a str,
    pub seconds: i64,
}

/// A token of `request.service_account` bound to the pod, as kubelet gets one for a
/// projected `serviceAccountToken` source: `{"token", "expirationSeconds"}`. The lifetime is
/// what the pod asked for, but not under the server's minimum.
pub async fn for_pod(api: &Api, request: PodToken<'_>) -> Result<Value> {
    let ns = request.namespace;
    let account = api
        .registry
        .get(&ObjectRef::namespaced(
            &SERVICEACCOUNTS,
            ns,
            request.service_account,
        ))
        .await?;
    let account = Bound {
        name: request.service_account.to_owned(),
        uid: uid_of(&account),
    };
    let pod = Bound {
        name: request.pod.to_owned(),
        uid: request.pod_uid.to_owned(),
    };
    let seconds = request
        .seconds
        .clamp(api.access.min_token_seconds, MAX_SECONDS);
    let audiences = match request.audience {
        "" => Vec::new(),
        a => vec![a.to_owned()],
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let signer = &api.access.signer;
    let claims = signer.claims(ns, account, Some(pod), audiences, now, seconds);
    let token = signer
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(json!({"token": token, "expirationSeconds": seconds}))
}

/// The pod a token is to be bound to; only Pods are supported as bound objects.
async fn bound_pod(api: &Api, namespace: &str, reference: &Value) -> Result<Bound> {
    let field = |f: &str| reference.get(f).and_then(Value::as_str).unwrap_or_default();
    if field("kind") != "Pod" || !matches!(field("apiVersion"), "" | "v1") {
        return Err(ApiError::BadRequest(format!(
            "cannot bind token for object of kind {:?} ({:?}): only Pods are supported here",
            field("kind"),
            field("apiVersion")
        )));
    }
    let pod = api
        .registry
        .get(&ObjectRef::namespaced(&PODS, namespace, field("name")))
        .await?;
    let uid = uid_of(&pod);
    if !field("uid").is_empty() && field("uid") != uid {
        return Err(ApiError::ConflictWith(format!(
            "the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
            field("uid")
        )));
    }
    Ok(Bound {
        name: field("name").to_owned(),
        uid,
    })
}

fn uid_of(obj: &Value) -> String {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}
