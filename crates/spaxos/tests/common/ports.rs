//! Ports for test nodes (shared with simplesvr's tests through `#[path]`).

use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where test ports start; they end below the kernel's ephemeral range.
const PORTS_LOW: u16 = 10_000;

/// `n` distinct ports that were free a moment ago, each handed out once
/// per process, taken below the kernel's ephemeral range.
///
/// The usual trick, binding port 0 and releasing it, yields a port from
/// the ephemeral range, from which the kernel also picks the source port
/// of every outgoing connection: the nodes' own connections (of this test
/// or another running beside it) could take the port before its node
/// listens on it, or while a test has that node stopped.
pub fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low().max(PORTS_LOW + 1_000);
    let span = u32::from(high - PORTS_LOW);
    // A start that differs from run to run (a random hash seed); 0 means
    // "not chosen yet".
    let start = RandomState::new().hash_one(0u8) as u32 % span + 1;
    let _ = NEXT.compare_exchange(0, start, Ordering::Relaxed, Ordering::Relaxed);
    let mut ports = Vec::with_capacity(n);
    let mut tried = 0;
    while ports.len() < n {
        assert!(tried < span, "no free ports below the ephemeral range");
        tried += 1;
        let port = PORTS_LOW + (NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    ports
}

/// The first port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
