#!/usr/bin/env python3
"""The official Kubernetes Python client (`pip install kubernetes`) against a keelson server.

Run by tests/python_client.rs as `python3 client_roundtrip.py KUBECONFIG COMPACT_SECONDS` against a
server started with `--compact-interval` COMPACT_SECONDS. Creates, reads,
patches (the client's default for a dict body: a strategic merge patch), replaces, lists by
label and deletes a Deployment, a Service, a ConfigMap and a Job through the typed APIs, which
deserialize every answer into the client's models (and raise on a wrong type). Meanwhile a
`watch.Watch().stream(...)` on ConfigMaps, a list-then-watch loop written the way the client's
users write informers (list, watch from the list's resourceVersion, relist on 410 Gone), and the
client's own `SharedInformer` (when the installed client has one) must each see every ConfigMap
change in order. Events written through events.k8s.io/v1 read through core/v1, and the reverse. Prints one line per check; exits non-zero with the reason on the first failure.
"""

import datetime
import ipaddress
import sys
import threading
import time

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

NS = "pyclient"
# Where the Events test writes; nothing else does.
EV_NS = "pyclient-events"
# Longest any watcher may take to see the last change, in seconds.
WATCH_DEADLINE = 60


# The watcher threads print too; one line at a time.
PRINT = threading.Lock()


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    with PRINT:
        print(f"ok: {what}", flush=True)


def rv(obj):
    return int(obj.metadata.resource_version)


def retry_conflict(write):
    """A read-modify-write that loses a race with a controller (409) tries again."""
    for _ in range(20):
        try:
            return write()
        except ApiException as e:
            if e.status != 409:
                raise
            time.sleep(0.1)
    raise AssertionError("still conflicting after 20 attempts")


def gone(read):
    try:
        read()
    except ApiException as e:
        return e.status == 404
    return False


class Seen:
    """What one watcher saw: (type, name, resourceVersion) per ConfigMap event, in order."""

    def __init__(self, who):
        self.who = who
        self.events = []
        self.error = None
        self.done = threading.Event()
        # Set after each list (the list-then-watch loop): changes from then on are events.
        self.listed = threading.Event()
        # How many times the server answered 410 Gone.
        self.gone = 0

    def add(self, kind, cm, last_name):
        if cm.metadata.name == ROOT_CA:
            return
        self.events.append((kind, cm.metadata.name, rv(cm)))
        if kind == "DELETED" and cm.metadata.name == last_name:
            self.done.set()


# The cluster CA's ConfigMap, which a controller publishes in every namespace (as Kubernetes
# does): not this script's business.
ROOT_CA = "kube-root-ca.crt"


def stream_watch(core, start_rv, seen, last_name):
    """`watch.Watch().stream` from a list's resourceVersion."""
    try:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=start_rv,
                           timeout_seconds=WATCH_DEADLINE):
            check(isinstance(ev["object"], client.V1ConfigMap),
                  f"{seen.who}: a {ev['type']} event carries a typed V1ConfigMap")
            seen.add(ev["type"], ev["object"], last_name)
            if seen.done.is_set():
                w.stop()
    except Exception as e:  # reported by the main thread
        seen.error = e
    finally:
        seen.done.set()


def informer_loop(core, seen, last_name, cache, resume_from=None):
    """List, then watch from the list's resourceVersion; on 410 Gone, list again. `cache` holds
    name -> ConfigMap as the loop believes the server has them. With `resume_from`, the loop
    starts by watching from that resourceVersion, as after a long disconnection."""
    try:
        deadline = time.monotonic() + WATCH_DEADLINE
        while not seen.done.is_set() and time.monotonic() < deadline:
            if resume_from is not None:
                start, resume_from = resume_from, None
            else:
                listed = core.list_namespaced_config_map(NS)
                cache.clear()
                cache.update({cm.metadata.name: cm for cm in listed.items})
                start = listed.metadata.resource_version
                check(start and int(start) > 0,
                      f"{seen.who}: the list has a resourceVersion ({start})")
                seen.listed.set()
            try:
                w = watch.Watch()
                for ev in w.stream(core.list_namespaced_config_map, NS, resource_version=start,
                                   timeout_seconds=WATCH_DEADLINE, allow_watch_bookmarks=True):
                    kind, cm = ev["type"], ev["object"]
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        cache.pop(cm.metadata.name, None)
                    else:
                        cache[cm.metadata.name] = cm
                    seen.add(kind, cm, last_name)
                    if seen.done.is_set():
                        w.stop()
            except ApiException as e:
                if e.status != 410:
                    raise
                seen.gone += 1
                print(f"{seen.who}: 410 Gone, listing again", flush=True)
    except Exception as e:
        seen.error = e
    finally:
        seen.done.set()


def shared_informer(core, seen, last_name):
    """The client's own SharedInformer (kubernetes >= 37); None on an older client."""
    try:
        from kubernetes.informer import SharedInformer
    except ImportError:
        print("note: this kubernetes client has no SharedInformer; not checked", flush=True)
        return None
    inf = SharedInformer(core.list_namespaced_config_map, namespace=NS)
    for kind in ("ADDED", "MODIFIED", "DELETED"):
        inf.add_event_handler(kind, lambda cm, kind=kind: seen.add(kind, cm, last_name))
    inf.start()
    return inf


def configmaps(core, expected):
    """The changes every watcher must see; each appended to `expected` as it is made."""
    body = client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cm-a", labels={"app": "py", "tier": "one"}),
        data={"greeting": "hello", "keep": "me"},
    )
    a = core.create_namespaced_config_map(NS, body)
    check(a.metadata.uid and a.metadata.creation_timestamp is not None,
          "ConfigMap create answers with a uid and a creationTimestamp")
    expected.append(("ADDED", "cm-a", rv(a)))

    read = core.read_namespaced_config_map("cm-a", NS)
    check(read.data == {"greeting": "hello", "keep": "me"}, "ConfigMap read returns its data")

    a = core.patch_namespaced_config_map("cm-a", NS, {"data": {"greeting": "hi", "added": "x"}})
    check(a.data == {"greeting": "hi", "keep": "me", "added": "x"},
          "ConfigMap strategic merge patch merges data")
    expected.append(("MODIFIED", "cm-a", rv(a)))

    a.data = {"replaced": "yes"}
    a.metadata.labels["tier"] = "two"
    a = core.replace_namespaced_config_map("cm-a", NS, a)
    check(a.data == {"replaced": "yes"} and a.metadata.labels["tier"] == "two",
          "ConfigMap replace stores the new object")
    expected.append(("MODIFIED", "cm-a", rv(a)))

    try:
        stale = read  # the first read: its resourceVersion is gone
        stale.data = {"stale": "write"}
        core.replace_namespaced_config_map("cm-a", NS, stale)
        raise AssertionError("a replace with a stale resourceVersion was accepted")
    except ApiException as e:
        check(e.status == 409, "ConfigMap replace with a stale resourceVersion gets 409")

    b = core.create_namespaced_config_map(NS, {
        "metadata": {"name": "cm-b", "labels": {"app": "other"}}, "data": {"n": "1"}})
    expected.append(("ADDED", "cm-b", rv(b)))

    names = lambda sel: sorted(c.metadata.name for c in core.list_namespaced_config_map(
        NS, label_selector=sel).items)
    check(names("app=py") == ["cm-a"], "ConfigMap list with label_selector app=py")
    check(names("app in (py,other)") == ["cm-a", "cm-b"], "ConfigMap list with a set selector")
    check(names("app!=py,app") == ["cm-b"], "ConfigMap list with app!=py,app")
    check(names("tier=two") == ["cm-a"], "ConfigMap list sees the replaced label")

    st = core.delete_namespaced_config_map("cm-a", NS)
    check(st is not None, f"ConfigMap delete answers ({type(st).__name__})")
    expected.append(("DELETED", "cm-a", None))
    check(gone(lambda: core.read_namespaced_config_map("cm-a", NS)),
          "a deleted ConfigMap reads as 404")
    core.delete_namespaced_config_map("cm-b", NS)
    expected.append(("DELETED", "cm-b", None))


def deployments(apps, core):
    body = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=client.V1DeploymentSpec(
            selector=client.V1LabelSelector(match_labels={"app": "web"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "web"}),
                spec=client.V1PodSpec(containers=[
                    client.V1Container(name="app", image="busybox:1.36",
                                       env=[client.V1EnvVar(name="MODE", value="test")]),
                    client.V1Container(name="side", image="busybox:1.36"),
                ]),
            ),
        ),
    )
    d = apps.create_namespaced_deployment(NS, body)
    s = d.spec
    check(s.replicas == 1, "Deployment spec.replicas defaults to 1")
    check(s.strategy.type == "RollingUpdate"
          and s.strategy.rolling_update.max_surge == "25%"
          and s.strategy.rolling_update.max_unavailable == "25%",
          "Deployment spec.strategy defaults to RollingUpdate 25%/25%")
    check(s.revision_history_limit == 10 and s.progress_deadline_seconds == 600,
          "Deployment revisionHistoryLimit 10, progressDeadlineSeconds 600")
    pod = s.template.spec
    check(pod.restart_policy == "Always" and pod.dns_policy == "ClusterFirst"
          and pod.termination_grace_period_seconds == 30
          and pod.containers[0].termination_message_path == "/dev/termination-log"
          and pod.containers[0].image_pull_policy == "IfNotPresent",
          "Deployment template gets the Pod defaults")
    check(d.metadata.generation == 1, "Deployment metadata.generation is 1")

    d = retry_conflict(lambda: apps.patch_namespaced_deployment("web", NS, {
        "spec": {"replicas": 3,
                 "template": {"spec": {"containers": [{"name": "app", "image": "busybox:1.37"}]}}}}))
    c = {x.name: x for x in d.spec.template.spec.containers}
    check(d.spec.replicas == 3, "Deployment strategic merge patch sets replicas")
    check(c["app"].image == "busybox:1.37" and c["app"].env[0].value == "test"
          and c["side"].image == "busybox:1.36",
          "Deployment strategic merge patch merges containers by name")
    check(d.metadata.generation == 2, "a spec patch bumps metadata.generation")

    def replace():
        cur = apps.read_namespaced_deployment("web", NS)
        cur.metadata.labels["stage"] = "replaced"
        cur.spec.min_ready_seconds = 5
        return apps.replace_namespaced_deployment("web", NS, cur)
    d = retry_conflict(replace)
    check(d.metadata.labels["stage"] == "replaced" and d.spec.min_ready_seconds == 5,
          "Deployment replace stores the new object")

    # The Deployment controller's answers read back through the typed models too.
    deadline = time.monotonic() + 30
    while True:
        d = apps.read_namespaced_deployment("web", NS)
        owned = [rs for rs in apps.list_namespaced_replica_set(NS, label_selector="app=web").items
                 if any(o.name == "web" and o.controller for o in rs.metadata.owner_references or [])]
        if d.status and d.status.observed_generation == d.metadata.generation and owned:
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"the Deployment controller did not act: {d.status}, {owned}")
        time.sleep(0.2)
    check(owned[0].spec.replicas == 3 and owned[0].spec.template.spec.containers[0].name == "app",
          "the Deployment's ReplicaSet reads back with 3 replicas")
    pods = core.list_namespaced_pod(NS, label_selector="app=web").items
    check(all(p.spec.containers and p.status.phase for p in pods),
          f"its Pods read back with a phase ({len(pods)} so far)")

    scale = apps.read_namespaced_deployment_scale("web", NS)
    check(scale.spec.replicas == 3, "Deployment scale subresource reads replicas")

    listed = apps.list_namespaced_deployment(NS, label_selector="stage=replaced")
    check([x.metadata.name for x in listed.items] == ["web"],
          "Deployment list with label_selector")
    check(apps.list_namespaced_deployment(NS, label_selector="stage=none").items == [],
          "Deployment list with a selector nothing matches is empty")

    apps.delete_namespaced_deployment("web", NS, propagation_policy="Background")
    check(gone(lambda: apps.read_namespaced_deployment("web", NS)),
          "a deleted Deployment reads as 404")


def services(core):
    body = client.V1Service(
        metadata=client.V1ObjectMeta(name="web", labels={"app": "web"}),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(name="http", port=80,
                                                              target_port=8080)]),
    )
    s = core.create_namespaced_service(NS, body)
    ip = s.spec.cluster_ip
    check(ip and ipaddress.ip_address(ip).version == 4,
          f"Service spec.cluster_ip is assigned ({ip})")
    check(s.spec.cluster_ips == [ip], "Service spec.cluster_ips holds the cluster IP")
    check(s.spec.type == "ClusterIP" and s.spec.session_affinity == "None"
          and s.spec.ports[0].protocol == "TCP" and s.spec.ports[0].target_port == 8080,
          "Service type, sessionAffinity and port protocol defaults")

    s = core.patch_namespaced_service("web", NS, {
        "metadata": {"labels": {"patched": "yes"}},
        "spec": {"ports": [{"port": 80, "targetPort": 9090}]}})
    check(s.metadata.labels == {"app": "web", "patched": "yes"},
          "Service strategic merge patch merges labels")
    check(len(s.spec.ports) == 1 and s.spec.ports[0].target_port == 9090
          and s.spec.ports[0].name == "http",
          "Service strategic merge patch merges ports by port number")
    check(s.spec.cluster_ip == ip, "Service keeps its cluster IP across a patch")

    def replace():
        cur = core.read_namespaced_service("web", NS)
        cur.spec.ports.append(client.V1ServicePort(name="https", port=443, target_port=8443))
        return core.replace_namespaced_service("web", NS, cur)
    s = retry_conflict(replace)
    check(sorted(p.port for p in s.spec.ports) == [80, 443] and s.spec.cluster_ip == ip,
          "Service replace adds a port and keeps the cluster IP")

    names = [x.metadata.name for x in
             core.list_namespaced_service(NS, label_selector="patched=yes").items]
    check(names == ["web"], "Service list with label_selector")

    core.delete_namespaced_service("web", NS)
    check(gone(lambda: core.read_namespaced_service("web", NS)), "a deleted Service reads as 404")


def jobs(batch):
    body = client.V1Job(
        metadata=client.V1ObjectMeta(name="once", labels={"app": "batch"}),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(
            spec=client.V1PodSpec(restart_policy="Never", containers=[
                client.V1Container(name="run", image="busybox:1.36", command=["true"])]))),
    )
    j = batch.create_namespaced_job(NS, body)
    s = j.spec
    check(s.completions == 1 and s.parallelism == 1,
          "Job spec.completions and parallelism default to 1")
    check(s.backoff_limit == 6 and s.completion_mode == "NonIndexed" and s.suspend is False,
          "Job backoffLimit 6, NonIndexed, not suspended")
    uid = s.selector.match_labels.get("batch.kubernetes.io/controller-uid")
    check(uid == j.metadata.uid, "Job selector is the generated controller-uid")
    check(s.template.metadata.labels.get("batch.kubernetes.io/controller-uid") == uid,
          "Job template carries the controller-uid label")

    j = retry_conflict(lambda: batch.patch_namespaced_job("once", NS, {
        "metadata": {"labels": {"patched": "yes"}}, "spec": {"activeDeadlineSeconds": 600}}))
    check(j.spec.active_deadline_seconds == 600 and j.metadata.labels["patched"] == "yes",
          "Job strategic merge patch")

    def replace():
        cur = batch.read_namespaced_job("once", NS)
        cur.metadata.labels["stage"] = "replaced"
        return batch.replace_namespaced_job("once", NS, cur)
    j = retry_conflict(replace)
    check(j.metadata.labels["stage"] == "replaced", "Job replace stores the new object")

    try:
        batch.patch_namespaced_job("once", NS, {"spec": {"completions": 5}})
        raise AssertionError("changing a Job's completions was accepted")
    except ApiException as e:
        check(e.status == 422, "changing a Job's completions gets 422")

    names = [x.metadata.name for x in
             batch.list_namespaced_job(NS, label_selector="app=batch,stage=replaced").items]
    check(names == ["once"], "Job list with label_selector")
    batch.delete_namespaced_job("once", NS, propagation_policy="Background")
    check(gone(lambda: batch.read_namespaced_job("once", NS)), "a deleted Job reads as 404")


def events(core, ev):
    """An Event written through events.k8s.io/v1 reads through core/v1, and the reverse. In a
    namespace of their own: the controllers' core Events elsewhere have no eventTime, which
    events.k8s.io answers as null, as kube-apiserver does, and this client's EventsV1Event
    refuses (kubernetes-client/python#1221)."""
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=EV_NS)))
    now = datetime.datetime.now(datetime.timezone.utc)
    body = client.EventsV1Event(
        metadata=client.V1ObjectMeta(name="boot"), event_time=now,
        reporting_controller="example.com/boot", reporting_instance="pi-1",
        action="Start", reason="Booted", type="Normal", note="board up",
        regarding=client.V1ObjectReference(kind="Pod", name="web", namespace=EV_NS))
    e = ev.create_namespaced_event(EV_NS, body)
    check(e.note == "board up" and e.event_time is not None,
          "events.k8s.io Event create answers in its own field names")
    c = core.read_namespaced_event("boot", EV_NS)
    check(c.message == "board up" and c.involved_object.name == "web"
          and c.reporting_component == "example.com/boot",
          "the events.k8s.io Event reads through CoreV1Api (message, involved_object)")

    core.create_namespaced_event(EV_NS, client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="pulled"), event_time=now,
        reporting_component="example.com/puller", reporting_instance="pi-1",
        action="Pull", reason="Pulled", type="Normal", message="pulled busybox",
        involved_object=client.V1ObjectReference(kind="Pod", name="web", namespace=EV_NS)))
    e = ev.read_namespaced_event("pulled", EV_NS)
    check(e.note == "pulled busybox" and e.regarding.name == "web"
          and e.reporting_controller == "example.com/puller",
          "a core Event reads through EventsV1Api (note, regarding)")
    names = sorted(x.metadata.name for x in ev.list_namespaced_event(EV_NS).items)
    check(names == ["boot", "pulled"], f"EventsV1Api lists both ({names})")
    try:
        ev.create_namespaced_event(EV_NS, {
            "metadata": {"name": "bad"}, "eventTime": now.isoformat(),
            "reportingInstance": "pi-1", "action": "Start", "reason": "Booted",
            "type": "Normal"})
        raise AssertionError("an events.k8s.io Event without reportingController was accepted")
    except ApiException as e:
        check(e.status == 422 and "reportingController" in e.body,
              "an events.k8s.io Event without reportingController gets 422 naming it")


def relist_after_gone(core, stale_rv, compact_seconds):
    """The informer loop's recovery: a watch resumed from a resourceVersion the server has
    compacted away (`--compact-interval`) gets 410 Gone; the loop lists again and sees the
    changes after that list."""
    # History older than one interval goes at each tick: after three, `stale_rv` is gone.
    time.sleep(3 * compact_seconds)
    seen = Seen("list-then-watch resumed after compaction")
    cache = {}
    t = threading.Thread(target=informer_loop, args=(core, seen, "cm-late", cache, stale_rv),
                         daemon=True)
    t.start()
    check(seen.listed.wait(WATCH_DEADLINE), f"{seen.who}: lists again ({seen.error!r})")
    check(seen.gone == 1, f"{seen.who}: the stale resourceVersion {stale_rv} got 410 Gone")
    a = core.create_namespaced_config_map(NS, {"metadata": {"name": "cm-late"}})
    core.delete_namespaced_config_map("cm-late", NS)
    t.join(WATCH_DEADLINE)
    check(seen.error is None, f"{seen.who}: no error ({seen.error!r})")
    check([(k, n) for k, n, _ in seen.events] == [("ADDED", "cm-late"), ("DELETED", "cm-late")]
          and seen.events[0][2] == rv(a),
          f"{seen.who}: sees the changes after its new list ({seen.events})")


def check_seen(seen, expected):
    check(seen.error is None, f"{seen.who}: no error ({seen.error!r})")
    got = [(k, n) for k, n, _ in seen.events]
    want = [(k, n) for k, n, _ in expected]
    check(got == want, f"{seen.who}: saw {got}")
    revs = [r for _, _, r in seen.events]
    check(all(a < b for a, b in zip(revs, revs[1:])),
          f"{seen.who}: resourceVersions increase ({revs})")
    for (_, _, r), (k, n, want_rv) in zip(seen.events, expected):
        if want_rv is not None and r != want_rv:
            raise AssertionError(f"{seen.who}: {k} {n} at {r}, but the write answered {want_rv}")
    print(f"ok: {seen.who}: each event's resourceVersion is the write's", flush=True)


def main():
    config.load_kube_config(config_file=sys.argv[1])
    core, apps, batch = client.CoreV1Api(), client.AppsV1Api(), client.BatchV1Api()
    check(client.VersionApi().get_code().git_version.startswith("v"), "version answers")

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NS)))
    listed = core.list_namespaced_config_map(NS)
    start_rv = listed.metadata.resource_version
    check([c for c in listed.items if c.metadata.name != ROOT_CA] == [],
          f"a new namespace has no ConfigMaps of its own (list at {start_rv})")

    last = "cm-b"
    streamed, looped, shared = Seen("watch.stream"), Seen("list-then-watch"), Seen("SharedInformer")
    loop_cache = {}
    threads = [
        threading.Thread(target=stream_watch, args=(core, start_rv, streamed, last), daemon=True),
        threading.Thread(target=informer_loop, args=(core, looped, last, loop_cache),
                         daemon=True),
    ]
    for t in threads:
        t.start()
    informer = shared_informer(core, shared, last)
    if informer is not None:
        # The SharedInformer lists on its own thread; its first list must be done before the
        # changes, or it could fold some into that list.
        deadline = time.monotonic() + 10
        while informer._resource_version is None and time.monotonic() < deadline:
            time.sleep(0.05)

    expected = []
    configmaps(core, expected)
    deployments(apps, core)
    services(core)
    jobs(batch)
    events(core, client.EventsV1Api())

    for seen in (streamed, looped) + ((shared,) if informer is not None else ()):
        if not seen.done.wait(WATCH_DEADLINE):
            raise AssertionError(f"{seen.who}: did not see every change within "
                                 f"{WATCH_DEADLINE}s: saw {seen.events}")
        check_seen(seen, expected)
    check(set(loop_cache) - {ROOT_CA} == set(),
          "list-then-watch: its cache ends empty, like the namespace")
    if informer is not None:
        informer.stop()
        check([c for c in informer.cache.list() if c.metadata.name != ROOT_CA] == [],
              "SharedInformer: its cache ends empty")

    relist_after_gone(core, start_rv, float(sys.argv[2]))

    core.delete_namespace(NS)
    core.delete_namespace(EV_NS)
    print("PASS: the Python client round trip", flush=True)


if __name__ == "__main__":
    main()
