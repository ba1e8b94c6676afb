//! Placeholder while the node is written (replaced in the next commit).
pub struct Node;
pub struct NodeStatus;
pub enum Role { Follower }
#[derive(Debug, thiserror::Error)]
pub enum ProposeError { #[error("busy")] Busy }
