//! `ctl`, the operator's CLI: one request to front's admin socket, the answer printed as a
//! table or, with `--json`, as JSON. Errors say what to check: front not running (no socket,
//! or nobody listening), another build of front, an unknown conversation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::admin::{AdminRequest, AdminResponse, ClusterView, WorkerRow};
use crate::wire::frame::{self, FrameError};

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot reach front at {path}: {source} (is front running, with this RUNTIME_DIR?)")]
    Unreachable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("front at {path} did not answer: {source}")]
    NoAnswer { path: PathBuf, source: FrameError },
    #[error("front at {0} did not answer within 10 s")]
    Timeout(PathBuf),
    /// Front refused the request; its words.
    #[error("{0}")]
    Refused(String),
}

/// Sends `request` to front's admin socket at `socket` and returns the answer (an
/// `AdminResponse::Error` becomes [`CtlError::Refused`]).
pub async fn ask(socket: &Path, request: &AdminRequest) -> Result<AdminResponse, CtlError> {
    let unreachable = |source| CtlError::Unreachable {
        path: socket.to_path_buf(),
        source,
    };
    let no_answer = |source| CtlError::NoAnswer {
        path: socket.to_path_buf(),
        source,
    };
    let exchange = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(unreachable)?;
        let (mut r, mut w) = stream.into_split();
        frame::write_frame(&mut w, request)
            .await
            .map_err(no_answer)?;
        let mut buf = Vec::new();
        frame::read_frame::<_, AdminResponse>(&mut r, &mut buf)
            .await
            .map_err(no_answer)
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Err(_) => Err(CtlError::Timeout(socket.to_path_buf())),
        Ok(Ok(AdminResponse::Error { message })) => Err(CtlError::Refused(message)),
        Ok(other) => other,
    }
}

/// `ctl workers` as a table.
pub fn workers_table(rows: &[WorkerRow]) -> String {
    let mut out = format!(
        "{:<24} {:>8} {:<9} {:>7} {:>10} {:>8} {:>9} {:>9}\n",
        "CONVERSATION", "PID", "STATE", "MEMBERS", "UPTIME", "RESTARTS", "CPU", "RSS"
    );
    for w in rows {
        out.push_str(&format!(
            "{:<24} {:>8} {:<9} {:>7} {:>9.0}s {:>8} {:>8.2}s {:>6} MiB\n",
            w.conversation,
            w.pid.map_or("-".into(), |p| p.to_string()),
            w.state,
            w.members,
            w.uptime_s,
            w.restarts,
            w.cpu_s,
            w.rss_kib / 1024
        ));
    }
    out
}

/// `ctl cluster` as two tables: the nodes, then which node holds each conversation.
pub fn cluster_table(view: &ClusterView) -> String {
    let mut out = format!(
        "{:<20} {:<5} {:>7} {:>7} {:>6} {:>5} {:<8} {:<16} {}\n",
        "NODE", "LIVE", "HEARD", "WORKERS", "PEERS", "CPU", "DRAINING", "MEDIA", "LISTEN"
    );
    for n in &view.nodes {
        let me = if n.node == view.me {
            " (this node)"
        } else {
            ""
        };
        out.push_str(&format!(
            "{:<20} {:<5} {:>6.1}s {:>7} {:>6} {:>4.0}% {:<8} {:<16} {}{me}\n",
            n.node,
            if n.alive { "yes" } else { "no" },
            n.age_ms as f64 / 1000.0,
            n.workers,
            n.peers,
            n.cpu * 100.0,
            if n.draining {
                "yes"
            } else if n.full {
                "full"
            } else {
                "no"
            },
            n.media_ip.as_deref().unwrap_or("-"),
            n.listen
        ));
    }
    out.push_str(&format!("\n{:<32} {}\n", "CONVERSATION", "NODE"));
    for (conversation, node) in &view.conversations {
        let dead = if view.nodes.iter().any(|n| n.node == *node && n.alive) {
            ""
        } else {
            "  (not live: placed anew at the next offer)"
        };
        out.push_str(&format!("{conversation:<32} {node}{dead}\n"));
    }
    if let Some(e) = &view.error {
        out.push_str(&format!("(conversations not listed: {e})\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_front_is_said_in_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = ask(&dir.path().join("admin.sock"), &AdminRequest::Workers)
            .await
            .expect_err("no front");
        assert!(e.to_string().contains("is front running"), "{e}");
    }

    #[test]
    fn the_table_has_a_row_per_worker() {
        let row = WorkerRow {
            conversation: "room".into(),
            pid: Some(42),
            state: "running".into(),
            members: 3,
            uptime_s: 61.0,
            restarts: 1,
            cpu_s: 1.5,
            rss_kib: 8192,
        };
        let t = workers_table(&[row]);
        assert_eq!(t.lines().count(), 2);
        assert!(
            t.contains("room") && t.contains("42") && t.contains("8 MiB"),
            "{t}"
        );
    }
}
