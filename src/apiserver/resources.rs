//! The Kubernetes resources keelson serves, and typed references to their objects.
//!
//! A [`GroupVersion`] lists the resources served under one API path (`/api/v1`, or
//! `/apis/<group>/<version>`); a [`Resource`] describes one kind for discovery, routing and
//! storage; an [`ObjectRef`] names one object and knows its datastore path. Nothing here
//! touches the datastore. Invariant: plurals are unique across the stored resources, so a
//! datastore path (`/registry/<plural>/…`) names its resource without the group. A view
//! (`stored_as`: events.k8s.io's `events`) serves another resource's stored objects in its
//! own group's form; it shares that resource's plural and paths, and its strategy converts.

use std::fmt;

use super::kinds::{self, Strategy};

pub struct Resource {
    /// The API group; empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub has_status: bool,
    /// Whether `<plural>/<name>/scale` serves an `autoscaling/v1 Scale` of `spec.replicas`.
    pub has_scale: bool,
    /// Groupings `kubectl get <category>` expands (`all`).
    pub categories: &'static [&'static str],
    /// Defaults, validation and `kubectl get` columns of the kind.
    pub strategy: &'static dyn Strategy,
    /// `Some` for a view of another resource's stored objects: reads and writes go to that
    /// resource's paths, converted by this resource's strategy (`to_stored`,
    /// `to_served`). Invariant: the stored resource has the same plural and is no view.
    pub stored_as: Option<&'static Resource>,
}

// A resource is identified by its group and plural (unique across groups, see the test).
impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.group == other.group && self.plural == other.plural
    }
}

impl Eq for Resource {}

impl fmt::Debug for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Resource({})", self.group_resource())
    }
}

/// One group and version, and the resources served under its path.
#[derive(Debug, PartialEq, Eq)]
pub struct GroupVersion {
    /// Empty for the core group (served under `/api`).
    pub group: &'static str,
    pub version: &'static str,
    pub resources: &'static [&'static Resource],
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

pub static NODES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    has_status: true,
    has_scale: false,
    categories: &[],
    strategy: &kinds::node::Nodes,
    stored_as: None,
};

pub static NAMESPACES: Resource = Resource {
    group: "",
    version: "v1",
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    has_status: true,
    has_scale: false,
    categories: &[],
    strategy: &kinds::namespace::Namespaces,
    stored_as: None,
};

pub static PODS: Resource = Resource {
    group: "",
    version: "v1",
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    has_status: true,
    has_scale: false,
    categories: &["all"],
    strategy: &kinds::pod::Pods,
    stored_as: None,
};

/// `coordination.k8s.io/v1` leases: the servers' leader elections are recorded here (see
/// [`crate::controllers::lease`]).
pub static LEASES: Resource = Resource {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    singular: "lease",
    kind: "Lease",
    namespaced: true,
    short_names: &[],
    has_status: false,
    has_scale: false,
    categories: &[],
    strategy: &kinds::lease::Leases,
    stored_as: None,
};

/// A v1 kind: namespaced, with no short names, status, scale or categories unless the row
/// says otherwise (`Resource { short_names: …, ..kind(…) }`).
const fn kind(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
    strategy: &'static dyn Strategy,
) -> Resource {
    Resource {
        group,
        version: "v1",
        plural,
        singular,
        kind,
        namespaced: true,
        short_names: &[],
        has_status: false,
        has_scale: false,
        categories: &[],
        strategy,
        stored_as: None,
    }
}

/// A workload kind: a status subresource, `scale` unless the row says otherwise, and the
/// `all` category.
const fn workload(
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind_name: &'static str,
    strategy: &'static dyn Strategy,
) -> Resource {
    Resource {
        has_status: true,
        has_scale: true,
        categories: &["all"],
        ..kind(group, plural, singular, kind_name, strategy)
    }
}

pub static CONFIGMAPS: Resource = Resource {
    short_names: &["cm"],
    ..kind(
        "",
        "configmaps",
        "configmap",
        "ConfigMap",
        &kinds::configmap::ConfigMaps,
    )
};

pub static SECRETS: Resource = kind("", "secrets", "secret", "Secret", &kinds::secret::Secrets);

pub static SERVICEACCOUNTS: Resource = Resource {
    short_names: &["sa"],
    ..kind(
        "",
        "serviceaccounts",
        "serviceaccount",
        "ServiceAccount",
        &kinds::serviceaccount::ServiceAccounts,
    )
};

pub static SERVICES: Resource = Resource {
    short_names: &["svc"],
    has_status: true,
    categories: &["all"],
    ..kind(
        "",
        "services",
        "service",
        "Service",
        &kinds::service::Services,
    )
};

pub static ENDPOINTS: Resource = Resource {
    short_names: &["ep"],
    ..kind(
        "",
        "endpoints",
        "endpoints",
        "Endpoints",
        &kinds::endpoints::EndpointsKind,
    )
};

pub static EVENTS: Resource = Resource {
    short_names: &["ev"],
    ..kind("", "events", "event", "Event", &kinds::event::Events)
};

/// Cluster-wide storage: a volume is bound to at most one claim (its `spec.claimRef`).
pub static PERSISTENTVOLUMES: Resource = Resource {
    namespaced: false,
    short_names: &["pv"],
    has_status: true,
    ..kind(
        "",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        &kinds::persistentvolume::PersistentVolumes,
    )
};

/// A request for storage, bound to a PersistentVolume (its `spec.volumeName`).
pub static PERSISTENTVOLUMECLAIMS: Resource = Resource {
    short_names: &["pvc"],
    has_status: true,
    ..kind(
        "",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        &kinds::persistentvolumeclaim::PersistentVolumeClaims,
    )
};

/// The core group, in discovery order.
pub static CORE_V1: GroupVersion = GroupVersion {
    group: "",
    version: "v1",
    resources: &[
        &CONFIGMAPS,
        &ENDPOINTS,
        &EVENTS,
        &NAMESPACES,
        &NODES,
        &PERSISTENTVOLUMECLAIMS,
        &PERSISTENTVOLUMES,
        &PODS,
        &REPLICATIONCONTROLLERS,
        &SECRETS,
        &SERVICEACCOUNTS,
        &SERVICES,
    ],
};

/// ReplicationControllers: a workload kind served in the core group.
pub static REPLICATIONCONTROLLERS: Resource = Resource {
    short_names: &["rc"],
    ..workload(
        "",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        &kinds::replicationcontroller::ReplicationControllers,
    )
};

pub static DEPLOYMENTS: Resource = Resource {
    short_names: &["deploy"],
    ..workload(
        "apps",
        "deployments",
        "deployment",
        "Deployment",
        &kinds::deployment::Deployments,
    )
};

pub static REPLICASETS: Resource = Resource {
    short_names: &["rs"],
    ..workload(
        "apps",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        &kinds::replicaset::ReplicaSets,
    )
};

pub static DAEMONSETS: Resource = Resource {
    short_names: &["ds"],
    has_scale: false,
    ..workload(
        "apps",
        "daemonsets",
        "daemonset",
        "DaemonSet",
        &kinds::daemonset::DaemonSets,
    )
};

pub static STATEFULSETS: Resource = Resource {
    short_names: &["sts"],
    ..workload(
        "apps",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        &kinds::statefulset::StatefulSets,
    )
};

/// Stored snapshots of DaemonSet and StatefulSet templates: no status, not in `all`.
pub static CONTROLLERREVISIONS: Resource = kind(
    "apps",
    "controllerrevisions",
    "controllerrevision",
    "ControllerRevision",
    &kinds::controllerrevision::ControllerRevisions,
);

pub static JOBS: Resource = Resource {
    has_scale: false,
    ..workload("batch", "jobs", "job", "Job", &kinds::job::Jobs)
};

pub static CRONJOBS: Resource = Resource {
    short_names: &["cj"],
    has_scale: false,
    ..workload(
        "batch",
        "cronjobs",
        "cronjob",
        "CronJob",
        &kinds::cronjob::CronJobs,
    )
};

pub static COORDINATION_V1: GroupVersion = GroupVersion {
    group: "coordination.k8s.io",
    version: "v1",
    resources: &[&LEASES],
};

const RBAC: &str = "rbac.authorization.k8s.io";

pub static ROLES: Resource = kind(
    RBAC,
    "roles",
    "role",
    "Role",
    &kinds::rbac::Roles { cluster: false },
);

pub static ROLEBINDINGS: Resource = kind(
    RBAC,
    "rolebindings",
    "rolebinding",
    "RoleBinding",
    &kinds::rbac::Bindings { cluster: false },
);

pub static CLUSTERROLES: Resource = Resource {
    namespaced: false,
    ..kind(
        RBAC,
        "clusterroles",
        "clusterrole",
        "ClusterRole",
        &kinds::rbac::Roles { cluster: true },
    )
};

pub static CLUSTERROLEBINDINGS: Resource = Resource {
    namespaced: false,
    ..kind(
        RBAC,
        "clusterrolebindings",
        "clusterrolebinding",
        "ClusterRoleBinding",
        &kinds::rbac::Bindings { cluster: true },
    )
};

pub static RBAC_V1: GroupVersion = GroupVersion {
    group: RBAC,
    version: "v1",
    resources: &[&CLUSTERROLEBINDINGS, &CLUSTERROLES, &ROLEBINDINGS, &ROLES],
};

pub static PODDISRUPTIONBUDGETS: Resource = Resource {
    short_names: &["pdb"],
    has_status: true,
    ..kind(
        "policy",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        &kinds::poddisruptionbudget::PodDisruptionBudgets,
    )
};

/// `events.k8s.io/v1` events: the core Events, in the newer API's field names (`note`,
/// `regarding`, `reportingController`, …) and with its stricter checks on create.
pub static EVENTS_V1: Resource = Resource {
    short_names: &["ev"],
    stored_as: Some(&EVENTS),
    ..kind(
        "events.k8s.io",
        "events",
        "event",
        "Event",
        &kinds::events_v1::EventsV1,
    )
};

pub static EVENTS_K8S_IO_V1: GroupVersion = GroupVersion {
    group: "events.k8s.io",
    version: "v1",
    resources: &[&EVENTS_V1],
};

pub static POLICY_V1: GroupVersion = GroupVersion {
    group: "policy",
    version: "v1",
    resources: &[&PODDISRUPTIONBUDGETS],
};

pub static ENDPOINTSLICES: Resource = kind(
    "discovery.k8s.io",
    "endpointslices",
    "endpointslice",
    "EndpointSlice",
    &kinds::endpointslice::EndpointSlices,
);

pub static DISCOVERY_V1: GroupVersion = GroupVersion {
    group: "discovery.k8s.io",
    version: "v1",
    resources: &[&ENDPOINTSLICES],
};

/// How volumes are provisioned: `provisioner`, `reclaimPolicy`, `volumeBindingMode`.
pub static STORAGECLASSES: Resource = Resource {
    namespaced: false,
    short_names: &["sc"],
    ..kind(
        "storage.k8s.io",
        "storageclasses",
        "storageclass",
        "StorageClass",
        &kinds::storageclass::StorageClasses,
    )
};

pub static STORAGE_V1: GroupVersion = GroupVersion {
    group: "storage.k8s.io",
    version: "v1",
    resources: &[&STORAGECLASSES],
};

pub static APPS_V1: GroupVersion = GroupVersion {
    group: "apps",
    version: "v1",
    resources: &[
        &CONTROLLERREVISIONS,
        &DAEMONSETS,
        &DEPLOYMENTS,
        &REPLICASETS,
        &STATEFULSETS,
    ],
};

pub static BATCH_V1: GroupVersion = GroupVersion {
    group: "batch",
    version: "v1",
    resources: &[&CRONJOBS, &JOBS],
};

/// The named groups served under `/apis`, in discovery order (one version each).
pub static GROUPS: [&GroupVersion; 8] = [
    &APPS_V1,
    &BATCH_V1,
    &COORDINATION_V1,
    &RBAC_V1,
    &POLICY_V1,
    &DISCOVERY_V1,
    &EVENTS_K8S_IO_V1,
    &STORAGE_V1,
];

/// The namespaces every cluster has; they cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

// === impl GroupVersion ===

impl GroupVersion {
    /// The named group served at `/apis/<group>/<version>`.
    pub fn named(group: &str, version: &str) -> Option<&'static GroupVersion> {
        GROUPS
            .iter()
            .copied()
            .find(|gv| gv.group == group && gv.version == version)
    }

    /// The named group served at `/apis/<group>`.
    pub fn by_group(group: &str) -> Option<&'static GroupVersion> {
        GROUPS.iter().copied().find(|gv| gv.group == group)
    }

    /// `v1` for the core group, `<group>/<version>` otherwise (an object's `apiVersion`).
    pub fn api_version(&self) -> String {
        api_version(self.group, self.version)
    }

    pub fn resource(&self, plural: &str) -> Option<&'static Resource> {
        self.resources.iter().copied().find(|r| r.plural == plural)
    }
}

// === impl Resource ===

impl Resource {
    /// Every served resource, core first.
    pub fn all() -> impl Iterator<Item = &'static Resource> {
        std::iter::once(&CORE_V1)
            .chain(GROUPS)
            .flat_map(|gv| gv.resources.iter().copied())
    }

    /// Every resource whose objects are stored under its own paths (no views).
    pub fn stored() -> impl Iterator<Item = &'static Resource> {
        Resource::all().filter(|r| r.stored_as.is_none())
    }

    /// The resource stored under `/registry/<plural>/` (plurals are unique among them).
    pub fn by_plural(plural: &str) -> Option<&'static Resource> {
        Resource::stored().find(|r| r.plural == plural)
    }

    /// The resource whose paths hold this one's objects: itself, or the one it is a view of.
    pub fn storage(&'static self) -> &'static Resource {
        self.stored_as.unwrap_or(self)
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &VERBS
    }

    /// The objects' `apiVersion`: `v1` or `coordination.k8s.io/v1`.
    pub fn api_version(&self) -> String {
        api_version(self.group, self.version)
    }

    /// The name Kubernetes uses in messages: `pods`, `leases.coordination.k8s.io`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The datastore prefix of all objects of this resource, or of one namespace's.
    pub fn prefix(&'static self, namespace: Option<&str>) -> String {
        let plural = self.storage().plural;
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{plural}/{ns}/"),
            _ => format!("/registry/{plural}/"),
        }
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

/// A typed reference to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub resource: &'static Resource,
    /// Invariant: `Some` exactly when the resource is namespaced.
    pub namespace: Option<String>,
    pub name: String,
}

// === impl ObjectRef ===

impl ObjectRef {
    pub fn cluster(resource: &'static Resource, name: &str) -> ObjectRef {
        ObjectRef {
            resource,
            namespace: None,
            name: name.to_owned(),
        }
    }

    pub fn namespaced(resource: &'static Resource, namespace: &str, name: &str) -> ObjectRef {
        ObjectRef {
            resource,
            namespace: Some(namespace.to_owned()),
            name: name.to_owned(),
        }
    }

    pub fn path(&self) -> String {
        format!(
            "{}{}",
            self.resource.prefix(self.namespace.as_deref()),
            self.name
        )
    }

    /// Parses a datastore path back into a reference.
    pub fn from_path(path: &str) -> Option<ObjectRef> {
        let rest = path.strip_prefix("/registry/")?;
        let (plural, rest) = rest.split_once('/')?;
        let resource = Resource::by_plural(plural)?;
        if resource.namespaced {
            let (ns, name) = rest.split_once('/')?;
            Some(ObjectRef {
                resource,
                namespace: Some(ns.into()),
                name: name.into(),
            })
        } else {
            Some(ObjectRef {
                resource,
                namespace: None,
                name: rest.into(),
            })
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{ns}/{}", self.resource.plural, self.name),
            None => write!(f, "{}/{}", self.resource.plural, self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        let r = ObjectRef {
            resource: &PODS,
            namespace: Some("default".into()),
            name: "web".into(),
        };
        assert_eq!(r.path(), "/registry/pods/default/web");
        assert_eq!(ObjectRef::from_path(&r.path()), Some(r));
        let n = ObjectRef::cluster(&NODES, "pi-1");
        assert_eq!(ObjectRef::from_path(&n.path()), Some(n));
        let l = ObjectRef {
            resource: &LEASES,
            namespace: Some("kube-system".into()),
            name: "keelson-controllers".into(),
        };
        assert_eq!(l.path(), "/registry/leases/kube-system/keelson-controllers");
        assert_eq!(ObjectRef::from_path(&l.path()), Some(l));
    }

    #[test]
    fn plurals_are_unique_across_stored_resources() {
        let mut plurals: Vec<&str> = Resource::stored().map(|r| r.plural).collect();
        let n = plurals.len();
        plurals.sort();
        plurals.dedup();
        assert_eq!(plurals.len(), n, "{plurals:?}");
    }

    #[test]
    fn a_view_shares_its_stored_resources_paths() {
        for view in Resource::all().filter(|r| r.stored_as.is_some()) {
            let stored = view.storage();
            assert!(stored.stored_as.is_none(), "{view:?} is a view of a view");
            assert_eq!(
                (view.plural, view.namespaced),
                (stored.plural, stored.namespaced)
            );
        }
        let r = ObjectRef {
            resource: &EVENTS_V1,
            namespace: Some("default".into()),
            name: "boot".into(),
        };
        assert_eq!(r.path(), "/registry/events/default/boot");
        // A datastore path names the stored resource, never the view.
        assert_eq!(
            ObjectRef::from_path(&r.path()).map(|r| r.resource),
            Some(&EVENTS)
        );
        assert_eq!(EVENTS_V1.group_resource(), "events.events.k8s.io");
    }

    #[test]
    fn each_resource_is_listed_under_its_own_group_version() {
        for gv in std::iter::once(&CORE_V1).chain(GROUPS) {
            for r in gv.resources {
                assert_eq!((r.group, r.version), (gv.group, gv.version), "{}", r.plural);
            }
        }
        assert_eq!(LEASES.api_version(), "coordination.k8s.io/v1");
        assert_eq!(PODS.api_version(), "v1");
        assert_eq!(LEASES.group_resource(), "leases.coordination.k8s.io");
        assert_eq!(
            GroupVersion::named("coordination.k8s.io", "v1").and_then(|gv| gv.resource("leases")),
            Some(&LEASES)
        );
        assert_eq!(GroupVersion::named("coordination.k8s.io", "v2"), None);
        assert_eq!(CORE_V1.resource("leases"), None);
        assert_eq!(DEPLOYMENTS.api_version(), "apps/v1");
        assert_eq!(CRONJOBS.group_resource(), "cronjobs.batch");
        assert_eq!(APPS_V1.resource("jobs"), None);
        // Only the kinds with replicas have a scale subresource.
        let scaled: Vec<&str> = Resource::all()
            .filter(|r| r.has_scale)
            .map(|r| r.plural)
            .collect();
        assert_eq!(
            scaled,
            [
                "replicationcontrollers",
                "deployments",
                "replicasets",
                "statefulsets"
            ]
        );
    }
}
