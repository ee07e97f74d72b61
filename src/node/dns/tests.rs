//! Record building and answers fed as bytes (no sockets), the forwarder against a tiny UDP
//! responder, and the server's handling of malformed input.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::forward::{self, Forwarder};
use super::message::{self, Incoming};
use super::server::Resolver;
use super::zone::{Lookup, TTL, Zone};
use crate::api::cidr::Cidr;
use crate::api::network::{
    Backend, ClusterNetwork, Endpoint, Key, Protocol, ServiceInfo, ServiceKind, ServicePort,
    SliceInfo, SlicePort, TargetPort,
};
use crate::node::network::View;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn key(ns: &str, name: &str) -> Key {
    Key {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn service(
    ns: &str,
    name: &str,
    kind: ServiceKind,
    ips: &[&str],
    ports: &[(&str, u16)],
) -> ServiceInfo {
    ServiceInfo {
        key: key(ns, name),
        kind,
        cluster_ips: ips.iter().map(|s| ip(s)).collect(),
        ports: ports
            .iter()
            .map(|(n, p)| ServicePort {
                name: (*n).into(),
                protocol: Protocol::Tcp,
                port: *p,
                target_port: TargetPort::Number(*p),
                node_port: None,
            })
            .collect(),
        affinity_timeout: None,
        external_local: false,
        internal_local: false,
        external_ips: vec![],
        load_balancer_ips: vec![],
        publish_not_ready: false,
    }
}

fn endpoint(addr: &str, ready: bool, hostname: Option<&str>) -> Endpoint {
    Endpoint {
        addresses: vec![ip(addr)],
        ready,
        serving: ready,
        terminating: false,
        hostname: hostname.map(str::to_owned),
        node_name: None,
        pod: None,
    }
}

/// A cluster with a dual-stack ClusterIP Service, a headless one (two ready endpoints, one
/// with a hostname, and one not ready), an ExternalName and one with an empty ClusterIP list
/// for another namespace.
fn view() -> View {
    let mut v = View {
        cluster: Some(ClusterNetwork {
            cluster_cidrs: vec![Cidr::parse("198.19.0.0/17").unwrap()],
            service_cidrs: vec![Cidr::parse("198.19.128.0/17").unwrap()],
            cluster_dns: Some(ip("198.19.128.10")),
            cluster_domain: "Cluster.Local".into(),
            backend: Backend::Vxlan,
            lb_timing: Default::default(),
        }),
        synced: true,
        ..View::default()
    };
    let services = [
        service(
            "shop",
            "web",
            ServiceKind::ClusterIp,
            &["198.19.128.20", "fd00::20"],
            &[("http", 80), ("", 8080)],
        ),
        service("shop", "db", ServiceKind::ClusterIp, &[], &[]),
        service(
            "shop",
            "ext",
            ServiceKind::ExternalName("Example.TEST.".into()),
            &[],
            &[],
        ),
    ];
    for s in services {
        v.services.insert(s.key.clone(), Arc::new(s));
    }
    let slice = SliceInfo {
        key: key("shop", "db-abc"),
        service: "db".into(),
        ports: vec![SlicePort {
            name: "pg".into(),
            protocol: Protocol::Tcp,
            port: 5432,
        }],
        endpoints: vec![
            endpoint("198.19.1.5", true, Some("db-0")),
            endpoint("198.19.1.6", true, None),
            endpoint("198.19.1.7", false, Some("db-2")),
        ],
    };
    v.slices.insert(slice.key.clone(), Arc::new(slice));
    v
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

fn found(l: Lookup) -> (Vec<Record>, Vec<Record>) {
    match l {
        Lookup::Found {
            answers,
            additionals,
        } => (answers, additionals),
        other => panic!("expected records, got {other:?}"),
    }
}

fn rdata(records: &[Record]) -> Vec<String> {
    let mut v: Vec<String> = records.iter().map(|r| r.data.to_string()).collect();
    v.sort();
    v
}

#[test]
fn a_cluster_ip_service_answers_a_and_aaaa_per_family_case_insensitively() {
    let zone = Zone::build(&view());
    let (a, _) = found(zone.lookup(&name("web.shop.svc.cluster.local."), RecordType::A));
    assert_eq!(rdata(&a), ["198.19.128.20"]);
    assert_eq!(a[0].ttl, TTL);
    let (aaaa, _) = found(zone.lookup(&name("WEB.Shop.SVC.cluster.LOCAL."), RecordType::AAAA));
    assert_eq!(rdata(&aaaa), ["fd00::20"]);
    assert_eq!(
        aaaa[0].name.to_ascii(),
        "WEB.Shop.SVC.cluster.LOCAL.",
        "answers keep the asker's spelling"
    );
    assert_eq!(
        zone.lookup(&name("web.shop.svc.cluster.local."), RecordType::MX),
        Lookup::NoData
    );
}

#[test]
fn named_ports_have_srv_records_pointing_at_the_service() {
    let zone = Zone::build(&view());
    let (srv, extra) = found(zone.lookup(
        &name("_http._tcp.web.shop.svc.cluster.local."),
        RecordType::SRV,
    ));
    assert_eq!(rdata(&srv), ["0 100 80 web.shop.svc.cluster.local."]);
    assert_eq!(rdata(&extra), ["198.19.128.20", "fd00::20"]);
    assert_eq!(
        zone.lookup(
            &name("_http._udp.web.shop.svc.cluster.local."),
            RecordType::SRV
        ),
        Lookup::NxDomain,
        "the port is TCP"
    );
}

#[test]
fn a_headless_service_answers_its_ready_endpoints_and_their_hostnames() {
    let zone = Zone::build(&view());
    let (a, _) = found(zone.lookup(&name("db.shop.svc.cluster.local."), RecordType::A));
    assert_eq!(
        rdata(&a),
        ["198.19.1.5", "198.19.1.6"],
        "not-ready left out"
    );
    let (a, _) = found(zone.lookup(&name("db-0.db.shop.svc.cluster.local."), RecordType::A));
    assert_eq!(rdata(&a), ["198.19.1.5"]);
    let (a, _) = found(zone.lookup(
        &name("198-19-1-6.db.shop.svc.cluster.local."),
        RecordType::A,
    ));
    assert_eq!(
        rdata(&a),
        ["198.19.1.6"],
        "no hostname: named by its address"
    );
    assert_eq!(
        zone.lookup(&name("db-2.db.shop.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
    let (srv, extra) = found(zone.lookup(
        &name("_pg._tcp.db.shop.svc.cluster.local."),
        RecordType::SRV,
    ));
    assert_eq!(
        rdata(&srv),
        [
            "0 0 5432 198-19-1-6.db.shop.svc.cluster.local.",
            "0 0 5432 db-0.db.shop.svc.cluster.local."
        ]
    );
    assert_eq!(rdata(&extra), ["198.19.1.5", "198.19.1.6"]);

    // publishNotReadyAddresses names the not-ready endpoint too.
    let mut v = view();
    let mut db = (*v.services[&key("shop", "db")]).clone();
    db.publish_not_ready = true;
    v.services.insert(db.key.clone(), Arc::new(db));
    let zone = Zone::build(&v);
    let (a, _) = found(zone.lookup(&name("db.shop.svc.cluster.local."), RecordType::A));
    assert_eq!(rdata(&a), ["198.19.1.5", "198.19.1.6", "198.19.1.7"]);
}

#[test]
fn an_external_name_is_a_cname() {
    let zone = Zone::build(&view());
    match zone.lookup(&name("ext.shop.svc.cluster.local."), RecordType::A) {
        Lookup::Alias { cname, target } => {
            assert_eq!(cname.data.to_string(), "example.test.");
            assert_eq!(target.to_ascii(), "example.test.");
        }
        other => panic!("expected an alias, got {other:?}"),
    }
}

#[test]
fn ptr_answers_cluster_ips_and_endpoint_addresses() {
    let zone = Zone::build(&view());
    let (ptr, _) = found(zone.lookup(&name("20.128.19.198.in-addr.arpa."), RecordType::PTR));
    assert_eq!(rdata(&ptr), ["web.shop.svc.cluster.local."]);
    let (ptr, _) = found(zone.lookup(&name("5.1.19.198.in-addr.arpa."), RecordType::PTR));
    assert_eq!(rdata(&ptr), ["db-0.db.shop.svc.cluster.local."]);
    let v6 = "0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
    let (ptr, _) = found(zone.lookup(&name(v6), RecordType::PTR));
    assert_eq!(rdata(&ptr), ["web.shop.svc.cluster.local."]);
    assert_eq!(
        zone.lookup(&name("9.9.9.9.in-addr.arpa."), RecordType::PTR),
        Lookup::Outside,
        "other reverse names fall through to the upstreams"
    );
}

#[test]
fn names_that_do_not_exist_in_the_domain_are_nxdomain_and_others_are_forwarded() {
    let zone = Zone::build(&view());
    assert_eq!(
        zone.lookup(&name("nope.shop.svc.cluster.local."), RecordType::A),
        Lookup::NxDomain
    );
    assert_eq!(
        zone.lookup(&name("shop.svc.cluster.local."), RecordType::A),
        Lookup::NoData,
        "a namespace with Services exists"
    );
    assert_eq!(
        zone.lookup(&name("example.test."), RecordType::A),
        Lookup::Outside
    );
    assert_eq!(
        zone.lookup(&name("notcluster.local."), RecordType::A),
        Lookup::Outside,
        "a suffix match on a label boundary only"
    );
    let (soa, _) = found(zone.lookup(&name("cluster.local."), RecordType::SOA));
    assert!(
        soa[0]
            .data
            .to_string()
            .starts_with("ns.dns.cluster.local. hostmaster.cluster.local.")
    );
    let (a, _) = found(zone.lookup(&name("ns.dns.cluster.local."), RecordType::A));
    assert_eq!(rdata(&a), ["198.19.128.10"]);
    assert_eq!(
        Zone::build(&View::default()).lookup(&name("web.shop.svc.cluster.local."), RecordType::A),
        Lookup::Outside,
        "no cluster settings yet: nothing is ours"
    );
}

fn query_bytes(qname: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name(qname), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.edns = Some(e);
    }
    m.to_vec().unwrap()
}

fn resolver(zone: Zone, upstreams: Vec<SocketAddr>) -> Resolver {
    let (_tx, rx) = watch::channel(Arc::new(zone));
    Resolver::new(rx, Arc::new(Forwarder::new(upstreams)))
}

fn client() -> IpAddr {
    ip("198.19.0.5")
}

#[tokio::test]
async fn replies_carry_the_id_question_and_authority() {
    let r = resolver(Zone::build(&view()), vec![]);
    let bytes = r
        .handle(
            &query_bytes("nope.shop.svc.cluster.local.", RecordType::A, None),
            client(),
            512,
        )
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(reply.metadata.id, 0x1234);
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.metadata.authoritative && reply.metadata.recursion_desired);
    assert_eq!(reply.queries.len(), 1);
    assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn malformed_input_gets_formerr_or_nothing() {
    let r = resolver(Zone::build(&view()), vec![]);
    assert!(r.handle(&[], client(), 512).await.is_none());
    assert!(
        r.handle(&[1, 2, 3], client(), 512).await.is_none(),
        "shorter than a header"
    );
    // A header claiming one question that is not there.
    let garbage = [
        0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xff, 0xff,
    ];
    let reply = Message::from_vec(&r.handle(&garbage, client(), 512).await.unwrap()).unwrap();
    assert_eq!(reply.metadata.id, 0xabcd);
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A response is never answered (no loops between servers).
    let mut response = Message::from_vec(&query_bytes(
        "web.shop.svc.cluster.local.",
        RecordType::A,
        None,
    ))
    .unwrap();
    response.metadata.message_type = MessageType::Response;
    assert!(
        r.handle(&response.to_vec().unwrap(), client(), 512)
            .await
            .is_none()
    );
    // Two questions: FORMERR.
    let mut two = Message::new(7, MessageType::Query, OpCode::Query);
    two.add_query(Query::query(name("a.cluster.local."), RecordType::A));
    two.add_query(Query::query(name("b.cluster.local."), RecordType::A));
    let reply = Message::from_vec(
        &r.handle(&two.to_vec().unwrap(), client(), 512)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Another opcode: NOTIMP.
    let mut notify = Message::new(8, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(name("cluster.local."), RecordType::SOA));
    let reply = Message::from_vec(
        &r.handle(&notify.to_vec().unwrap(), client(), 512)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
    // Random bytes never panic.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len % 80)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = r.handle(&bytes, client(), 512).await;
    }
}

#[test]
fn a_large_udp_reply_is_truncated_to_the_clients_size() {
    let mut v = view();
    let mut big = service("shop", "big", ServiceKind::ClusterIp, &[], &[]);
    big.cluster_ips.clear();
    v.services.insert(big.key.clone(), Arc::new(big));
    let slice = SliceInfo {
        key: key("shop", "big-1"),
        service: "big".into(),
        ports: vec![],
        endpoints: (0..100)
            .map(|i| endpoint(&format!("198.19.2.{i}"), true, None))
            .collect(),
    };
    v.slices.insert(slice.key.clone(), Arc::new(slice));
    let zone = Zone::build(&v);
    for (edns, limit) in [
        (None, 512),
        (Some(1232), 1232),
        (Some(4096), 1232),
        (Some(100), 512),
    ] {
        let bytes = query_bytes("big.shop.svc.cluster.local.", RecordType::A, edns);
        let Incoming::Question(req) = message::parse(&bytes) else {
            panic!("a question")
        };
        assert_eq!(req.udp_limit(), limit, "{edns:?}");
        let reply = req.answer(zone.lookup(req.query().name(), RecordType::A), &zone);
        let full = message::encode(&reply, usize::from(u16::MAX)).unwrap();
        assert!(full.len() > 1232);
        let cut = message::encode(&reply, req.udp_limit()).unwrap();
        assert!(cut.len() <= limit);
        let cut = Message::from_vec(&cut).unwrap();
        assert!(cut.metadata.truncation && cut.answers.is_empty());
        assert_eq!(cut.metadata.id, 0x1234);
        assert_eq!(cut.queries.len(), 1);
    }
    let small = query_bytes("web.shop.svc.cluster.local.", RecordType::A, None);
    let Incoming::Question(req) = message::parse(&small) else {
        panic!()
    };
    let reply = req.answer(zone.lookup(req.query().name(), RecordType::A), &zone);
    let bytes = message::encode(&reply, 512).unwrap();
    assert!(!Message::from_vec(&bytes).unwrap().metadata.truncation);
}

#[test]
fn upstreams_come_from_resolv_conf() {
    let text = "# a comment\nnameserver 198.18.0.1\nnameserver fe80::1%eth0\nsearch lan\n\
                nameserver 127.0.0.53 ; stub\nnameserver ::1\nnameserver 198.18.0.9\n";
    assert_eq!(
        forward::upstreams(text),
        [
            "198.18.0.1:53".parse::<SocketAddr>().unwrap(),
            "127.0.0.53:53".parse().unwrap(),
            "[::1]:53".parse().unwrap()
        ],
        "scoped addresses skipped, loopback kept (keelson runs on the host), three at most"
    );
}

/// A UDP responder on loopback: answers every A question with 198.18.9.9 (TTL 60) and
/// `big.example.test` with a truncated reply; counts the questions it got.
async fn responder() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        loop {
            let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
                return;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let q = Message::from_vec(&buf[..n]).unwrap();
            let mut r = Message::response(q.metadata.id, OpCode::Query);
            r.queries = q.queries.clone();
            let qname = q.queries[0].name().clone();
            if qname.to_ascii() == "txt.example.test." {
                r.answers.push(Record::from_rdata(
                    qname,
                    60,
                    RData::TXT(TXT::new(vec!["x".repeat(200); 6])),
                ));
            } else {
                r.answers.push(Record::from_rdata(
                    qname,
                    60,
                    RData::A(A::new(198, 18, 9, 9)),
                ));
            }
            socket.send_to(&r.to_vec().unwrap(), peer).await.unwrap();
        }
    });
    (addr, count)
}

#[tokio::test]
async fn outside_names_are_forwarded_and_cached_within_bounds() {
    let (upstream, count) = responder().await;
    // A dead upstream first: the forwarder moves on to the next.
    let dead = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    let r = resolver(Zone::build(&view()), vec![dead_addr, upstream]);
    let ask = |qname: &str, qtype| query_bytes(qname, qtype, None);
    let bytes = r
        .handle(&ask("www.example.test.", RecordType::A), client(), 512)
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(
        reply.metadata.id, 0x1234,
        "the client's id, not the upstream's"
    );
    assert_eq!(rdata(&reply.answers), ["198.18.9.9"]);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // Cached: the upstream is not asked again; the TTL is capped.
    let bytes = r
        .handle(&ask("WWW.example.test.", RecordType::A), client(), 512)
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(rdata(&reply.answers), ["198.18.9.9"]);
    assert!(reply.answers[0].ttl <= forward::MAX_CACHE_TTL);
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    // An ExternalName: the CNAME, then its target resolved upstream.
    let bytes = r
        .handle(
            &ask("ext.shop.svc.cluster.local.", RecordType::A),
            client(),
            512,
        )
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert_eq!(rdata(&reply.answers), ["198.18.9.9", "example.test."]);
    // A big upstream reply is cut to a plain UDP client's 512 bytes, with TC.
    let bytes = r
        .handle(&ask("txt.example.test.", RecordType::TXT), client(), 512)
        .await
        .unwrap();
    assert!(bytes.len() <= 512);
    assert!(Message::from_vec(&bytes).unwrap().metadata.truncation);
    // No upstream at all: SERVFAIL.
    let lonely = resolver(Zone::build(&view()), vec![]);
    let bytes = lonely
        .handle(&ask("www.example.test.", RecordType::A), client(), 512)
        .await
        .unwrap();
    assert_eq!(
        Message::from_vec(&bytes).unwrap().metadata.response_code,
        ResponseCode::ServFail
    );
}

#[test]
fn one_source_cannot_flood_the_upstreams() {
    use super::server::{FORWARD_BURST, FORWARD_RATE, Rates};
    let mut rates = Rates::default();
    let start = std::time::Instant::now();
    let burst = FORWARD_BURST as usize;
    let admitted = (0..burst + 50)
        .filter(|_| rates.admit(client(), start))
        .count();
    assert_eq!(admitted, burst, "past the burst, questions are refused");
    assert!(
        rates.admit(ip("198.19.0.6"), start),
        "another source has its own bucket"
    );
    let later = start + std::time::Duration::from_millis(100);
    let refilled = (0..burst).filter(|_| rates.admit(client(), later)).count();
    assert_eq!(
        refilled,
        (FORWARD_RATE / 10.0) as usize,
        "refilled at the rate"
    );
}

/// An upstream that truncates every UDP reply and answers in full over TCP on the same port.
#[tokio::test]
async fn a_truncated_upstream_reply_is_asked_again_over_tcp() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let addr = tcp.local_addr().unwrap();
    let udp = UdpSocket::bind(addr).await.unwrap();
    let reply_to = |q: &Message, truncated: bool| {
        let mut r = Message::response(q.metadata.id, OpCode::Query);
        r.queries = q.queries.clone();
        r.metadata.truncation = truncated;
        if !truncated {
            r.answers.push(Record::from_rdata(
                q.queries[0].name().clone(),
                60,
                RData::A(A::new(198, 18, 7, 7)),
            ));
        }
        r.to_vec().unwrap()
    };
    tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            let q = Message::from_vec(&buf[..n]).unwrap();
            udp.send_to(&reply_to(&q, true), peer).await.unwrap();
        }
    });
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            let len = s.read_u16().await.unwrap();
            let mut buf = vec![0u8; usize::from(len)];
            s.read_exact(&mut buf).await.unwrap();
            let bytes = reply_to(&Message::from_vec(&buf).unwrap(), false);
            s.write_all(&(bytes.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&bytes).await.unwrap();
        }
    });
    let r = resolver(Zone::build(&view()), vec![addr]);
    let bytes = r
        .handle(
            &query_bytes("big.example.test.", RecordType::A, None),
            client(),
            512,
        )
        .await
        .unwrap();
    let reply = Message::from_vec(&bytes).unwrap();
    assert!(!reply.metadata.truncation);
    assert_eq!(rdata(&reply.answers), ["198.18.7.7"]);
}
