//! `simplesvr local N`: a local N-node cluster in one command. Writes one
//! config per node under the data folder (the seed's config format), starts
//! one `simplesvr` process per node, prints where to talk to them, and stops
//! them all on Ctrl-C.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LocalOptions {
    pub nodes: u64,
    pub data: PathBuf,
    pub base_port: u16,
}

struct NodePlan {
    id: u64,
    peer_port: u16,
    client_addr: String,
    config: PathBuf,
    log: PathBuf,
}

pub fn run(options: LocalOptions) -> Result<(), String> {
    if !(1..=7).contains(&options.nodes) {
        return Err(format!(
            "a local cluster has 1 to 7 nodes, got {}",
            options.nodes
        ));
    }
    let max_port = options.base_port as u64 + 100 + options.nodes;
    if options.base_port == 0 || max_port > u16::MAX as u64 {
        return Err(format!(
            "--port {} leaves no room for the node ports",
            options.base_port
        ));
    }
    std::fs::create_dir_all(&options.data)
        .map_err(|e| format!("cannot create data folder {}: {e}", options.data.display()))?;
    let plans: Vec<NodePlan> = (1..=options.nodes)
        .map(|id| NodePlan {
            id,
            peer_port: options.base_port + id as u16,
            client_addr: format!("127.0.0.1:{}", options.base_port + 100 + id as u16),
            config: options.data.join(format!("node{id}.json")),
            log: options.data.join(format!("node{id}.log")),
        })
        .collect();
    for plan in &plans {
        let groups: Vec<serde_json::Value> = plans
            .iter()
            .map(|p| serde_json::json!({"id": p.id, "ip": "127.0.0.1", "port": p.peer_port}))
            .collect();
        let config = serde_json::json!({
            "selfid": plan.id,
            "groups": groups,
            "path": options.data.join(format!("node{}", plan.id)),
            "stimeout": {"heartbeat": 50, "instimeoutbase": 300, "instimeoutrange": 150},
        });
        let text = serde_json::to_string_pretty(&config).expect("json");
        std::fs::write(&plan.config, text + "\n")
            .map_err(|e| format!("cannot write {}: {e}", plan.config.display()))?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut children: Vec<Child> = Vec::new();
    for plan in &plans {
        match spawn_node(&exe, plan) {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_all(&mut children);
                return Err(e);
            }
        }
    }
    println!(
        "spaxos local cluster: {} nodes, data in {}",
        plans.len(),
        options.data.display()
    );
    for plan in &plans {
        println!(
            "  node {}: clients {}  peers 127.0.0.1:{}  config {}  log {}",
            plan.id,
            plan.client_addr,
            plan.peer_port,
            plan.config.display(),
            plan.log.display()
        );
    }
    let ready = wait_ready(&plans, &mut children, Duration::from_secs(20));
    match ready {
        Ok(leader) => println!("ready: node {leader} leads"),
        Err(e) => {
            stop_all(&mut children);
            return Err(e);
        }
    }
    let first = &plans[0].client_addr;
    println!();
    println!("Talk to it (any node):");
    let (host, port) = first.split_once(':').unwrap_or((first.as_str(), ""));
    println!("  cargo run --release -p simplesvr -- client {first}      (or: nc {host} {port})");
    println!("  then type:  PROP 1 hello   GET 1   STATUS   HELP");
    println!("  one shot:   cargo run --release -p simplesvr -- client {first} PROP 2 world");
    println!(
        "Server logs (every chosen item): tail -f {}",
        plans[0].log.display()
    );
    println!("Ctrl-C stops all nodes.");
    let outcome = wait_for_signal_or_exit(&mut children);
    stop_all(&mut children);
    println!("stopped");
    outcome
}

fn spawn_node(exe: &Path, plan: &NodePlan) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log)
        .map_err(|e| format!("cannot open log {}: {e}", plan.log.display()))?;
    Command::new(exe)
        .arg(&plan.config)
        .arg(&plan.client_addr)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start node {}: {e}", plan.id))
}

/// Waits until every node answers STATUS and one of them leads.
fn wait_ready(
    plans: &[NodePlan],
    children: &mut [Child],
    timeout: Duration,
) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    loop {
        for (plan, child) in plans.iter().zip(children.iter_mut()) {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "node {} exited ({status}); see {}",
                    plan.id,
                    plan.log.display()
                ));
            }
        }
        let statuses: Vec<Option<String>> = plans
            .iter()
            .map(|p| crate::status_line(&p.client_addr))
            .collect();
        if statuses.iter().all(|s| s.is_some()) {
            for line in statuses.iter().flatten() {
                if line.contains("role=leader") {
                    let id = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("id="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    return Ok(id);
                }
            }
        }
        if Instant::now() > deadline {
            return Err("the cluster did not elect a leader in time; see the node logs".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_signal_or_exit(children: &mut [Child]) -> Result<(), String> {
    let stop = crate::signals::install();
    loop {
        if stop.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        for (i, child) in children.iter_mut().enumerate() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("node {} exited unexpectedly ({status})", i + 1));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_all(children: &mut [Child]) {
    for child in children.iter() {
        // SIGTERM: each node shuts down cleanly (flushes, joins threads).
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for child in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
