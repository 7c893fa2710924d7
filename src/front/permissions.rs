//! The permission check of `POST /join` (and `?conversation=`): one GET to the permissions
//! service per join. It fails closed: only a 200 lets a user in. The Go predecessor looked at
//! the transport error alone, so a 403 let everybody in (SPEC §8).

use std::time::{Duration, Instant};

use crate::config::Permissions;

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allowed,
    /// 401/403/404 from the service → 401 to the caller.
    Denied(String),
    /// Timeout, connection error, 5xx or anything unexpected → 503 to the caller.
    Unavailable(String),
}

pub struct PermissionClient {
    backend: Permissions,
    http: reqwest::Client,
}

impl PermissionClient {
    /// A client with `timeout` on every request. Failing to build one is a startup error:
    /// a fallback client without the timeout would hang joins instead of failing closed.
    pub fn new(backend: Permissions, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(PermissionClient { backend, http })
    }

    /// Whether the permissions service answers at all (any HTTP status): for readiness.
    pub async fn reachable(&self) -> Result<(), String> {
        match &self.backend {
            Permissions::AllowAll => Ok(()),
            Permissions::Http(base) => self
                .http
                .head(base)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.without_url().to_string()),
        }
    }

    /// Asks whether `userid` may join `conversation`; returns the verdict and how long it took.
    pub async fn check(&self, userid: &str, conversation: &str) -> (Verdict, Duration) {
        let t0 = Instant::now();
        let base = match &self.backend {
            Permissions::AllowAll => return (Verdict::Allowed, t0.elapsed()),
            Permissions::Http(base) => base,
        };
        let url = match reqwest::Url::parse(base) {
            Ok(mut u) => {
                match u.path_segments_mut() {
                    Ok(mut p) => {
                        p.pop_if_empty()
                            .extend(["user", userid, "conversation", conversation]);
                    }
                    Err(()) => {
                        return (
                            Verdict::Unavailable("PERMISSIONS_HOST cannot be a base URL".into()),
                            t0.elapsed(),
                        );
                    }
                }
                u
            }
            Err(e) => {
                return (
                    Verdict::Unavailable(format!("PERMISSIONS_HOST: {e}")),
                    t0.elapsed(),
                );
            }
        };
        let verdict = match self.http.get(url).send().await {
            Ok(r) => match r.status().as_u16() {
                200 => Verdict::Allowed,
                s @ (401 | 403 | 404) => {
                    Verdict::Denied(format!("the permissions service answered {s}"))
                }
                s => Verdict::Unavailable(format!("the permissions service answered {s}")),
            },
            Err(e) if e.is_timeout() => {
                Verdict::Unavailable("the permissions service did not answer in time".into())
            }
            Err(e) => Verdict::Unavailable(format!(
                "the permissions service is unreachable: {}",
                e.without_url()
            )),
        };
        (verdict, t0.elapsed())
    }
}
