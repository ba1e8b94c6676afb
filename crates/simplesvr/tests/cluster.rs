//! Multi-process tests: real `simplesvr` binaries on loopback.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_simplesvr");

#[path = "../../spaxos/tests/common/ports.rs"]
mod ports;

fn free_port() -> u16 {
    ports::free_ports(1)[0]
}

struct Node {
    id: u64,
    client_addr: String,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

impl Cluster {
    fn start(n: u64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let peer_ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let groups: Vec<serde_json::Value> = (1..=n)
            .map(|id| serde_json::json!({"id": id, "ip": "127.0.0.1", "port": peer_ports[(id - 1) as usize]}))
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let config = dir.path().join(format!("node{id}.json"));
            let json = serde_json::json!({
                "selfid": id,
                "groups": groups,
                "path": dir.path().join(format!("data{id}")),
                "stimeout": {"heartbeat": 30, "instimeoutbase": 200, "instimeoutrange": 100},
                "tick_ms": 10,
            });
            std::fs::write(&config, json.to_string()).unwrap();
            nodes.push(Node {
                id,
                client_addr: format!("127.0.0.1:{}", free_port()),
                config,
                log: dir.path().join(format!("node{id}.log")),
                child: None,
            });
        }
        let mut cluster = Cluster { _dir: dir, nodes };
        for i in 0..n as usize {
            cluster.spawn(i);
        }
        cluster.wait_for_leader(Duration::from_secs(20));
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = Command::new(BIN)
            .arg(&node.config)
            .arg(&node.client_addr)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        node.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(&node.client_addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "node {} did not start: {}",
                node.id,
                read(&node.log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn status(&self, i: usize) -> Option<HashMap<String, String>> {
        let line = request(&self.nodes[i].client_addr, "STATUS")?;
        Some(
            line.split_whitespace()
                .skip(1)
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn leader_slot(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| {
            self.nodes[i].child.is_some() && self.status(i).is_some_and(|s| s["role"] == "leader")
        })
    }

    fn wait_for_leader(&self, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = self.leader_slot() {
                return i;
            }
            assert!(Instant::now() < deadline, "no leader elected");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every live node has delivered through the same index.
    fn wait_converged(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let through: Vec<Option<u64>> = (0..self.nodes.len())
                .map(|i| {
                    self.status(i)
                        .and_then(|s| s["chosen_through"].parse().ok())
                })
                .collect();
            if through.iter().all(|t| t.is_some()) && through.windows(2).all(|w| w[0] == w[1]) {
                return through[0].unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "nodes did not converge: {through:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                unsafe {
                    libc_kill(child.id() as i32, 15);
                }
                let deadline = Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, signal: i32) -> i32;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// One request on a fresh connection; `None` if the node is unreachable.
fn request(addr: &str, line: &str) -> Option<String> {
    let stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .ok()?;
    let mut writer = stream.try_clone().ok()?;
    writer.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply).ok()?;
    (!reply.is_empty()).then(|| reply.trim_end().to_string())
}

/// A connection that keeps sending lines and reading replies.
struct Session {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Session {
    fn open(addr: &str) -> Session {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Session {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn send(&mut self, line: &[u8]) {
        self.writer.write_all(line).unwrap();
        self.writer.write_all(b"\n").unwrap();
    }

    fn reply(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        line.trim_end().to_string()
    }
}

fn parse_item(reply: &str) -> Option<(u64, u64, String)> {
    let rest = reply.strip_prefix("ITEM ")?;
    let mut parts = rest.splitn(3, ' ');
    let index = parts.next()?.parse().ok()?;
    let reqid = parts.next()?.parse().ok()?;
    Some((index, reqid, parts.next().unwrap_or("").to_string()))
}

#[test]
fn concurrent_proposals_on_every_node_agree() {
    let cluster = Cluster::start(3);
    let next = Arc::new(AtomicU64::new(1));
    let results = Arc::new(Mutex::new(Vec::new()));
    let mut threads = Vec::new();
    for i in 0..3usize {
        for _ in 0..2 {
            let addr = cluster.nodes[i].client_addr.clone();
            let next = next.clone();
            let results = results.clone();
            threads.push(std::thread::spawn(move || {
                let mut session = Session::open(&addr);
                for _ in 0..30 {
                    let reqid = next.fetch_add(1, Ordering::SeqCst);
                    session.send(format!("PROP {reqid} value-{reqid} from {addr}").as_bytes());
                    let reply = session.reply();
                    results.lock().unwrap().push((reqid, reply));
                }
            }));
        }
    }
    for t in threads {
        t.join().unwrap();
    }
    let results = results.lock().unwrap().clone();
    assert_eq!(results.len(), 180);
    let mut chosen = HashMap::new();
    for (reqid, reply) in &results {
        let index: u64 = if let Some(i) = reply.strip_prefix("CHOSEN ") {
            i.parse().unwrap()
        } else {
            assert!(
                reply.starts_with("LOST "),
                "reqid {reqid}: unexpected reply {reply:?}"
            );
            continue;
        };
        assert!(
            chosen.insert(index, *reqid).is_none(),
            "two proposals chosen at {index}"
        );
    }
    let through = cluster.wait_converged(Duration::from_secs(20));
    assert!(through >= chosen.len() as u64);
    for index in 1..=through {
        let replies: Vec<String> = (0..3)
            .map(|i| request(&cluster.nodes[i].client_addr, &format!("GET {index}")).unwrap())
            .collect();
        assert!(
            replies.windows(2).all(|w| w[0] == w[1]),
            "index {index}: {replies:?}"
        );
        if let Some(reqid) = chosen.get(&index) {
            let (_, got, value) = parse_item(&replies[0]).expect("an item");
            assert_eq!(got, *reqid);
            assert!(value.starts_with(&format!("value-{reqid} ")));
        }
    }
}

#[test]
fn killing_nodes_including_the_leader_loses_no_acknowledged_proposal() {
    let mut cluster = Cluster::start(3);
    let addrs: Vec<String> = cluster
        .nodes
        .iter()
        .map(|n| n.client_addr.clone())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(1));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for t in 0..3usize {
        let (addrs, stop, next, acknowledged) = (
            addrs.clone(),
            stop.clone(),
            next.clone(),
            acknowledged.clone(),
        );
        load.push(std::thread::spawn(move || {
            let mut target = t;
            while !stop.load(Ordering::SeqCst) {
                let reqid = next.fetch_add(1, Ordering::SeqCst);
                let addr = &addrs[target % addrs.len()];
                target += 1;
                match request(addr, &format!("PROP {reqid} v{reqid}")) {
                    Some(reply) if reply.starts_with("CHOSEN ") => {
                        let index: u64 = reply[7..].parse().unwrap();
                        acknowledged.lock().unwrap().push((index, reqid));
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(800));
    let leader = cluster.wait_for_leader(Duration::from_secs(10));
    cluster.kill9(leader);
    std::thread::sleep(Duration::from_millis(1500));
    let follower = (leader + 1) % 3;
    cluster.kill9(follower);
    std::thread::sleep(Duration::from_millis(300));
    cluster.spawn(follower);
    std::thread::sleep(Duration::from_millis(1000));
    cluster.spawn(leader);
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.join().unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 10,
        "too little progress: {}",
        acknowledged.len()
    );
    let through = cluster.wait_converged(Duration::from_secs(30));
    for &(index, reqid) in &acknowledged {
        assert!(index <= through);
        for i in 0..3 {
            let reply = request(&cluster.nodes[i].client_addr, &format!("GET {index}")).unwrap();
            let (_, got, _) = parse_item(&reply)
                .unwrap_or_else(|| panic!("node {} index {index}: {reply}", i + 1));
            assert_eq!(
                got,
                reqid,
                "node {} changed acknowledged index {index}",
                i + 1
            );
        }
    }
    // The restarted nodes serve every index.
    for index in 1..=through {
        for i in [leader, follower] {
            let reply = request(&cluster.nodes[i].client_addr, &format!("GET {index}")).unwrap();
            assert!(
                reply.starts_with("ITEM ") || reply.starts_with("NOOP "),
                "node {} index {index}: {reply}",
                i + 1
            );
        }
    }
}

#[test]
fn bad_lines_get_err_and_the_connection_stays_usable() {
    let cluster = Cluster::start(3);
    let mut session = Session::open(&cluster.nodes[1].client_addr);
    let bad: Vec<&[u8]> = vec![
        b"PROP",
        b"PROP 5",
        b"PROP 0 zero",
        b"PROP abc value",
        b"PROP -3 value",
        b"PROP 123456789012345678901234567890 big",
        b"GET",
        b"GET zero",
        b"GET 0",
        b"GET 1 2",
        b"STATUS please",
        b"FROB 1",
        &[0xff, 0xfe, 0x00, 0x01, b' ', b'x'],
        b"\x1b[A",
    ];
    for line in &bad {
        session.send(line);
        let reply = session.reply();
        assert!(
            reply.starts_with("ERR "),
            "{:?} got {reply:?}",
            String::from_utf8_lossy(line)
        );
    }
    // An over-long line is refused; the next line still works.
    let long = vec![b'x'; (1 << 20) + 10];
    session.send(&long);
    assert!(session.reply().starts_with("ERR line longer"));
    // Pipelined: several requests in one write, answered in order.
    session
        .writer
        .write_all(b"PROP 77 after junk\nHELP\n")
        .unwrap();
    let chosen = session.reply();
    assert!(chosen.starts_with("CHOSEN "), "{chosen}");
    assert!(session.reply().starts_with("HELP "));
    // Read your write: the index just reported chosen is served by this node.
    session.send(format!("GET {}", &chosen[7..]).as_bytes());
    let item = session.reply();
    assert_eq!(item, format!("ITEM {} 77 after junk", &chosen[7..]));
}

#[test]
fn bad_config_port_in_use_and_bad_data_dir_exit_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Missing file.
    let (code, err) = run(&["/nonexistent/spaxos.json", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("/nonexistent/spaxos.json"), "{err}");
    // Invalid config: selfid not in groups, duplicate ids.
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"selfid": 9, "groups": [{"id": 1, "ip": "127.0.0.1", "port": 1}, {"id": 1, "ip": "127.0.0.1", "port": 2}],
            "path": "x", "stimeout": {"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30}}"#,
    )
    .unwrap();
    let (code, err) = run(&[bad.to_str().unwrap(), "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("selfid 9") && err.contains("more than once"),
        "{err}"
    );
    // Client port in use.
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let good = dir.path().join("good.json");
    let peer = free_port();
    let write_config = |path: &Path, data: &Path| {
        std::fs::write(
            path,
            serde_json::json!({"selfid": 1, "groups": [{"id": 1, "ip": "127.0.0.1", "port": peer}],
                "path": data, "stimeout": {"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30}})
            .to_string(),
        )
        .unwrap();
    };
    write_config(&good, &dir.path().join("data"));
    let (code, err) = run(&[good.to_str().unwrap(), &busy_addr]);
    assert_eq!(code, Some(3), "{err}");
    assert!(err.contains(&busy_addr), "{err}");
    // Data directory that cannot be created (a file is in the way).
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let unusable = dir.path().join("unusable.json");
    write_config(&unusable, &blocker.join("data"));
    let (code, err) = run(&[
        unusable.to_str().unwrap(),
        &format!("127.0.0.1:{}", free_port()),
    ]);
    assert_eq!(code, Some(4), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
