//! `simplesvr`: the seed's playground server on top of the spaxos library.
//!
//! ```text
//! simplesvr config.json ip:port      one node; clients connect to ip:port
//! simplesvr local [N]                a local N-node cluster (default 3)
//! simplesvr client ip:port [CMD...]  a line client (interactive or one command)
//! ```

mod client;
mod local;
mod protocol;
mod server;
mod signals;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use spaxos::{Config, Spaxos, StartError, TransportError};

/// Exit codes: 2 bad arguments or config, 3 an address in use, 4 a data
/// directory that cannot be used, 1 anything else.
const EXIT_CONFIG: u8 = 2;
const EXIT_ADDRESS: u8 = 3;
const EXIT_DATA: u8 = 4;

#[derive(Parser, Debug)]
#[command(
    name = "simplesvr",
    about = "A spaxos node you can talk to over telnet/nc (PROP <reqid> <value>, GET <index>, STATUS, HELP)",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// The node's config (the seed's JSON format).
    config: Option<PathBuf>,
    /// Where clients connect, e.g. 127.0.0.1:20101.
    listen: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start a local cluster: one process per node, configs under --data.
    Local {
        /// Number of nodes (1 to 7).
        #[arg(default_value_t = 3)]
        nodes: u64,
        /// Folder for the generated configs, data and logs.
        #[arg(long, default_value = "data/local")]
        data: PathBuf,
        /// Peer ports are PORT+1.., client ports PORT+101...
        #[arg(long, default_value_t = 20000)]
        port: u16,
    },
    /// Talk to a node: interactive, or send one command and print the reply.
    Client {
        /// The node's client address, e.g. 127.0.0.1:20101.
        addr: String,
        /// A command to send (e.g. PROP 1 hello); interactive if absent.
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Cmd::Local { nodes, data, port }) => local::run(local::LocalOptions {
            nodes,
            data,
            base_port: port,
        })
        .map_err(|e| (1, e)),
        Some(Cmd::Client { addr, command }) => client::run(&addr, &command).map_err(|e| (1, e)),
        None => match (cli.config, cli.listen) {
            (Some(config), Some(listen)) => run_node(&config, &listen),
            _ => Err((
                EXIT_CONFIG,
                "usage: simplesvr config.json ip:port | simplesvr local [N] | simplesvr client ip:port [COMMAND]".into(),
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("simplesvr: {message}");
            ExitCode::from(code)
        }
    }
}

fn run_node(config_path: &PathBuf, listen: &str) -> Result<(), (u8, String)> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let shown = config_path.display();
    let (config, warnings) = Config::load(config_path).map_err(|errors| {
        let lines: Vec<String> = errors
            .lines()
            .into_iter()
            .map(|l| format!("{shown}: {l}"))
            .collect();
        (EXIT_CONFIG, lines.join("\nsimplesvr: "))
    })?;
    for warning in warnings {
        tracing::warn!("{shown}: {warning}");
    }
    let listen_addr: std::net::SocketAddr = listen.parse().map_err(|_| {
        (
            EXIT_CONFIG,
            format!("client address {listen:?} is not ip:port"),
        )
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("simplesvr-clients")
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the client runtime: {e}")))?;
    // Bind the client port first: a port in use fails before any state changes.
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(listen_addr))
        .map_err(|e| {
            (
                EXIT_ADDRESS,
                format!("cannot listen for clients on {listen_addr}: {e}"),
            )
        })?;
    let stop = signals::install();
    let node = Spaxos::start(config).map_err(start_error)?;
    let node = Arc::new(node);
    let chosen_log = server::log_chosen(&node);
    tracing::info!(id = node.id(), clients = %listen_addr, "simplesvr serving");
    runtime.spawn(server::serve(listener, node.clone()));
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        if node.status().failure.is_some() {
            let failure = node.status().failure.unwrap_or_default();
            node.shutdown();
            return Err((1, format!("node stopped: {failure}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    tracing::info!("shutting down");
    node.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let _ = chosen_log.join();
    Ok(())
}

fn start_error(error: StartError) -> (u8, String) {
    let code = match &error {
        StartError::Config(_) | StartError::Core(_) => EXIT_CONFIG,
        StartError::Transport(TransportError::Bind { .. }) => EXIT_ADDRESS,
        StartError::CreateDir { .. } | StartError::Storage(_) => EXIT_DATA,
        _ => 1,
    };
    (code, error.to_string())
}

/// One STATUS round trip (used by `local` to wait for readiness).
pub(crate) fn status_line(addr: &str) -> Option<String> {
    let stream =
        TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let mut writer = stream.try_clone().ok()?;
    writer.write_all(b"STATUS\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    line.starts_with("STATUS").then_some(line)
}
