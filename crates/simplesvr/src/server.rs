//! The client-facing server: one task per connection, requests answered in
//! the order they arrived (pipelining), many connections at once.

use std::sync::Arc;
use std::time::Duration;

use spaxos::{Error, Outcome, ProposalError, ProposeError, Role, Spaxos, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info};

use crate::protocol::{parse_line, printable, Request, HELP, LINE_BYTES_MAX};

/// Requests one connection may have in flight before we stop reading it.
const PIPELINE_MAX: usize = 4096;

pub async fn serve(listener: TcpListener, node: Arc<Spaxos>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                debug!(%peer, "client connected");
                let node = node.clone();
                tokio::spawn(async move {
                    handle_connection(stream, node).await;
                    debug!(%peer, "client disconnected");
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle_connection(stream: TcpStream, node: Arc<Spaxos>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (replies_tx, mut replies_rx) = mpsc::channel::<Reply>(PIPELINE_MAX);
    let writer_node = node.clone();
    let writer_task = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some(reply) = replies_rx.recv().await {
            let line = match reply {
                Reply::Pending(rx) => rx.await.unwrap_or_else(|_| "ERR internal error".into()),
                // Reads run when every earlier request of this connection
                // is answered, so a client reads its own writes.
                Reply::Get(index) => {
                    let node = writer_node.clone();
                    tokio::task::spawn_blocking(move || get_reply(&node, index))
                        .await
                        .unwrap_or_else(|_| "ERR internal error".into())
                }
                Reply::Status => status_reply(&writer_node),
            };
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            // Flush when no further reply is queued: batches pipelined replies.
            if replies_rx.is_empty() {
                if writer.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
        }
        if !out.is_empty() {
            let _ = writer.write_all(&out).await;
        }
        let _ = writer.shutdown().await;
    });

    let mut buffer: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 64 * 1024];
    // True while skipping the rest of an over-long line.
    let mut discarding = false;
    loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut data = &chunk[..n];
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(pos) => {
                    if discarding {
                        discarding = false;
                    } else {
                        buffer.extend_from_slice(&data[..pos]);
                        let line = std::mem::take(&mut buffer);
                        if !dispatch(&line, &node, &replies_tx).await {
                            return finish(writer_task).await;
                        }
                    }
                    data = &data[pos + 1..];
                }
                None => {
                    if !discarding {
                        buffer.extend_from_slice(data);
                        if buffer.len() > LINE_BYTES_MAX {
                            buffer.clear();
                            discarding = true;
                            let reply = format!("ERR line longer than {LINE_BYTES_MAX} bytes");
                            if !send_ready(&replies_tx, reply).await {
                                return finish(writer_task).await;
                            }
                        }
                    }
                    data = &[];
                }
            }
        }
    }
    // End of input: a last line without '\n' still counts.
    if !discarding && !buffer.is_empty() {
        let line = std::mem::take(&mut buffer);
        let _ = dispatch(&line, &node, &replies_tx).await;
    }
    drop(replies_tx);
    finish(writer_task).await;
}

async fn finish(writer_task: tokio::task::JoinHandle<()>) {
    let _ = writer_task.await;
}

/// A reply slot, in request order.
enum Reply {
    /// Computed concurrently (proposals, errors).
    Pending(oneshot::Receiver<String>),
    /// Computed when its turn comes.
    Get(u64),
    Status,
}

async fn send_ready(replies: &mpsc::Sender<Reply>, line: String) -> bool {
    let (tx, rx) = oneshot::channel();
    let _ = tx.send(line);
    replies.send(Reply::Pending(rx)).await.is_ok()
}

/// Starts one request; its reply is queued in arrival order. False when
/// the connection's writer is gone.
async fn dispatch(line: &[u8], node: &Arc<Spaxos>, replies: &mpsc::Sender<Reply>) -> bool {
    let request = match parse_line(line) {
        Ok(None) => return true,
        Ok(Some(request)) => request,
        Err(reason) => return send_ready(replies, format!("ERR {reason}")).await,
    };
    match request {
        Request::Help => send_ready(replies, HELP.to_string()).await,
        Request::Status => replies.send(Reply::Status).await.is_ok(),
        Request::Get { index } => replies.send(Reply::Get(index)).await.is_ok(),
        Request::Propose { reqid, value } => {
            let (tx, rx) = oneshot::channel();
            if replies.send(Reply::Pending(rx)).await.is_err() {
                return false;
            }
            let node = node.clone();
            tokio::spawn(async move {
                let _ = tx.send(propose_reply(node, reqid, value).await);
            });
            true
        }
    }
}

async fn propose_reply(node: Arc<Spaxos>, reqid: u64, value: Vec<u8>) -> String {
    let handle = match node.try_propose(reqid, value.clone()) {
        Ok(handle) => handle,
        Err(ProposeError::Busy) => {
            // The node's input queue is full: wait for room off the runtime.
            let blocking = node.clone();
            let result = tokio::task::spawn_blocking(move || {
                blocking.propose_timeout(reqid, value, Duration::from_secs(10))
            })
            .await;
            match result {
                Ok(Ok(handle)) => handle,
                Ok(Err(e)) => return format!("ERR {e}"),
                Err(_) => return "ERR internal error".into(),
            }
        }
        Err(e) => return format!("ERR {e}"),
    };
    match handle.await {
        Ok(Outcome::Chosen { index }) => format!("CHOSEN {index}"),
        Ok(Outcome::Lost { index }) => format!("LOST {index}"),
        Err(ProposalError::Rejected(e)) => format!("ERR {e}"),
        Err(e) => format!("ERR {e}"),
    }
}

fn get_reply(node: &Spaxos, index: u64) -> String {
    match node.get(index) {
        Ok(Some(Value::Noop)) => format!("NOOP {index}"),
        Ok(Some(value)) => {
            let reqid = value.reqid().unwrap_or(0);
            let text: Vec<String> = value.values().iter().map(|v| printable(v)).collect();
            format!("ITEM {index} {reqid} {}", text.join(" "))
        }
        Ok(None) => format!("NONE {index}"),
        Err(Error::Compacted { first_index }) => {
            format!("ERR index {index} was compacted; this node holds {first_index} and above")
        }
        Err(e) => format!("ERR {e}"),
    }
}

pub fn status_reply(node: &Spaxos) -> String {
    let status = node.status();
    let role = match status.role {
        Role::Leader => "leader",
        Role::Candidate => "candidate",
        Role::Follower => "follower",
    };
    let leader = status
        .leader
        .map(|l| l.to_string())
        .unwrap_or_else(|| "none".into());
    let peers: Vec<String> = status
        .peers_connected
        .iter()
        .map(|p| p.to_string())
        .collect();
    let mut line = format!(
        "STATUS id={} role={role} leader={leader} chosen_through={} max_index={} pending={} peers={}",
        status.id,
        status.chosen_through,
        status.max_index,
        status.pending,
        if peers.is_empty() { "none".to_string() } else { peers.join(",") }
    );
    if let Some(failure) = status.failure {
        line.push_str(&format!(" failure={}", printable(failure.as_bytes())));
    }
    line
}

/// Logs every chosen item (the seed's "check out svr side log"), in index
/// order from where this run starts. An ordered stream never skips an item,
/// even when the log writer falls behind the node (it re-reads from storage).
pub fn log_chosen(node: &Spaxos) -> std::thread::JoinHandle<()> {
    let items = node.ordered_from(node.status().chosen_through + 1);
    std::thread::Builder::new()
        .name("chosen-log".into())
        .spawn(move || {
            // Ends when the node stops (or its log was compacted under us).
            for item in items.map_while(Result::ok) {
                match &item.value {
                    Value::Noop => info!(index = item.index, "chosen no-op"),
                    value => {
                        let text: Vec<String> =
                            value.values().iter().map(|v| printable(v)).collect();
                        info!(
                            index = item.index,
                            reqid = value.reqid().unwrap_or(0),
                            value = %text.join(" "),
                            "chosen"
                        );
                    }
                }
            }
        })
        .expect("spawn the chosen-log thread")
}
