//! Kubernetes object semantics over the datastore: defaulting, validation, metadata the
//! server owns (uid, creationTimestamp, resourceVersion), status subresources, and
//! optimistic concurrency.
//!
//! Used by the HTTP handlers and by in-process writers (the server's own node heartbeat, the
//! record of who holds a server lease), so every write follows the same rules. Invariant:
//! objects are stored without `metadata.resourceVersion`; it is always the datastore revision,
//! added on read.

use std::net::IpAddr;
use std::time::Duration;

use ring::rand::SecureRandom;
use serde_json::{Value, json};

use super::admission::{self, Writer};
use super::allocator::{self, ServiceCidrs};
use super::apply;
use super::kinds::NameRule;
use super::kinds::persistentvolume::BETA_CLASS_ANNOTATION;
use super::kinds::storageclass;
use super::openapi;
use super::patch;
use super::resources::{
    LEASES, NAMESPACES, NODES, ObjectRef, PERSISTENTVOLUMECLAIMS, PODS, Resource, SECRETS,
    SERVICEACCOUNTS, SERVICES, STORAGECLASSES, SYSTEM_NAMESPACES,
};
use super::status::{ApiError, Result};
use crate::api::labels;
use crate::bootstrap::encryption::{Encryption, decrypt_with};
use crate::datastore::{Record, Store};
use crate::runtime::frozen::{AsJson, Json};
use std::sync::Arc;

/// Attempts at read-patch-write before a patch gives up under contention.
const PATCH_RETRIES: usize = 64;
/// Where the servers' leases are recorded as `Lease` objects, as Kubernetes's own
/// control-plane leases are.
pub const LEASE_NAMESPACE: &str = "kube-system";

/// What happens to an object's dependents when it is deleted (`propagationPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// The object goes now; the garbage collector deletes its dependents afterwards.
    Background,
    /// The object stays (terminating) until its blocking dependents are gone.
    Foreground,
    /// The dependents stay, released from their owner.
    Orphan,
}

impl Propagation {
    pub fn parse(policy: &str) -> Result<Propagation> {
        match policy {
            "Background" | "" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::BadRequest(format!(
                "propagationPolicy {other:?} is not supported: supported values: \"Background\", \"Foreground\", \"Orphan\""
            ))),
        }
    }

    /// The finalizer that holds the object while the garbage collector works.
    pub fn finalizer(self) -> Option<&'static str> {
        match self {
            Propagation::Background => None,
            Propagation::Foreground => Some(FOREGROUND_FINALIZER),
            Propagation::Orphan => Some(ORPHAN_FINALIZER),
        }
    }
}

pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";
pub const ORPHAN_FINALIZER: &str = "orphan";

/// Which part of an object a write may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `status` (and a Namespace's `spec.finalizers`).
    Main,
    /// Only `status`.
    Status,
    /// Only a Namespace's `spec.finalizers` (`namespaces/<name>/finalize`), which the
    /// namespace controller empties once the namespace's content is gone.
    Finalize,
}

/// Where a pod's service account token, CA and namespace are mounted (Kubernetes' path).
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA that every namespace has (`ca.crt`).
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";

/// The finalizer a Namespace's `spec.finalizers` holds it by while its content is deleted.
pub const NAMESPACE_FINALIZER: &str = "kubernetes";
/// The Service that holds the cluster DNS address (see [`Registry::ensure_dns_service`]).
pub const DNS_SERVICE: &str = "kube-dns";
/// Marks the DNS Service as one keelson made and the nodes answer for.
pub const DNS_SERVICE_LABEL: &str = "keelson.io/node-local-dns";

#[derive(Clone)]
pub struct Registry {
    store: Store,
    /// Secrets' keys while `--secrets-encryption` is on; Secrets are stored encrypted then.
    encryption: Option<Arc<Encryption>>,
    /// `dryRun=All`: every write is defaulted, validated and answered, but nothing is stored.
    dry_run: bool,
    /// Where Services' cluster IPs come from (`--service-cidr`); none: not allocated.
    service_cidrs: Option<ServiceCidrs>,
    /// The field manager of this request's updates (`fieldManager`, else the User-Agent's).
    /// In-process writers have none, so their writes move no field ownership.
    manager: Option<Arc<str>>,
    /// The server's in-memory ServiceAccounts, which pod admission reads (else the store).
    accounts: Option<Arc<dyn super::access::View>>,
}

// === impl Registry ===

impl Registry {
    pub fn new(store: Store) -> Registry {
        Registry {
            store,
            encryption: None,
            dry_run: false,
            service_cidrs: None,
            manager: None,
            accounts: None,
        }
    }

    /// Reads ServiceAccounts for pod admission from `view` (while it is synced) from now on.
    pub fn with_service_accounts(mut self, view: Arc<dyn super::access::View>) -> Registry {
        self.accounts = Some(view);
        self
    }

    /// This registry for a client's request: its updates move field ownership (of objects
    /// someone has applied) to `manager`.
    pub fn managed_by(&self, manager: &str) -> Registry {
        Registry {
            manager: Some(Arc::from(manager)),
            ..self.clone()
        }
    }

    /// Allocates Services' cluster IPs from `ranges` from now on.
    pub fn with_service_cidrs(mut self, ranges: ServiceCidrs) -> Registry {
        self.service_cidrs = Some(ranges);
        self
    }

    /// This registry for `dryRun=All` requests: writes are checked and answered, never stored.
    pub fn dry_run(&self) -> Registry {
        Registry {
            dry_run: true,
            ..self.clone()
        }
    }

    /// Stores Secrets encrypted with `encryption`'s active key from now on.
    pub fn with_encryption(mut self, encryption: Arc<Encryption>) -> Registry {
        self.encryption = Some(encryption);
        self
    }

    /// Secrets' keys, while `--secrets-encryption` is on.
    pub fn encryption(&self) -> Option<&Arc<Encryption>> {
        self.encryption.as_ref()
    }

    /// Like [`Registry::decode`], but a Secret under a key this server does not hold yet
    /// (another server rotated) makes it reload the keys first.
    pub async fn decode_fresh(&self, resource: &Resource, rec: &Record) -> Result<Value> {
        self.learn_keys(resource, std::iter::once(rec)).await;
        self.decode(resource, rec)
    }

    /// Reloads the keys if any of `records`, Secrets, names a key this server lacks.
    async fn learn_keys<'a>(&self, resource: &Resource, records: impl Iterator<Item = &'a Record>) {
        if resource == &SECRETS
            && let Some(e) = &self.encryption
        {
            e.learn(&self.store, records.map(|r| r.value.as_slice()))
                .await;
        }
    }

    /// The stored object with its resourceVersion, in `resource`'s form (a view converts
    /// it); Secrets decrypted.
    pub fn decode(&self, resource: &Resource, rec: &Record) -> Result<Value> {
        if resource == &SECRETS {
            let plain = decrypt_with(self.encryption.as_deref(), &rec.path, &rec.value)
                .map_err(|e| ApiError::Internal(format!("{}: {e}", rec.path)))?;
            return decode_json(resource, &rec.path, &plain, rec.revision);
        }
        let obj = decode_json(resource, &rec.path, &rec.value, rec.revision)?;
        Ok(resource.strategy.to_served(obj))
    }

    /// The decodable ones of `records`. One object that cannot be decoded (written by an
    /// older bug, or by hand) must not take every list of its kind down with it: it is
    /// reported and left out.
    fn decode_all(&self, resource: &Resource, records: &[Record]) -> Vec<Value> {
        records
            .iter()
            .filter_map(|rec| match self.decode(resource, rec) {
                Ok(obj) => Some(obj),
                Err(e) => {
                    tracing::error!(path = %rec.path, error = %e, "leaving an undecodable object out of a list; delete it to clear this");
                    None
                }
            })
            .collect()
    }

    /// The stored form of `obj` at `path`: JSON, encrypted for Secrets when encryption is on.
    fn encode(&self, resource: &Resource, path: &str, obj: &Value) -> Result<Vec<u8>> {
        if crate::runtime::trim::is_trimmed(obj) {
            // A bug, not bad input: writing a cache's copy back whole would lose the fields
            // the cache leaves out.
            return Err(ApiError::Internal(format!(
                "refusing to store {path}: it is a controller cache's trimmed copy"
            )));
        }
        let bytes = encode(&resource.strategy.to_stored(obj))?;
        match &self.encryption {
            Some(e) if resource == &SECRETS => Ok(e.encrypt(path, &bytes)),
            _ => Ok(bytes),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub async fn get(&self, r: &ObjectRef) -> Result<Value> {
        match self.store.get(&r.path()).await {
            Ok(Some(rec)) => self.decode_fresh(r.resource, &rec).await,
            Ok(None) => Err(not_found(r)),
            Err(e) => Err(ApiError::from_store(
                e,
                &r.resource.group_resource(),
                &r.name,
            )),
        }
    }

    /// All objects of a resource (in one namespace, or all) and the list's revision.
    pub async fn list(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
    ) -> Result<(i64, Vec<Value>)> {
        let (rev, records) = self.store.list(&resource.prefix(namespace)).await?;
        self.learn_keys(resource, records.iter()).await;
        let items = self.decode_all(resource, &records);
        Ok((rev, items))
    }

    /// One page of a list: at most `limit` objects after the `continue` token of the page
    /// before. Each object that exists throughout is in exactly one page (pages are read in
    /// path order, as the objects are at the time). A token whose list began before the last
    /// compaction has expired (410), as Kubernetes' do.
    pub async fn list_page(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        limit: usize,
        token: Option<&str>,
    ) -> Result<Page> {
        let prefix = resource.prefix(namespace);
        let (start, first_rev) = match token {
            None => (None, None),
            Some(t) => {
                let t = ContinueToken::decode(t)?;
                if !t.start.starts_with(&prefix) {
                    return Err(ApiError::BadRequest(
                        "the continue token is for another list".into(),
                    ));
                }
                let compacted = self.store.compacted_revision().await?;
                if t.rv < compacted {
                    return Err(ApiError::Gone {
                        requested: t.rv,
                        compacted,
                    });
                }
                (Some(t.start), Some(t.rv))
            }
        };
        let (rev, records, next) = self
            .store
            .list_page(&prefix, start.as_deref(), limit)
            .await?;
        self.learn_keys(resource, records.iter()).await;
        let items = self.decode_all(resource, &records);
        let continue_token = next.map(|start| {
            ContinueToken {
                rv: first_rev.unwrap_or(rev),
                start,
            }
            .encode()
        });
        Ok(Page {
            revision: rev,
            items,
            continue_token,
        })
    }

    pub async fn create(
        &self,
        resource: &'static Resource,
        namespace: Option<&str>,
        mut obj: Value,
    ) -> Result<Value> {
        if !obj.is_object() {
            return Err(ApiError::BadRequest(format!(
                "the body must be a {} object",
                resource.kind
            )));
        }
        check_type_meta(resource, &obj)?;
        let mut name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // `generateName`: the server picks the name, as Kubernetes does (the prefix cut so
        // prefix + suffix fit a label's 63 characters); a clash is answered like any other
        // AlreadyExists and the client tries again.
        if name.is_empty()
            && let Some(prefix) = obj
                .pointer("/metadata/generateName")
                .and_then(Value::as_str)
                .filter(|p| !p.is_empty())
        {
            let cut: String = prefix.chars().take(58).collect();
            name = format!("{cut}{}", random_suffix());
            obj["metadata"]["name"] = json!(name);
        }
        if name.is_empty() {
            return Err(invalid(
                resource,
                "",
                vec!["metadata.name: Required value: name is required".into()],
            ));
        }
        let namespace = if resource.namespaced {
            let ns = namespace
                .map(str::to_owned)
                .or_else(|| {
                    obj.pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "default".into());
            if let Some(body_ns) = obj.pointer("/metadata/namespace").and_then(Value::as_str)
                && body_ns != ns
            {
                return Err(ApiError::BadRequest(format!(
                    "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
                )));
            }
            let holder = self
                .get(&ObjectRef::cluster(&NAMESPACES, &ns))
                .await
                .map_err(|e| match e {
                    ApiError::NotFound { .. } => ApiError::NotFound {
                        resource: "namespaces".into(),
                        name: ns.clone(),
                    },
                    other => other,
                })?;
            // What the namespace controller is deleting must not grow behind it.
            if is_terminating(&holder) {
                return Err(ApiError::NamespaceTerminating {
                    resource: resource.group_resource(),
                    name,
                    namespace: ns,
                });
            }
            Some(ns)
        } else {
            None
        };
        let r = ObjectRef {
            resource,
            namespace,
            name,
        };
        set_type_meta(resource, &mut obj);
        let meta = obj["metadata"]
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
        meta.remove("resourceVersion");
        meta.insert("uid".into(), json!(new_uid()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if let Some(ns) = &r.namespace {
            meta.insert("namespace".into(), json!(ns));
        }
        resource.strategy.prepare_create(&mut obj);
        default(resource, &r.name, &mut obj);
        if resource == &PODS
            && let Some(ns) = &r.namespace
        {
            self.mount_service_account_token(ns, &mut obj).await?;
        }
        if resource == &PERSISTENTVOLUMECLAIMS {
            self.default_storage_class(&mut obj).await?;
        }
        if resource.strategy.has_generation() {
            obj["metadata"]["generation"] = json!(1);
        }
        validate(resource, &r.name, &obj, None)?;
        check_limits(resource, &r.name, &obj)?;
        let taken = if resource == &SERVICES && !self.dry_run {
            self.allocate_service(&r, &mut obj).await?
        } else {
            Taken::default()
        };
        let bytes = match self.encode(resource, &r.path(), &obj) {
            Ok(b) => b,
            Err(e) => {
                taken.release(&self.store).await;
                return Err(e);
            }
        };
        if self.dry_run {
            if self.store.get(&r.path()).await?.is_some() {
                return Err(ApiError::AlreadyExists {
                    resource: resource.group_resource(),
                    name: r.name,
                });
            }
            return Ok(obj);
        }
        let rev = match self.store.create(&r.path(), &bytes).await {
            Ok(rev) => rev,
            Err(e) => {
                taken.release(&self.store).await;
                return Err(ApiError::from_store(e, &resource.group_resource(), &r.name));
            }
        };
        with_revision(&mut obj, rev);
        if resource == &NAMESPACES {
            self.ensure_default_service_account(&r.name).await?;
        }
        Ok(obj)
    }

    /// Kubernetes' ServiceAccount admission: unless the pod (or else its service account)
    /// sets `automountServiceAccountToken: false`, a `kube-api-access-<5 chars>` projected
    /// volume (a bound token of 3607 s, the `kube-root-ca.crt` ConfigMap's `ca.crt`, the
    /// namespace) mounted read-only at [`SERVICE_ACCOUNT_MOUNT`] in every container that has
    /// nothing mounted there. A pod whose service account does not exist (yet) gets no
    /// volume (Kubernetes refuses such a pod).
    async fn mount_service_account_token(&self, namespace: &str, pod: &mut Value) -> Result<()> {
        let spec = &pod["spec"];
        if spec["automountServiceAccountToken"] == json!(false) {
            return Ok(());
        }
        let name = spec["serviceAccountName"]
            .as_str()
            .filter(|n| !n.is_empty())
            .unwrap_or("default")
            .to_owned();
        let account = match self.accounts.as_ref().filter(|v| v.synced()) {
            Some(view) => view
                .get(&SERVICEACCOUNTS, Some(namespace), &name)
                .map(|a| a.thaw()),
            None => match self
                .get(&ObjectRef {
                    resource: &SERVICEACCOUNTS,
                    namespace: Some(namespace.to_owned()),
                    name,
                })
                .await
            {
                Ok(a) => Some(a),
                Err(ApiError::NotFound { .. }) => None,
                Err(e) => return Err(e),
            },
        };
        let Some(account) = account else {
            return Ok(());
        };
        if spec["automountServiceAccountToken"].is_null()
            && account["automountServiceAccountToken"] == json!(false)
        {
            return Ok(());
        }
        let volume = format!("kube-api-access-{}", random_suffix());
        let mut added = false;
        for field in ["initContainers", "containers"] {
            let Some(list) = pod["spec"][field].as_array_mut() else {
                continue;
            };
            for c in list {
                let taken = c["volumeMounts"].as_array().is_some_and(|mounts| {
                    mounts
                        .iter()
                        .any(|m| m["mountPath"].as_str() == Some(SERVICE_ACCOUNT_MOUNT))
                });
                if taken || !c.is_object() {
                    continue;
                }
                let mount =
                    json!({"name": volume, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT});
                match c["volumeMounts"].as_array_mut() {
                    Some(mounts) => mounts.push(mount),
                    None => c["volumeMounts"] = json!([mount]),
                }
                added = true;
            }
        }
        if !added {
            return Ok(());
        }
        let source = json!({
            "name": volume,
            "projected": {
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            },
        });
        match pod["spec"]["volumes"].as_array_mut() {
            Some(volumes) => volumes.push(source),
            None => pod["spec"]["volumes"] = json!([source]),
        }
        Ok(())
    }

    /// Kubernetes' DefaultStorageClass admission: a claim that names no class (no
    /// `spec.storageClassName`, not even an empty one, and no beta class annotation) gets the
    /// default StorageClass's name, chosen by [`storageclass::default_class`]. Without a
    /// default class it stays unset (the binder may fill it in later, as Kubernetes' does).
    async fn default_storage_class(&self, claim: &mut Value) -> Result<()> {
        let named = claim
            .pointer("/spec/storageClassName")
            .is_some_and(|c| !c.is_null())
            || claim
                .pointer("/metadata/annotations")
                .and_then(|a| a.get(BETA_CLASS_ANNOTATION))
                .is_some();
        if named {
            return Ok(());
        }
        let (_, classes) = self.list(&STORAGECLASSES, None).await?;
        if let Some(class) = storageclass::default_class(&classes) {
            if !claim["spec"].is_object() {
                claim["spec"] = json!({});
            }
            claim["spec"]["storageClassName"] = json!(class);
        }
        Ok(())
    }

    /// Every namespace has a `default` ServiceAccount, which pods use when they name none.
    async fn ensure_default_service_account(&self, namespace: &str) -> Result<()> {
        let sa = json!({"metadata": {"name": "default"}});
        match Box::pin(self.create(&SERVICEACCOUNTS, Some(namespace), sa)).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Replaces an object (PUT). With `metadata.resourceVersion` set, only if it is current.
    pub async fn update(
        &self,
        r: &ObjectRef,
        part: Part,
        writer: Writer<'_>,
        mut obj: Value,
    ) -> Result<Value> {
        let expected = resource_version(&obj)?;
        check_type_meta(r.resource, &obj)?;
        let current = self.get(r).await?;
        if let Some(name) = obj.pointer("/metadata/name").and_then(Value::as_str)
            && name != r.name
        {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({name}) does not match the name on the URL ({})",
                r.name
            )));
        }
        obj = prepare_update(r, part, &current, obj)?;
        admission::admit(writer, r.resource.kind, &current, &obj)?;
        obj = self.track(r, part, &current, obj).await?;
        self.put(r, expected.or(revision_of(&current)), &current, &mut obj)
            .await?;
        Ok(obj)
    }

    /// Applies a patch to the newest object, retrying on conflicts so concurrent patches all
    /// land. A patch that names a resourceVersion is a precondition and is not retried.
    pub async fn patch(
        &self,
        r: &ObjectRef,
        part: Part,
        writer: Writer<'_>,
        kind: patch::Kind,
        body: Value,
    ) -> Result<Value> {
        let precondition = body.pointer("/metadata/resourceVersion").is_some();
        let body = std::sync::Arc::new(body);
        for _ in 0..PATCH_RETRIES {
            let current = std::sync::Arc::new(self.get(r).await?);
            // Bounded, but up to a few MiB of work: off the async workers, so one large patch
            // cannot stall every other request on this runtime thread.
            let (cur, b) = (current.clone(), body.clone());
            let patched = tokio::task::spawn_blocking(move || patch::apply(kind, &cur, &b))
                .await
                .map_err(|e| ApiError::Internal(format!("the patch worker failed: {e}")))?
                .map_err(patch_error)?;
            let expected = if precondition {
                resource_version(&patched)?
            } else {
                revision_of(&current)
            };
            let obj = prepare_update(r, part, &current, patched)?;
            admission::admit(writer, r.resource.kind, &current, &obj)?;
            let mut obj = self.track(r, part, &current, obj).await?;
            match self.put(r, expected, &current, &mut obj).await {
                Err(ApiError::Conflict { .. }) if !precondition => continue,
                other => return other.map(|_| obj),
            }
        }
        Err(ApiError::Conflict {
            resource: r.resource.group_resource(),
            name: r.name.clone(),
        })
    }

    /// Server-side apply (`application/apply-patch+yaml`): merges `config` into the object as
    /// `manager`'s fields (see [`apply`]), creating the object when there is none. Retried
    /// against the newest object on a conflict, unless the configuration names a
    /// resourceVersion. Returns the object and whether it was created.
    pub async fn apply(
        &self,
        r: &ObjectRef,
        writer: Writer<'_>,
        config: Value,
        manager: &str,
        force: bool,
    ) -> Result<(Value, bool)> {
        if !config.is_object() {
            return Err(ApiError::BadRequest(format!(
                "the applied configuration must be a {} object",
                r.resource.kind
            )));
        }
        check_type_meta(r.resource, &config)?;
        match config.pointer("/metadata/name").and_then(Value::as_str) {
            Some(name) if name == r.name => {}
            Some(name) => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    r.name
                )));
            }
            None => {
                return Err(ApiError::Invalid {
                    kind: r.resource.kind.into(),
                    name: r.name.clone(),
                    causes: vec![
                        "metadata.name: Required value: an applied configuration names its object"
                            .into(),
                    ],
                });
            }
        }
        if let (Some(body_ns), Some(ns)) = (
            config
                .pointer("/metadata/namespace")
                .and_then(Value::as_str),
            &r.namespace,
        ) && body_ns != ns
        {
            return Err(ApiError::BadRequest(format!(
                "the namespace of the provided object ({body_ns}) does not match the namespace sent on the request ({ns})"
            )));
        }
        let precondition = resource_version(&config)?;
        let config = Arc::new(config);
        let applier_manager: Arc<str> = Arc::from(manager);
        for _ in 0..PATCH_RETRIES {
            let current = match self.get(r).await {
                Ok(c) => Some(Arc::new(c)),
                Err(ApiError::NotFound { .. }) if precondition.is_none() => None,
                Err(e) => return Err(e),
            };
            let (resource, cur, cfg, m) = (
                r.resource,
                current.clone(),
                config.clone(),
                applier_manager.clone(),
            );
            // Inflating the kind's schemas and walking both objects is a few milliseconds:
            // off the async workers.
            let merged = tokio::task::spawn_blocking(move || {
                let schemas = schemas_of(resource);
                let types = apply::Types::new(schemas.as_ref());
                let root = types.root(&openapi::definition(resource));
                let now = now_rfc3339();
                let applier = apply::Applier {
                    manager: &m,
                    api_version: &resource.api_version(),
                    force,
                    now: &now,
                };
                apply::apply(&types, root, cur.as_deref(), &cfg, &applier)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("the apply worker failed: {e}")))?
            .map_err(apply_error)?;
            let Some(current) = current else {
                match Box::pin(self.create(r.resource, r.namespace.as_deref(), merged)).await {
                    // Created by someone else meanwhile: apply to theirs.
                    Err(ApiError::AlreadyExists { .. }) => continue,
                    other => return other.map(|obj| (obj, true)),
                }
            };
            let expected = precondition.or(revision_of(&current));
            let mut obj = prepare_update(r, Part::Main, &current, merged)?;
            admission::admit(writer, r.resource.kind, &current, &obj)?;
            // Applying what is already there writes nothing, so revisions and watchers stay
            // quiet when a GitOps tool re-applies every few minutes.
            if obj == *current {
                return Ok((obj, false));
            }
            match self.put(r, expected, &current, &mut obj).await {
                Err(ApiError::Conflict { .. }) if precondition.is_none() => continue,
                other => return other.map(|_| (obj, false)),
            }
        }
        Err(ApiError::Conflict {
            resource: r.resource.group_resource(),
            name: r.name.clone(),
        })
    }

    /// Moves field ownership to this request's manager for an update of the main resource of
    /// an object someone has applied; everything else passes through untouched.
    async fn track(&self, r: &ObjectRef, part: Part, old: &Value, new: Value) -> Result<Value> {
        let Some(manager) = self.manager.clone() else {
            return Ok(new);
        };
        if part != Part::Main || new.pointer("/metadata/managedFields").is_none() {
            return Ok(new);
        }
        let (resource, old) = (r.resource, old.clone());
        tokio::task::spawn_blocking(move || {
            let mut new = new;
            let schemas = schemas_of(resource);
            let types = apply::Types::new(schemas.as_ref());
            let root = types.root(&openapi::definition(resource));
            apply::track_update(
                &types,
                root,
                &old,
                &mut new,
                &manager,
                &resource.api_version(),
                &now_rfc3339(),
            )
            .map(|()| new)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("the apply worker failed: {e}")))?
        .map_err(apply_error)
    }

    /// Read-modify-write for in-process writers; `change` must be idempotent.
    pub async fn modify(
        &self,
        r: &ObjectRef,
        part: Part,
        mut change: impl FnMut(&mut Value),
    ) -> Result<Value> {
        for _ in 0..PATCH_RETRIES {
            let current = self.get(r).await?;
            let mut next = current.clone();
            change(&mut next);
            if next == current {
                return Ok(current);
            }
            let mut obj = prepare_update(r, part, &current, next)?;
            match self.put(r, revision_of(&current), &current, &mut obj).await {
                Err(ApiError::Conflict { .. }) => {
                    tokio::time::sleep(Duration::from_millis(5)).await
                }
                other => return other.map(|_| obj),
            }
        }
        Err(ApiError::Conflict {
            resource: r.resource.group_resource(),
            name: r.name.clone(),
        })
    }

    /// Writes `next` as the status of `r` if the object is still `current` (409 otherwise):
    /// one compare-and-swap, for in-process writers that must not lose a race.
    pub async fn replace_status(
        &self,
        r: &ObjectRef,
        current: &Value,
        next: Value,
    ) -> Result<Value> {
        let mut obj = prepare_update(r, Part::Status, current, next)?;
        self.put(r, revision_of(current), current, &mut obj).await?;
        Ok(obj)
    }

    /// `pods/binding`: sets an unbound pod's node, once. One compare-and-swap on the pod's
    /// revision, so two schedulers (a lease changing hands mid-decision) can never both bind
    /// it: the second gets 409. `uid`, when given, must be the pod's (a pod deleted and made
    /// again under its name is another pod).
    pub async fn bind(&self, r: &ObjectRef, node: &str, uid: Option<&str>) -> Result<Value> {
        if node.is_empty() {
            return Err(invalid(
                r.resource,
                &r.name,
                vec!["target.name: Required value".into()],
            ));
        }
        let current = self.get(r).await?;
        if uid.is_some_and(|u| current.pointer("/metadata/uid").and_then(Value::as_str) != Some(u))
        {
            return Err(ApiError::Conflict {
                resource: r.resource.group_resource(),
                name: r.name.clone(),
            });
        }
        self.bind_from(r, &current, node).await
    }

    /// Binds the pod the caller decided on from `seen` (its copy in a cache, which may be
    /// trimmed) to `node`: the stored pod is read and bound with one compare-and-swap on the
    /// revision `seen` has, so a pod that changed since is not bound (409) and the caller
    /// decides again from the newer pod.
    pub async fn bind_seen(
        &self,
        r: &ObjectRef,
        seen: &(impl AsJson + Sync),
        node: &str,
    ) -> Result<Value> {
        let conflict = || ApiError::Conflict {
            resource: r.resource.group_resource(),
            name: r.name.clone(),
        };
        let expected = revision_of(seen).ok_or_else(conflict)?;
        let current = self.get(r).await?;
        if revision_of(&current) != Some(expected) {
            return Err(conflict());
        }
        self.bind_from(r, &current, node).await
    }

    /// Binds the pod `current`, whole as the caller last saw it (e.g. from a cache), to
    /// `node`: one compare-and-swap on its revision, so a pod that changed meanwhile is not
    /// bound (409) and the caller decides again from the newer pod. Saves the read
    /// [`Registry::bind_seen`] makes, which is most of a binding's cost on a busy scheduler.
    pub async fn bind_from(&self, r: &ObjectRef, current: &Value, node: &str) -> Result<Value> {
        if node.is_empty() {
            return Err(invalid(
                r.resource,
                &r.name,
                vec!["target.name: Required value".into()],
            ));
        }
        if let Some(bound) = current
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(ApiError::ConflictWith(format!(
                "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is already assigned to node \"{bound}\"",
                r.name, r.name
            )));
        }
        if is_terminating(current) {
            return Err(ApiError::ConflictWith(format!(
                "Operation cannot be fulfilled on pods/binding \"{}\": pod {} is being deleted, cannot be assigned to a host",
                r.name, r.name
            )));
        }
        let mut obj = current.clone();
        obj["spec"]["nodeName"] = json!(node);
        let now = now_rfc3339();
        let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        match obj
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            Some(conds) => {
                conds.retain(|c| c["type"] != "PodScheduled");
                conds.push(scheduled);
            }
            None => obj["status"]["conditions"] = json!([scheduled]),
        }
        if self.dry_run {
            return Ok(obj);
        }
        // Never an unconditional write: without a revision there is nothing to swap on.
        let expected = revision_of(current).ok_or_else(|| ApiError::Conflict {
            resource: r.resource.group_resource(),
            name: r.name.clone(),
        })?;
        self.store_update(r, Some(expected), &mut obj).await?;
        Ok(obj)
    }

    /// Deletes an object, leaving its dependents to the garbage collector (background).
    pub async fn delete(&self, r: &ObjectRef, precondition: Option<i64>) -> Result<Value> {
        self.delete_with(r, precondition, Propagation::Background)
            .await
    }

    /// Deletes an object. Foreground and Orphan propagation only mark it (deletionTimestamp
    /// and the `foregroundDeletion` or `orphan` finalizer); the garbage collector deletes or
    /// releases its dependents, then removes the finalizer, and the object goes.
    pub async fn delete_with(
        &self,
        r: &ObjectRef,
        precondition: Option<i64>,
        propagation: Propagation,
    ) -> Result<Value> {
        if r.resource == &NAMESPACES && SYSTEM_NAMESPACES.contains(&r.name.as_str()) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                r.name
            )));
        }
        if let Some(finalizer) = propagation.finalizer() {
            if self.dry_run {
                return self.get(r).await;
            }
            for _ in 0..PATCH_RETRIES {
                let current = self.get(r).await?;
                if precondition.is_some_and(|want| revision_of(&current) != Some(want)) {
                    return Err(ApiError::Conflict {
                        resource: r.resource.group_resource(),
                        name: r.name.clone(),
                    });
                }
                let mut obj = current.clone();
                let finalizers = &mut obj["metadata"]["finalizers"];
                if !finalizers.is_array() {
                    *finalizers = json!([]);
                }
                if let Some(list) = finalizers.as_array_mut()
                    && !list.iter().any(|f| f == finalizer)
                {
                    list.push(json!(finalizer));
                }
                if !is_terminating(&obj) {
                    mark_deleted(r.resource, &mut obj);
                }
                if obj == current {
                    return Ok(current);
                }
                match self.store_update(r, revision_of(&current), &mut obj).await {
                    Err(ApiError::Conflict { .. }) => continue,
                    other => return other.map(|_| obj),
                }
            }
            return Err(ApiError::Conflict {
                resource: r.resource.group_resource(),
                name: r.name.clone(),
            });
        }
        if self.dry_run {
            return self.get(r).await;
        }
        // An object with finalizers is only marked for deletion; it goes when the last
        // finalizer is removed (see `put`). A Namespace's `kubernetes` finalizer is one: the
        // namespace controller deletes its content, then finalizes it.
        let current = self.get(r).await?;
        if precondition.is_some_and(|want| revision_of(&current) != Some(want)) {
            return Err(ApiError::Conflict {
                resource: r.resource.group_resource(),
                name: r.name.clone(),
            });
        }
        if is_held(r.resource, &current) {
            if is_terminating(&current) {
                return Ok(current);
            }
            let mut obj = current.clone();
            mark_deleted(r.resource, &mut obj);
            self.store_update(r, revision_of(&current), &mut obj)
                .await?;
            return Ok(obj);
        }
        if r.resource == &NAMESPACES {
            // A namespace without the `kubernetes` finalizer (made with `spec.finalizers: []`)
            // has no controller to empty it: its objects go with it, at once.
            for resource in Resource::stored().filter(|res| res.namespaced) {
                let (_, objects) = self.store.list(&resource.prefix(Some(&r.name))).await?;
                for obj in objects {
                    match self.store.delete(&obj.path, None).await {
                        Ok((_, last)) if resource == &SERVICES => {
                            if let Ok(svc) = self.decode(resource, &last) {
                                Taken::of(&svc).release(&self.store).await;
                            }
                        }
                        Ok(_) | Err(crate::datastore::Error::NotFound(_)) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        let (rev, last) = self
            .store
            .delete(&r.path(), precondition)
            .await
            .map_err(|e| ApiError::from_store(e, &r.resource.group_resource(), &r.name))?;
        if r.resource == &NODES {
            // A deleted node's name is free again, for a replacement board (as K3s does).
            if let Err(e) = crate::bootstrap::join::forget_node(&self.store, &r.name).await {
                tracing::warn!(node = %r.name, error = %e, "cannot forget the deleted node's password");
            }
        }
        let mut obj = self.decode(r.resource, &last)?;
        self.deleted(r, &obj).await;
        with_revision(&mut obj, rev);
        Ok(obj)
    }

    /// Stores `obj` over the object at `r` if it is still at `expected`, without validation
    /// (for the server's own metadata changes, such as marking a deletion).
    async fn store_update(
        &self,
        r: &ObjectRef,
        expected: Option<i64>,
        obj: &mut Value,
    ) -> Result<()> {
        let bytes = self.encode(r.resource, &r.path(), obj)?;
        let rev = self
            .store
            .update(&r.path(), expected, &bytes)
            .await
            .map_err(|e| ApiError::from_store(e, &r.resource.group_resource(), &r.name))?;
        with_revision(obj, rev);
        Ok(())
    }

    /// What goes with a deleted object: a Service's reservations.
    async fn deleted(&self, r: &ObjectRef, obj: &Value) {
        if r.resource == &SERVICES {
            Taken::of(obj).release(&self.store).await;
        }
    }

    /// Reserves the cluster IPs and node ports a new Service asks for, or allocates them, and
    /// writes them into it with its IP families (see [`allocator::Plan`]).
    async fn allocate_service(&self, r: &ObjectRef, obj: &mut Value) -> Result<Taken> {
        let owner = format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name);
        let kind = obj
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_owned();
        let mut taken = Taken::default();
        let result = async {
            if let Some(ranges) = &self.service_cidrs
                && kind != "ExternalName"
            {
                let plan = allocator::Plan::of(ranges, &obj["spec"]).map_err(|causes| {
                    ApiError::Invalid {
                        kind: "Service".into(),
                        name: r.name.clone(),
                        causes,
                    }
                })?;
                let mut ips = Vec::new();
                for (family, asked) in plan.families.iter().zip(&plan.asked) {
                    let Some(range) = ranges.of(*family).filter(|_| !plan.headless) else {
                        continue;
                    };
                    let ip = match asked {
                        Some(ip) => {
                            allocator::reserve_ip(&self.store, range, *ip, &owner).await?;
                            *ip
                        }
                        None => allocator::allocate_ip(&self.store, range, &owner).await?,
                    };
                    taken.ips.push(ip);
                    ips.push(ip.to_string());
                }
                if plan.headless {
                    ips.push("None".into());
                }
                let families: Vec<&str> = plan.families.iter().map(|f| f.name()).collect();
                obj["spec"]["clusterIP"] = json!(ips.first());
                obj["spec"]["clusterIPs"] = json!(ips);
                obj["spec"]["ipFamilies"] = json!(families);
                obj["spec"]["ipFamilyPolicy"] = json!(plan.policy);
            }
            if matches!(kind.as_str(), "NodePort" | "LoadBalancer")
                && let Some(Value::Array(ports)) = obj.pointer_mut("/spec/ports")
            {
                for p in ports.iter_mut() {
                    let port = match p.get("nodePort").and_then(Value::as_u64) {
                        Some(n) => {
                            let n = u16::try_from(n).unwrap_or(0);
                            allocator::reserve_node_port(&self.store, n, &owner).await?;
                            n
                        }
                        None => allocator::allocate_node_port(&self.store, &owner).await?,
                    };
                    taken.ports.push(port);
                    p["nodePort"] = json!(port);
                }
            }
            Ok::<_, ApiError>(())
        }
        .await;
        match result {
            Ok(()) => Ok(taken),
            Err(e) => {
                taken.release(&self.store).await;
                // An address or port refused is the Service's field error, as in Kubernetes.
                Err(match e {
                    ApiError::Unprocessable(cause) => ApiError::Invalid {
                        kind: "Service".into(),
                        name: r.name.clone(),
                        causes: vec![cause],
                    },
                    e => e,
                })
            }
        }
    }

    async fn put(
        &self,
        r: &ObjectRef,
        expected: Option<i64>,
        old: &Value,
        obj: &mut Value,
    ) -> Result<()> {
        validate(r.resource, &r.name, obj, Some(old))?;
        check_limits(r.resource, &r.name, obj)?;
        if is_terminating(obj) && !is_held(r.resource, obj) && !self.dry_run {
            // The last finalizer is gone: the deletion asked for earlier happens now.
            let (rev, _) = self
                .store
                .delete(&r.path(), expected)
                .await
                .map_err(|e| ApiError::from_store(e, &r.resource.group_resource(), &r.name))?;
            self.deleted(r, obj).await;
            with_revision(obj, rev);
            return Ok(());
        }
        let bytes = self.encode(r.resource, &r.path(), obj)?;
        if self.dry_run {
            // What a real write would have checked: the object's revision.
            if expected.is_some_and(|want| revision_of(old) != Some(want)) {
                return Err(ApiError::Conflict {
                    resource: r.resource.group_resource(),
                    name: r.name.clone(),
                });
            }
            return Ok(());
        }
        let rev = self
            .store
            .update(&r.path(), expected, &bytes)
            .await
            .map_err(|e| ApiError::from_store(e, &r.resource.group_resource(), &r.name))?;
        with_revision(obj, rev);
        Ok(())
    }

    /// Records that `holder` took the server lease `name` (a new epoch) as the `Lease`
    /// `kube-system/<name>`, creating it if missing. Written once per change of holder, never
    /// on renewal: `renewTime` is the acquisition time, and the renewals live only in the
    /// lease's datastore row ([`crate::datastore::leases`]). `transitions` fences the record:
    /// a late write for an older holder (fewer transitions) leaves a newer record alone.
    pub async fn record_lease(
        &self,
        name: &str,
        holder: &str,
        duration: Duration,
        transitions: i64,
    ) -> Result<Value> {
        let now = now_micro();
        let spec = json!({
            "holderIdentity": holder,
            "leaseDurationSeconds": whole_seconds(duration),
            "leaseTransitions": transitions,
            "acquireTime": now,
            "renewTime": now,
        });
        let created = self
            .create(
                &LEASES,
                Some(LEASE_NAMESPACE),
                json!({"metadata": {"name": name}, "spec": spec}),
            )
            .await;
        match created {
            Err(ApiError::AlreadyExists { .. }) => {}
            other => return other,
        }
        let r = ObjectRef {
            resource: &LEASES,
            namespace: Some(LEASE_NAMESPACE.into()),
            name: name.into(),
        };
        self.modify(&r, Part::Main, |lease| {
            let recorded = lease
                .pointer("/spec/leaseTransitions")
                .and_then(Value::as_i64);
            if recorded.is_none_or(|t| t <= transitions)
                && let Some(obj) = lease.as_object_mut()
            {
                obj.insert("spec".into(), spec.clone());
            }
        })
        .await
    }

    /// The `default/kubernetes` Service every cluster has, at the first address of the
    /// service range, for in-cluster clients (its endpoints come with the service networking).
    async fn ensure_kubernetes_service(&self) -> Result<()> {
        let Some(ranges) = &self.service_cidrs else {
            return Ok(());
        };
        let r = ObjectRef {
            resource: &SERVICES,
            namespace: Some("default".into()),
            name: "kubernetes".into(),
        };
        match self.get(&r).await {
            Ok(_) => return Ok(()),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let svc = json!({
            "metadata": {"name": "kubernetes", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {
                "clusterIP": ranges.primary.first().to_string(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                "sessionAffinity": "None",
            },
        });
        match self.create(&SERVICES, Some("default"), svc).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            // Another server made it at the same moment: its create took the address first, so
            // ours is refused as Invalid ("provided IP is already allocated") or Unprocessable
            // rather than AlreadyExists. Only the Service being there now makes that harmless.
            Err(e @ (ApiError::Invalid { .. } | ApiError::Unprocessable(_))) => {
                match self.get(&r).await {
                    Ok(_) => Ok(()),
                    Err(_) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// The `kube-system/kube-dns` Service, as K3s's CoreDNS manifest makes it: the cluster DNS
    /// address held in the Service range (so no other Service is given it) and shown where
    /// clients look for it. Every node answers on that address itself, so the Service has no
    /// selector and no endpoints, and nodes program no rules for it. With `cluster_dns` unset
    /// (`--disable coredns`) a Service this made earlier is deleted.
    pub async fn ensure_dns_service(&self, cluster_dns: Option<IpAddr>) -> Result<()> {
        let r = ObjectRef {
            resource: &SERVICES,
            namespace: Some("kube-system".into()),
            name: DNS_SERVICE.into(),
        };
        let current = match self.get(&r).await {
            Ok(svc) => Some(svc),
            Err(ApiError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        let ours = |svc: &Value| {
            svc.pointer("/metadata/labels")
                .and_then(|l| l.get(DNS_SERVICE_LABEL))
                .and_then(Value::as_str)
                == Some("true")
        };
        let Some(ip) = cluster_dns else {
            if let Some(svc) = current.filter(|svc| ours(svc)) {
                match self.delete(&r, revision_of(&svc)).await {
                    Ok(_) | Err(ApiError::NotFound { .. }) | Err(ApiError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            return Ok(());
        };
        if let Some(svc) = current {
            if svc.pointer("/spec/clusterIP").and_then(Value::as_str) != Some(&ip.to_string()) {
                tracing::warn!(
                    cluster_dns = %ip,
                    "kube-system/kube-dns has another cluster IP than --cluster-dns; pods query {ip}, which the nodes answer"
                );
            }
            return Ok(());
        }
        let svc = json!({
            "metadata": {"name": DNS_SERVICE, "labels": {
                "k8s-app": "kube-dns",
                "kubernetes.io/cluster-service": "true",
                "kubernetes.io/name": "KubeDNS",
                DNS_SERVICE_LABEL: "true",
            }},
            "spec": {
                "clusterIP": ip.to_string(),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
                "sessionAffinity": "None",
            },
        });
        match self.create(&SERVICES, Some("kube-system"), svc).await {
            // Another server made it at the same moment.
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e @ (ApiError::Invalid { .. } | ApiError::Unprocessable(_))) => {
                // The address is outside the Service range or another Service holds it: pods
                // still get the node's answers there, but say what is in the way.
                tracing::warn!(cluster_dns = %ip, reason = %e, "cannot reserve the cluster DNS address with the kube-system/kube-dns Service");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the namespaces every cluster has, if missing.
    pub async fn ensure_system_namespaces(&self) -> Result<()> {
        for ns in SYSTEM_NAMESPACES {
            match self
                .create(&NAMESPACES, None, json!({"metadata": {"name": ns}}))
                .await
            {
                Ok(_) => {}
                // Namespaces made before ServiceAccounts were served get theirs now.
                Err(ApiError::AlreadyExists { .. }) => {
                    self.ensure_default_service_account(ns).await?
                }
                Err(e) => return Err(e),
            }
        }
        self.ensure_kubernetes_service().await
    }
}

/// What a Service holds in the allocators.
#[derive(Default)]
struct Taken {
    ips: Vec<std::net::IpAddr>,
    ports: Vec<u16>,
}

impl Taken {
    /// What a stored Service holds: every address in `clusterIPs` (or the `clusterIP` of one
    /// stored before there were two).
    fn of(svc: &Value) -> Taken {
        let listed = svc.pointer("/spec/clusterIPs").and_then(Value::as_array);
        let ips = match listed {
            Some(list) => list.iter().filter_map(Value::as_str).collect(),
            None => svc
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .into_iter()
                .collect::<Vec<_>>(),
        };
        Taken {
            ips: ips.into_iter().filter_map(|ip| ip.parse().ok()).collect(),
            ports: svc
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p["nodePort"].as_u64())
                .filter_map(|n| u16::try_from(n).ok())
                .collect(),
        }
    }

    async fn release(&self, store: &Store) {
        if !self.ips.is_empty() || !self.ports.is_empty() {
            allocator::release(store, &self.ips, &self.ports).await;
        }
    }
}

/// One page of a list.
pub struct Page {
    pub revision: i64,
    pub items: Vec<Value>,
    /// Where the next page starts, for `metadata.continue`; `None` on the last page.
    pub continue_token: Option<String>,
}

/// `metadata.continue`: the revision the list began at and the path the next page starts at,
/// as base64url JSON (opaque to clients).
struct ContinueToken {
    rv: i64,
    start: String,
}

impl ContinueToken {
    fn encode(&self) -> String {
        use base64::Engine;
        let json = json!({"rv": self.rv, "start": self.start}).to_string();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    fn decode(token: &str) -> Result<ContinueToken> {
        use base64::Engine;
        let bad = || ApiError::BadRequest("the continue token is not valid".into());
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| bad())?;
        let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
        Ok(ContinueToken {
            rv: v["rv"].as_i64().ok_or_else(bad)?,
            start: v["start"].as_str().ok_or_else(bad)?.to_owned(),
        })
    }
}

/// A stored JSON object with its resourceVersion.
fn decode_json(resource: &Resource, path: &str, value: &[u8], revision: i64) -> Result<Value> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|e| {
        ApiError::Internal(format!(
            "stored {} at {path} is not JSON: {e}",
            resource.kind
        ))
    })?;
    with_revision(&mut obj, revision);
    Ok(obj)
}

/// Refuses an object that is too large or too deeply nested to store: every later read of it
/// (lists, watches, the controllers' caches) must be able to decode it.
fn check_limits(resource: &Resource, name: &str, obj: &Value) -> Result<()> {
    patch::check_limits(obj).map_err(|e| match e {
        patch::Error::TooLarge { limit } => ApiError::TooLarge(limit),
        other => invalid(resource, name, vec![other.to_string()]),
    })
}

/// The embedded schemas of `resource`'s group version, if it has any (a kind without them is
/// applied with every object granular and every list atomic).
fn schemas_of(resource: &Resource) -> Option<serde_json::Map<String, Value>> {
    let gv = openapi::group_version(resource)?;
    match openapi::schemas(gv) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "server-side apply without schemas");
            None
        }
    }
}

fn apply_error(e: apply::Error) -> ApiError {
    match e {
        apply::Error::Conflicts(ref conflicts) => ApiError::ApplyConflict {
            message: e.to_string(),
            causes: conflicts
                .iter()
                .map(|c| (c.field.clone(), c.to_string()))
                .collect(),
        },
        other => ApiError::Unprocessable(other.to_string()),
    }
}

/// A patch that cannot be applied: too large is 413, too deep or too many operations 422,
/// anything else a malformed patch (400).
fn patch_error(e: patch::Error) -> ApiError {
    match e {
        patch::Error::TooLarge { limit } => ApiError::TooLarge(limit),
        e @ (patch::Error::TooDeep { .. }
        | patch::Error::TooManyOperations { .. }
        | patch::Error::TooManyShifts { .. }) => ApiError::Unprocessable(e.to_string()),
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn encode(obj: &Value) -> Result<Vec<u8>> {
    let mut stored = obj.clone();
    if let Some(meta) = stored.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    serde_json::to_vec(&stored).map_err(|e| ApiError::Internal(e.to_string()))
}

fn with_revision(obj: &mut Value, rev: i64) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), json!(rev.to_string()));
    }
}

pub fn revision_of(obj: &impl AsJson) -> Option<i64> {
    obj.json()
        .pointer("/metadata/resourceVersion")
        .and_then(Json::as_str)
        .and_then(|s| s.parse().ok())
}

fn resource_version(obj: &Value) -> Result<Option<i64>> {
    match obj.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!(
                "metadata.resourceVersion {s:?} is not a valid resource version"
            ))
        }),
        Some(other) => Err(ApiError::BadRequest(format!(
            "metadata.resourceVersion must be a string, not {other}"
        ))),
    }
}

/// Carries over what the client may not change, per the part being written.
fn keep_managed_fields(current: &Value, obj: &mut Value) {
    match current.pointer("/metadata/managedFields") {
        Some(m) => obj["metadata"]["managedFields"] = m.clone(),
        None => {
            obj["metadata"]
                .as_object_mut()
                .map(|m| m.remove("managedFields"));
        }
    }
}

fn prepare_update(r: &ObjectRef, part: Part, current: &Value, mut obj: Value) -> Result<Value> {
    if !obj.is_object() {
        return Err(ApiError::BadRequest(format!(
            "the body must be a {} object",
            r.resource.kind
        )));
    }
    if r.resource == &NAMESPACES {
        // Only `finalize` changes a Namespace's `spec.finalizers`, and only them, as in
        // Kubernetes: an ordinary update cannot drop the finalizer its content is held by.
        let finalizers = match part {
            Part::Finalize => obj.pointer("/spec/finalizers").cloned(),
            Part::Main | Part::Status => current.pointer("/spec/finalizers").cloned(),
        };
        if part == Part::Finalize {
            obj = current.clone();
        }
        if !obj["spec"].is_object() {
            obj["spec"] = json!({});
        }
        match finalizers {
            Some(f) => obj["spec"]["finalizers"] = f,
            None => {
                obj["spec"].as_object_mut().map(|m| m.remove("finalizers"));
            }
        }
    } else if part == Part::Finalize {
        return Err(ApiError::MethodNotAllowed);
    }
    if r.resource.has_status {
        match part {
            Part::Main | Part::Finalize => match current.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    obj.as_object_mut().map(|m| m.remove("status"));
                }
            },
            Part::Status => {
                let status = obj.get("status").cloned();
                obj = current.clone();
                match status {
                    Some(s) => obj["status"] = s,
                    None => {
                        obj.as_object_mut().map(|m| m.remove("status"));
                    }
                }
            }
        }
    }
    set_type_meta(r.resource, &mut obj);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    // A body without managedFields (kubectl replace) keeps the object's, as does an empty
    // list; `[{}]` is how a client clears them.
    let sent = obj["metadata"].get("managedFields").cloned();
    match sent {
        None | Some(Value::Null) => keep_managed_fields(current, &mut obj),
        Some(Value::Array(list)) if list.is_empty() => keep_managed_fields(current, &mut obj),
        Some(Value::Array(list))
            if list
                .iter()
                .all(|e| e.as_object().is_some_and(|m| m.is_empty())) =>
        {
            obj["metadata"]
                .as_object_mut()
                .map(|m| m.remove("managedFields"));
        }
        Some(_) => {}
    }
    // Once an object is being deleted, no finalizer may be added to it.
    if is_terminating(current) {
        let before: Vec<&Value> = finalizers(current).collect();
        if let Some(added) = finalizers(&obj).find(|f| !before.contains(f)) {
            return Err(ApiError::Unprocessable(format!(
                "metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [{}]",
                added.as_str().unwrap_or_default()
            )));
        }
    }
    for field in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match current["metadata"].get(field) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                obj["metadata"].as_object_mut().map(|m| m.remove(field));
            }
        }
    }
    // Every body is defaulted, as the Kubernetes API server defaults every decoded object:
    // a replaced Pod without the defaulted fields is the same Pod, not a changed spec.
    if part == Part::Main {
        default(r.resource, &r.name, &mut obj);
    }
    if r.resource.strategy.has_generation() {
        // The server's count of spec changes: a client cannot set it.
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let changed = obj.get("spec") != current.get("spec");
        obj["metadata"]["generation"] = json!(generation.saturating_add(i64::from(changed)));
    }
    Ok(obj)
}

fn finalizers(obj: &Value) -> impl Iterator<Item = &Value> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn has_finalizers(obj: &Value) -> bool {
    finalizers(obj).next().is_some()
}

/// Whether a deletion of `obj` must wait: for its finalizers, and a Namespace also for those
/// in its `spec.finalizers`.
fn is_held(resource: &Resource, obj: &Value) -> bool {
    has_finalizers(obj)
        || (resource == &NAMESPACES
            && obj
                .pointer("/spec/finalizers")
                .and_then(Value::as_array)
                .is_some_and(|f| !f.is_empty()))
}

/// Marks `obj` for deletion; a Namespace turns `Terminating`, which refuses new content.
fn mark_deleted(resource: &Resource, obj: &mut Value) {
    obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
    obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
    if resource == &NAMESPACES {
        if !obj["status"].is_object() {
            obj["status"] = json!({});
        }
        obj["status"]["phase"] = json!("Terminating");
    }
}

/// Whether a deletion was asked for and waits for finalizers.
fn is_terminating(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
}

fn set_type_meta(resource: &Resource, obj: &mut Value) {
    obj["kind"] = json!(resource.kind);
    obj["apiVersion"] = json!(resource.api_version());
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
}

fn default(resource: &Resource, name: &str, obj: &mut Value) {
    resource.strategy.default(name, obj);
}

/// Rejects what Kubernetes would reject: the name by the kind's rule, labels, and the kind's
/// own field checks (and, with `old`, its immutable fields).
fn validate(resource: &Resource, name: &str, obj: &Value, old: Option<&Value>) -> Result<()> {
    let mut causes = Vec::new();
    let (name_ok, what) = match resource.strategy.name_rule() {
        NameRule::Subdomain => (labels::is_dns_subdomain(name), "RFC 1123 subdomain"),
        NameRule::Label => (labels::is_dns_label(name), "RFC 1123 label"),
        NameRule::Dns1035 => (
            labels::is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            "RFC 1035 label",
        ),
        NameRule::PathSegment => (true, "path segment"),
    };
    if resource.strategy.name_rule() == NameRule::PathSegment {
        if let Some(bad) = ["/", "%"].iter().find(|c| name.contains(**c)) {
            causes.push(format!(
                "metadata.name: Invalid value: {name:?}: may not contain '{bad}'"
            ));
        } else if name == "." || name == ".." {
            causes.push(format!(
                "metadata.name: Invalid value: {name:?}: may not be '{name}'"
            ));
        }
    } else if !name_ok {
        causes.push(format!(
            "metadata.name: Invalid value: {name:?}: a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.'"
        ));
    }
    match obj.pointer("/metadata/labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                let v = v.as_str().unwrap_or("\u{0}");
                if let Err(e) =
                    labels::validate_label_key(k).and_then(|_| labels::validate_label_value(v))
                {
                    causes.push(format!("metadata.labels: Invalid value: {e}"));
                }
            }
        }
        Some(_) => causes.push("metadata.labels: Invalid value: must be a map of strings".into()),
    }
    resource.strategy.validate(obj, &mut causes);
    match old {
        Some(old) => resource.strategy.validate_update(old, obj, &mut causes),
        None => resource.strategy.validate_create(obj, &mut causes),
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(invalid(resource, name, causes))
    }
}

/// A body naming another kind or version than the endpoint it was sent to is refused, as
/// the Kubernetes API server does (a Node posted to `/api/v1/namespaces` is not a namespace).
fn check_type_meta(resource: &Resource, obj: &Value) -> Result<()> {
    let field = |f: &str| obj.get(f).and_then(Value::as_str).filter(|v| !v.is_empty());
    if let Some(kind) = field("kind")
        && kind != resource.kind
    {
        return Err(ApiError::BadRequest(format!(
            "the kind {kind:?} of the body does not match the endpoint, which serves {:?}",
            resource.kind
        )));
    }
    if let Some(version) = field("apiVersion")
        && version != resource.api_version()
    {
        return Err(ApiError::BadRequest(format!(
            "the apiVersion {version:?} of the body does not match the endpoint, which serves {:?}",
            resource.api_version()
        )));
    }
    Ok(())
}

fn invalid(resource: &Resource, name: &str, causes: Vec<String>) -> ApiError {
    ApiError::Invalid {
        // `Lease.coordination.k8s.io`, as Kubernetes names a kind of a named group.
        kind: if resource.group.is_empty() {
            resource.kind.into()
        } else {
            format!("{}.{}", resource.kind, resource.group)
        },
        name: name.into(),
        causes,
    }
}

fn not_found(r: &ObjectRef) -> ApiError {
    ApiError::NotFound {
        resource: r.resource.group_resource(),
        name: r.name.clone(),
    }
}

/// A random RFC 4122 version-4 UUID.
/// Five characters from Kubernetes' alphabet for generated names (no vowels, no look-alikes).
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    b.iter()
        .map(|x| ALPHABET[*x as usize % ALPHABET.len()] as char)
        .collect()
}

pub(crate) fn new_uid() -> String {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("system random number generator failed");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Now, as Kubernetes writes timestamps (RFC 3339, seconds, UTC).
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now as a Kubernetes `MicroTime` (RFC 3339 with microseconds, UTC), as leases carry it.
pub fn now_micro() -> String {
    micro_time(time::OffsetDateTime::now_utc())
}

fn micro_time(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
        ))
        .unwrap_or_default()
}

/// A duration in whole seconds, rounded up, and at least one (`leaseDurationSeconds`).
fn whole_seconds(d: Duration) -> i64 {
    i64::try_from(d.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::resources::DEPLOYMENTS;
    use crate::datastore::{Endpoint, PoolConfig};

    async fn registry(dir: &tempfile::TempDir) -> Registry {
        let store = Store::open(
            &Endpoint::sqlite(dir.path().join("s.db")),
            &PoolConfig::default(),
        )
        .await
        .unwrap();
        let registry = Registry::new(store);
        registry.ensure_system_namespaces().await.unwrap();
        registry
    }

    fn lease_ref(name: &str) -> ObjectRef {
        ObjectRef {
            resource: &LEASES,
            namespace: Some(LEASE_NAMESPACE.into()),
            name: name.into(),
        }
    }

    #[tokio::test]
    async fn the_cluster_dns_address_is_held_by_kube_dns_and_given_to_no_other_service() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir)
            .await
            .with_service_cidrs(ServiceCidrs::parse("10.43.0.0/16").unwrap());
        let dns: IpAddr = "10.43.0.10".parse().unwrap();
        registry.ensure_dns_service(Some(dns)).await.unwrap();
        // Twice is the same (every server start does it).
        registry.ensure_dns_service(Some(dns)).await.unwrap();
        let r = ObjectRef {
            resource: &SERVICES,
            namespace: Some("kube-system".into()),
            name: DNS_SERVICE.into(),
        };
        let svc = registry.get(&r).await.unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.43.0.10");
        assert_eq!(svc["spec"]["ports"][0]["port"], 53);
        assert!(
            svc["spec"].get("selector").is_none(),
            "no endpoints: nodes answer"
        );
        let taken = registry
            .create(
                &SERVICES,
                Some("default"),
                json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}}),
            )
            .await;
        assert!(
            matches!(&taken, Err(ApiError::Invalid { causes, .. }) if causes[0].contains("already allocated")),
            "{taken:?}"
        );
        // `--disable coredns`: the Service keelson made goes, and its address is free again.
        registry.ensure_dns_service(None).await.unwrap();
        assert!(matches!(
            registry.get(&r).await,
            Err(ApiError::NotFound { .. })
        ));
        registry
            .create(
                &SERVICES,
                Some("default"),
                json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.43.0.10", "ports": [{"port": 80}]}}),
            )
            .await
            .unwrap();
    }

    #[test]
    fn micro_time_has_six_fraction_digits_in_utc() {
        let t = time::macros::datetime!(2026-11-26 21:15:02.928230 +01:00);
        assert_eq!(micro_time(t), "2026-11-26T20:15:02.928230Z");
        let t = time::macros::datetime!(2026-11-26 20:15:02 UTC);
        assert_eq!(micro_time(t), "2026-11-26T20:15:02.000000Z");
        assert_eq!(whole_seconds(Duration::from_millis(700)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
        assert_eq!(whole_seconds(Duration::from_millis(15_001)), 16);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[tokio::test]
    async fn a_recorded_lease_names_its_newest_holder_and_ignores_older_ones() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let first = registry
            .record_lease("keelson-controllers", "pi-1-7", Duration::from_secs(15), 0)
            .await
            .unwrap();
        assert_eq!(first["apiVersion"], "coordination.k8s.io/v1");
        assert_eq!(first["kind"], "Lease");
        assert_eq!(first["metadata"]["namespace"], "kube-system");
        assert_eq!(first["spec"]["holderIdentity"], "pi-1-7");
        assert_eq!(first["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(first["spec"]["leaseTransitions"], 0);
        assert_eq!(first["spec"]["acquireTime"], first["spec"]["renewTime"]);

        registry
            .record_lease("keelson-controllers", "pi-2-9", Duration::from_secs(15), 2)
            .await
            .unwrap();
        // A late write for the holder before it changes nothing.
        let late = registry
            .record_lease("keelson-controllers", "pi-1-7", Duration::from_secs(15), 1)
            .await
            .unwrap();
        assert_eq!(late["spec"]["holderIdentity"], "pi-2-9");
        let stored = registry
            .get(&lease_ref("keelson-controllers"))
            .await
            .unwrap();
        assert_eq!(stored["spec"]["holderIdentity"], "pi-2-9");
        assert_eq!(stored["spec"]["leaseTransitions"], 2);
        assert_eq!(stored["metadata"]["uid"], first["metadata"]["uid"]);
    }

    #[tokio::test]
    async fn new_claims_get_the_default_class_and_claims_and_volumes_their_protection() {
        use crate::apiserver::kinds::{persistentvolume, persistentvolumeclaim};
        use crate::apiserver::resources::PERSISTENTVOLUMES;
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let claim = |name: &str, class: Option<&str>| {
            let mut c = json!({
                "metadata": {"name": name},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                "status": {"phase": "Bound"},
            });
            if let Some(class) = class {
                c["spec"]["storageClassName"] = json!(class);
            }
            c
        };
        let create = |c: Value| registry.create(&PERSISTENTVOLUMECLAIMS, Some("default"), c);
        // No class at all: the claim names none.
        let first = create(claim("first", None)).await.unwrap();
        assert!(first["spec"].get("storageClassName").is_none(), "{first}");
        assert_eq!(
            first["metadata"]["finalizers"],
            json!([persistentvolumeclaim::PROTECTION_FINALIZER])
        );
        assert_eq!(first["status"], json!({"phase": "Pending"}));
        let class = |name: &str, default: bool| {
            json!({
                "metadata": {"name": name, "annotations": {storageclass::DEFAULT_CLASS_ANNOTATION: default.to_string()}},
                "provisioner": "rancher.io/local-path",
            })
        };
        registry
            .create(&STORAGECLASSES, None, class("slow", false))
            .await
            .unwrap();
        // Without a default class the claim still names none.
        let second = create(claim("second", None)).await.unwrap();
        assert!(second["spec"].get("storageClassName").is_none(), "{second}");
        registry
            .create(&STORAGECLASSES, None, class("local-path", true))
            .await
            .unwrap();
        let third = create(claim("third", None)).await.unwrap();
        assert_eq!(third["spec"]["storageClassName"], "local-path");
        // A claim that names a class, even none ("") or one that does not exist, keeps it.
        let none = create(claim("none", Some(""))).await.unwrap();
        assert_eq!(none["spec"]["storageClassName"], "");
        let missing = create(claim("missing", Some("gold"))).await.unwrap();
        assert_eq!(missing["spec"]["storageClassName"], "gold");
        // The binder may fill in the class of a claim made before there was a default one.
        let r = ObjectRef::namespaced(&PERSISTENTVOLUMECLAIMS, "default", "first");
        let mut bound = first.clone();
        bound["spec"]["storageClassName"] = json!("local-path");
        bound["spec"]["volumeName"] = json!("pvc-1");
        registry
            .update(&r, Part::Main, Writer::Trusted, bound)
            .await
            .unwrap();
        let mut resized = registry.get(&r).await.unwrap();
        resized["spec"]["resources"]["requests"]["storage"] = json!("2Gi");
        let refused = registry
            .update(&r, Part::Main, Writer::Trusted, resized)
            .await;
        assert!(
            matches!(&refused, Err(ApiError::Invalid { causes, .. }) if causes[0].starts_with("spec: Forbidden")),
            "{refused:?}"
        );

        let volume = json!({
            "metadata": {"name": "pv-1", "finalizers": [persistentvolume::PROTECTION_FINALIZER]},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"], "hostPath": {"path": "/srv/pv-1"}},
        });
        let volume = registry
            .create(&PERSISTENTVOLUMES, None, volume)
            .await
            .unwrap();
        assert_eq!(
            volume["metadata"]["finalizers"],
            json!([persistentvolume::PROTECTION_FINALIZER])
        );
        assert_eq!(volume["spec"]["persistentVolumeReclaimPolicy"], "Retain");
        assert_eq!(volume["status"]["phase"], "Pending");
    }

    #[tokio::test]
    async fn lease_specs_are_validated_and_errors_name_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let bad = registry
            .create(
                &LEASES,
                Some("default"),
                json!({"metadata": {"name": "x"}, "spec": {"leaseDurationSeconds": 0, "renewTime": "yesterday"}}),
            )
            .await;
        match bad {
            Err(ApiError::Invalid { kind, causes, .. }) => {
                assert_eq!(kind, "Lease.coordination.k8s.io");
                assert_eq!(causes.len(), 2, "{causes:?}");
            }
            other => panic!("expected Invalid, got {other:?}"),
        }
        let missing = registry.get(&lease_ref("nope")).await.unwrap_err();
        assert_eq!(
            missing.to_string(),
            "leases.coordination.k8s.io \"nope\" not found"
        );
    }

    #[tokio::test]
    async fn an_undecodable_object_is_left_out_of_lists_not_fatal_to_them() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        registry
            .create(&NODES, None, json!({"metadata": {"name": "pi-1"}}))
            .await
            .unwrap();
        // Deeper than the decoder reads, and not JSON at all: as a bug or a hand edit could
        // have left them.
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        let store = registry.store();
        store
            .create("/registry/nodes/deep", deep.as_bytes())
            .await
            .unwrap();
        store
            .create("/registry/nodes/garbage", b"{not json")
            .await
            .unwrap();
        let (_, nodes) = registry.list(&NODES, None).await.unwrap();
        let names: Vec<&str> = nodes
            .iter()
            .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
            .collect();
        assert_eq!(names, ["pi-1"]);
    }

    #[tokio::test]
    async fn pages_of_100_list_2500_objects_exactly_once_while_writes_go_on() {
        use super::super::resources::CONFIGMAPS;
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let store = registry.store().clone();
        let names: Vec<String> = (0..2500).map(|i| format!("cm-{i:05}")).collect();
        for name in &names {
            let obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"}});
            store
                .create(
                    &format!("/registry/configmaps/default/{name}"),
                    obj.to_string().as_bytes(),
                )
                .await
                .unwrap();
        }
        let mut seen = std::collections::HashMap::new();
        let mut token: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = registry
                .list_page(&CONFIGMAPS, Some("default"), 100, token.as_deref())
                .await
                .unwrap();
            pages += 1;
            assert!(page.items.len() <= 100);
            for obj in &page.items {
                let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
                *seen.entry(name).or_insert(0) += 1;
            }
            // Writes between pages: new objects before and after the cursor, an update, a
            // deletion of a new one.
            let fresh = format!("cm-{:05}-new", pages * 97 % 2500);
            registry
                .create(
                    &CONFIGMAPS,
                    Some("default"),
                    json!({"metadata": {"name": fresh}}),
                )
                .await
                .unwrap();
            let some = &names[(pages * 131) % 2500];
            registry
                .modify(
                    &ObjectRef {
                        resource: &CONFIGMAPS,
                        namespace: Some("default".into()),
                        name: some.clone(),
                    },
                    Part::Main,
                    |o| o["data"] = json!({"page": pages.to_string()}),
                )
                .await
                .unwrap();
            match page.continue_token {
                Some(t) => token = Some(t),
                None => break,
            }
        }
        for name in &names {
            assert_eq!(
                seen.get(name),
                Some(&1),
                "{name} seen {:?} times",
                seen.get(name)
            );
        }
        assert!((25..=27).contains(&pages), "{pages} pages");
        // A token is refused once its list's revision was compacted, and garbage is refused.
        let first = registry
            .list_page(&CONFIGMAPS, Some("default"), 10, None)
            .await
            .unwrap();
        let t = first.continue_token.unwrap();
        registry
            .create(
                &CONFIGMAPS,
                Some("default"),
                json!({"metadata": {"name": "later"}}),
            )
            .await
            .unwrap();
        store
            .compact(store.current_revision().await.unwrap())
            .await
            .unwrap();
        assert!(matches!(
            registry
                .list_page(&CONFIGMAPS, Some("default"), 10, Some(&t))
                .await,
            Err(ApiError::Gone { .. })
        ));
        assert!(matches!(
            registry
                .list_page(&CONFIGMAPS, Some("default"), 10, Some("junk"))
                .await,
            Err(ApiError::BadRequest(_))
        ));
    }

    #[tokio::test]
    async fn generation_counts_spec_changes_only() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let deployment = json!({"metadata": {"name": "web"}, "spec": {
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}});
        let created = registry
            .create(&DEPLOYMENTS, Some("default"), deployment)
            .await
            .unwrap();
        assert_eq!(created["metadata"]["generation"], 1);
        let r = ObjectRef {
            resource: &DEPLOYMENTS,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        let generation = |obj: &Value| obj["metadata"]["generation"].as_i64();
        let writes: [(Part, Value, i64); 4] = [
            // Labels and status leave it; a client's own value is ignored.
            (
                Part::Main,
                json!({"metadata": {"labels": {"a": "b"}, "generation": 7}}),
                1,
            ),
            (Part::Status, json!({"status": {"replicas": 1}}), 1),
            (Part::Main, json!({"spec": {"replicas": 3}}), 2),
            (Part::Main, json!({"spec": {"replicas": 3}}), 2),
        ];
        for (part, body, want) in writes {
            let out = registry
                .patch(&r, part, Writer::Trusted, patch::Kind::Merge, body.clone())
                .await
                .unwrap();
            assert_eq!(generation(&out), Some(want), "{body}");
        }
        // Kinds without a generation get none.
        let cm = registry
            .create(&LEASES, Some("default"), json!({"metadata": {"name": "l"}}))
            .await
            .unwrap();
        assert!(cm["metadata"].get("generation").is_none());
    }

    #[tokio::test]
    async fn a_deleted_namespace_terminates_refuses_content_and_goes_when_finalized() {
        let dir = tempfile::tempdir().unwrap();
        let registry = registry(&dir).await;
        let ns = ObjectRef::cluster(&NAMESPACES, "scratch");
        registry
            .create(
                &NAMESPACES,
                None,
                json!({"metadata": {"name": "scratch"}, "status": {"phase": "Terminating"}}),
            )
            .await
            .unwrap();
        assert_eq!(
            registry.get(&ns).await.unwrap()["status"]["phase"],
            "Active"
        );
        registry
            .create(&LEASES, Some("scratch"), json!({"metadata": {"name": "l"}}))
            .await
            .unwrap();
        let marked = registry.delete(&ns, None).await.unwrap();
        assert_eq!(marked["status"]["phase"], "Terminating");
        assert!(is_terminating(&marked));
        // The content stays for the namespace controller; nothing new may join it.
        let (_, left) = registry.list(&LEASES, Some("scratch")).await.unwrap();
        assert_eq!(left.len(), 1);
        let refused = registry
            .create(&LEASES, Some("scratch"), json!({"metadata": {"name": "m"}}))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), 403);
        assert_eq!(
            refused.to_string(),
            "leases.coordination.k8s.io \"m\" is forbidden: unable to create new content in namespace scratch because it is being terminated"
        );
        assert_eq!(
            refused.to_status()["details"]["causes"][0]["reason"],
            "NamespaceTerminating"
        );
        // An ordinary update cannot drop the finalizer, nor revive the namespace.
        let updated = registry
            .modify(&ns, Part::Main, |n| {
                n["spec"]["finalizers"] = json!([]);
                n["metadata"]["labels"]["x"] = json!("y");
            })
            .await
            .unwrap();
        assert_eq!(updated["spec"]["finalizers"], json!(["kubernetes"]));
        assert_eq!(updated["status"]["phase"], "Terminating");
        // `finalize` changes only the finalizers; emptied, the namespace goes.
        registry
            .modify(&ns, Part::Finalize, |n| {
                n["spec"]["finalizers"] = json!([]);
                n["metadata"]["labels"]["x"] = json!("z");
            })
            .await
            .unwrap();
        assert!(matches!(
            registry.get(&ns).await,
            Err(ApiError::NotFound { .. })
        ));
        // The system namespaces stay, however they are deleted.
        for propagation in [Propagation::Background, Propagation::Foreground] {
            let kube_system = ObjectRef::cluster(&NAMESPACES, "kube-system");
            assert_eq!(
                registry
                    .delete_with(&kube_system, None, propagation)
                    .await
                    .unwrap_err()
                    .code(),
                403
            );
        }
    }
}
