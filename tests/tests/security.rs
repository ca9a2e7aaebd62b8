//! The trust boundary as an attacker and an operator meet it: TLS on the
//! client, peer and metrics ports; brokers that accept only peers whose
//! certificate (under the cluster CA) proves the node id they claim; a
//! broker that will not listen off loopback unprotected; certificates that
//! rotate without a restart.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tern_client::{
    Admin, Client, ClientConfig, Consumer, ConsumerConfig, NewTopic, Offset, Producer,
    ProducerConfig, ProducerRecord,
};
use tern_tests::{bounded, run_ternd, Broker, Certs, Cluster};
use tern_tls::generate::CertifiedPem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(120);

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn round_trip(client: &Client, topic: &str, value: &str) {
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let at = producer
        .send(ProducerRecord::new(topic, value.to_owned()).with_key("k"))
        .await
        .unwrap();
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer
        .seek(topic, at.partition, Offset::At(at.offset))
        .await
        .unwrap();
    let record = consumer.next_record().await.unwrap();
    assert_eq!(record.value.as_deref(), Some(value.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_tls_clients_and_nobody_else() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    for id in 1..=3 {
        certs.node(id);
    }
    certs.client("alice");
    let cluster = Cluster::start(dir.path(), 3, &refs(&certs.broker_args()));
    bounded(LIMIT, async {
        // One-way TLS, then mutual TLS: both serve a replicated round trip.
        let client = Client::connect_with(&cluster.seeds(), certs.client_config(None))
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topic("secure", NewTopic::new(3))
            .await
            .unwrap();
        round_trip(&client, "secure", "over tls").await;
        let alice = Client::connect_with(&cluster.seeds(), certs.client_config(Some("alice")))
            .await
            .unwrap();
        round_trip(&alice, "secure", "over mutual tls").await;
        // A plaintext client gets no answer; nor does one trusting another CA.
        // (A short bootstrap: connecting would otherwise retry for 30 s.)
        let brief = |config: ClientConfig| ClientConfig {
            bootstrap_timeout: Duration::from_secs(2),
            ..config
        };
        let plain =
            Client::connect_with(&cluster.seeds(), brief(tern_tests::fault_client_config())).await;
        assert!(plain.is_err(), "a plaintext client was served");
        let other = Certs::new(&dir.path().join("other-ca"));
        let wrong_ca =
            Client::connect_with(&cluster.seeds(), brief(other.client_config(None))).await;
        assert!(wrong_ca.is_err(), "a client trusting another CA connected");
    })
    .await;
    let log = cluster.logs();
    assert!(log.contains("principal=alice"), "{log}");
    assert!(
        log.contains("tls=true"),
        "peers did not connect over TLS:\n{log}"
    );
}

// ---------------------------------------------------------------- the peer port

const KIND_HELLO: u8 = 1;
const KIND_WAS_MEMBER: u8 = 7;
const KIND_RESPONSE: u8 = 0x80;
const PEER_PROTOCOL_VERSION: u16 = 1;

/// Speaks the peer protocol as a process claiming to be node `from`: a
/// hello, then one harmless request ("was node 1 a member?"). `true` if
/// the broker answered it (it accepted this peer), `false` if it closed the
/// connection without an answer (refused).
async fn peer_is_served<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    from: u64,
    to: u64,
) -> bool {
    let mut hello = BytesMut::new();
    hello.put_u8(KIND_HELLO);
    hello.put_u16(PEER_PROTOCOL_VERSION);
    hello.put_u64(from);
    hello.put_u64(to);
    hello.put_slice(b"tern");
    let mut request = BytesMut::new();
    request.put_u8(KIND_WAS_MEMBER);
    request.put_u64(42); // correlation id
    request.put_u64(0); // metadata group
    request.put_u64_le(1); // bincode of node id 1
    for frame in [hello, request] {
        let mut out = BytesMut::new();
        out.put_u32(frame.len() as u32);
        out.put_slice(&frame);
        if stream.write_all(&out).await.is_err() {
            return false;
        }
    }
    let _ = stream.flush().await;
    let mut len = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(15), stream.read_exact(&mut len)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return false, // closed: refused
        Err(_) => panic!("the broker neither answered nor closed the connection"),
    }
    // Anything but a whole answer frame (e.g. a TLS alert read as a length)
    // means this peer was not served.
    let len = u32::from_be_bytes(len) as usize;
    if !(10..=1 << 20).contains(&len) {
        return false;
    }
    let mut body = vec![0u8; len];
    if stream.read_exact(&mut body).await.is_err() {
        return false;
    }
    let mut body = &body[..];
    body.get_u8() == KIND_RESPONSE && body.get_u64() == 42
}

/// A TLS connection to a peer port presenting `cert`/`key` and trusting `ca`.
async fn tls_to_peer(
    addr: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Option<tern_tls::client::TlsStream<TcpStream>> {
    let connector = tern_tls::client_connector(ca, Some((cert, key))).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    connector
        .connect(tern_tls::node_server_name(1), tcp)
        .await
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_port_admits_only_brokers_proving_the_node_id_they_claim() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    certs.node(1);
    certs.node(2);
    certs.node(5);
    certs.client("mallory");
    let rogue = Certs::new(&dir.path().join("rogue"));
    rogue.node(2);
    let args: Vec<String> = certs
        .broker_args()
        .into_iter()
        .map(|a| a.replace("{node}", "1"))
        .collect();
    let broker = Broker::start(&dir.path().join("n1"), &refs(&args));
    let topics_before = bounded(LIMIT, async {
        let client = Client::connect_with(&broker.addr, certs.client_config(None))
            .await
            .unwrap();
        let admin = Admin::new(client);
        admin.create_topic("kept", NewTopic::new(1)).await.unwrap();
        admin.list_topics().await.unwrap()
    })
    .await;
    let peer = broker.peer_addr.clone();
    let ca = certs.path("ca.pem");
    bounded(LIMIT, async {
        // Plain TCP with a perfect hello: no TLS, no entry.
        let plain = TcpStream::connect(&peer).await.unwrap();
        assert!(!peer_is_served(plain, 2, 1).await, "plaintext peer served");
        // A broker certificate of another CA (self-made): the handshake fails,
        // or if it got through, the hello is refused.
        let other = tls_to_peer(
            &peer,
            &ca,
            &rogue.path("node-2.pem"),
            &rogue.path("node-2-key.pem"),
        )
        .await;
        if let Some(s) = other {
            assert!(!peer_is_served(s, 2, 1).await, "foreign-CA peer served");
        }
        // A valid *client* certificate of this CA proves no node id.
        let client_cert = tls_to_peer(
            &peer,
            &ca,
            &certs.path("mallory.pem"),
            &certs.path("mallory-key.pem"),
        )
        .await;
        if let Some(s) = client_cert {
            assert!(
                !peer_is_served(s, 2, 1).await,
                "client certificate served as a peer"
            );
        }
        // A real broker certificate (node 5) claiming to be node 2.
        let liar = tls_to_peer(
            &peer,
            &ca,
            &certs.path("node-5.pem"),
            &certs.path("node-5-key.pem"),
        )
        .await
        .expect("a certificate of this CA completes the handshake");
        assert!(
            !peer_is_served(liar, 2, 1).await,
            "node 5 was served as node 2"
        );
        // A real broker certificate of this CA, honest about its id, but
        // node 2 is not a member of this one-broker cluster (nor being
        // added): a decommissioned broker or a certificate issued ahead of
        // time gets no say in the cluster.
        let outsider = tls_to_peer(
            &peer,
            &ca,
            &certs.path("node-2.pem"),
            &certs.path("node-2-key.pem"),
        )
        .await
        .expect("a certificate of this CA completes the handshake");
        assert!(
            !peer_is_served(outsider, 2, 1).await,
            "node 2, not a member, was served"
        );
        // Control: a member's certificate and hello (node 1's own) are
        // served, so the refusals above are the checks at work, not a
        // broken probe.
        let honest = tls_to_peer(
            &peer,
            &ca,
            &certs.path("node-1.pem"),
            &certs.path("node-1-key.pem"),
        )
        .await
        .expect("handshake");
        assert!(
            peer_is_served(honest, 1, 1).await,
            "a genuine peer was refused"
        );
        // Nothing changed in the catalogue.
        let client = Client::connect_with(&broker.addr, certs.client_config(None))
            .await
            .unwrap();
        assert_eq!(
            Admin::new(client).list_topics().await.unwrap(),
            topics_before
        );
    })
    .await;
    let log = broker.log();
    assert!(log.contains("proves no node id"), "{log}");
    assert!(
        log.contains("is not the node its certificate proves"),
        "{log}"
    );
    assert!(
        log.contains("node 2 is not a member of the cluster"),
        "{log}"
    );
}

/// Without TLS nothing proves a peer's id, but a made-up one is still not a
/// member: the attack that once created and deleted topics, re-registered a
/// broker's client address and added a fake voter started with a hello
/// from "node 4242".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_peer_port_refuses_a_sender_that_is_not_a_member() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    let peer = broker.peer_addr.clone();
    bounded(LIMIT, async {
        let stranger = TcpStream::connect(&peer).await.unwrap();
        assert!(
            !peer_is_served(stranger, 4242, 1).await,
            "node 4242 was served"
        );
        let member = TcpStream::connect(&peer).await.unwrap();
        assert!(
            peer_is_served(member, 1, 1).await,
            "the member's own id was refused"
        );
    })
    .await;
    let log = broker.log();
    assert!(
        log.contains("node 4242 is not a member of the cluster"),
        "{log}"
    );
}

#[test]
fn a_broker_refuses_to_listen_off_loopback_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d").display().to_string();
    let (ok, _, err) = run_ternd(
        &[
            "--data-dir",
            &data,
            "--listen",
            "0.0.0.0:0",
            "--metrics-listen",
            "127.0.0.1:0",
            "--peer-listen",
            "127.0.0.1:0",
        ],
        Duration::from_secs(30),
    );
    assert!(!ok, "ternd started on 0.0.0.0 without TLS");
    assert!(
        err.contains("--insecure") && err.contains("0.0.0.0"),
        "{err}"
    );
    // One line with its causes, no backtrace (run_ternd sets RUST_BACKTRACE).
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("Error: resolve configuration: "), "{err}");
}

// ---------------------------------------------------------------- rotation and metrics

/// The certificate a TLS server presents at `addr`, trusting `ca`.
async fn served_certificate(addr: &str, ca: &Path) -> Vec<u8> {
    let connector = tern_tls::client_connector(ca, None).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tern_tls::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use tern_tls::pki_types::pem::PemObject;
    tern_tls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_restart_and_metrics_speak_tls() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    let first = certs.node(1);
    let args: Vec<String> = certs
        .broker_args()
        .into_iter()
        .filter(|a| a != "--metrics-plaintext")
        .map(|a| a.replace("{node}", "1"))
        .collect();
    let mut broker = Broker::configure(&dir.path().join("n1"), &refs(&args));
    broker.spawn_no_wait();
    let ca = certs.path("ca.pem");
    // /ready over TLS (the metrics port uses the broker's certificate).
    bounded(LIMIT, async {
        while !https_ready(&broker.http_addr, &ca).await {
            assert!(broker.is_running(), "ternd exited:\n{}", broker.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        broker.http("/ready").is_none_or(|(code, _)| code != 200),
        "plain HTTP served"
    );
    bounded(LIMIT, async {
        assert_eq!(
            served_certificate(&broker.addr, &ca).await,
            der_of(&first.cert)
        );
        let client = Client::connect_with(&broker.addr, certs.client_config(None))
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topic("rot", NewTopic::new(1))
            .await
            .unwrap();
        let producer = Producer::new(client.clone(), ProducerConfig::default());
        let mut acked = 0u64;
        let mut rotated: Option<CertifiedPem> = None;
        let mut rotated_at = None;
        // Produce continuously; rotate part-way; keep producing until the
        // new certificate is served (reload on file change), then a while more.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(
                Instant::now() < deadline,
                "the new certificate was never served"
            );
            producer
                .send(ProducerRecord::new("rot", format!("r{acked}")))
                .await
                .unwrap();
            acked += 1;
            if acked == 200 {
                rotated = Some(certs.node(1));
                broker.hangup();
            }
            if let Some(new) = &rotated {
                if rotated_at.is_none()
                    && served_certificate(&broker.addr, &ca).await == der_of(&new.cert)
                {
                    rotated_at = Some(acked);
                }
                if rotated_at.is_some_and(|at| acked >= at + 200) {
                    break;
                }
            }
        }
        // A new client connects under the new certificate; every acknowledged
        // record is there, in order.
        let fresh = Client::connect_with(&broker.addr, certs.client_config(None))
            .await
            .unwrap();
        let mut consumer = Consumer::new(fresh, ConsumerConfig::default());
        consumer.assign_all("rot", Offset::Earliest).await.unwrap();
        let mut seen = 0u64;
        while seen < acked {
            for r in consumer.poll().await.unwrap() {
                assert_eq!(r.value.as_deref(), Some(format!("r{seen}").as_bytes()));
                seen += 1;
            }
        }
    })
    .await;
    assert!(
        broker.log().contains("TLS material reloaded"),
        "{}",
        broker.log()
    );
}

/// GET /ready over TLS: whether it answered 200.
async fn https_ready(addr: &str, ca: &Path) -> bool {
    let connector = tern_tls::client_connector(ca, None).unwrap();
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return false;
    };
    let name = tern_tls::ServerName::try_from("127.0.0.1").unwrap();
    let Ok(mut tls) = connector.connect(name, tcp).await else {
        return false;
    };
    if tls
        .write_all(b"GET /ready HTTP/1.0\r\nHost: tern\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).starts_with("HTTP/1.0 200")
        || String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200")
}

/// `AddBroker` naming a current member at another address would redirect
/// that member's Raft traffic to whoever listens there: it is refused, and
/// the cluster keeps working at the old address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_again_cannot_move_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("n1"), &[]);
    bounded(LIMIT, async {
        let client = Client::connect(&broker.addr).await.unwrap();
        let admin = Admin::new(client.clone());
        let refused = admin
            .add_broker(1, "127.0.0.1:1")
            .await
            .expect_err("a member's address was overwritten");
        assert!(
            refused.to_string().contains("already a member")
                || format!("{refused:?}").contains("already a member"),
            "{refused:?}"
        );
        admin.create_topic("still", NewTopic::new(1)).await.unwrap();
        round_trip(&client, "still", "same address").await;
    })
    .await;
}

// ---------------------------------------------------------------- users and SCRAM

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "admin secret";

/// Broker flags and environment of an authenticating cluster: every
/// connection must authenticate; `admin` is a super-user, created at start.
const AUTH_ARGS: [&str; 3] = ["--auth-required", "--super-user", ADMIN];
const AUTH_ENV: [(&str, &str); 2] = [
    ("TERN_BOOTSTRAP_USER", ADMIN),
    ("TERN_BOOTSTRAP_PASSWORD", ADMIN_PASSWORD),
];

/// A single broker requiring authentication, with the bootstrap admin.
fn auth_broker(dir: &Path) -> Broker {
    let mut broker = Broker::configure(dir, &AUTH_ARGS);
    for (k, v) in AUTH_ENV {
        broker.set_env(k, v);
    }
    broker.spawn();
    broker
}

/// Client settings authenticating as `user`; a short bootstrap, so a test
/// that expects a refusal learns it was not retried for 30 s.
fn as_user(user: &str, password: &str) -> ClientConfig {
    ClientConfig {
        bootstrap_timeout: Duration::from_secs(10),
        ..tern_tests::fault_client_config()
    }
    .credentials(user, password)
}

/// Connects as the bootstrap admin once the broker has created it (the
/// readiness check of an authenticating broker), within a deadline.
async fn admin_when_ready(seeds: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Client::connect_with(seeds, as_user(ADMIN, ADMIN_PASSWORD)).await {
            Ok(client) => return client,
            Err(e) if Instant::now() < deadline => {
                eprintln!("admin not accepted yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the bootstrap admin was never accepted: {e:#?}"),
        }
    }
}

/// Frames spoken by hand on a plain connection.
struct RawConnection {
    stream: TcpStream,
    next_id: u32,
}

impl RawConnection {
    async fn open(addr: &str) -> RawConnection {
        RawConnection {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        }
    }

    async fn call(
        &mut self,
        request: tern_protocol::Request,
    ) -> Result<tern_protocol::Response, tern_protocol::ErrorReply> {
        let correlation_id = self.next_id;
        self.next_id += 1;
        let mut body = BytesMut::new();
        tern_protocol::RequestFrame {
            correlation_id,
            request,
        }
        .encode(&mut body);
        let mut frame = BytesMut::new();
        frame.put_u32(body.len() as u32);
        frame.put_slice(&body);
        self.stream.write_all(&frame).await.unwrap();
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut len))
            .await
            .expect("an answer within 10 s")
            .expect("an answer before the connection closed");
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut body).await.unwrap();
        let reply = tern_protocol::ResponseFrame::decode(body.into()).unwrap();
        assert_eq!(reply.correlation_id, correlation_id);
        reply.result
    }

    async fn authenticate_bytes(
        &mut self,
        bytes: &[u8],
    ) -> Result<tern_protocol::Response, tern_protocol::ErrorReply> {
        self.call(tern_protocol::Request::SaslAuthenticate {
            auth_bytes: bytes::Bytes::copy_from_slice(bytes),
        })
        .await
    }

    async fn handshake(&mut self) {
        let answer = self
            .call(tern_protocol::Request::SaslHandshake {
                mechanism: "SCRAM-SHA-256".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            answer,
            tern_protocol::Response::SaslHandshake {
                mechanisms: vec!["SCRAM-SHA-256".into()]
            }
        );
    }

    /// Whether the broker closed the connection (within 10 s).
    async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn sasl_bytes(answer: tern_protocol::Response) -> Vec<u8> {
    match answer {
        tern_protocol::Response::SaslAuthenticate { auth_bytes } => auth_bytes.to_vec(),
        other => panic!("not a SASL answer: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_an_unauthenticated_client_is_refused_when_auth_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    bounded(LIMIT, async {
        let admin = admin_when_ready(&broker.addr).await;
        Admin::new(admin.clone())
            .create_topic("guarded", NewTopic::new(1))
            .await
            .unwrap();
        // The client library: refused at once, not retried until its
        // bootstrap deadline.
        let started = Instant::now();
        let anonymous = ClientConfig {
            bootstrap_timeout: Duration::from_secs(10),
            ..tern_tests::fault_client_config()
        };
        let e = Client::connect_with(&broker.addr, anonymous)
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(tern_protocol::ErrorCode::AuthenticationRequired),
            "{e:#?}"
        );
        assert!(!e.is_retriable());
        assert!(started.elapsed() < Duration::from_secs(5), "it was retried");
        // By hand: every request but the SASL ones is refused, and the
        // connection stays usable for authenticating.
        let mut raw = RawConnection::open(&broker.addr).await;
        for request in [
            tern_protocol::Request::Metadata { topics: None },
            tern_protocol::Request::Fetch {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: 1024,
                partitions: vec![tern_protocol::api::FetchPartition {
                    topic: "guarded".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: 1024,
                }],
            },
            tern_protocol::Request::Produce {
                acks: tern_protocol::api::Acks::All,
                timeout_ms: 1000,
                partitions: vec![],
            },
            tern_protocol::Request::User(tern_protocol::auth::UserRequest::List),
        ] {
            let refused = raw.call(request).await.unwrap_err();
            assert_eq!(
                refused.code,
                tern_protocol::ErrorCode::AuthenticationRequired
            );
        }
        raw.handshake().await;
        // The admin is served.
        round_trip(&admin, "guarded", "authenticated").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_a_wrong_password_and_an_unknown_user_are_refused_alike() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    bounded(LIMIT, async {
        let admin = admin_when_ready(&broker.addr).await;
        Admin::new(admin)
            .upsert_user("alice", "alice password")
            .await
            .unwrap();
        let refusal = |user: &'static str, password: &'static str| {
            let addr = broker.addr.clone();
            async move {
                let started = Instant::now();
                let e = Client::connect_with(&addr, as_user(user, password))
                    .await
                    .unwrap_err();
                assert!(!e.is_retriable(), "{e:#?}");
                assert!(started.elapsed() < Duration::from_secs(5), "it was retried");
                match e {
                    tern_client::ClientError::AuthenticationFailed { message, .. } => message,
                    other => panic!("not an authentication failure: {other:#?}"),
                }
            }
        };
        let wrong_password = refusal("alice", "not her password").await;
        let unknown_user = refusal("mallory", "any password").await;
        assert_eq!(wrong_password, unknown_user);
        assert!(wrong_password.contains("authentication failed"));
        // The right password still works.
        let alice = Client::connect_with(&broker.addr, as_user("alice", "alice password"))
            .await
            .unwrap();
        Admin::new(alice)
            .create_topic("alices", NewTopic::new(1))
            .await
            .unwrap();
    })
    .await;
    let (_, metrics) = broker.http("/metrics").unwrap();
    assert!(
        tern_tests::metric_sum(
            &metrics,
            "tern_auth_failures_total{mechanism=\"SCRAM-SHA-256\"}"
        ) >= 2.0,
        "{metrics}"
    );
    let log = broker.log();
    assert!(log.contains("tern::security"), "{log}");
    assert!(
        log.contains("reason=wrong password") || log.contains("reason=\"wrong password\""),
        "{log}"
    );
    assert!(log.contains("unknown user"), "{log}");
    assert!(
        log.contains("operation=\"create\"") || log.contains("operation=create"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_the_right_password_produces_and_consumes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    bounded(LIMIT, async {
        let admin = admin_when_ready(&broker.addr).await;
        let admin = Admin::new(admin);
        admin.upsert_user("alice", "first password").await.unwrap();
        assert_eq!(admin.list_users().await.unwrap(), vec!["admin", "alice"]);
        let alice = Client::connect_with(&broker.addr, as_user("alice", "first password"))
            .await
            .unwrap();
        Admin::new(alice.clone())
            .create_topic("orders", NewTopic::new(2))
            .await
            .unwrap();
        round_trip(&alice, "orders", "as alice").await;
        // Not a super-user: no user administration.
        let e = Admin::new(alice).list_users().await.unwrap_err();
        assert_eq!(
            e.code(),
            Some(tern_protocol::ErrorCode::AuthenticationRequired)
        );
        // A password change takes effect for new connections.
        admin.upsert_user("alice", "second password").await.unwrap();
        assert!(
            Client::connect_with(&broker.addr, as_user("alice", "first password"))
                .await
                .is_err()
        );
        let alice = Client::connect_with(&broker.addr, as_user("alice", "second password"))
            .await
            .unwrap();
        round_trip(&alice, "orders", "after the change").await;
        admin.delete_user("alice").await.unwrap();
        assert_eq!(admin.list_users().await.unwrap(), vec!["admin"]);
    })
    .await;
}

/// Removing a user, or changing its password, ends the connections that
/// authenticated as it (at their next request), as revoking an NATS user
/// does; other users' connections go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_removing_a_user_or_changing_its_password_ends_its_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    bounded(LIMIT, async {
        let admin = Admin::new(admin_when_ready(&broker.addr).await);
        admin.upsert_user("alice", "alice password").await.unwrap();
        admin.upsert_user("carol", "carol password").await.unwrap();
        admin.upsert_user("dave", "dave password").await.unwrap();
        let metadata = || tern_protocol::Request::Metadata { topics: None };
        let mut open = Vec::new();
        for (user, password) in [
            ("alice", "alice password"),
            ("carol", "carol password"),
            ("dave", "dave password"),
        ] {
            let conn =
                tern_client::Connection::connect_with(&broker.addr, &as_user(user, password))
                    .await
                    .unwrap();
            conn.request(metadata()).await.unwrap();
            open.push(conn);
        }
        admin.delete_user("alice").await.unwrap();
        admin
            .upsert_user("carol", "new carol password")
            .await
            .unwrap();
        for (conn, user) in open.iter().zip(["alice", "carol"]) {
            let refused = conn.request(metadata()).await.unwrap_err();
            assert_eq!(
                refused.code(),
                Some(tern_client::ErrorCode::AuthenticationFailed),
                "{user}: {refused:?}"
            );
            assert!(
                conn.request(metadata()).await.is_err(),
                "{user}'s connection stayed open"
            );
        }
        // Dave, untouched, goes on; so does carol with her new password.
        open[2].request(metadata()).await.unwrap();
        tern_client::Connection::connect_with(
            &broker.addr,
            &as_user("carol", "new carol password"),
        )
        .await
        .unwrap()
        .request(metadata())
        .await
        .unwrap();
    })
    .await;
    let log = broker.log();
    assert!(
        log.contains("its user was removed or its password changed"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_survive_a_restart_and_reach_every_broker_of_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    // The harness authenticates as the bootstrap admin to see the cluster ready.
    let mut cluster = Cluster::start_with_env(dir.path(), 3, &AUTH_ARGS, &AUTH_ENV);
    let bob = as_user("bob", "bob password");
    bounded(LIMIT, async {
        let admin = Client::connect_with(&cluster.seeds(), cluster.client_config())
            .await
            .unwrap();
        Admin::new(admin)
            .upsert_user("bob", "bob password")
            .await
            .unwrap();
        // Bob authenticates with each broker itself (one connection each,
        // no other broker involved) once the user has reached it.
        for b in &cluster.brokers {
            authenticated_metadata_eventually(&b.addr, &bob).await;
        }
    })
    .await;
    cluster.brokers[1].restart();
    cluster.wait_ready();
    bounded(LIMIT, async {
        let conn = tern_client::Connection::connect_with(&cluster.brokers[1].addr, &bob)
            .await
            .expect("bob authenticates with the restarted broker");
        conn.request(tern_protocol::Request::Metadata { topics: None })
            .await
            .unwrap();
        let client = Client::connect_with(&cluster.brokers[1].addr, bob.clone())
            .await
            .unwrap();
        Admin::new(client.clone())
            .create_topic("bobs", NewTopic::new(3))
            .await
            .unwrap();
        round_trip(&client, "bobs", "replicated user").await;
    })
    .await;
}

/// Waits (bounded) until `config` authenticates with the broker at `addr`
/// and gets metadata there.
async fn authenticated_metadata_eventually(addr: &str, config: &ClientConfig) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let conn = tern_client::Connection::connect_with(addr, config).await?;
            conn.request(tern_protocol::Request::Metadata { topics: None })
                .await
        };
        match attempt.await {
            Ok(_) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{addr} does not accept the user yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{addr} never accepted the user: {e:#?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_malformed_handshakes_get_a_clear_error_and_a_closed_connection() {
    use tern_auth::ClientExchange;
    use tern_protocol::ErrorCode;
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    bounded(LIMIT, async {
        let admin = admin_when_ready(&broker.addr).await;
        Admin::new(admin)
            .upsert_user("alice", "alice password")
            .await
            .unwrap();
        let refused = |answer: Result<_, tern_protocol::ErrorReply>, wanted: &str| {
            let e = answer.expect_err("refused");
            assert_eq!(e.code, ErrorCode::AuthenticationFailed, "{e:?}");
            assert!(
                e.message.contains(wanted),
                "{wanted:?} not in {:?}",
                e.message
            );
        };
        // Truncated client-first.
        let mut raw = RawConnection::open(&broker.addr).await;
        raw.handshake().await;
        refused(raw.authenticate_bytes(b"n,,n=alice").await, "ends before");
        assert!(raw.is_closed().await);
        // Oversized client-first (under the frame's bound, over SCRAM's).
        let mut raw = RawConnection::open(&broker.addr).await;
        raw.handshake().await;
        let mut big = b"n,,n=alice,r=".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        refused(raw.authenticate_bytes(&big).await, "over the limit");
        assert!(raw.is_closed().await);
        // A message before the handshake.
        let mut raw = RawConnection::open(&broker.addr).await;
        refused(
            raw.authenticate_bytes(b"n,,n=alice,r=abc").await,
            "out of order",
        );
        assert!(raw.is_closed().await);
        // A client-final whose nonce is not this exchange's.
        let mut raw = RawConnection::open(&broker.addr).await;
        raw.handshake().await;
        let (exchange, first) = ClientExchange::start("alice", "alice password").unwrap();
        let server_first = sasl_bytes(raw.authenticate_bytes(&first).await.unwrap());
        let (_, client_final) = exchange.respond(&server_first).unwrap();
        let tampered = String::from_utf8(client_final)
            .unwrap()
            .replacen(",r=", ",r=x", 1);
        refused(raw.authenticate_bytes(tampered.as_bytes()).await, "nonce");
        assert!(raw.is_closed().await);
        // A client-final replayed from a successful exchange on another connection.
        let mut first_conn = RawConnection::open(&broker.addr).await;
        first_conn.handshake().await;
        let (exchange, first) = ClientExchange::start("alice", "alice password").unwrap();
        let server_first = sasl_bytes(first_conn.authenticate_bytes(&first).await.unwrap());
        let (awaiting, client_final) = exchange.respond(&server_first).unwrap();
        let server_final = sasl_bytes(first_conn.authenticate_bytes(&client_final).await.unwrap());
        awaiting.verify(&server_final).unwrap();
        // One exchange per connection.
        let again = first_conn
            .call(tern_protocol::Request::SaslHandshake {
                mechanism: "SCRAM-SHA-256".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(again.code, ErrorCode::InvalidRequest);
        assert!(again.message.contains("already authenticated"), "{again:?}");
        let mut replay = RawConnection::open(&broker.addr).await;
        replay.handshake().await;
        let (_, first) = ClientExchange::start("alice", "alice password").unwrap();
        replay.authenticate_bytes(&first).await.unwrap();
        refused(replay.authenticate_bytes(&client_final).await, "nonce");
        assert!(replay.is_closed().await);
        // The first connection stays authenticated and served; so are others.
        assert!(first_conn
            .call(tern_protocol::Request::Metadata { topics: None })
            .await
            .is_ok());
        let alice = Client::connect_with(&broker.addr, as_user("alice", "alice password"))
            .await
            .unwrap();
        Admin::new(alice.clone())
            .create_topic("after-garbage", NewTopic::new(1))
            .await
            .unwrap();
        round_trip(&alice, "after-garbage", "still serving").await;
    })
    .await;
}

#[test]
fn scram_the_cli_adds_a_user_from_stdin_then_produces_with_tern_password() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let broker = auth_broker(&dir.path().join("n1"));
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(admin_when_ready(&broker.addr));
    let tern = |args: &[&str], env: &[(&str, &str)], stdin: &str| {
        let mut command = Command::new(tern_tests::bin("tern"));
        command
            .args(["--broker", &broker.addr])
            .args(args)
            .env_remove("TERN_BROKER")
            .env_remove("TERN_PROFILE")
            .env_remove("TERN_USERNAME")
            .env_remove("TERN_PASSWORD")
            .env("TERN_CONFIG", dir.path().join("tern.toml"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let as_admin = [("TERN_USERNAME", ADMIN), ("TERN_PASSWORD", ADMIN_PASSWORD)];
    let (ok, _, err) = tern(
        &["user", "add", "carol", "--password-stdin"],
        &as_admin,
        "carol password\n",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = tern(&["user", "list"], &as_admin, "");
    assert!(ok, "{err}");
    assert_eq!(out, "admin\ncarol\n");
    let as_carol = [("TERN_PASSWORD", "carol password")];
    let (ok, _, err) = tern(
        &[
            "--username",
            "carol",
            "topic",
            "create",
            "cli-auth",
            "--partitions",
            "1",
        ],
        &as_carol,
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = tern(
        &["--username", "carol", "produce", "cli-auth"],
        &as_carol,
        "one\ntwo\n",
    );
    assert!(ok, "{err}");
    let (ok, out, err) = tern(
        &[
            "--username",
            "carol",
            "consume",
            "cli-auth",
            "--from-beginning",
            "--count",
            "2",
        ],
        &as_carol,
        "",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\n");
    // The login password may come from stdin too.
    let (ok, out, err) = tern(
        &["--username", "carol", "--password-stdin", "topic", "list"],
        &[],
        "carol password\n",
    );
    assert!(ok, "{err}");
    assert!(out.contains("cli-auth"), "{out}");
    // A storm of authenticated connections (`tern bench connect`): each
    // runs its own SCRAM exchange; with a wrong password every one fails.
    let (ok, out, err) = tern(
        &[
            "--username",
            "carol",
            "bench",
            "connect",
            "--clients",
            "40",
            "--concurrency",
            "20",
        ],
        &as_carol,
        "",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("connect: 40 connections (20 at once)") && out.contains(" 0 failed"),
        "{out}"
    );
    let (ok, _, err) = tern(
        &["--username", "carol", "bench", "connect", "--clients", "3"],
        &[("TERN_PASSWORD", "not carol's")],
        "",
    );
    assert!(!ok && err.contains("authentication"), "{err}");
    // A wrong password fails at once, naming authentication; no password
    // at all is refused before connecting.
    let started = Instant::now();
    let (ok, _, err) = tern(
        &["--username", "carol", "topic", "list"],
        &[("TERN_PASSWORD", "wrong")],
        "",
    );
    assert!(!ok);
    assert!(err.contains("authentication"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(8), "it was retried");
    let (ok, _, err) = tern(&["--username", "carol", "topic", "list"], &[], "");
    assert!(!ok);
    assert!(err.contains("TERN_PASSWORD"), "{err}");
    // Without credentials the broker refuses.
    let (ok, _, err) = tern(&["topic", "list"], &[], "");
    assert!(!ok);
    assert!(err.contains("authentication_required"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_a_tls_client_certificate_counts_as_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    certs.node(1);
    certs.client("carol");
    let mut args = certs.broker_args();
    args.extend(AUTH_ARGS.iter().map(|s| s.to_string()));
    // The harness authenticates as the bootstrap admin, over TLS.
    let cluster = Cluster::start_with_env(dir.path(), 1, &refs(&args), &AUTH_ENV);
    bounded(LIMIT, async {
        // A certificate's principal is enough.
        let carol = Client::connect_with(&cluster.seeds(), certs.client_config(Some("carol")))
            .await
            .unwrap();
        Admin::new(carol.clone())
            .create_topic("certified", NewTopic::new(1))
            .await
            .unwrap();
        round_trip(&carol, "certified", "by certificate").await;
        // TLS without a certificate or a password is not.
        let anonymous = ClientConfig {
            bootstrap_timeout: Duration::from_secs(10),
            ..certs.client_config(None)
        };
        let e = Client::connect_with(&cluster.seeds(), anonymous)
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(tern_protocol::ErrorCode::AuthenticationRequired),
            "{e:#?}"
        );
        // SCRAM over TLS works too.
        let admin = Client::connect_with(
            &cluster.seeds(),
            certs.client_config(None).credentials(ADMIN, ADMIN_PASSWORD),
        )
        .await
        .unwrap();
        round_trip(&admin, "certified", "by password over tls").await;
    })
    .await;
}

/// Metadata entries written before a broker joins: past two snapshots of
/// the metadata group (one per 1,000 entries, keeping 1,000 entries behind
/// the last), so the newcomer can only catch up from a snapshot.
const METADATA_ENTRIES_PAST_PURGE: usize = 2_600;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_users_reach_a_broker_that_catches_up_from_a_metadata_snapshot() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start_with_env(dir.path(), 3, &AUTH_ARGS, &AUTH_ENV);
    let admin = bounded(Duration::from_secs(240), async {
        let admin = Admin::new(
            Client::connect_with(&cluster.seeds(), cluster.client_config())
                .await
                .unwrap(),
        );
        // Each change of dave's password is one metadata entry; the last
        // password is the one that counts.
        futures::stream::iter(0..METADATA_ENTRIES_PAST_PURGE)
            .map(|i| {
                let admin = &admin;
                async move {
                    admin
                        .upsert_user("dave", &format!("dave password {i}"))
                        .await
                        .unwrap()
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<()>>()
            .await;
        admin
            .upsert_user("dave", "dave's final password")
            .await
            .unwrap();
        admin
    })
    .await;
    let four = cluster.start_joining(dir.path(), &AUTH_ARGS);
    let peer = cluster.brokers[four].peer_addr.clone();
    bounded(LIMIT, admin.add_broker(4, &peer)).await.unwrap();
    cluster.brokers[four].wait_ready();
    bounded(LIMIT, async {
        authenticated_metadata_eventually(
            &cluster.brokers[four].addr,
            &as_user("dave", "dave's final password"),
        )
        .await;
    })
    .await;
    let log = cluster.brokers[four].log();
    assert!(
        log.contains("installed a metadata snapshot"),
        "broker 4 caught up without a snapshot; the test proves nothing:\n{log}"
    );
}

// ------------------------------------------------------------- authorization

use tern_client::{
    AclRule, Effect, ErrorCode, LockClient, LockOptions, Operation, ResourceKind, ResourcePattern,
};
use tern_protocol::coord::{GroupRequest, LockRequest};
use tern_protocol::Request;

fn rule(
    principal: &str,
    effect: Effect,
    operation: Operation,
    resource: ResourcePattern,
) -> AclRule {
    AclRule {
        principal: principal.into(),
        resource,
        operation,
        effect,
    }
}

fn topic(name: &str) -> ResourcePattern {
    ResourcePattern::exact(ResourceKind::Topic, name)
}

/// The error code of a refused call, or a panic naming what succeeded.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, tern_client::ClientError>) -> ErrorCode {
    match r {
        Ok(v) => panic!("{what} was allowed: {v:?}"),
        Err(e) => e
            .code()
            .unwrap_or_else(|| panic!("{what} failed without a code: {e:?}")),
    }
}

async fn produce(client: &Client, topic: &str) -> Result<(u32, u64), tern_client::ClientError> {
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            retries: 0,
            ..ProducerConfig::default()
        },
    );
    let at = producer
        .send(ProducerRecord::new(topic, "v".to_owned()))
        .await?;
    Ok((at.partition, at.offset))
}

async fn consume_at(
    client: &Client,
    topic: &str,
    (partition, offset): (u32, u64),
) -> Result<(), tern_client::ClientError> {
    let mut consumer = Consumer::new(client.clone(), ConsumerConfig::default());
    consumer.seek(topic, partition, Offset::At(offset)).await?;
    consumer.next_record().await.map(drop)
}

/// Runs the `tern` CLI as `identity` against `broker`: its success and output.
fn tern_cli(certs: &Certs, broker: &str, identity: &str, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tern_tests::bin("tern"))
        .args(["--broker", broker, "--tls-ca"])
        .arg(certs.path("ca.pem"))
        .arg("--tls-cert")
        .arg(certs.path(&format!("{identity}.pem")))
        .arg("--tls-key")
        .arg(certs.path(&format!("{identity}-key.pem")))
        .args(args)
        .output()
        .expect("run tern");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authorization_on_a_principal_may_do_only_what_a_rule_allows() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    certs.node(1);
    for name in ["admin", "alice", "mallory"] {
        certs.client(name);
    }
    let mut args = certs.broker_args();
    args.extend([
        "--authorization".into(),
        "--super-user".into(),
        "admin".into(),
    ]);
    let mut cluster = Cluster::start(dir.path(), 1, &refs(&args));
    let seeds = cluster.seeds();
    let connect = |who: &'static str| {
        let config = certs.client_config(Some(who));
        let seeds = seeds.clone();
        async move { Client::connect_with(&seeds, config).await.unwrap() }
    };
    bounded(LIMIT, async {
        let admin_client = connect("admin").await;
        let admin = Admin::new(admin_client.clone());
        let alice_client = connect("alice").await;
        let alice = Admin::new(alice_client.clone());
        let alice_locks = LockClient::new(alice_client.clone());
        let lock_options = LockOptions {
            wait: Some(Duration::from_secs(2)),
            ..LockOptions::default()
        };

        // A super-user may do anything, with no rule at all.
        admin
            .create_topic("orders", NewTopic::new(1))
            .await
            .unwrap();
        let written = produce(&admin_client, "orders").await.unwrap();

        // Alice, with no rule, may do nothing.
        let denied = ErrorCode::AccessDenied;
        assert_eq!(
            refused("produce", produce(&alice_client, "orders").await),
            denied
        );
        assert_eq!(
            refused(
                "consume",
                consume_at(&alice_client, "orders", written).await
            ),
            denied
        );
        assert_eq!(
            refused(
                "create",
                alice.create_topic("alice-t", NewTopic::new(1)).await
            ),
            denied
        );
        assert_eq!(
            refused("delete", alice.delete_topic("orders").await),
            denied
        );
        assert_eq!(
            refused(
                "reset offsets",
                alice
                    .reset_group_offsets("g", "orders", Offset::Earliest)
                    .await
            ),
            denied
        );
        assert_eq!(
            refused(
                "lock",
                alice_locks
                    .acquire_with("jobs/1", lock_options.clone())
                    .await
                    .map(|g| g.token())
            ),
            denied
        );
        let grant = rule(
            "alice",
            Effect::Allow,
            Operation::Alter,
            ResourcePattern::cluster(),
        );
        assert_eq!(refused("acl add", alice.add_acl(grant).await), denied);
        // ... and sees no topic it may not describe.
        let visible = alice.list_topics().await.unwrap();
        assert!(visible.is_empty(), "{visible:?}");

        // Rules: some through the admin API, one through the CLI.
        for r in [
            rule("alice", Effect::Allow, Operation::Produce, topic("orders")),
            rule(
                "alice",
                Effect::Allow,
                Operation::Consume,
                ResourcePattern::prefixed(ResourceKind::Topic, "ord"),
            ),
            rule(
                "alice",
                Effect::Allow,
                Operation::Consume,
                ResourcePattern::exact(ResourceKind::Group, "g"),
            ),
            rule(
                "alice",
                Effect::Allow,
                Operation::Create,
                ResourcePattern::prefixed(ResourceKind::Topic, "alice-"),
            ),
            rule("alice", Effect::Allow, Operation::Delete, topic("alice-t")),
        ] {
            admin.add_acl(r).await.unwrap();
        }
        let broker = cluster.brokers[0].addr.clone();
        let (ok, out) = tern_cli(
            &certs,
            &broker,
            "admin",
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--allow",
                "--operation",
                "lock",
                "--lock-prefix",
                "jobs/",
            ],
        );
        assert!(ok, "{out}");
        let (ok, out) = tern_cli(&certs, &broker, "admin", &["acl", "list"]);
        assert!(ok, "{out}");
        assert!(
            out.contains("alice\tallow\tlock\tlock\tprefix\tjobs/"),
            "{out}"
        );
        assert_eq!(admin.list_acls().await.unwrap().len(), 6);
        // The CLI of a principal without the right is refused too.
        let (ok, out) = tern_cli(
            &certs,
            &broker,
            "alice",
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--allow",
                "--operation",
                "alter",
                "--cluster",
            ],
        );
        assert!(!ok && out.contains("access_denied"), "{out}");

        // Now Alice may do what the rules say.
        let mine = produce(&alice_client, "orders").await.unwrap();
        consume_at(&alice_client, "orders", mine).await.unwrap();
        alice
            .reset_group_offsets("g", "orders", Offset::Earliest)
            .await
            .unwrap();
        alice_locks
            .acquire_with("jobs/1", lock_options.clone())
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
        alice
            .create_topic("alice-t", NewTopic::new(1))
            .await
            .unwrap();
        alice.delete_topic("alice-t").await.unwrap();
        // ... and only that.
        assert_eq!(
            refused(
                "create outside the prefix",
                alice.create_topic("bob-t", NewTopic::new(1)).await
            ),
            denied
        );
        assert_eq!(
            refused(
                "lock outside the prefix",
                alice_locks
                    .acquire_with("other", lock_options)
                    .await
                    .map(|g| g.token())
            ),
            denied
        );
        let names: Vec<String> = alice
            .list_topics()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, vec!["orders".to_string()]);

        // Deny wins: a deny for everyone beats Alice's allow.
        admin
            .add_acl(rule("*", Effect::Deny, Operation::Consume, topic("orders")))
            .await
            .unwrap();
        assert_eq!(
            refused(
                "consume after a deny",
                consume_at(&alice_client, "orders", mine).await
            ),
            denied
        );
        produce(&alice_client, "orders").await.unwrap();
        // A super-user is not bound by rules.
        consume_at(&admin_client, "orders", mine).await.unwrap();
        // Removing the deny (with the CLI) gives the right back.
        let (ok, out) = tern_cli(
            &certs,
            &broker,
            "admin",
            &[
                "acl",
                "remove",
                "--principal",
                "*",
                "--deny",
                "--operation",
                "consume",
                "--topic",
                "orders",
            ],
        );
        assert!(ok, "{out}");
        consume_at(&alice_client, "orders", mine).await.unwrap();

        // Mallory (no rule) and an anonymous client are still refused.
        let mallory = connect("mallory").await;
        assert_eq!(
            refused("mallory produce", produce(&mallory, "orders").await),
            denied
        );
        let anonymous = Client::connect_with(&seeds, certs.client_config(None))
            .await
            .unwrap();
        assert_eq!(
            refused(
                "anonymous consume",
                consume_at(&anonymous, "orders", mine).await
            ),
            denied
        );
    })
    .await;
    let (_, metrics) = cluster.brokers[0].http("/metrics").expect("metrics");
    let denials = tern_tests::metric_sum(&metrics, "tern_acl_denied_total");
    assert!(denials >= 8.0, "{denials} denials counted:\n{metrics}");
    // The rules are replicated state: they survive a restart.
    cluster.brokers[0].restart();
    bounded(LIMIT, async {
        let alice = connect("alice").await;
        produce(&alice, "orders").await.unwrap();
        let mallory = connect("mallory").await;
        assert_eq!(
            refused("mallory after a restart", produce(&mallory, "orders").await),
            ErrorCode::AccessDenied
        );
    })
    .await;
    let broker = &cluster.brokers[0];
    let log = broker.log();
    for expected in [
        "tern::security",
        "access denied",
        "access denied principal=alice",
        "access denied principal=anonymous",
        "access denied principal=mallory",
        "operation=consume resource=topic \"orders\" reason=DeniedByRule",
        "admin request done principal=admin",
        "admin request done principal=alice",
    ] {
        assert!(log.contains(expected), "no {expected:?} in the log:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowing_an_owner_or_member_id_does_not_let_another_client_act_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    certs.node(1);
    certs.client("alice");
    certs.client("mallory");
    let cluster = Cluster::start(dir.path(), 1, &refs(&certs.broker_args()));
    bounded(LIMIT, async {
        let alice = Client::connect_with(&cluster.seeds(), certs.client_config(Some("alice")))
            .await
            .unwrap();
        let mallory = Client::connect_with(&cluster.seeds(), certs.client_config(Some("mallory")))
            .await
            .unwrap();
        Admin::new(alice.clone())
            .create_topic("work", NewTopic::new(2))
            .await
            .unwrap();

        // Alice holds a lock; Mallory reads its owner id from the list.
        let locks = LockClient::new(alice.clone());
        let guard = locks
            .acquire_with("nightly", LockOptions::default())
            .await
            .unwrap();
        let listed = LockClient::new(mallory.clone()).list().await.unwrap();
        let owner = listed[0].holders[0].owner;
        assert_eq!(owner, guard.owner());
        for (what, request) in [
            (
                "release",
                LockRequest::Release {
                    name: "nightly".into(),
                    owner,
                    secret: 0,
                },
            ),
            (
                "renew",
                LockRequest::KeepAlive {
                    name: "nightly".into(),
                    owner,
                    secret: u128::MAX,
                },
            ),
        ] {
            let answer = mallory.request_any(Request::Lock(request)).await;
            assert_eq!(refused(what, answer), ErrorCode::LockNotHeld);
        }
        let still = LockClient::new(alice.clone()).list().await.unwrap();
        assert_eq!(still[0].holders[0].owner, owner, "the lock changed hands");
        assert!(!guard.is_lost());
        // Alice herself still renews (the guard does) and releases.
        guard.release().await.unwrap();
        // Even the secret is not enough from another principal: it is bound
        // to the connection's principal that acquired.
        let acquire = LockRequest::Acquire {
            name: "bound".into(),
            owner: 77,
            secret: 99,
            mode: tern_client::LockMode::Exclusive,
            lease_ms: 10_000,
            wait_ms: 0,
        };
        alice.request_any(Request::Lock(acquire)).await.unwrap();
        let release = |who: Client| async move {
            who.request_any(Request::Lock(LockRequest::Release {
                name: "bound".into(),
                owner: 77,
                secret: 99,
            }))
            .await
        };
        assert_eq!(
            refused(
                "release with the secret, as mallory",
                release(mallory.clone()).await
            ),
            ErrorCode::LockNotHeld
        );
        assert_eq!(
            release(alice.clone()).await.unwrap(),
            tern_protocol::Response::Lock(tern_protocol::coord::LockResponse::Released {
                was_holder: true
            })
        );

        // Alice is a group member; Mallory reads its id from describe.
        let mut consumer = Consumer::new(alice.clone(), ConsumerConfig::default());
        consumer.subscribe("billing", &["work"]).await.unwrap();
        let member = consumer.member_id().unwrap();
        let info = Admin::new(mallory.clone())
            .describe_group("billing")
            .await
            .unwrap();
        assert_eq!(info.members[0].member, member);
        let generation = info.generation;
        for (what, request) in [
            (
                "commit",
                GroupRequest::Commit {
                    group: "billing".into(),
                    member,
                    secret: 1,
                    generation,
                    offsets: vec![("work".into(), 0, 42)],
                },
            ),
            (
                "heartbeat",
                GroupRequest::Heartbeat {
                    group: "billing".into(),
                    member,
                    secret: 2,
                    generation,
                    wait_ms: 0,
                },
            ),
            (
                "leave",
                GroupRequest::Leave {
                    group: "billing".into(),
                    member,
                    secret: 3,
                },
            ),
            (
                "rejoin under its id",
                GroupRequest::Join {
                    group: "billing".into(),
                    member,
                    secret: 4,
                    topics: vec!["work".into()],
                    session_timeout_ms: 6000,
                },
            ),
        ] {
            let answer = mallory.request_any(Request::Group(request)).await;
            assert_eq!(refused(what, answer), ErrorCode::UnknownMember);
        }
        let after = Admin::new(alice.clone())
            .describe_group("billing")
            .await
            .unwrap();
        assert_eq!(after.members.len(), 1);
        assert_eq!(after.members[0].member, member);
        assert_eq!(after.generation, generation, "no rebalance happened");
        assert!(
            after.offsets.iter().all(|o| o.committed != 42),
            "a forged commit landed: {:?}",
            after.offsets
        );
        // Alice's own commit and leave go through.
        let owned = consumer.assignment();
        assert_eq!(owned.len(), 2, "the only member owns both partitions");
        consumer
            .commit_offsets(&[(owned[0].0.as_str(), owned[0].1, 0)])
            .await
            .unwrap();
        consumer.close().await.unwrap();
        let gone = Admin::new(alice.clone()).describe_group("billing").await;
        assert!(gone.map_or(true, |g| g.members.is_empty()));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_added_through_one_broker_is_enforced_by_every_broker() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new(&dir.path().join("certs"));
    for id in 1..=3 {
        certs.node(id);
    }
    certs.client("admin");
    certs.client("alice");
    let mut args = certs.broker_args();
    args.extend([
        "--authorization".into(),
        "--super-user".into(),
        "admin".into(),
    ]);
    let cluster = Cluster::start(dir.path(), 3, &refs(&args));
    let only = |i: usize, who: &str| {
        let config = certs.client_config(Some(who));
        let addr = cluster.brokers[i].addr.clone();
        async move { Client::connect_with(&addr, config).await.unwrap() }
    };
    bounded(LIMIT, async {
        let admin = Admin::new(only(0, "admin").await);
        admin
            .create_topic("orders", NewTopic::new(3))
            .await
            .unwrap();
        // What alice sees, asking broker `i` alone.
        let sees_orders = |i: usize| {
            let client = only(i, "alice");
            async move {
                let alice = Admin::new(client.await);
                let topics = alice.list_topics().await.unwrap();
                topics.iter().any(|t| t.name == "orders")
            }
        };
        for i in 0..3 {
            assert!(!sees_orders(i).await, "broker {} showed a topic", i + 1);
        }
        admin
            .add_acl(rule(
                "alice",
                Effect::Allow,
                Operation::Describe,
                topic("orders"),
            ))
            .await
            .unwrap();
        // Every broker applies the rule from the metadata group's log.
        let deadline = Instant::now() + Duration::from_secs(10);
        for i in 0..3 {
            while !sees_orders(i).await {
                assert!(
                    Instant::now() < deadline,
                    "broker {} never applied the rule",
                    i + 1
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let listed = Admin::new(only(i, "admin").await)
                .list_acls()
                .await
                .unwrap();
            assert_eq!(listed.len(), 1, "broker {}: {listed:?}", i + 1);
        }
    })
    .await;
}
