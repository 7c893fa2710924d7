//! The permission check of `POST /join` (and `?conversation=`), asked again before every
//! offer: one GET to the permissions service. It fails closed: only a 200 lets a user in,
//! redirects are not followed (a 302 to a login page that answers 200 would let everyone in),
//! and an error or a timeout is a 503. The Go predecessor looked at the transport error
//! alone, so a 403 let everybody in (SPEC §8). `https://` services are reached with rustls.

use std::time::{Duration, Instant};

use crate::config::Permissions;

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Allowed,
    /// 401/403/404 from the service → 401 to the caller.
    Denied(String),
    /// Timeout, connection error, 5xx, 408/429 → 503 to the caller.
    Unavailable(String),
}

/// The verdict of one HTTP status of the permissions service: 200 and nothing else allows.
/// Redirects deny (they are not followed); a service error, or one that asks to be asked
/// again later (408, 429), is an outage: fail closed with a 503.
pub fn verdict_of(status: u16) -> Verdict {
    match status {
        200 => Verdict::Allowed,
        408 | 429 | 500..=599 => {
            Verdict::Unavailable(format!("the permissions service answered {status}"))
        }
        300..=399 => Verdict::Denied(format!(
            "the permissions service answered {status} (a redirect, which is not followed)"
        )),
        s => Verdict::Denied(format!("the permissions service answered {s}")),
    }
}

pub struct PermissionClient {
    backend: Permissions,
    http: reqwest::Client,
    /// The last readiness answer and when it was had: `/readyz` is polled by every load
    /// balancer and probe, and must not become a request to the permissions service each time.
    reachable: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
}

/// How long a readiness answer of the permissions service is reused.
const REACHABLE_FOR: Duration = Duration::from_secs(2);

impl PermissionClient {
    /// A client with `timeout` on every request, following no redirect, and trusting only
    /// `ca` for https when given (else the built-in public roots). Failing to build one is a
    /// startup error: a fallback client without the timeout would hang joins instead of
    /// failing closed.
    pub fn new(
        backend: Permissions,
        timeout: Duration,
        ca: &[reqwest::Certificate],
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none());
        if !ca.is_empty() {
            builder = builder.tls_built_in_root_certs(false);
            for c in ca {
                builder = builder.add_root_certificate(c.clone());
            }
        }
        Ok(PermissionClient {
            backend,
            http: builder.build()?,
            reachable: tokio::sync::Mutex::new(None),
        })
    }

    /// Whether the permissions service answers at all (any HTTP status): for readiness. The
    /// answer is reused for [`REACHABLE_FOR`]; concurrent callers wait for the one request in
    /// flight rather than sending their own.
    pub async fn reachable(&self) -> Result<(), String> {
        let mut cached = self.reachable.lock().await;
        if let Some((at, answer)) = cached.as_ref()
            && at.elapsed() < REACHABLE_FOR
        {
            return answer.clone();
        }
        let answer = self.ask_reachable().await;
        *cached = Some((Instant::now(), answer.clone()));
        answer
    }

    async fn ask_reachable(&self) -> Result<(), String> {
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
            Ok(r) => verdict_of(r.status().as_u16()),
            Err(e) if e.is_timeout() => {
                Verdict::Unavailable("the permissions service did not answer in time".into())
            }
            Err(e) => Verdict::Unavailable(format!(
                "the permissions service is unreachable: {}",
                error_chain(&e.without_url())
            )),
        };
        (verdict, t0.elapsed())
    }
}

/// An error with its causes (`error sending request: ...: invalid peer certificate: ...`):
/// reqwest's own text alone does not say whether TLS or the connection failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_200_allows() {
        assert_eq!(verdict_of(200), Verdict::Allowed);
        for s in [201, 204, 301, 302, 303, 307, 308, 400, 401, 403, 404, 410] {
            assert!(matches!(verdict_of(s), Verdict::Denied(_)), "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(matches!(verdict_of(s), Verdict::Unavailable(_)), "{s}");
        }
        let Verdict::Denied(m) = verdict_of(302) else {
            unreachable!()
        };
        assert!(m.contains("redirect"), "{m}");
    }
}
