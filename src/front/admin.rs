//! Front's admin socket (`RUNTIME_DIR/admin.sock`, 0600, same uid only): what `ctl` talks to.
//! One request, one answer per connection ([`crate::wire::admin`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;

use super::links::accept_each;
use super::state::Front;
use crate::wire::admin::{AdminRequest, AdminResponse};
use crate::wire::frame;
use crate::wire::ids::ConversationId;
use crate::wire::socket;

/// Serves `ctl` until the listener fails.
pub async fn serve(listener: UnixListener, front: Arc<Front>) {
    let tasks = front.tasks.clone();
    accept_each(listener, "admin", &tasks, move |stream| {
        answer(stream, front.clone())
    })
    .await
}

async fn answer(stream: tokio::net::UnixStream, front: Arc<Front>) {
    if let Err(e) = socket::check_peer(&stream, None) {
        tracing::warn!("refused an admin connection: {e}");
        return;
    }
    let (mut r, mut w) = stream.into_split();
    let mut buf = Vec::new();
    let request =
        tokio::time::timeout(Duration::from_secs(5), frame::read_frame(&mut r, &mut buf)).await;
    let response = match request {
        Ok(Ok(req)) => handle(&front, req).await,
        Ok(Err(e)) => AdminResponse::Error {
            message: format!("unreadable request: {e}"),
        },
        Err(_) => return,
    };
    let _ = frame::write_frame(&mut w, &response).await;
}

async fn handle(front: &Front, request: AdminRequest) -> AdminResponse {
    tracing::info!("admin: {request:?}");
    match request {
        AdminRequest::Workers => AdminResponse::Workers(front.worker_rows()),
        AdminRequest::Restart { conversation } => match ConversationId::parse(&conversation) {
            Err(e) => AdminResponse::Error {
                message: e.to_string(),
            },
            Ok(id) => match front.restart(&id) {
                Ok(pid) => AdminResponse::Restarting { conversation, pid },
                Err(message) => AdminResponse::Error { message },
            },
        },
        AdminRequest::Drain => AdminResponse::Draining {
            conversations: front.drain(),
        },
        AdminRequest::Cluster => match &front.cluster {
            Some(cluster) => AdminResponse::Cluster(cluster.view().await),
            None => AdminResponse::Error {
                message: "CLUSTER is off: this host runs alone (README \"Several hosts\")".into(),
            },
        },
    }
}
