//! Errors of every [`crate::Storage`] implementation.

use std::io;
use std::path::{Path, PathBuf};

use spaxos_core::Index;

/// Why a storage operation failed.
///
/// Operator-caused conditions (disk full, permissions, corruption) are values
/// with the file path in the message, so the runtime can report them as is.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// An I/O call failed.
    #[error("storage: {op} {}: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The file system is full (ENOSPC / EDQUOT). Nothing of the failed
    /// batch was acknowledged.
    #[error("storage: disk full: {op} {}: {source}", path.display())]
    DiskFull {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The process may not read, write or create this path (EACCES / EPERM /
    /// EROFS).
    #[error("storage: permission denied: {op} {}: {source}", path.display())]
    PermissionDenied {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// Stored data failed a checksum or format check somewhere other than a
    /// torn tail. The store refuses to open rather than drop data.
    #[error("storage: corrupt data in {} at byte offset {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    /// The file was written by an unknown format version.
    #[error("storage: {} has format version {found}, this build reads version {supported}", path.display())]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// The index was dropped by [`crate::Storage::compact`]; the lowest index
    /// still held is `first_index`.
    #[error("storage: index compacted away; the first index held is {first_index}")]
    Compacted { first_index: Index },
    /// Another process (or another open handle) holds the directory.
    #[error("storage: {} is locked by another open store", path.display())]
    Locked { path: PathBuf },
    /// An earlier write failed; the store refuses writes until it is reopened
    /// (which re-reads what actually reached the disk).
    #[error("storage: an earlier write failed ({first_error}); reopen the store")]
    Failed { first_error: String },
    /// The batch breaks the write contract (a programming error in the
    /// caller); nothing of it was written.
    #[error("storage: invalid batch: {reason}")]
    InvalidBatch { reason: String },
}

impl StorageError {
    /// Classifies an I/O error on `path`: disk full and permission problems
    /// get their own variants so their message says so.
    pub(crate) fn io(path: &Path, op: &'static str, source: io::Error) -> StorageError {
        let path = path.to_path_buf();
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => StorageError::DiskFull { path, op, source },
            Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                StorageError::PermissionDenied { path, op, source }
            }
            _ => StorageError::Io { path, op, source },
        }
    }

    pub(crate) fn corrupt(path: &Path, offset: u64, reason: impl Into<String>) -> StorageError {
        StorageError::Corrupt {
            path: path.to_path_buf(),
            offset,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> StorageError {
        StorageError::InvalidBatch {
            reason: reason.into(),
        }
    }
}
