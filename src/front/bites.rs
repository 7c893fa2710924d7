//! What front does for bites. Workers publish their own; front cleans up after the ones that
//! could not: it replays the spool a worker left behind when it died, right after the exit and
//! then periodically for every spool of a conversation that has no worker (NATS may have been
//! down at the first try), through the workers' own code path
//! ([`replay_dir_with_client`]). The spool's lock keeps a replay and a new worker of the same
//! conversation from publishing the same file; a replay that finds it locked leaves the spool
//! to its worker.
//!
//! Front's own NATS connection serves these replays and `/healthz` (it is made in the
//! background, so front starts and serves audio while NATS is down).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::tasks::Tasks;

use crate::config::Config;
use crate::publish::nats::{NatsState, PublisherSettings};
use crate::publish::publisher::{PublishError, replay_dir_with_client};
use crate::publish::spool::SpoolError;
use crate::wire::ids::ConversationId;

pub struct BiteReplays {
    settings: PublisherSettings,
    root: PathBuf,
    nats: async_nats::Client,
    /// Spools being replayed now: one replay per spool at a time.
    busy: Mutex<HashSet<ConversationId>>,
    /// Bites front replayed (published and deleted from a dead worker's spool).
    pub replayed: AtomicU64,
    /// Front's tasks: a replay is one of them.
    tasks: Tasks,
}

impl BiteReplays {
    /// Connects to NATS in the background. `None` when bites are off.
    pub async fn start(cfg: &Config, tasks: Tasks) -> Option<Arc<BiteReplays>> {
        let bites = cfg.bites.as_ref()?;
        let settings = PublisherSettings {
            nats_url: cfg.nats.clone(),
            bite_subject: bites.bite_subject.clone(),
            store_subject: bites.store_subject.clone(),
            client_name: Some("beep-webrtc front".into()),
            ..PublisherSettings::default()
        };
        let nats = async_nats::ConnectOptions::new()
            .name("beep-webrtc front")
            .retry_on_initial_connect()
            .connect(cfg.nats.as_str())
            .await;
        let nats = match nats {
            Ok(c) => c,
            Err(e) => {
                // Only a malformed URL gets here (the connection itself is retried).
                tracing::error!(url = %cfg.nats, "NATS: {e}; front will not replay spools");
                return None;
            }
        };
        Some(Arc::new(BiteReplays {
            settings,
            root: cfg.spool_root(),
            nats,
            busy: Mutex::new(HashSet::new()),
            replayed: AtomicU64::new(0),
            tasks,
        }))
    }

    /// Front's NATS connection (`/healthz`, the development bite feed).
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    pub fn nats_state(&self) -> NatsState {
        match self.nats.connection_state() {
            async_nats::connection::State::Connected => NatsState::Connected,
            async_nats::connection::State::Pending => NatsState::Connecting,
            async_nats::connection::State::Disconnected => NatsState::Disconnected,
        }
    }

    /// Replays `conversation`'s spool in the background, unless a replay of it runs already.
    pub fn replay(self: &Arc<Self>, conversation: &ConversationId) {
        {
            let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(conversation.clone()) {
                return;
            }
        }
        let this = self.clone();
        let conversation = conversation.clone();
        self.tasks.spawn(async move {
            let dir = this.root.join(&conversation);
            let result = replay_dir_with_client(this.nats.clone(), &dir, &this.settings).await;
            match result {
                Ok(summary) => {
                    this.replayed.fetch_add(summary.replayed, Ordering::Relaxed);
                    if summary.replayed > 0 {
                        tracing::info!(
                            %conversation,
                            bites = summary.replayed,
                            "replayed the spool of a worker that is gone"
                        );
                    }
                }
                // Its worker (a new one) holds it and replays it itself.
                Err(PublishError::Spool(SpoolError::Locked { .. })) => {}
                Err(e) => tracing::warn!(%conversation, "spool replay: {e}; retried later"),
            }
            this.busy
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&conversation);
        });
    }

    /// Replays every spool on disk whose conversation has no worker (`running` says which do).
    pub fn replay_orphans(self: &Arc<Self>, running: impl Fn(&ConversationId) -> bool) {
        let Ok(dirs) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in dirs.flatten() {
            // A spool directory's name is a way in like any other: checked.
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| ConversationId::parse(n).ok())
                && !running(&name)
            {
                self.replay(&name);
            }
        }
    }
}
