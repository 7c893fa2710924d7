//! Front's socket for workers (`RUNTIME_DIR/front.sock`, 0600 in a 0700 directory). Every
//! worker connects here and says `Hello` first: a worker this front spawned is handed to the
//! supervisor task waiting for it (which checks the peer is its very child); one that
//! outlived its previous front is adopted with its sessions. A connection from another uid,
//! or one that does not start with a `Hello` in time, is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use super::state::Front;
use super::supervisor::Link;
use super::tasks::Tasks;
use crate::wire::frame;
use crate::wire::ipc::ToFront;
use crate::wire::socket;

/// How long a connecting worker has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Accepts workers until the listener fails.
pub async fn serve(listener: UnixListener, front: Arc<Front>) {
    let tasks = front.tasks.clone();
    accept_each(listener, "worker", &tasks, move |stream| {
        handshake(stream, front.clone())
    })
    .await
}

/// Accepts connections on one of front's Unix sockets until it fails, each handled in a task
/// of its own, so one slow peer never holds up the next.
pub(super) async fn accept_each<F, Fut>(
    listener: UnixListener,
    what: &str,
    tasks: &Tasks,
    handle: F,
) where
    F: Fn(UnixStream) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, _)) => tasks.spawn(handle(stream)),
            Err(e) => {
                // EMFILE and the like: never spin on it.
                tracing::error!("{what} socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handshake(stream: UnixStream, front: Arc<Front>) {
    if let Err(e) = socket::check_peer(&stream, None) {
        tracing::warn!("refused a connection on the worker socket: {e}");
        return;
    }
    let peer_pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (mut reader, writer) = stream.into_split();
    let mut buf = Vec::new();
    let hello = tokio::time::timeout(
        HELLO_TIMEOUT,
        frame::read_frame::<_, ToFront>(&mut reader, &mut buf),
    )
    .await;
    let Ok(Ok(ToFront::Hello {
        conversation,
        generation,
        pid,
        adopted,
    })) = hello
    else {
        tracing::warn!(
            ?peer_pid,
            "a connection on the worker socket said no Hello: {hello:?}"
        );
        return;
    };
    let link = Link {
        reader,
        writer,
        peer_pid,
    };
    match adopted {
        None => {
            if front.pending.deliver(generation, link).is_err() {
                tracing::warn!(%conversation, %generation, pid, "a worker nobody waits for connected; dropped");
            }
        }
        Some(adoption) => {
            if peer_pid != Some(pid as i32) {
                tracing::warn!(
                    %conversation,
                    pid,
                    ?peer_pid,
                    "refused to adopt: the Hello's pid is not the peer's"
                );
                return;
            }
            front.adopt(conversation, generation, pid, adoption, link);
        }
    }
}
