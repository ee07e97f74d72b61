//! Who a request is from and whether they may make it: the client certificate or a service
//! account bearer token, impersonation headers, then the node rules, `system:masters`, or RBAC.
//!
//! Reads only memory per request: the service accounts and RBAC objects come from a [`View`]
//! the server keeps current from the change feed, bound pods from the tunnels' pod index.
//! Only a token bound to a pod no node runs yet, or a request while the view is still loading,
//! costs a datastore read. Invariant: a bearer token is accepted only while its service account
//! (and bound pod) exists with the uid the token names, so deleting either revokes it.

use std::sync::Arc;

use hyper::{HeaderMap, Method, header};
use serde_json::{Value, json};

use super::Api;
use super::auth::{Identity, MASTERS};
use super::rbac::{self, Attributes};
use super::resources::{ObjectRef, PODS, SERVICEACCOUNTS};
use super::status::{ApiError, Result};
use super::tokens::{Claims, Signer};
use crate::runtime::frozen::{AsJson, Json};

/// Every authenticated user is in this group (Kubernetes adds it to every identity).
pub const AUTHENTICATED: &str = "system:authenticated";
/// The group of every service account, and the prefix of each namespace's group.
pub const SERVICE_ACCOUNTS: &str = "system:serviceaccounts";
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";
/// Impersonation headers, as kubectl's `--as` and `--as-group` send them.
const IMPERSONATE_USER: &str = "impersonate-user";
const IMPERSONATE_GROUP: &str = "impersonate-group";

/// The in-memory objects authentication and RBAC read.
pub trait View: rbac::Objects {
    /// Whether the first listing is in (before it, nothing can be decided from the view).
    fn synced(&self) -> bool;
}

/// What the API authenticates and authorises with; one per server.
pub struct Access {
    pub signer: Signer,
    view: Arc<dyn View>,
    /// Shortest lifetime a TokenRequest may ask for (Kubernetes' 10 minutes).
    pub min_token_seconds: i64,
}

// === impl Access ===

impl Access {
    pub fn new(signer: Signer, view: Arc<dyn View>, min_token_seconds: i64) -> Access {
        Access {
            signer,
            view,
            min_token_seconds,
        }
    }

    pub fn synced(&self) -> bool {
        self.view.synced()
    }

    /// The identity a request acts as: its certificate's, else its bearer token's (an
    /// invalid token is 401 even where anonymous requests would be served), then whom it
    /// impersonates, if it may.
    pub async fn identify(
        &self,
        api: &Api,
        connection: &Identity,
        headers: &HeaderMap,
    ) -> Result<Identity> {
        let mut id = connection.clone();
        if *connection == Identity::Anonymous
            && let Some(token) = bearer(headers)
        {
            id = self.token_identity(api, token).await?;
        }
        self.impersonate(id, headers)
    }

    /// Whether `id` may make the request `attrs` describes (`method` and `path` for the node
    /// rules, which are written by path).
    pub fn authorize(
        &self,
        id: &Identity,
        method: &Method,
        path: &str,
        attrs: &Attributes,
    ) -> Result<()> {
        match id {
            Identity::Anonymous => Err(ApiError::Unauthorized),
            Identity::User { groups, .. } if groups.iter().any(|g| g == MASTERS) => Ok(()),
            // Nodes keep their own, narrower rules (NodeRestriction); RBAC adds nothing.
            Identity::User { .. } if id.node_name().is_some() => {
                id.authorize(http_verb(method), path)
            }
            Identity::User { name, .. } => {
                if self.allows(id, attrs)? {
                    Ok(())
                } else {
                    Err(ApiError::Forbidden(attrs.forbidden(name)))
                }
            }
        }
    }

    /// Whether RBAC (or `system:masters`) allows `attrs` for `id`; what
    /// `SelfSubjectAccessReview` answers.
    pub fn allows(&self, id: &Identity, attrs: &Attributes) -> Result<bool> {
        let Identity::User { name, groups, .. } = id else {
            return Ok(false);
        };
        if groups.iter().any(|g| g == MASTERS) {
            return Ok(true);
        }
        self.ready()?;
        Ok(rbac::allows(
            self.view.as_ref(),
            name,
            &with_authenticated(groups),
            attrs,
        ))
    }

    /// The rules that apply to `id` in `namespace` (`SelfSubjectRulesReview`).
    pub fn rules(&self, id: &Identity, namespace: &str) -> Result<Vec<Value>> {
        let Identity::User { name, groups, .. } = id else {
            return Ok(Vec::new());
        };
        if groups.iter().any(|g| g == MASTERS) {
            return Ok(vec![
                json!({"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}),
                json!({"verbs": ["*"], "nonResourceURLs": ["*"]}),
            ]);
        }
        self.ready()?;
        Ok(rbac::rules(
            self.view.as_ref(),
            name,
            &with_authenticated(groups),
            namespace,
        ))
    }

    fn ready(&self) -> Result<()> {
        if self.view.synced() {
            Ok(())
        } else {
            Err(ApiError::Unavailable(
                "the authorization cache is still loading; retry in a moment".into(),
            ))
        }
    }

    async fn token_identity(&self, api: &Api, token: &str) -> Result<Identity> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let claims = self.signer.verify(token, now).map_err(|e| {
            tracing::debug!(error = %e, "bearer token refused");
            ApiError::Unauthorized
        })?;
        self.check_bound(api, &claims).await?;
        let ns = &claims.kubernetes.namespace;
        Ok(Identity::User {
            name: claims.sub,
            groups: vec![
                SERVICE_ACCOUNTS.to_owned(),
                format!("{SERVICE_ACCOUNTS}:{ns}"),
                AUTHENTICATED.to_owned(),
            ],
            generation: None,
        })
    }

    /// The token's service account, and its pod if bound to one, must still exist as the
    /// objects it was issued for.
    async fn check_bound(&self, api: &Api, claims: &Claims) -> Result<()> {
        let private = &claims.kubernetes;
        let ns = private.namespace.as_str();
        let account = &private.serviceaccount;
        if claims.sub != format!("{SERVICE_ACCOUNT_PREFIX}{ns}:{}", account.name) {
            return Err(ApiError::Unauthorized);
        }
        let uid = match self.view.synced() {
            true => self
                .view
                .get(&SERVICEACCOUNTS, Some(ns), &account.name)
                .map(|sa| uid_of(&sa).to_owned()),
            false => {
                stored_uid(
                    api,
                    ObjectRef::namespaced(&SERVICEACCOUNTS, ns, &account.name),
                )
                .await?
            }
        };
        if uid.as_deref() != Some(account.uid.as_str()) {
            tracing::debug!(account = %claims.sub, "bearer token of a deleted or re-created service account");
            return Err(ApiError::Unauthorized);
        }
        if let Some(pod) = &private.pod {
            let uid = match api.tunnels.bound_pod_uid(ns, &pod.name) {
                Some(uid) => Some(uid),
                // Not bound to a node (yet): the datastore decides.
                None => stored_uid(api, ObjectRef::namespaced(&PODS, ns, &pod.name)).await?,
            };
            if uid.as_deref() != Some(pod.uid.as_str()) {
                tracing::debug!(pod = %pod.name, "bearer token of a deleted pod");
                return Err(ApiError::Unauthorized);
            }
        }
        Ok(())
    }

    /// Applies `Impersonate-User` / `Impersonate-Group`: the caller must be allowed to
    /// `impersonate` that user (or service account) and each group.
    fn impersonate(&self, id: Identity, headers: &HeaderMap) -> Result<Identity> {
        let user = headers
            .get(IMPERSONATE_USER)
            .map(|v| v.to_str().map(str::to_owned));
        let groups: Vec<String> = headers
            .get_all(IMPERSONATE_GROUP)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_owned))
            .collect();
        let user = match user {
            None if groups.is_empty() => return Ok(id),
            None => {
                return Err(ApiError::BadRequest(
                    "impersonating groups requires impersonating a user (Impersonate-User)".into(),
                ));
            }
            Some(Err(_)) => {
                return Err(ApiError::BadRequest(
                    "Impersonate-User is not valid text".into(),
                ));
            }
            Some(Ok(u)) => u,
        };
        let Identity::User { name: caller, .. } = &id else {
            return Err(ApiError::Unauthorized);
        };
        let account = user
            .strip_prefix(SERVICE_ACCOUNT_PREFIX)
            .and_then(|rest| rest.split_once(':'));
        let mut asks = vec![match account {
            Some((ns, name)) => impersonate("serviceaccounts", ns, name),
            None => impersonate("users", "", &user),
        }];
        asks.extend(groups.iter().map(|g| impersonate("groups", "", g)));
        for ask in &asks {
            if !self.allows(&id, ask)? {
                return Err(ApiError::Forbidden(ask.forbidden(caller)));
            }
        }
        let mut groups = groups;
        if groups.is_empty()
            && let Some((ns, _)) = account
        {
            groups = vec![
                SERVICE_ACCOUNTS.to_owned(),
                format!("{SERVICE_ACCOUNTS}:{ns}"),
            ];
        }
        if user != "system:anonymous" && !groups.iter().any(|g| g == AUTHENTICATED) {
            groups.push(AUTHENTICATED.to_owned());
        }
        Ok(Identity::User {
            name: user,
            groups,
            generation: None,
        })
    }
}

/// The groups RBAC sees: the identity's, and `system:authenticated`.
pub fn with_authenticated(groups: &[String]) -> Vec<String> {
    let mut all = groups.to_vec();
    if !all.iter().any(|g| g == AUTHENTICATED) {
        all.push(AUTHENTICATED.to_owned());
    }
    all
}

fn impersonate(resource: &str, namespace: &str, name: &str) -> Attributes {
    Attributes::Resource {
        verb: "impersonate".into(),
        group: String::new(),
        resource: resource.into(),
        subresource: String::new(),
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn uid_of(obj: &impl AsJson) -> &str {
    obj.json()
        .pointer("/metadata/uid")
        .and_then(Json::as_str)
        .unwrap_or_default()
}

async fn stored_uid(api: &Api, r: ObjectRef) -> Result<Option<String>> {
    match api.registry.get(&r).await {
        Ok(obj) => Ok(Some(uid_of(&obj).to_owned())),
        Err(ApiError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The verb the node rules are written with.
fn http_verb(m: &Method) -> &'static str {
    match *m {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "access",
    }
}
