//! Ports for test nodes (shared with simplesvr's tests through `#[path]`).

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
    // A start that differs from run to run; 0 means "not chosen yet".
    let _ = NEXT.compare_exchange(0, seed() % span + 1, Ordering::Relaxed, Ordering::Relaxed);
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        if ports.len() == n {
            return ports;
        }
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS_LOW + (k % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
        }
    }
    assert_eq!(ports.len(), n, "no free ports below the ephemeral range");
    ports
}

/// The first port of the kernel's ephemeral range (32768 if unknown).
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

fn seed() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}
