//! Transports on loopback: message exchange, reconnects, drops, errors at
//! start, and a rough throughput figure.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::Receiver;
use spaxos::config::Config;
use spaxos::transport::{Transport, TransportError, TransportHandle};
use spaxos_core::{Ballot, Body, Message, NodeId, PromiseEntry, Value};

const WAIT: Duration = Duration::from_secs(10);

#[path = "common/ports.rs"]
mod ports;
use ports::free_ports;

fn config(ports: &[u16], selfid: NodeId, extra: &str) -> Config {
    let groups: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!(r#"{{"id": {}, "ip": "127.0.0.1", "port": {port}}}"#, i + 1))
        .collect();
    let json = format!(
        r#"{{ "selfid": {selfid}, "groups": [{}], "path": "./unused",
             "stimeout": {{"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30}},
             "cluster_id": 77, "reconnect_backoff_min_ms": 10, "reconnect_backoff_max_ms": 200 {extra} }}"#,
        groups.join(", ")
    );
    Config::from_json(&json).unwrap()
}

struct Node {
    handle: TransportHandle,
    rx: Receiver<Message>,
}

/// Starts `n` transports, retrying with new ports if one was taken meanwhile.
fn cluster(n: usize, extra: &str) -> (Vec<u16>, Vec<Node>) {
    for _ in 0..5 {
        let ports = free_ports(n);
        let mut nodes = Vec::new();
        for id in 1..=n as NodeId {
            let (tx, rx) = crossbeam_channel::bounded(1 << 16);
            match Transport::start(&config(&ports, id, extra), tx) {
                Ok(handle) => nodes.push(Node { handle, rx }),
                Err(TransportError::Bind { .. }) => break,
                Err(error) => panic!("{error}"),
            }
        }
        if nodes.len() == n {
            wait_connected(&nodes);
            return (ports, nodes);
        }
    }
    panic!("no free ports");
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_connected(nodes: &[Node]) {
    for node in nodes {
        let want: Vec<NodeId> = (1..=nodes.len() as NodeId)
            .filter(|&id| id != node.handle.node_id())
            .collect();
        wait_until("peers to connect", || node.handle.connected_peers() == want);
    }
}

fn one(reqid: u64, data: &'static [u8]) -> Value {
    Value::One {
        reqid,
        value: Bytes::from_static(data),
    }
}

/// One body of every kind.
fn every_kind() -> Vec<Body> {
    let b = Ballot::new(4, 2);
    vec![
        Body::Prepare {
            ballot: b,
            index: 10,
        },
        Body::Promise {
            ballot: b,
            index: 10,
            accepted: Ballot::new(3, 1),
            value: Some(one(5, b"five")),
        },
        Body::PrepareRange {
            ballot: b,
            from_index: 11,
        },
        Body::PromiseRange {
            ballot: b,
            from_index: 11,
            chosen_through: 10,
            entries: vec![PromiseEntry {
                index: 12,
                accepted: Ballot::new(3, 3),
                value: Value::Many {
                    reqid: 6,
                    values: Arc::from(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]),
                },
                chosen: true,
            }],
        },
        Body::Accept {
            ballot: b,
            entries: vec![(13, one(7, b"seven")), (14, Value::Noop)].into(),
            chosen_through: 12,
        },
        Body::Accepted {
            ballot: b,
            indices: vec![13, 14],
        },
        Body::Reject {
            ballot: b,
            promised: Ballot::new(9, 3),
            index: 0,
        },
        Body::Heartbeat {
            ballot: b,
            chosen_through: 14,
            max_index: 14,
        },
        Body::HeartbeatAck {
            ballot: b,
            chosen_through: 14,
            max_index: 14,
        },
        Body::Learn {
            entries: vec![(15, one(8, b"eight"))],
        },
        Body::CatchupRequest {
            from_index: 1,
            to_index: 9,
        },
        Body::Compacted { first_index: 5 },
        Body::Forward {
            values: vec![one(9, b"nine"), one(10, b"ten")],
        },
        Body::ForwardAck {
            assigned: vec![(9, 16), (10, 17)],
        },
    ]
}

fn recv(node: &Node) -> Message {
    node.rx
        .recv_timeout(WAIT)
        .expect("message within the timeout")
}

#[test]
fn three_nodes_exchange_every_kind() {
    let (_, nodes) = cluster(3, "");
    let mut expected: HashMap<NodeId, Vec<Message>> = HashMap::new();
    for from in 1..=3u64 {
        for to in 1..=3u64 {
            if from == to {
                continue;
            }
            for body in every_kind() {
                let msg = Message { from, to, body };
                assert!(nodes[from as usize - 1].handle.send(msg.clone()));
                expected.entry(to).or_default().push(msg);
            }
        }
    }
    for (to, mut want) in expected {
        let node = &nodes[to as usize - 1];
        let mut got: Vec<Message> = (0..want.len()).map(|_| recv(node)).collect();
        // Each sender's messages arrive in order; senders interleave.
        let key = |m: &Message| m.from;
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
    }
    for node in &nodes {
        let stats = node.handle.stats();
        assert_eq!(stats.frames_sent, 2 * every_kind().len() as u64);
        assert_eq!(stats.frames_received, 2 * every_kind().len() as u64);
        assert_eq!(stats.messages_dropped, 0);
        assert_eq!(stats.connections_rejected, 0);
        assert_eq!(stats.protocol_errors, 0);
    }
    for node in &nodes {
        node.handle.shutdown();
    }
}

#[test]
fn messages_to_self_unknown_or_disconnected_peers_are_dropped() {
    let ports = free_ports(3);
    let (tx, _rx) = crossbeam_channel::bounded(16);
    // Peers 2 and 3 are not running.
    let handle = Transport::start(&config(&ports, 1, ""), tx).unwrap();
    let msg = |to| Message {
        from: 1,
        to,
        body: Body::Compacted { first_index: 1 },
    };
    assert!(!handle.send(msg(1)), "to self");
    assert!(!handle.send(msg(9)), "unknown");
    assert!(!handle.send(msg(2)), "disconnected");
    assert_eq!(handle.send_batch(vec![msg(2), msg(3)]), 0);
    assert_eq!(handle.stats().messages_dropped, 5);
    assert!(handle.connected_peers().is_empty());
    handle.shutdown();
    handle.shutdown(); // idempotent
}

#[test]
fn reconnects_after_a_peer_restarts() {
    let (ports, mut nodes) = cluster(2, "");
    let hello = |n| Message {
        from: 1,
        to: 2,
        body: Body::Compacted { first_index: n },
    };
    assert!(nodes[0].handle.send(hello(1)));
    assert_eq!(recv(&nodes[1]), hello(1));

    let old = nodes.pop().unwrap();
    old.handle.shutdown();
    wait_until("node 1 to notice", || {
        nodes[0].handle.connected_peers().is_empty()
    });

    let (tx, rx) = crossbeam_channel::bounded(16);
    let handle = Transport::start(&config(&ports, 2, ""), tx).unwrap();
    nodes.push(Node { handle, rx });
    wait_connected(&nodes);
    assert!(nodes[0].handle.send(hello(2)));
    assert_eq!(recv(&nodes[1]), hello(2));
    assert!(nodes[0].handle.stats().connections_established >= 2);
}

#[test]
fn bind_error_names_the_address() {
    let ports = free_ports(3);
    let _taken = std::net::TcpListener::bind(("127.0.0.1", ports[0])).unwrap();
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let error = Transport::start(&config(&ports, 1, ""), tx).unwrap_err();
    assert!(matches!(error, TransportError::Bind { .. }), "{error:?}");
    let line = error.to_string();
    assert!(
        line.starts_with(&format!("cannot listen on 127.0.0.1:{}: ", ports[0])),
        "{line}"
    );
}

#[test]
fn invalid_config_is_refused() {
    let ports = free_ports(3);
    let mut config = config(&ports, 1, "");
    config.selfid = 5;
    let (tx, _rx) = crossbeam_channel::bounded(16);
    let error = Transport::start(&config, tx).unwrap_err();
    assert!(matches!(error, TransportError::Config(_)), "{error:?}");
    assert!(error
        .to_string()
        .contains("selfid 5 is not one of the ids in groups"));
}

#[test]
fn oversized_message_is_dropped_and_later_ones_still_go() {
    let extra = r#", "batch_bytes_max": 1000, "value_bytes_max": 1000, "frame_bytes_max": 70000"#;
    let (_, nodes) = cluster(2, extra);
    let big = Message {
        from: 1,
        to: 2,
        body: Body::Learn {
            entries: vec![(
                1,
                Value::One {
                    reqid: 1,
                    value: Bytes::from(vec![1u8; 100_000]),
                },
            )],
        },
    };
    let small = Message {
        from: 1,
        to: 2,
        body: Body::Compacted { first_index: 3 },
    };
    assert!(nodes[0].handle.send(big), "queued; dropped at encoding");
    assert!(nodes[0].handle.send(small.clone()));
    assert_eq!(recv(&nodes[1]), small);
    assert_eq!(nodes[0].handle.stats().messages_dropped, 1);
    assert_eq!(nodes[1].handle.stats().protocol_errors, 0);
}

#[test]
fn a_full_inbound_queue_pushes_back_without_losing_messages() {
    let ports = free_ports(2);
    let (tx1, _rx1) = crossbeam_channel::bounded(16);
    let (tx2, rx2) = crossbeam_channel::bounded(1);
    let a = Transport::start(&config(&ports, 1, ""), tx1).unwrap();
    let b = Transport::start(&config(&ports, 2, ""), tx2).unwrap();
    wait_until("connect", || a.connected_peers() == vec![2]);
    let count = 2000u64;
    for n in 0..count {
        let msg = Message {
            from: 1,
            to: 2,
            body: Body::Compacted { first_index: n },
        };
        // The peer queue may fill while node 2 is slow: retry.
        while !a.send(msg.clone()) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for n in 0..count {
        let msg = rx2.recv_timeout(WAIT).unwrap();
        assert_eq!(msg.body, Body::Compacted { first_index: n });
    }
    assert_eq!(b.stats().frames_received, count);
}

/// A rough loopback figure (debug builds are far slower than release):
/// batched accepts as the core sends them, printed with `--nocapture`.
#[test]
fn loopback_throughput() {
    let (_, nodes) = cluster(2, "");
    // SPAXOS_TRANSPORT_BENCH_ENTRIES=1 measures small frames.
    let entries_per_message: u64 = std::env::var("SPAXOS_TRANSPORT_BENCH_ENTRIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64);
    // SPAXOS_TRANSPORT_BENCH_MESSAGES=200000 for a longer run in release.
    let messages: u64 = std::env::var("SPAXOS_TRANSPORT_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    let value = Bytes::from(vec![42u8; 100]);
    let started = Instant::now();
    let receiver = {
        let rx = nodes[1].rx.clone();
        std::thread::spawn(move || {
            let mut entries = 0u64;
            for _ in 0..messages {
                let msg = rx.recv_timeout(WAIT).expect("message");
                if let Body::Accept { entries: e, .. } = msg.body {
                    entries += e.len() as u64;
                }
            }
            entries
        })
    };
    for m in 0..messages {
        let first = m * entries_per_message;
        let msg = Message {
            from: 1,
            to: 2,
            body: Body::Accept {
                ballot: Ballot::new(1, 1),
                entries: (first..first + entries_per_message)
                    .map(|i| {
                        (
                            i,
                            Value::One {
                                reqid: i + 1,
                                value: value.clone(),
                            },
                        )
                    })
                    .collect::<Vec<_>>()
                    .into(),
                chosen_through: first,
            },
        };
        while !nodes[0].handle.send(msg.clone()) {
            std::thread::yield_now();
        }
    }
    let entries = receiver.join().unwrap();
    let elapsed = started.elapsed();
    assert_eq!(entries, messages * entries_per_message);
    let stats = nodes[0].handle.stats();
    println!(
        "{} frames ({} entries, {} MB) in {:?}: {:.0} frames/s, {:.0} entries/s, {} writes",
        messages,
        entries,
        stats.bytes_sent / 1_000_000,
        elapsed,
        messages as f64 / elapsed.as_secs_f64(),
        entries as f64 / elapsed.as_secs_f64(),
        stats.write_batches,
    );
    assert!(stats.write_batches <= stats.frames_sent);
}
