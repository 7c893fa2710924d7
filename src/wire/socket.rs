//! The Unix sockets between front and its workers: a directory only the service user can
//! enter (0700, checked, never followed through a symbolic link), sockets 0600, and a check
//! of the peer's credentials (same uid, and the pid front spawned) before a byte from the
//! other end is trusted.

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

/// The longest path a Unix socket can have: `sun_path` is 108 bytes with the closing NUL.
pub const MAX_SOCKET_PATH: usize = 107;

/// The names of front's sockets in `RUNTIME_DIR` (the admin socket's name is in
/// [`crate::wire::admin::ADMIN_SOCKET`]).
pub const WORKER_SOCKET: &str = "front.sock";

/// Whether every socket front makes in `dir` fits in `sun_path`; the reason if not. Checked
/// with the configuration, so a long `RUNTIME_DIR` is a startup error naming it, not a bind
/// failure later (or, worse, a worker that cannot connect).
pub fn check_socket_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    for name in [WORKER_SOCKET, crate::wire::admin::ADMIN_SOCKET] {
        let len = dir.join(name).as_os_str().as_bytes().len();
        if len > MAX_SOCKET_PATH {
            return Err(format!(
                "the socket path {}/{name} would be {len} bytes; Unix socket paths are limited to {MAX_SOCKET_PATH} (sun_path): choose a shorter directory",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Makes sure `dir` is a directory only front's user can enter, creating it (mode 0700, and
/// missing parents 0700) if it does not exist.
///
/// The last component is never followed if it is a symbolic link (opened `O_NOFOLLOW`, then
/// checked on the open descriptor, so nothing can be swapped in between). An existing
/// directory is never `chmod`ed: one owned by another user, or that group or others may
/// enter, is refused with the reason, for the operator to fix (or remove, so front creates
/// it). Only a directory this call created gets its mode set, to exactly 0700.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => return Err(e),
    };
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_DIRECTORY | nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| match e.raw_os_error() {
            // O_DIRECTORY with O_NOFOLLOW fails on a link with ENOTDIR (or ELOOP).
            _ if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) => {
                Error::other(format!(
                    "{} is a symbolic link; front does not follow it: point the setting at the real directory",
                    dir.display()
                ))
            }
            Some(nix::libc::ELOOP) => Error::other(format!(
                "{} is a symbolic link; front does not follow it: point the setting at the real directory",
                dir.display()
            )),
            Some(nix::libc::ENOTDIR) => {
                Error::other(format!("{} exists and is not a directory", dir.display()))
            }
            _ => e,
        })?;
    let meta = handle.metadata()?;
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != ours {
        return Err(Error::other(format!(
            "{} is owned by uid {}, not by front's uid {ours}; front will not use a directory another user controls",
            dir.display(),
            meta.uid()
        )));
    }
    let mode = meta.mode() & 0o7777;
    if created {
        // Exactly 0700 whatever the umask; on the descriptor, so on the directory just made.
        handle.set_permissions(std::fs::Permissions::from_mode(0o700))?;
    } else if mode & 0o077 != 0 {
        return Err(Error::other(format!(
            "{} is accessible to group or others (mode {mode:04o}); front never changes the mode of an existing directory: chmod 700 it, or remove it so front creates it",
            dir.display()
        )));
    } else if mode & 0o700 != 0o700 {
        return Err(Error::other(format!(
            "{} has mode {mode:04o}; front needs 0700 on it",
            dir.display()
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dirs_are_made_0700_and_existing_ones_checked_not_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a/b/run");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&tmp.path().join("a")), 0o700);
        // Again: it exists now, and is fine.
        private_dir(&fresh).unwrap();

        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&open).unwrap_err().to_string();
        assert!(e.contains("0755") && e.contains("chmod 700"), "{e}");
        assert_eq!(
            mode(&open),
            0o755,
            "an existing directory is never chmod'ed"
        );

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).unwrap();
        let e = private_dir(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let dangling = tmp.path().join("dangling");
        std::os::unix::fs::symlink(tmp.path().join("nowhere"), &dangling).unwrap();
        assert!(private_dir(&dangling).is_err());
        assert!(
            !tmp.path().join("nowhere").exists(),
            "followed a dangling link"
        );

        let file = tmp.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(
            private_dir(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn socket_paths_must_fit_sun_path() {
        assert!(check_socket_dir(Path::new("/run/beep-webrtc")).is_ok());
        let long = format!("/tmp/{}", "x".repeat(100));
        let e = check_socket_dir(Path::new(&long)).unwrap_err();
        assert!(e.contains("107"), "{e}");
    }
}
