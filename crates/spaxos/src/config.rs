//! Node configuration: the seed's JSON format (timeouts in milliseconds) plus
//! optional fields with documented defaults (see [`defaults`]).
//!
//! ```
//! use spaxos::config::Config;
//!
//! let config = Config::from_json(r#"{
//!     "selfid": 1,
//!     "groups": [ {"id": 1, "ip": "127.0.0.1", "port": 10001},
//!                 {"id": 2, "ip": "127.0.0.1", "port": 10002},
//!                 {"id": 3, "ip": "127.0.0.1", "port": 10003} ],
//!     "path": "./data",
//!     "stimeout": {"heartbeat": 100, "instimeoutbase": 200, "instimeoutrange": 30} }"#)?;
//! let warnings = config.validate()?;
//! assert!(warnings.is_empty());
//! let core = config.core_config();
//! assert_eq!(core.heartbeat_ticks, 10); // 100 ms at the default 10 ms tick
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Parsing ([`Config::from_json`], [`Config::from_file`]) only checks the
//! shape of the document (unknown fields are errors); [`Config::validate`]
//! checks the values and reports every mistake, one line each.
//! [`Config::load`] does both.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use spaxos_core::{CoreConfig, NodeId};

/// Default values of the optional fields, in one place.
pub mod defaults {
    /// `cluster_id`: peers must agree on it in the handshake.
    pub const CLUSTER_ID: u64 = 0;
    /// `tick_ms`: length of one logical tick of the core.
    pub const TICK_MS: u64 = 10;
    /// `inflight_max`: log instances a leader keeps in flight.
    pub const INFLIGHT_MAX: u64 = 4096;
    /// `batch_bytes_max`: payload bytes per accept or learn message (1 MiB).
    pub const BATCH_BYTES_MAX: usize = 1 << 20;
    /// `value_bytes_max`: largest payload of one proposal (1 MiB).
    pub const VALUE_BYTES_MAX: usize = 1 << 20;
    /// `frame_bytes_max`: largest peer frame accepted or sent (64 MiB).
    pub const FRAME_BYTES_MAX: usize = 64 << 20;
    /// `proposal_queue_max`: proposals queued in the core per node.
    pub const PROPOSAL_QUEUE_MAX: usize = 1 << 16;
    /// `peer_queue_max`: messages queued for one peer before new ones are dropped.
    pub const PEER_QUEUE_MAX: usize = 4096;
    /// `dedup_window`: a reqid chosen within this many log indices is not
    /// applied again (duplicates of retried forwards, client re-proposals).
    /// Larger windows cover retries at higher rates; smaller ones are cheaper
    /// (see docs/PERFORMANCE.md). Storage keeps at least twice this many
    /// indices below a checkpoint. At most 2^24; a node holds ~36 bytes of
    /// memory per index of the window (2.25 MiB at this default).
    pub const DEDUP_WINDOW: u64 = 1 << 16;
    /// `retry_lost`: retry a proposal that lost its index on a fresh index.
    pub const RETRY_LOST: bool = true;
    /// `send_accepts_before_persist`: a leader sends accepts before its own
    /// write of them is durable (its own vote counts only once durable).
    /// Measured in docs/PERFORMANCE.md: one client's latency drops from
    /// about two fdatasyncs to about one, so it is on by default.
    pub const SEND_ACCEPTS_BEFORE_PERSIST: bool = true;
    /// `propose_gather_us`: how long a node may hold new proposals while
    /// proposers it has just answered are still expected back, so that they
    /// go out as one batch. A closed-loop client proposes again as soon as
    /// it is answered; gathering those proposals into one round makes
    /// larger accepts, larger group commits and fewer wake-ups (measured in
    /// docs/PERFORMANCE.md). 0 turns it off.
    pub const PROPOSE_GATHER_US: u64 = 200;
    /// `propose_gather_us` above this is refused: a longer hold is a
    /// latency bug, not batching.
    pub const PROPOSE_GATHER_US_MAX: u64 = 10_000;
    /// `reconnect_backoff_min_ms`: first delay before redialing a peer.
    pub const RECONNECT_BACKOFF_MIN_MS: u64 = 50;
    /// `reconnect_backoff_max_ms`: the redial delay doubles up to this.
    pub const RECONNECT_BACKOFF_MAX_MS: u64 = 2000;
}

/// Frames must hold one full batch plus one oversized value plus this much
/// room for message headers (ballots, indices, reqids).
const FRAME_HEADROOM_BYTES: usize = 64 << 10;
/// The frame length travels as a `u32`; stay well below it.
const FRAME_BYTES_LIMIT: usize = 1 << 30;

/// One member of the group (the seed's `groups` entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Non-zero node id.
    pub id: NodeId,
    /// IP address the member listens on for peers (no host names).
    pub ip: String,
    /// TCP port the member listens on for peers.
    pub port: u16,
}

impl Member {
    /// The member's peer address, if `ip` parses.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.ip
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// The seed's `stimeout`: protocol timeouts in milliseconds.
///
/// Signed so that a negative value is reported by [`Config::validate`] with
/// its field name rather than as a parse error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// A leader sends a heartbeat this often (ms).
    pub heartbeat: i64,
    /// A follower that hears no leader for `instimeoutbase` plus a random
    /// part of `instimeoutrange` starts an election (ms).
    pub instimeoutbase: i64,
    /// Random extra election delay, so that candidates do not duel (ms).
    pub instimeoutrange: i64,
}

/// The configuration of one node. Field names follow the seed; every field
/// after `stimeout` is optional, with the default in [`defaults`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must be one of `groups`.
    pub selfid: NodeId,
    /// Every member of the group, this node included.
    pub groups: Vec<Member>,
    /// Directory of this node's durable log.
    pub path: PathBuf,
    /// Protocol timeouts (ms).
    pub stimeout: Timeouts,
    /// Peers with another cluster id are refused at the handshake.
    #[serde(default = "d_cluster_id")]
    pub cluster_id: u64,
    /// Milliseconds per core tick; timeouts are rounded to ticks.
    #[serde(default = "d_tick_ms")]
    pub tick_ms: u64,
    /// Log instances a leader keeps in flight.
    #[serde(default = "d_inflight_max")]
    pub inflight_max: u64,
    /// Payload bytes per accept or learn message.
    #[serde(default = "d_batch_bytes_max")]
    pub batch_bytes_max: usize,
    /// Largest payload of one proposal.
    #[serde(default = "d_value_bytes_max")]
    pub value_bytes_max: usize,
    /// Largest peer frame sent or accepted; a peer sending a larger one is
    /// disconnected.
    #[serde(default = "d_frame_bytes_max")]
    pub frame_bytes_max: usize,
    /// Proposals queued in the core per node.
    #[serde(default = "d_proposal_queue_max")]
    pub proposal_queue_max: usize,
    /// Messages queued for one peer; beyond it new messages to that peer are
    /// dropped (Paxos tolerates loss) and counted.
    #[serde(default = "d_peer_queue_max")]
    pub peer_queue_max: usize,
    /// Log indices within which a chosen reqid is not applied again.
    #[serde(default = "d_dedup_window")]
    pub dedup_window: u64,
    /// Retry a proposal that lost its index on a fresh index instead of
    /// reporting it lost.
    #[serde(default = "d_retry_lost")]
    pub retry_lost: bool,
    /// Let a leader send accepts before its own write of them is durable.
    #[serde(default = "d_send_accepts_before_persist")]
    pub send_accepts_before_persist: bool,
    /// Longest hold of new proposals while just-answered proposers are
    /// expected back (µs; 0 = off). See [`defaults::PROPOSE_GATHER_US`].
    #[serde(default = "d_propose_gather_us")]
    pub propose_gather_us: u64,
    /// First delay before redialing a disconnected peer (ms).
    #[serde(default = "d_reconnect_backoff_min_ms")]
    pub reconnect_backoff_min_ms: u64,
    /// Cap of the doubling redial delay (ms).
    #[serde(default = "d_reconnect_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// Seed of the core's random number generator; random when absent.
    #[serde(default)]
    pub rng_seed: Option<u64>,
}

fn d_cluster_id() -> u64 {
    defaults::CLUSTER_ID
}
fn d_tick_ms() -> u64 {
    defaults::TICK_MS
}
fn d_inflight_max() -> u64 {
    defaults::INFLIGHT_MAX
}
fn d_batch_bytes_max() -> usize {
    defaults::BATCH_BYTES_MAX
}
fn d_value_bytes_max() -> usize {
    defaults::VALUE_BYTES_MAX
}
fn d_frame_bytes_max() -> usize {
    defaults::FRAME_BYTES_MAX
}
fn d_proposal_queue_max() -> usize {
    defaults::PROPOSAL_QUEUE_MAX
}
fn d_peer_queue_max() -> usize {
    defaults::PEER_QUEUE_MAX
}
fn d_dedup_window() -> u64 {
    defaults::DEDUP_WINDOW
}
fn d_retry_lost() -> bool {
    defaults::RETRY_LOST
}
fn d_send_accepts_before_persist() -> bool {
    defaults::SEND_ACCEPTS_BEFORE_PERSIST
}
fn d_propose_gather_us() -> u64 {
    defaults::PROPOSE_GATHER_US
}
fn d_reconnect_backoff_min_ms() -> u64 {
    defaults::RECONNECT_BACKOFF_MIN_MS
}
fn d_reconnect_backoff_max_ms() -> u64 {
    defaults::RECONNECT_BACKOFF_MAX_MS
}

/// One configuration mistake; its `Display` is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not JSON, a missing or unknown field, or a value of the wrong type.
    /// `origin` is the file path or `<json>`.
    #[error("{origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("groups is empty")]
    NoMembers,
    #[error("selfid must be non-zero")]
    ZeroSelfId,
    #[error("selfid {0} is not one of the ids in groups")]
    SelfNotInGroups(NodeId),
    #[error("groups[{position}]: id must be non-zero")]
    ZeroMemberId { position: usize },
    #[error("groups: id {id} appears more than once")]
    DuplicateId { id: NodeId },
    #[error("groups: address {addr} is used by both id {first} and id {second}")]
    DuplicateAddress {
        addr: SocketAddr,
        first: NodeId,
        second: NodeId,
    },
    #[error("groups: id {id}: ip {ip:?} is not an IP address")]
    BadIp { id: NodeId, ip: String },
    #[error("groups: id {id}: port must be non-zero")]
    ZeroPort { id: NodeId },
    #[error("groups: {count} members, at most 64 are supported")]
    TooManyMembers { count: usize },
    #[error("stimeout.{field} must be greater than zero, got {value}")]
    NonPositiveTimeout { field: &'static str, value: i64 },
    #[error(
        "stimeout.instimeoutbase ({base} ms) must be greater than stimeout.heartbeat ({heartbeat} ms)"
    )]
    ElectionNotAboveHeartbeat { base: i64, heartbeat: i64 },
    #[error(
        "stimeout.instimeoutbase ({base} ms) must be at least one tick_ms ({tick_ms} ms) more than stimeout.heartbeat ({heartbeat} ms)"
    )]
    ElectionTicksNotAboveHeartbeat {
        base: i64,
        heartbeat: i64,
        tick_ms: u64,
    },
    #[error("{field} must be greater than zero")]
    Zero { field: &'static str },
    #[error("frame_bytes_max ({frame}) must be at least batch_bytes_max + value_bytes_max + 64 KiB ({needed})")]
    FrameTooSmall { frame: usize, needed: usize },
    #[error("frame_bytes_max ({frame}) must be at most 1 GiB")]
    FrameTooLarge { frame: usize },
    #[error("reconnect_backoff_max_ms ({max}) must be at least reconnect_backoff_min_ms ({min})")]
    BackoffRange { min: u64, max: u64 },
    #[error("propose_gather_us ({gather}) must be at most {max}", max = defaults::PROPOSE_GATHER_US_MAX)]
    GatherTooLong { gather: u64 },
    #[error("dedup_window ({window}) must be at most {max}", max = spaxos_core::DEDUP_WINDOW_MAX)]
    DedupWindowTooLarge { window: u64 },
}

/// Every mistake found by [`Config::validate`] (never empty); displays one
/// line per mistake.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, error) in self.0.iter().enumerate() {
            if n > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> ConfigErrors {
        ConfigErrors(vec![error])
    }
}

impl ConfigErrors {
    /// The one-line messages, in the order found.
    pub fn lines(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

/// Something legal but probably unintended; displays as one line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigWarning {
    /// An even group tolerates no more failures than one member fewer.
    #[error(
        "groups has {0} members: an even group tolerates no more failures than one member fewer"
    )]
    EvenGroupSize(usize),
    /// A timeout is not a multiple of `tick_ms`: it is rounded down to whole
    /// ticks (and up to one tick for the heartbeat and the random range).
    #[error("stimeout.{field} ({ms} ms) is not a multiple of tick_ms ({tick_ms} ms); it is rounded to {rounded_ms} ms")]
    RoundedToTick {
        field: &'static str,
        ms: i64,
        tick_ms: u64,
        rounded_ms: u64,
    },
}

impl Config {
    /// Parses a config document. Checks its shape only; see [`Config::validate`].
    pub fn from_json(json: &str) -> Result<Config, ConfigError> {
        Config::parse(json, "<json>")
    }

    /// Reads and parses a config file. Checks its shape only; see
    /// [`Config::validate`] and [`Config::load`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let json = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&json, &path.display().to_string())
    }

    /// [`Config::from_file`] then [`Config::validate`].
    pub fn load(path: impl AsRef<Path>) -> Result<(Config, Vec<ConfigWarning>), ConfigErrors> {
        let config = Config::from_file(path)?;
        let warnings = config.validate()?;
        Ok((config, warnings))
    }

    fn parse(json: &str, origin: &str) -> Result<Config, ConfigError> {
        serde_json::from_str(json).map_err(|error| ConfigError::Parse {
            origin: origin.to_string(),
            message: error.to_string(),
        })
    }

    /// Checks every value; returns the warnings, or every mistake found.
    pub fn validate(&self) -> Result<Vec<ConfigWarning>, ConfigErrors> {
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        self.check_groups(&mut errors, &mut warnings);
        self.check_timeouts(&mut errors, &mut warnings);
        self.check_limits(&mut errors);
        if errors.is_empty() {
            Ok(warnings)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn check_groups(&self, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigWarning>) {
        if self.selfid == 0 {
            errors.push(ConfigError::ZeroSelfId);
        }
        if self.groups.is_empty() {
            errors.push(ConfigError::NoMembers);
            return;
        }
        if self.groups.len() > 64 {
            errors.push(ConfigError::TooManyMembers {
                count: self.groups.len(),
            });
        }
        if self.selfid != 0 && !self.groups.iter().any(|m| m.id == self.selfid) {
            errors.push(ConfigError::SelfNotInGroups(self.selfid));
        }
        let mut id_counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        let mut addrs: HashMap<SocketAddr, NodeId> = HashMap::new();
        for (position, member) in self.groups.iter().enumerate() {
            if member.id == 0 {
                errors.push(ConfigError::ZeroMemberId { position });
            } else {
                let count = id_counts.entry(member.id).or_default();
                *count += 1;
                if *count == 2 {
                    errors.push(ConfigError::DuplicateId { id: member.id });
                }
            }
            if member.port == 0 {
                errors.push(ConfigError::ZeroPort { id: member.id });
            }
            match member.addr() {
                None => errors.push(ConfigError::BadIp {
                    id: member.id,
                    ip: member.ip.clone(),
                }),
                Some(addr) => {
                    if let Some(&first) = addrs.get(&addr) {
                        errors.push(ConfigError::DuplicateAddress {
                            addr,
                            first,
                            second: member.id,
                        });
                    } else {
                        addrs.insert(addr, member.id);
                    }
                }
            }
        }
        if self.groups.len().is_multiple_of(2) {
            warnings.push(ConfigWarning::EvenGroupSize(self.groups.len()));
        }
    }

    fn check_timeouts(&self, errors: &mut Vec<ConfigError>, warnings: &mut Vec<ConfigWarning>) {
        let t = &self.stimeout;
        let fields = [
            ("heartbeat", t.heartbeat),
            ("instimeoutbase", t.instimeoutbase),
            ("instimeoutrange", t.instimeoutrange),
        ];
        let mut positive = true;
        for (field, value) in fields {
            if value <= 0 {
                positive = false;
                errors.push(ConfigError::NonPositiveTimeout { field, value });
            }
        }
        if self.tick_ms == 0 {
            errors.push(ConfigError::Zero { field: "tick_ms" });
            return;
        }
        if !positive {
            return;
        }
        if t.instimeoutbase <= t.heartbeat {
            errors.push(ConfigError::ElectionNotAboveHeartbeat {
                base: t.instimeoutbase,
                heartbeat: t.heartbeat,
            });
        } else if self.election_timeout_ticks() <= self.heartbeat_ticks() {
            errors.push(ConfigError::ElectionTicksNotAboveHeartbeat {
                base: t.instimeoutbase,
                heartbeat: t.heartbeat,
                tick_ms: self.tick_ms,
            });
        }
        let ticks = [
            self.heartbeat_ticks(),
            self.election_timeout_ticks(),
            self.election_timeout_range_ticks(),
        ];
        for ((field, ms), ticks) in fields.into_iter().zip(ticks) {
            let rounded_ms = u64::from(ticks).saturating_mul(self.tick_ms);
            if rounded_ms != ms as u64 {
                warnings.push(ConfigWarning::RoundedToTick {
                    field,
                    ms,
                    tick_ms: self.tick_ms,
                    rounded_ms,
                });
            }
        }
    }

    fn check_limits(&self, errors: &mut Vec<ConfigError>) {
        let positive: [(&'static str, u64); 7] = [
            ("inflight_max", self.inflight_max),
            ("dedup_window", self.dedup_window),
            ("batch_bytes_max", self.batch_bytes_max as u64),
            ("value_bytes_max", self.value_bytes_max as u64),
            ("proposal_queue_max", self.proposal_queue_max as u64),
            ("peer_queue_max", self.peer_queue_max as u64),
            ("reconnect_backoff_min_ms", self.reconnect_backoff_min_ms),
        ];
        for (field, value) in positive {
            if value == 0 {
                errors.push(ConfigError::Zero { field });
            }
        }
        if self.dedup_window > spaxos_core::DEDUP_WINDOW_MAX {
            errors.push(ConfigError::DedupWindowTooLarge {
                window: self.dedup_window,
            });
        }
        let needed = self
            .batch_bytes_max
            .saturating_add(self.value_bytes_max)
            .saturating_add(FRAME_HEADROOM_BYTES);
        if self.frame_bytes_max > FRAME_BYTES_LIMIT {
            errors.push(ConfigError::FrameTooLarge {
                frame: self.frame_bytes_max,
            });
        } else if self.frame_bytes_max < needed {
            errors.push(ConfigError::FrameTooSmall {
                frame: self.frame_bytes_max,
                needed,
            });
        }
        if self.propose_gather_us > defaults::PROPOSE_GATHER_US_MAX {
            errors.push(ConfigError::GatherTooLong {
                gather: self.propose_gather_us,
            });
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms {
            errors.push(ConfigError::BackoffRange {
                min: self.reconnect_backoff_min_ms,
                max: self.reconnect_backoff_max_ms,
            });
        }
    }

    /// This node's own entry in `groups`.
    pub fn self_member(&self) -> Option<&Member> {
        self.groups.iter().find(|m| m.id == self.selfid)
    }

    /// Ids of every member, in config order.
    pub fn member_ids(&self) -> Vec<NodeId> {
        self.groups.iter().map(|m| m.id).collect()
    }

    /// The peer address of member `id`, if it is a member with a valid ip.
    pub fn addr_of(&self, id: NodeId) -> Option<SocketAddr> {
        self.groups.iter().find(|m| m.id == id)?.addr()
    }

    /// Length of one core tick.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Heartbeat interval in ticks (at least 1).
    pub fn heartbeat_ticks(&self) -> u32 {
        ms_to_ticks(self.stimeout.heartbeat, self.tick_ms).max(1)
    }

    /// Base election timeout in ticks.
    pub fn election_timeout_ticks(&self) -> u32 {
        ms_to_ticks(self.stimeout.instimeoutbase, self.tick_ms)
    }

    /// Random part of the election timeout in ticks (at least 1).
    pub fn election_timeout_range_ticks(&self) -> u32 {
        ms_to_ticks(self.stimeout.instimeoutrange, self.tick_ms).max(1)
    }

    /// The protocol core's configuration: timeouts converted from
    /// milliseconds to ticks, the others derived from the heartbeat and the
    /// election timeout with the ratios of [`CoreConfig::new`]'s defaults.
    ///
    /// Meaningful only for a config that passed [`Config::validate`].
    pub fn core_config(&self) -> CoreConfig {
        let mut core = CoreConfig::new(self.selfid, self.member_ids());
        let heartbeat = self.heartbeat_ticks();
        let election = self.election_timeout_ticks();
        core.heartbeat_ticks = heartbeat;
        core.election_timeout_ticks = election;
        core.election_timeout_range_ticks = self.election_timeout_range_ticks();
        // Re-send an unanswered accept after two heartbeats: a lost message
        // costs little latency, a slow follower is not flooded.
        core.accept_retry_ticks = heartbeat.saturating_mul(2);
        core.forward_retry_ticks = heartbeat.saturating_mul(4);
        core.retry_backoff_ticks = (heartbeat.saturating_mul(3) / 2).max(1);
        // Leaderless Paxos only after a leader had a fair chance to win.
        core.leaderless_delay_ticks = election.saturating_mul(3);
        core.noop_timeout_ticks = heartbeat.saturating_mul(4);
        core.catchup_retry_ticks = heartbeat.saturating_mul(3);
        core.inflight_max = self.inflight_max;
        core.batch_bytes_max = self.batch_bytes_max;
        core.value_bytes_max = self.value_bytes_max;
        core.proposal_queue_max = self.proposal_queue_max;
        core.retry_lost = self.retry_lost;
        core.dedup_window = self.dedup_window;
        core.rng_seed = self
            .rng_seed
            .unwrap_or_else(|| rand::random::<u64>() ^ self.selfid);
        core
    }
}

/// Whole ticks in `ms` (rounded down; 0 for non-positive values; saturating).
fn ms_to_ticks(ms: i64, tick_ms: u64) -> u32 {
    if ms <= 0 || tick_ms == 0 {
        return 0;
    }
    u32::try_from(ms as u64 / tick_ms).unwrap_or(u32::MAX)
}
