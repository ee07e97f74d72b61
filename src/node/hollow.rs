//! SIMULATION: a runtime that runs nothing and reports pods as a kubelet would, for
//! `keelson loadgen` only, so scheduling and controllers can be measured at a thousand nodes
//! without containers. Real agents never use it (they use [`super::pods::Absent`] until the
//! runc runtime exists).
//!
//! A pod is Running and Ready [`Timing::start_delay`] after it is assigned. A pod whose
//! `restartPolicy` is `Never` or `OnFailure` (Job pods) exits [`Timing::run_time`] later, with
//! code 0 unless its [`EXIT_CODE_ANNOTATION`] says otherwise: then `Never` ends Failed and
//! `OnFailure` restarts it, after a back-off, counting restarts. Pods with `Always` run until
//! they are deleted. Everything it reports says `hollow://` where a real node names an image
//! or container, and pod addresses are from 198.19.0.0/16 (benchmarking range, never routed).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use tokio::time::Instant;

use super::pods::{
    ContainerState, ContainerStatus, Phase, PodAssignment, PodKey, PodRuntime, PodState,
    RestartPolicy,
};
use super::status::now_rfc3339;

/// Annotation giving a simulated Job pod's exit code (`"0"` when absent).
pub const EXIT_CODE_ANNOTATION: &str = "keelson.io/hollow-exit-code";
/// Pod addresses per node: each node hands out addresses from its own block of this size.
const ADDRESSES_PER_NODE: u32 = 64;
/// First address of the pod range (198.19.0.0/16, half of the benchmarking 198.18.0.0/15).
const POD_RANGE: u32 = u32::from_be_bytes([198, 19, 0, 0]);
/// Nodes whose blocks fit in the pod range; further nodes reuse blocks (nothing routes them).
const BLOCKS: u32 = 65536 / ADDRESSES_PER_NODE;
/// Longest back-off before a failed `OnFailure` pod runs again (kubelet's cap).
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// From assignment to Running and Ready.
    pub start_delay: Duration,
    /// How long a Job pod's container runs before it exits.
    pub run_time: Duration,
}

/// The simulated runtime of one node.
pub struct Hollow {
    timing: Timing,
    /// First pod address of this node's block.
    block: u32,
    /// Addresses handed out so far (they wrap within the block).
    handed_out: u32,
    pods: HashMap<PodKey, Sim>,
}

/// One simulated pod.
struct Sim {
    state: PodState,
    exit_code: i32,
    policy: RestartPolicy,
    stage: Stage,
}

/// What a simulated pod waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// To start (Running, Ready) at the instant.
    Starting(Instant),
    /// To exit at the instant (Job pods).
    Running(Instant),
    /// Nothing: it runs until deleted.
    RunningForever,
    /// To run again after a failure (`OnFailure`).
    BackingOff(Instant),
    /// Nothing: it ended.
    Finished,
}

// === impl Hollow ===

impl Hollow {
    /// The runtime of the `index`th simulated node (which picks its pod address block).
    pub fn new(timing: Timing, index: u32) -> Hollow {
        Hollow {
            timing,
            block: POD_RANGE + (index % BLOCKS) * ADDRESSES_PER_NODE,
            handed_out: 0,
            pods: HashMap::new(),
        }
    }

    fn next_address(&mut self) -> IpAddr {
        let ip = self.block + self.handed_out % ADDRESSES_PER_NODE;
        self.handed_out = self.handed_out.wrapping_add(1);
        IpAddr::V4(Ipv4Addr::from(ip))
    }

    fn backoff(&self, restarts: u32) -> Duration {
        let base = self.timing.start_delay.max(Duration::from_millis(100));
        base.saturating_mul(1 << restarts.min(12)).min(MAX_BACKOFF)
    }
}

impl PodRuntime for Hollow {
    fn sync(&mut self, pod: &PodAssignment, now: Instant) {
        if self.pods.contains_key(&pod.key) {
            // The simulation has nothing to change in a running pod.
            return;
        }
        let exit_code = match pod.annotation(EXIT_CODE_ANNOTATION) {
            None => 0,
            Some(v) => v.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(pod = %pod.key.name, namespace = %pod.key.namespace, value = v,
                    "{EXIT_CODE_ANNOTATION} is not an integer; the simulated pod exits with 1");
                1
            }),
        };
        let start = now_rfc3339();
        let ip = self.next_address();
        let state = PodState {
            phase: Phase::Pending,
            pod_ips: vec![ip],
            start_time: start.clone(),
            ready: false,
            ready_since: start,
            containers: pod
                .containers
                .iter()
                .map(|c| ContainerStatus {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    image_id: format!("hollow://{}", c.image),
                    container_id: format!("hollow://{}/{}", pod.uid, c.name),
                    ready: false,
                    restart_count: 0,
                    state: ContainerState::Waiting {
                        reason: "ContainerCreating".into(),
                        message: String::new(),
                    },
                    last_state: None,
                })
                .collect(),
            init_containers: Vec::new(),
            initialized: true,
            ended_by_node: None,
        };
        self.pods.insert(
            pod.key.clone(),
            Sim {
                state,
                exit_code,
                policy: pod.restart_policy,
                stage: Stage::Starting(now + self.timing.start_delay),
            },
        );
    }

    fn remove(&mut self, key: &PodKey) {
        self.pods.remove(key);
    }

    fn next_wake(&self) -> Option<Instant> {
        self.pods
            .values()
            .filter_map(|s| match s.stage {
                Stage::Starting(t) | Stage::Running(t) | Stage::BackingOff(t) => Some(t),
                Stage::RunningForever | Stage::Finished => None,
            })
            .min()
    }

    fn poll(&mut self, now: Instant) -> Vec<PodKey> {
        let timing = self.timing;
        let mut changed = Vec::new();
        let mut backoffs = Vec::new();
        for (key, sim) in self.pods.iter_mut() {
            let due = match sim.stage {
                Stage::Starting(t) | Stage::Running(t) | Stage::BackingOff(t) => t <= now,
                Stage::RunningForever | Stage::Finished => false,
            };
            if !due {
                continue;
            }
            let at = now_rfc3339();
            match sim.stage {
                Stage::Starting(_) | Stage::BackingOff(_) => {
                    sim.start(&at);
                    sim.stage = match sim.policy {
                        RestartPolicy::Always => Stage::RunningForever,
                        RestartPolicy::Never | RestartPolicy::OnFailure => {
                            Stage::Running(now + timing.run_time)
                        }
                    };
                }
                Stage::Running(_) => {
                    let failed = sim.exit_code != 0;
                    sim.exit(&at);
                    if failed && sim.policy == RestartPolicy::OnFailure {
                        backoffs.push(key.clone());
                    } else {
                        sim.state.phase = if failed {
                            Phase::Failed
                        } else {
                            Phase::Succeeded
                        };
                        sim.stage = Stage::Finished;
                    }
                }
                Stage::RunningForever | Stage::Finished => {}
            }
            changed.push(key.clone());
        }
        for key in backoffs {
            let restarts = self.pods.get(&key).map_or(0, |s| {
                s.state.containers.first().map_or(0, |c| c.restart_count)
            });
            let wait = self.backoff(restarts);
            if let Some(sim) = self.pods.get_mut(&key) {
                sim.back_off(now + wait);
            }
        }
        changed.sort();
        changed
    }

    fn state(&self, key: &PodKey) -> Option<PodState> {
        let sim = self.pods.get(key)?;
        // Before it starts there is nothing a kubelet would have written yet that we need.
        (sim.state.phase != Phase::Pending
            || sim.state.containers.iter().any(|c| c.restart_count > 0))
        .then(|| sim.state.clone())
    }
}

// === impl Sim ===

impl Sim {
    fn start(&mut self, at: &str) {
        self.state.phase = Phase::Running;
        self.state.ready = true;
        self.state.ready_since = at.to_owned();
        for c in &mut self.state.containers {
            c.ready = true;
            c.state = ContainerState::Running {
                started_at: at.to_owned(),
            };
        }
    }

    fn exit(&mut self, at: &str) {
        let code = self.exit_code;
        self.state.ready = false;
        self.state.ready_since = at.to_owned();
        for c in &mut self.state.containers {
            let started_at = match &c.state {
                ContainerState::Running { started_at } => started_at.clone(),
                _ => at.to_owned(),
            };
            c.ready = false;
            c.state = ContainerState::Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: String::new(),
                started_at,
                finished_at: at.to_owned(),
            };
        }
    }

    /// After a failed run under `OnFailure`: count the restart and wait, as kubelet's
    /// CrashLoopBackOff does.
    fn back_off(&mut self, until: Instant) {
        for c in &mut self.state.containers {
            c.restart_count += 1;
            c.last_state = Some(std::mem::replace(
                &mut c.state,
                ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: String::new(),
                },
            ));
        }
        self.stage = Stage::BackingOff(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::pods::tests::assignment;

    const TIMING: Timing = Timing {
        start_delay: Duration::from_secs(1),
        run_time: Duration::from_secs(2),
    };

    fn key(name: &str) -> PodKey {
        PodKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn a_service_pod_is_running_and_ready_after_the_start_delay_and_stays() {
        let mut h = Hollow::new(TIMING, 3);
        let t0 = Instant::now();
        h.sync(&assignment("web", "u", RestartPolicy::Always), t0);
        assert!(h.poll(t0).is_empty());
        assert!(
            h.state(&key("web")).is_none(),
            "nothing to say before it starts"
        );
        assert_eq!(h.next_wake(), Some(t0 + TIMING.start_delay));
        assert_eq!(h.poll(t0 + TIMING.start_delay), vec![key("web")]);
        let s = h.state(&key("web")).unwrap();
        assert_eq!((s.phase, s.ready), (Phase::Running, true));
        assert_eq!(
            s.pod_ips,
            vec![IpAddr::from([198, 19, 0, 3 * ADDRESSES_PER_NODE as u8])]
        );
        assert_eq!(h.next_wake(), None);
        assert!(h.poll(t0 + Duration::from_secs(3600)).is_empty());
    }

    #[test]
    fn a_job_pod_succeeds_after_its_run_time() {
        let mut h = Hollow::new(TIMING, 0);
        let t0 = Instant::now();
        h.sync(&assignment("job", "u", RestartPolicy::Never), t0);
        h.poll(t0 + TIMING.start_delay);
        let end = t0 + TIMING.start_delay + TIMING.run_time;
        assert_eq!(h.poll(end), vec![key("job")]);
        let s = h.state(&key("job")).unwrap();
        assert_eq!((s.phase, s.ready), (Phase::Succeeded, false));
        assert!(matches!(
            s.containers[0].state,
            ContainerState::Terminated { exit_code: 0, .. }
        ));
        assert_eq!(h.next_wake(), None);
    }

    #[test]
    fn the_exit_code_annotation_fails_never_pods_and_restarts_on_failure_pods() {
        let mut h = Hollow::new(TIMING, 0);
        let t0 = Instant::now();
        let mut never = assignment("never", "u1", RestartPolicy::Never);
        never.annotations = vec![(EXIT_CODE_ANNOTATION.into(), "3".into())];
        let mut again = assignment("again", "u2", RestartPolicy::OnFailure);
        again.annotations = never.annotations.clone();
        h.sync(&never, t0);
        h.sync(&again, t0);
        h.poll(t0 + TIMING.start_delay);
        let end = t0 + TIMING.start_delay + TIMING.run_time;
        h.poll(end);
        let s = h.state(&key("never")).unwrap();
        assert_eq!(s.phase, Phase::Failed);
        assert!(matches!(
            s.containers[0].state,
            ContainerState::Terminated { exit_code: 3, .. }
        ));
        let s = h.state(&key("again")).unwrap();
        assert_eq!(s.phase, Phase::Running);
        assert_eq!(s.containers[0].restart_count, 1);
        assert!(matches!(
            s.containers[0].state,
            ContainerState::Waiting { .. }
        ));
        // It runs again after its back-off, and fails again.
        let wake = h.next_wake().unwrap();
        assert!(wake > end);
        h.poll(wake);
        assert!(h.state(&key("again")).unwrap().ready);
        h.poll(wake + TIMING.run_time);
        assert_eq!(
            h.state(&key("again")).unwrap().containers[0].restart_count,
            2
        );
    }

    #[test]
    fn removed_pods_are_forgotten() {
        let mut h = Hollow::new(TIMING, 0);
        let t0 = Instant::now();
        h.sync(&assignment("p", "u", RestartPolicy::Always), t0);
        h.remove(&key("p"));
        assert_eq!(h.next_wake(), None);
        assert!(h.poll(t0 + TIMING.start_delay).is_empty());
    }
}
