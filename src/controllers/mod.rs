//! Controllers that must run on exactly one server at a time: the holder of a database lease.
//!
//! [`lease`] elects the holder and fences it; the rest run under it, on the shared runtime
//! ([`crate::runtime`]): [`node_lifecycle`] marks silent nodes, [`node_ipam`] gives nodes
//! their pod CIDRs, [`scheduler`] places pods,
//! [`taint_eviction`] moves them off nodes whose NoExecute taints they do not tolerate,
//! [`replicaset`] keeps pods of a template (for ReplicaSets and ReplicationControllers), [`deployment`] rolls templates out through
//! ReplicaSets, [`daemonset`] runs a pod on every eligible node, [`statefulset`] keeps pods
//! with stable names in order, [`job`] runs pods to completion, [`cronjob`] starts Jobs on a
//! cron schedule ([`crate::api::cron`]), [`endpoints`] lists the pods behind each Service, [`disruption`] keeps
//! disruption budgets' allowances, [`garbage_collector`] deletes what lost its owners,
//! [`namespace`] empties deleted namespaces before they go, [`clusterrole_aggregation`]
//! fills aggregated ClusterRoles, [`root_ca_publisher`] puts the CA in every namespace,
//! [`events`] records what they did, [`apiserver_endpoints`] lists the live servers behind
//! the `default/kubernetes` Service, [`service_lb`] gives LoadBalancer Services their
//! addresses, [`persistentvolume`] binds claims to volumes and provisions local-path ones,
//! and [`volume_protection`] keeps claims and volumes in use from going. [`owner`] holds
//! what they share about objects.

pub mod apiserver_endpoints;
pub mod clusterrole_aggregation;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod disruption;
pub mod endpoints;
pub mod events;
pub mod garbage_collector;
pub mod job;
pub mod lease;
pub mod namespace;
pub mod node_ipam;
pub mod node_lifecycle;
pub mod owner;
pub mod persistentvolume;
pub mod pod_phases;
pub mod replicaset;
pub mod root_ca_publisher;
pub mod scheduler;
pub mod service_lb;
pub mod statefulset;
pub mod taint_eviction;
pub mod volume_protection;

use std::time::Duration;

use crate::apiserver::resources::{NODES, PODS, Resource};
use crate::runtime::controller::{self, Starter};

/// What the controllers are given by the server that runs them.
pub struct Settings {
    /// `--node-monitor-grace-period`.
    pub grace: Duration,
    /// `--event-ttl`.
    pub event_ttl: Duration,
    pub pod_network: node_ipam::PodNetwork,
    /// The live servers, the `kubernetes` Service's endpoints.
    pub servers: tokio::sync::watch::Receiver<Vec<String>>,
    pub lb_pools: service_lb::Pools,
    /// The cluster CA, published in every namespace.
    pub ca_pem: String,
    /// Whether the local-path provisioner runs.
    pub local_path: bool,
    /// Where the pod counts for `/metrics` go.
    pub pod_phases: std::sync::Arc<pod_phases::PodPhases>,
}

/// What runs under the controllers lease: the kinds their cache holds, and what starts them
/// once it is synced.
pub fn under_lease(settings: Settings) -> (Vec<&'static Resource>, Starter) {
    let Settings {
        grace,
        event_ttl,
        pod_network,
        servers,
        lb_pools,
        ca_pem,
        local_path,
        pod_phases,
    } = settings;
    let mut kinds: Vec<&'static Resource> = vec![&NODES, &PODS];
    kinds.extend(node_ipam::NodeIpam::KINDS);
    kinds.extend(replicaset::ReplicaSets::KINDS);
    kinds.extend(deployment::Deployments::KINDS);
    kinds.extend(daemonset::DaemonSets::KINDS);
    kinds.extend(job::Jobs::KINDS);
    kinds.extend(statefulset::StatefulSets::KINDS);
    kinds.extend(endpoints::Endpoints::KINDS);
    kinds.extend(disruption::Disruption::KINDS);
    kinds.extend(taint_eviction::TaintEviction::KINDS);
    kinds.extend(cronjob::CronJobs::KINDS);
    kinds.extend(apiserver_endpoints::ApiserverEndpoints::KINDS);
    kinds.extend(namespace::Namespaces::KINDS);
    kinds.extend(service_lb::ServiceLb::KINDS);
    kinds.extend(clusterrole_aggregation::ClusterRoleAggregation::KINDS);
    kinds.extend(root_ca_publisher::RootCaPublisher::KINDS);
    kinds.extend(persistentvolume::PersistentVolumes::KINDS);
    kinds.extend(volume_protection::VolumeProtection::KINDS);
    kinds.sort_by_key(|r| r.plural);
    kinds.dedup_by_key(|r| r.plural);
    let starter: Starter = Box::new(move |ctx, set| {
        let recorder = |component| events::Recorder::new(ctx.registry.clone(), component);
        set.spawn(node_lifecycle::NodeLifecycle { grace }.run(ctx.clone()));
        set.spawn(events::Expiry { ttl: event_ttl }.run(ctx.clone()));
        set.spawn(pod_phases.clone().run(ctx.clone()));
        set.spawn(controller::run(
            node_ipam::NodeIpam::new(pod_network.clone(), recorder(node_ipam::COMPONENT)),
            ctx.clone(),
        ));
        set.spawn(
            scheduler::Scheduler {
                events: recorder("default-scheduler"),
            }
            .run(ctx.clone()),
        );
        set.spawn(controller::run(
            replicaset::ReplicaSets::new(recorder("replicaset-controller")),
            ctx.clone(),
        ));
        set.spawn(controller::run(
            replicaset::ReplicaSets::replication_controllers(recorder("replication-controller")),
            ctx.clone(),
        ));
        set.spawn(controller::run(
            deployment::Deployments {
                events: recorder("deployment-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            daemonset::DaemonSets {
                events: recorder("daemonset-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            job::Jobs {
                events: recorder("job-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            taint_eviction::TaintEviction {
                events: recorder("taint-eviction-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            statefulset::StatefulSets {
                events: recorder("statefulset-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(endpoints::Endpoints, ctx.clone()));
        set.spawn(
            apiserver_endpoints::ApiserverEndpoints {
                servers: servers.clone(),
            }
            .run(ctx.clone()),
        );
        set.spawn(controller::run(disruption::Disruption, ctx.clone()));
        set.spawn(controller::run(
            cronjob::CronJobs {
                events: recorder("cronjob-controller"),
                zones: crate::api::cron::Zones::from_dir(std::path::Path::new(
                    crate::api::cron::ZONEINFO,
                )),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            garbage_collector::GarbageCollector,
            ctx.clone(),
        ));
        set.spawn(controller::run(namespace::Namespaces, ctx.clone()));
        set.spawn(controller::run(
            service_lb::ServiceLb {
                pools: lb_pools.clone(),
                events: recorder("service-lb-controller"),
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            clusterrole_aggregation::ClusterRoleAggregation,
            ctx.clone(),
        ));
        set.spawn(controller::run(
            persistentvolume::PersistentVolumes {
                events: recorder("persistentvolume-controller"),
                local_path,
            },
            ctx.clone(),
        ));
        set.spawn(controller::run(
            volume_protection::VolumeProtection,
            ctx.clone(),
        ));
        set.spawn(controller::run(
            root_ca_publisher::RootCaPublisher {
                ca_pem: ca_pem.clone(),
            },
            ctx.clone(),
        ));
    });
    (kinds, starter)
}
