//! The Kubernetes resources keelson serves, and typed references to their objects.
//!
//! A [`Resource`] describes one kind for discovery, routing and storage; an [`ObjectRef`]
//! names one object and knows its datastore path. Nothing here touches the datastore.

use std::fmt;

/// How a resource is shown as a `meta.k8s.io/v1 Table`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Printer {
    Node,
    Namespace,
    Pod,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub has_status: bool,
    pub printer: Printer,
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
    plural: "nodes",
    singular: "node",
    kind: "Node",
    namespaced: false,
    short_names: &["no"],
    has_status: true,
    printer: Printer::Node,
};

pub static NAMESPACES: Resource = Resource {
    plural: "namespaces",
    singular: "namespace",
    kind: "Namespace",
    namespaced: false,
    short_names: &["ns"],
    has_status: true,
    printer: Printer::Namespace,
};

pub static PODS: Resource = Resource {
    plural: "pods",
    singular: "pod",
    kind: "Pod",
    namespaced: true,
    short_names: &["po"],
    has_status: true,
    printer: Printer::Pod,
};

/// Every resource of the core `v1` group, in discovery order.
pub static CORE_V1: [&Resource; 3] = [&NAMESPACES, &NODES, &PODS];

/// The namespaces every cluster has; they cannot be deleted.
pub const SYSTEM_NAMESPACES: [&str; 4] =
    ["default", "kube-system", "kube-public", "kube-node-lease"];

impl Resource {
    pub fn by_plural(plural: &str) -> Option<&'static Resource> {
        CORE_V1.iter().copied().find(|r| r.plural == plural)
    }

    pub fn verbs(&self) -> &'static [&'static str] {
        &VERBS
    }

    /// The datastore prefix of all objects of this resource, or of one namespace's.
    pub fn prefix(&'static self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("/registry/{}/{ns}/", self.plural),
            _ => format!("/registry/{}/", self.plural),
        }
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

impl ObjectRef {
    pub fn cluster(resource: &'static Resource, name: &str) -> ObjectRef {
        ObjectRef {
            resource,
            namespace: None,
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
    }
}
