//! The Unix sockets between front and its workers: a directory only the service user can
//! enter (0700), sockets 0600, and a check of the peer's credentials (same uid, and the pid
//! front spawned) before a byte from the other end is trusted.

use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("peer credentials: {0}")]
    Credentials(std::io::Error),
    #[error("peer uid {peer} is not ours ({ours})")]
    Uid { peer: u32, ours: u32 },
    #[error("peer pid {peer:?} is not the spawned worker {expected}")]
    Pid { peer: Option<i32>, expected: u32 },
}

/// Creates `dir` (and parents) with mode 0700, or tightens it to 0700 if it exists.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Binds a listening socket at `path` with mode 0600 (replacing a stale one).
pub fn bind_private(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts a connection only from our own uid and, when given, from that pid.
pub fn check_peer(stream: &tokio::net::UnixStream, pid: Option<u32>) -> Result<(), PeerError> {
    let cred = stream.peer_cred().map_err(PeerError::Credentials)?;
    let ours = nix::unistd::getuid().as_raw();
    if cred.uid() != ours {
        return Err(PeerError::Uid {
            peer: cred.uid(),
            ours,
        });
    }
    if let Some(expected) = pid
        && cred.pid() != Some(expected as i32)
    {
        return Err(PeerError::Pid {
            peer: cred.pid(),
            expected,
        });
    }
    Ok(())
}
