//! Junk on a node's peer port: random bytes, truncated frames, huge length
//! prefixes, wrong handshakes, bad checksums, forged senders. Each time the
//! node closes that connection, counts it, and keeps receiving from its good
//! peer.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use spaxos::config::Config;
use spaxos::transport::frame::encode_frame;
use spaxos::transport::handshake::{Handshake, MAGIC, PROTOCOL_VERSION};
use spaxos::transport::wire::encode_message;
use spaxos::transport::{Transport, TransportError, TransportHandle, TransportStats};
use spaxos_core::{Body, Message, NodeId};

const CLUSTER: u64 = 77;
const FRAME_MAX: usize = 200_000;
const WAIT: Duration = Duration::from_secs(10);

/// Node 1 (the target) and node 2 (a good peer) of a three-member group;
/// member 3 never runs, so junk clients can claim to be it.
struct Fixture {
    port: u16,
    target: TransportHandle,
    target_rx: Receiver<Message>,
    peer: TransportHandle,
    probes: u64,
}

fn config(ports: &[u16], selfid: NodeId) -> Config {
    let json = format!(
        r#"{{ "selfid": {selfid},
             "groups": [ {{"id": 1, "ip": "127.0.0.1", "port": {}}},
                         {{"id": 2, "ip": "127.0.0.1", "port": {}}},
                         {{"id": 3, "ip": "127.0.0.1", "port": {}}} ],
             "path": "./unused",
             "stimeout": {{"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30}},
             "cluster_id": {CLUSTER}, "batch_bytes_max": 1000, "value_bytes_max": 1000,
             "frame_bytes_max": {FRAME_MAX},
             "reconnect_backoff_min_ms": 10, "reconnect_backoff_max_ms": 200 }}"#,
        ports[0], ports[1], ports[2]
    );
    Config::from_json(&json).unwrap()
}

impl Fixture {
    fn new() -> Fixture {
        for _ in 0..5 {
            let listeners: Vec<_> = (0..3)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
                .collect();
            let ports: Vec<u16> = listeners
                .iter()
                .map(|l| l.local_addr().unwrap().port())
                .collect();
            drop(listeners);
            let (tx1, target_rx) = crossbeam_channel::bounded(1024);
            let (tx2, _) = crossbeam_channel::bounded(1024);
            let target = match Transport::start(&config(&ports, 1), tx1) {
                Ok(handle) => handle,
                Err(TransportError::Bind { .. }) => continue,
                Err(error) => panic!("{error}"),
            };
            let peer = match Transport::start(&config(&ports, 2), tx2) {
                Ok(handle) => handle,
                Err(TransportError::Bind { .. }) => continue,
                Err(error) => panic!("{error}"),
            };
            let fixture = Fixture {
                port: ports[0],
                target,
                target_rx,
                peer,
                probes: 0,
            };
            wait_until("peers to connect", || {
                fixture.peer.connected_peers() == vec![1]
                    && fixture.target.connected_peers() == vec![2]
            });
            return fixture;
        }
        panic!("no free ports");
    }

    /// Node 2 can still reach node 1.
    fn assert_alive(&mut self) {
        self.probes += 1;
        let probe = Message {
            from: 2,
            to: 1,
            body: Body::Compacted {
                first_index: self.probes,
            },
        };
        wait_until("the good peer to be connected", || {
            self.peer.connected_peers() == vec![1]
        });
        assert!(self.peer.send(probe.clone()));
        let got = self
            .target_rx
            .recv_timeout(WAIT)
            .expect("good peer's message arrives");
        assert_eq!(got, probe);
    }

    fn stats(&self) -> TransportStats {
        self.target.stats()
    }

    /// Sends `bytes` on a fresh connection (then half-closes it if
    /// `close_write`), and asserts the node closes the connection.
    fn junk(&self, bytes: &[u8], close_write: bool) {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        // The node may close before everything is written: ignore errors.
        let _ = stream.write_all(bytes);
        if close_write {
            let _ = stream.shutdown(Shutdown::Write);
        }
        assert_closed_by_node(&mut stream);
    }

    /// Opens a connection with a valid handshake from `node`.
    fn connect_as(&self, node: NodeId) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        stream
            .write_all(&handshake_frame(Handshake::new(CLUSTER, node)))
            .unwrap();
        stream
    }

    /// Asserts `counter` of the target's stats reaches `want`.
    fn wait_stat(&self, what: &str, counter: fn(&TransportStats) -> u64, want: u64) {
        wait_until(what, || counter(&self.stats()) >= want);
        assert_eq!(counter(&self.stats()), want, "{what}");
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Reads until EOF or a reset: the node closed the connection.
fn assert_closed_by_node(stream: &mut TcpStream) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 256];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Ok(_) => panic!("the node never writes on an inbound connection"),
        Err(e)
            if e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut =>
        {
            panic!("node did not close the connection")
        }
        Err(_) => {} // reset
    }
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(payload, &mut out);
    out
}

fn handshake_frame(hello: Handshake) -> Vec<u8> {
    frame(&hello.encode_to_vec())
}

fn message_frame(from: NodeId, to: NodeId) -> Vec<u8> {
    frame(&encode_message(&Message {
        from,
        to,
        body: Body::Compacted { first_index: 1 },
    }))
}

fn rejected(s: &TransportStats) -> u64 {
    s.connections_rejected
}

fn protocol_errors(s: &TransportStats) -> u64 {
    s.protocol_errors
}

#[test]
fn random_bytes() {
    let mut fx = Fixture::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for n in 1..=20u64 {
        let len = rng.random_range(1..4096);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        fx.junk(&bytes, true);
        fx.wait_stat("rejections", rejected, n);
    }
    fx.assert_alive();
    assert_eq!(fx.stats().protocol_errors, 0);
}

#[test]
fn random_bytes_after_a_valid_handshake() {
    let mut fx = Fixture::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xbad);
    for n in 1..=20u64 {
        let len = rng.random_range(1..4096);
        let mut bytes = handshake_frame(Handshake::new(CLUSTER, 3));
        bytes.extend((0..len).map(|_| rng.random::<u8>()));
        fx.junk(&bytes, true);
        fx.wait_stat("protocol errors", protocol_errors, n);
    }
    fx.assert_alive();
}

#[test]
fn truncated_frames() {
    let mut fx = Fixture::new();
    let hello = handshake_frame(Handshake::new(CLUSTER, 3));
    // A truncated handshake, then a close.
    fx.junk(&hello[..hello.len() - 3], true);
    fx.junk(&hello[..5], true);
    fx.wait_stat("rejections", rejected, 2);
    // A valid handshake and a truncated message, then a close.
    let mut bytes = hello.clone();
    let msg = message_frame(3, 1);
    bytes.extend_from_slice(&msg[..msg.len() - 1]);
    fx.junk(&bytes, true);
    fx.wait_stat("protocol errors", protocol_errors, 1);
    fx.assert_alive();
}

#[test]
fn huge_length_prefixes() {
    let mut fx = Fixture::new();
    // Before the handshake.
    let mut bytes = u32::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 100]);
    fx.junk(&bytes, false);
    // A handshake-sized limit applies until the handshake is done.
    let mut bytes = 1000u32.to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 100]);
    fx.junk(&bytes, false);
    fx.wait_stat("rejections", rejected, 2);
    // After the handshake: one byte over the configured maximum.
    let mut bytes = handshake_frame(Handshake::new(CLUSTER, 3));
    bytes.extend_from_slice(&(FRAME_MAX as u32 + 1).to_le_bytes());
    bytes.extend_from_slice(&[0; 100]);
    fx.junk(&bytes, false);
    let mut bytes = handshake_frame(Handshake::new(CLUSTER, 3));
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    bytes.extend_from_slice(&[0; 4]);
    fx.junk(&bytes, false);
    fx.wait_stat("protocol errors", protocol_errors, 2);
    fx.assert_alive();
}

#[test]
fn wrong_handshakes() {
    let mut fx = Fixture::new();
    let good = Handshake::new(CLUSTER, 3);
    let wrong = [
        Handshake {
            cluster_id: CLUSTER + 1,
            ..good
        },
        Handshake { node_id: 9, ..good },
        Handshake { node_id: 0, ..good },
        Handshake { node_id: 1, ..good }, // the target's own id
        Handshake {
            version: PROTOCOL_VERSION + 1,
            ..good
        },
        Handshake {
            magic: MAGIC ^ 1,
            ..good
        },
    ];
    for (n, hello) in wrong.into_iter().enumerate() {
        // Followed by a valid message, which must not be delivered.
        let mut bytes = handshake_frame(hello);
        bytes.extend(message_frame(hello.node_id, 1));
        fx.junk(&bytes, false);
        fx.wait_stat("rejections", rejected, n as u64 + 1);
    }
    // Not a handshake at all: a message frame first.
    fx.junk(&message_frame(3, 1), false);
    // Protobuf garbage inside a good frame.
    fx.junk(&frame(&[0xff, 0xff, 0xff]), false);
    fx.wait_stat("rejections", rejected, wrong.len() as u64 + 2);
    assert!(fx.target_rx.try_recv().is_err(), "nothing was delivered");
    fx.assert_alive();
}

#[test]
fn bad_frames_after_a_valid_handshake() {
    let mut fx = Fixture::new();
    let cases: Vec<Vec<u8>> = vec![
        // Bad checksum.
        {
            let mut f = message_frame(3, 1);
            let last = f.len() - 1;
            f[last] ^= 0x55;
            f
        },
        // Good checksum, protobuf garbage.
        frame(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        // A message without a body.
        frame(&[0x08, 0x03, 0x10, 0x01]),
        // A message claiming to be from another node.
        message_frame(2, 1),
        // A message for another node.
        message_frame(3, 2),
    ];
    for (n, junk) in cases.iter().enumerate() {
        let mut stream = fx.connect_as(3);
        let _ = stream.write_all(junk);
        assert_closed_by_node(&mut stream);
        fx.wait_stat("protocol errors", protocol_errors, n as u64 + 1);
    }
    assert!(fx.target_rx.try_recv().is_err(), "nothing was delivered");
    assert_eq!(fx.stats().connections_accepted, 1 + cases.len() as u64);
    fx.assert_alive();
}

#[test]
fn silent_client_times_out() {
    let mut fx = Fixture::new();
    let started = Instant::now();
    let mut stream = TcpStream::connect(("127.0.0.1", fx.port)).unwrap();
    assert_closed_by_node(&mut stream);
    assert!(started.elapsed() < Duration::from_secs(4));
    fx.wait_stat("rejections", rejected, 1);
    fx.assert_alive();
}

#[test]
fn too_many_connections_are_refused() {
    let mut fx = Fixture::new();
    // The cap is 2 * members + 16 = 22; node 2 holds one slot.
    let streams: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(("127.0.0.1", fx.port)).unwrap())
        .collect();
    fx.wait_stat("rejections", rejected, 40 - 21);
    fx.assert_alive();
    drop(streams);
    fx.wait_stat("rejections", rejected, 40);
    fx.assert_alive();
}

#[test]
fn a_hand_made_client_speaks_the_protocol() {
    let mut fx = Fixture::new();
    let mut stream = fx.connect_as(3);
    stream.write_all(&message_frame(3, 1)).unwrap();
    let got = fx.target_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(
        got,
        Message {
            from: 3,
            to: 1,
            body: Body::Compacted { first_index: 1 }
        }
    );
    stream.shutdown(Shutdown::Write).unwrap();
    assert_closed_by_node(&mut stream);
    fx.assert_alive();
    let stats = fx.stats();
    assert_eq!(stats.protocol_errors, 0);
    assert_eq!(stats.connections_rejected, 0);
}

#[test]
fn a_reconnecting_peer_replaces_its_old_connection() {
    let mut fx = Fixture::new();
    let mut old = fx.connect_as(3);
    fx.wait_stat("accepted", |s| s.connections_accepted, 2);
    let mut new = fx.connect_as(3);
    // The old connection is closed as soon as the new one is accepted.
    assert_closed_by_node(&mut old);
    new.write_all(&message_frame(3, 1)).unwrap();
    let got = fx.target_rx.recv_timeout(WAIT).unwrap();
    assert_eq!(got.from, 3);
    let stats = fx.stats();
    assert_eq!(stats.connections_accepted, 3);
    assert_eq!(stats.protocol_errors, 0);
    fx.assert_alive();
}
