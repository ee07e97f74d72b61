//! The names storage is agreed on between the servers' controllers and the nodes: the
//! built-in provisioner's, the annotations each side writes and the finalizer the node holding
//! a local volume removes. One place, so the two sides cannot drift apart.

/// The built-in local-path provisioner (K3s's name, so K3s manifests carry over).
pub const LOCAL_PATH_PROVISIONER: &str = "rancher.io/local-path";
/// Names the provisioner that made a PersistentVolume.
pub const PROVISIONED_BY: &str = "pv.kubernetes.io/provisioned-by";
/// On a Node: where (and that) it keeps local-path volumes; the node reports it.
pub const LOCAL_STORAGE_ANNOTATION: &str = "keelson.io/local-storage-path";
/// On a local-path PersistentVolume: the node removes it once the directory is gone.
pub const CLEANUP_FINALIZER: &str = "keelson.io/local-volume-cleanup";
/// On a delayed-binding claim: the node the scheduler picked for its first pod.
pub const SELECTED_NODE: &str = "volume.kubernetes.io/selected-node";
