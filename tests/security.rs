//! Issue 11, front's side: each test shows an attack failing against the real binaries.
//! Who may speak as whom (trusted proxies, a doubled claim, a parent directory's `.env`,
//! development mode off loopback, redirects and TLS at the permissions service, `Origin`,
//! permission asked again on every offer); no client can take the room or front down (an
//! `ice::` flood, slow headers, too many connections, a client that never answers pings or
//! never reads); and the runtime and state directories (symbolic links, modes, owners, a
//! socket path too long).

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use common::signal::{OFFER, Signal, error_of};
use common::{Front, claim, eventually, free_tcp_port, lost, member};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const T: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// A permissions stand-in of our own: `redirect*` answers 302 to `/ok` (which answers 200),
// `deny*` 403, a (user, conversation) in `revoked` 403, anything else 200; over TLS if asked.

type Revoked = Arc<Mutex<HashSet<(String, String)>>>;

struct Perms {
    addr: SocketAddr,
    revoked: Revoked,
    /// The CA (PEM) of the certificate it serves, when it serves TLS.
    ca_pem: Option<String>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Perms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Perms {
    async fn start(tls: bool) -> Perms {
        async fn check(
            State(revoked): State<Revoked>,
            UrlPath((user, conv)): UrlPath<(String, String)>,
        ) -> Response {
            if conv.starts_with("redirect") {
                (StatusCode::FOUND, [(header::LOCATION, "/ok")]).into_response()
            } else if conv.starts_with("deny") || revoked.lock().unwrap().contains(&(user, conv)) {
                StatusCode::FORBIDDEN.into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
        let revoked = Revoked::default();
        let app = axum::Router::new()
            .route(
                "/user/{user}/conversation/{conv}",
                axum::routing::get(check),
            )
            // A login page, say: answers 200 to anyone.
            .route("/ok", axum::routing::get(|| async { "welcome" }))
            .with_state(revoked.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        if !tls {
            let task = tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            return Perms {
                addr,
                revoked,
                ca_pem: None,
                task,
            };
        }
        let (ca_pem, config) = tls_config();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(
                            hyper_util::rt::TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(app),
                        )
                        .await;
                });
            }
        });
        Perms {
            addr,
            revoked,
            ca_pem: Some(ca_pem),
            task,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    fn revoke(&self, user: &str, conv: &str) {
        self.revoked
            .lock()
            .unwrap()
            .insert((user.into(), conv.into()));
    }
}

/// A CA, and a server configuration with a certificate for 127.0.0.1 and localhost that it
/// signed. Returns the CA's PEM.
fn tls_config() -> (String, tokio_rustls::rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio_rustls::rustls;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), config)
}

// ---------------------------------------------------------------------------------------
// front started by hand, for what the harness does not do (working directory, a start that
// must fail, resource limits).

/// The settings the harness gives front, for a front started by hand.
fn base_env(port: u16, dir: &Path, permissions: &str) -> Vec<(String, String)> {
    [
        ("LISTEN", format!("127.0.0.1:{port}")),
        ("PERMISSIONS_HOST", permissions.to_string()),
        ("RTC_BIND_IP", "127.0.0.1".into()),
        ("RUNTIME_DIR", dir.join("run").display().to_string()),
        ("STATE_DIR", dir.join("state").display().to_string()),
        ("WORKER_BIN", env!("CARGO_BIN_EXE_worker").into()),
        ("NATS", "nats://127.0.0.1:4222".into()),
        ("RUST_LOG", "warn".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

fn command(env: &[(String, String)], cwd: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_front"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Kills front (and so its workers' supervisor) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let workers = common::children_of(self.0.id());
        let _ = self.0.kill();
        let _ = self.0.wait();
        for pid in workers {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::SIGKILL,
            );
        }
    }
}

async fn wait_healthy(port: u16) -> bool {
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/healthz");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(r) = http.get(&url).send().await
            && r.status().is_success()
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Starts front with `env` in `cwd`, expecting it to refuse: (exit code, stderr). Panics if
/// it is still running after 10 s.
fn refused_start(env: &[(String, String)], cwd: &Path) -> (i32, String) {
    let mut child = Running(command(env, cwd).spawn().expect("spawn front"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            return (status.code().unwrap_or(-1), err);
        }
        assert!(
            Instant::now() < deadline,
            "front started although it should have refused"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------
// Raw WebSocket clients: ones that misbehave in ways a library would not let us.

/// Opens `/connect{query}` over a bare TCP stream (optionally with a small receive buffer)
/// and completes the handshake; the stream is left right after the 101 response.
async fn raw_ws(port: u16, query: &str, user: &str, rcvbuf: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size).unwrap();
    }
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect");
    let req = format!(
        "GET /connect{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\nX-User-Claim: {}\r\n\r\n",
        claim(user, "raw")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut byte))
            .await
            .expect("handshake within 10 s")
            .expect("handshake");
        assert_eq!(n, 1, "closed during the handshake: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// A client frame (FIN, masked as clients must).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n < 65536 => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The next server frame (opcode, payload); `None` when the connection ended (EOF or reset).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).await.ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).await.ok()?;
            u64::from(u16::from_be_bytes(b))
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).await.ok()?;
            u64::from_be_bytes(b)
        }
        n => u64::from(n),
    };
    let mut payload = vec![0u8; len as usize];
    s.read_exact(&mut payload).await.ok()?;
    Some((h[0] & 0x0f, payload))
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The `error::` frame (code, message) a socket gets before it closes, within `within`.
async fn error_frame(s: &mut Signal, within: Duration) -> Option<(String, String)> {
    error_of(&s.wait_for("error::", within).await?)
}

async fn ws_status(front: &Front, query: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = front.ws(query).into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().append(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("websocket within 10 s")
    {
        Ok((mut s, r)) => {
            let _ = s.close(None).await;
            (r.status().as_u16(), String::new())
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => (
            r.status().as_u16(),
            r.body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        ),
        Err(e) => panic!("websocket: {e}"),
    }
}

// =======================================================================================
// Who may speak as whom

/// A claim is believed only from TRUSTED_PROXIES: with `10.0.0.0/8` trusted, the same
/// request from loopback (this test) is refused on both endpoints, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_from_an_untrusted_peer_is_refused() {
    let perms = Perms::start(false).await;
    // Default: loopback is trusted.
    let front = Front::start(&perms.url(), &[]).await;
    assert_eq!(front.join("ann", "web", "room").await.0, 200);
    drop(front);

    let front = Front::start(&perms.url(), &[("TRUSTED_PROXIES", "10.0.0.0/8, fd00::/8")]).await;
    let (status, body) = front.join("ann", "web", "room").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("TRUSTED_PROXIES"), "{body}");
    let claim = claim("ann", "web");
    let (status, body) = ws_status(&front, "", &[("X-User-Claim", claim.as_str())]).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("TRUSTED_PROXIES"), "{body}");
    front.assert_serving().await;
}

/// A request carrying the claim header twice (one from the client, one from the proxy,
/// say) is refused: which one would be believed is exactly the question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_twice_is_400() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[]).await;
    let mut headers = HeaderMap::new();
    headers.append("x-user-claim", claim("ann", "web").parse().unwrap());
    headers.append("x-user-claim", claim("boss", "web").parse().unwrap());
    let r = front
        .http
        .post(front.url("/join/room"))
        .headers(headers)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body = r.text().await.unwrap();
    assert!(body.contains("more than once"), "{body}");
    let (a, b) = (claim("ann", "web"), claim("boss", "web"));
    let (status, body) = ws_status(
        &front,
        "",
        &[("X-User-Claim", a.as_str()), ("X-User-Claim", b.as_str())],
    )
    .await;
    assert_eq!(status, 400, "{body}");
    front.assert_serving().await;
}

/// A `.env` in a parent directory (a checkout's, with DEV_MODE) is not read; the working
/// directory's own is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parent_directory_env_is_not_loaded() {
    let perms = Perms::start(false).await;
    let top = tempfile::tempdir().unwrap();
    std::fs::write(
        top.path().join(".env"),
        "DEV_MODE=1\nPERMISSIONS_HOST=allow-all\n",
    )
    .unwrap();
    let below = top.path().join("sub");
    std::fs::create_dir(&below).unwrap();
    let http = reqwest::Client::new();

    let port = free_tcp_port();
    let env = base_env(port, below.as_path(), &perms.url());
    let _front = Running(command(&env, &below).spawn().unwrap());
    assert!(wait_healthy(port).await, "front did not start");
    let r = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the parent's .env turned on DEV_MODE");
    let r = http
        .get(format!("http://127.0.0.1:{port}/client/beep-webrtc.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "the client library outside development mode"
    );
    // Nor does development mode's query-string identity work.
    let r = http
        .post(format!(
            "http://127.0.0.1:{port}/join/room?userid=a&clientid=b"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The same file in the working directory is read (the checkout's `cargo run` case).
    let here = top.path().join("here");
    std::fs::create_dir(&here).unwrap();
    std::fs::copy(top.path().join(".env"), here.join(".env")).unwrap();
    let port = free_tcp_port();
    let env = base_env(port, here.as_path(), "http://127.0.0.1:9");
    let env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| k != "PERMISSIONS_HOST")
        .collect();
    let _front = Running(command(&env, &here).spawn().unwrap());
    assert!(wait_healthy(port).await, "front with ./.env did not start");
    let r = http
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "./.env was not read");
    // Development mode serves the client library (and its types) beside the demo page.
    for (file, kind, has) in [
        (
            "beep-webrtc.js",
            "text/javascript",
            "export function connect",
        ),
        (
            "beep-webrtc.d.ts",
            "text/plain",
            "export declare function connect",
        ),
    ] {
        let r = http
            .get(format!("http://127.0.0.1:{port}/client/{file}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{file}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{file}: {ct}");
        assert!(r.text().await.unwrap().contains(has), "{file}");
    }
}

/// Development mode (query-string identity, allow-all) only on a loopback LISTEN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_refuses_a_public_listen() {
    let dir = tempfile::tempdir().unwrap();
    for listen in [format!(":{}", free_tcp_port()), "0.0.0.0:0".to_string()] {
        let env = with(
            base_env(0, dir.path(), "allow-all"),
            &[("DEV_MODE", "1"), ("LISTEN", listen.as_str())],
        );
        let (code, err) = refused_start(&env, dir.path());
        assert_ne!(code, 0);
        assert!(
            err.contains("DEV_MODE") && err.contains("LISTEN") && err.contains("loopback"),
            "{err}"
        );
    }
}

/// The permissions service answers 302 to a login page that answers 200: denied (401), not
/// followed. Its 5xx stays 503 (fail closed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_permissions_service_denies() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[]).await;
    let (status, body) = front.join("ann", "web", "redirect-me").await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("not allowed") && body.contains("302"),
        "{body}"
    );
    // On /connect?conversation= the same refusal is an error frame.
    let mut s = Signal::open(&front, "?conversation=redirect-me", "ann", "web").await;
    let (code, _) = error_frame(&mut s, T).await.expect("error frame");
    assert_eq!(code, "forbidden");
    assert_eq!(front.join("ann", "web", "fine").await.0, 200);
}

/// An https:// permissions service works (rustls), checked against PERMISSIONS_CA_FILE;
/// without that CA the certificate is refused: 503 saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_permissions_service_works() {
    let perms = Perms::start(true).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, perms.ca_pem.as_deref().unwrap()).unwrap();
    let ca = ca.display().to_string();
    // What is tested is whose certificate is trusted, not how fast: a debug build's first TLS
    // handshake on a loaded 2-core CI machine took longer than the default 2 s.
    let slow_ok = ("PERMISSIONS_TIMEOUT_MS", "15000");
    let front = Front::start(
        &perms.url(),
        &[("PERMISSIONS_CA_FILE", ca.as_str()), slow_ok],
    )
    .await;
    let (status, body) = front.join("ann", "web", "room").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(front.join("ann", "web", "deny-1").await.0, 401);
    drop(front);

    let front = Front::start(&perms.url(), &[slow_ok]).await;
    let (status, body) = front.join("ann", "web", "room").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_lowercase().contains("certificate"), "{body}");

    // A CA file that is not one stops front at startup, naming the setting.
    std::fs::write(dir.path().join("bad.pem"), "not a certificate").unwrap();
    let bad = dir.path().join("bad.pem").display().to_string();
    let env = with(
        base_env(free_tcp_port(), dir.path(), &perms.url()),
        &[("PERMISSIONS_CA_FILE", bad.as_str())],
    );
    let (code, err) = refused_start(&env, dir.path());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("PERMISSIONS_CA_FILE"), "{err}");
}

/// With ALLOWED_ORIGINS set, a page of another site cannot open the socket (cross-site
/// WebSocket hijacking with a cookie-authenticating proxy) nor join; a listed origin and a
/// client that sends no Origin (an app, a server) can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_origin_is_refused() {
    let perms = Perms::start(false).await;
    let front = Front::start(
        &perms.url(),
        &[(
            "ALLOWED_ORIGINS",
            "https://app.example,https://beep.example:8443",
        )],
    )
    .await;
    let c = claim("ann", "web");
    let (status, body) = ws_status(
        &front,
        "",
        &[
            ("X-User-Claim", c.as_str()),
            ("Origin", "https://evil.example"),
        ],
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body.contains("evil.example") && body.contains("ALLOWED_ORIGINS"),
        "{body}"
    );
    for origin in ["https://app.example", "https://BEEP.example:8443"] {
        let (status, body) = ws_status(
            &front,
            "",
            &[("X-User-Claim", c.as_str()), ("Origin", origin)],
        )
        .await;
        assert_eq!(status, 101, "{origin}: {body}");
    }
    assert_eq!(
        ws_status(&front, "", &[("X-User-Claim", c.as_str())])
            .await
            .0,
        101
    );
    let r = front
        .http
        .post(front.url("/join/room"))
        .header("X-User-Claim", &c)
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(front.join("ann", "web", "room").await.0, 200);
}

/// Access removed at the permissions service: the next offer is refused (`forbidden`), and
/// the client is out of the conversation. Offer-then-join still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_offer_asks_the_permission_check_again() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[]).await;
    let mut s = Signal::open(&front, "?conversation=room", "ann", "web").await;
    s.send(&format!("offer::{OFFER}")).await;
    assert!(s.wait_for("answer::", T).await.is_some(), "first answer");
    perms.revoke("ann", "room");
    s.send(&format!("offer::{OFFER}")).await;
    let (code, message) = error_frame(&mut s, T).await.expect("an error frame");
    assert_eq!(code, "forbidden", "{message}");
    assert!(message.contains("403"), "{message}");
    // A new socket's offer is not dispatched either: it waits for a join, which is refused.
    let mut s = Signal::open(&front, "", "ann", "web").await;
    s.send(&format!("offer::{OFFER}")).await;
    assert_eq!(front.join("ann", "web", "room").await.0, 401);
    assert!(
        s.wait_for("answer::", Duration::from_secs(2))
            .await
            .is_none(),
        "answered after access was removed"
    );
    // Order independence: the offer first, the join after.
    let mut s = Signal::open(&front, "", "bob", "web").await;
    s.send(&format!("offer::{OFFER}")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(front.join("bob", "web", "room").await.0, 200);
    assert!(s.wait_for("answer::", T).await.is_some(), "offer then join");
}

/// Issue 16 point 2. A join's permission answer covers the next offer only within
/// `JOIN_TIMEOUT_MS`: access removed after an older join is noticed at the offer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joins_credit_expires() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[("JOIN_TIMEOUT_MS", "500")]).await;
    // Within the timeout the join covers the offer.
    let mut s = Signal::open(&front, "?conversation=room", "bob", "web").await;
    s.send(&format!("offer::{OFFER}")).await;
    assert!(s.wait_for("answer::", T).await.is_some(), "an answer");
    // Joined, then access removed, then an offer past the timeout: refused.
    let mut s = Signal::open(&front, "?conversation=room", "ann", "web").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    perms.revoke("ann", "room");
    s.send(&format!("offer::{OFFER}")).await;
    let (code, message) = error_frame(&mut s, T).await.expect("an error frame");
    assert_eq!(code, "forbidden", "{message}");
    front.assert_serving().await;
}

// =======================================================================================
// No client can take the room or front down

/// 10 000 `ice::` frames from one member while two others talk: the talkers lose nothing
/// and keep their pace, front stays healthy, and the flooder is cut off (`rate-limited`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ice_flood_does_not_disturb_the_room() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[]).await;
    let ann = member(&front, "room", "ann").await;
    let bob = member(&front, "room", "bob").await;
    ann.start_sending("ann", 20);
    bob.start_sending("bob", 25);
    assert!(
        eventually(T, || ann.heard_from("bob") > 50
            && bob.heard_from("ann") > 50)
        .await,
        "ann and bob do not hear each other"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = (ann.heard_from("bob"), bob.heard_from("ann"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calm = (
        ann.heard_from("bob") - before.0,
        bob.heard_from("ann") - before.1,
    );
    ann.take_max_gap();
    bob.take_max_gap();

    let mut flood = Signal::open(&front, "?conversation=room", "eve", "x").await;
    flood.send(&format!("offer::{OFFER}")).await;
    assert!(
        flood.wait_for("answer::", T).await.is_some(),
        "eve's answer"
    );
    let t0 = Instant::now();
    let start = (ann.heard_from("bob"), bob.heard_from("ann"));
    for i in 0..10_000u32 {
        // Loopback's discard port: nothing anyone would mind receiving a check at.
        flood
            .send(&format!(
                "ice::candidate:{i} 1 udp 2130706431 127.0.0.1 9 typ host"
            ))
            .await;
    }
    let sent_in = t0.elapsed();
    let (code, message) = error_frame(&mut flood, T)
        .await
        .expect("the flooder is cut off");
    assert_eq!(code, "rate-limited", "{message}");
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(t0.elapsed())).await;
    let window = t0.elapsed();
    let during = (
        ann.heard_from("bob") - start.0,
        bob.heard_from("ann") - start.1,
    );
    let per_s = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
    println!(
        "10 000 ice:: frames sent in {sent_in:?}; calm {:.0}/{:.0} pkt/s, during {:.0}/{:.0} pkt/s; gaps {:?} {:?}",
        per_s(calm.0, Duration::from_secs(2)),
        per_s(calm.1, Duration::from_secs(2)),
        per_s(during.0, window),
        per_s(during.1, window),
        ann.take_max_gap(),
        bob.take_max_gap()
    );
    for (d, c) in [(during.0, calm.0), (during.1, calm.1)] {
        assert!(
            per_s(d, window) > 0.8 * per_s(c, Duration::from_secs(2)),
            "the flood slowed the room: {d} packets in {window:?} against {c} in 2 s"
        );
    }
    assert_eq!(lost(&ann, "bob"), 0, "ann lost packets of bob");
    assert_eq!(lost(&bob, "ann"), 0, "bob lost packets of ann");
    front.assert_serving().await;
    ann.close().await;
    bob.close().await;
}

/// Slowloris: half a request line, then nothing. Closed once HTTP_HEADER_TIMEOUT_MS passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let perms = Perms::start(false).await;
    let front = Front::start(&perms.url(), &[("HTTP_HEADER_TIMEOUT_MS", "1000")]).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(("127.0.0.1", front.port)).await.unwrap();
        s.write_all(b"GET /healthz HT").await.unwrap();
        slow.push(s);
    }
    let t0 = Instant::now();
    for mut s in slow {
        let mut buf = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "a slow request was still open after 5 s");
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "closed too early: {took:?}"
    );
    println!("slow headers closed after {took:?}");
    front.assert_serving().await;
}

/// MAX_CONNECTIONS: the connection beyond the cap is closed at once, and front serves again
/// when connections go away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped() {
    let perms = Perms::start(false).await;
    let front = Front::start(
        &perms.url(),
        &[
            ("MAX_CONNECTIONS", "10"),
            ("HTTP_HEADER_TIMEOUT_MS", "30000"),
        ],
    )
    .await;
    // The harness's client keeps one connection; fill the rest (and then some).
    let mut held = Vec::new();
    for _ in 0..13 {
        held.push(TcpStream::connect(("127.0.0.1", front.port)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The last ones were closed by front at once: EOF (or a reset) right away.
    let mut closed = 0;
    for s in held.iter_mut() {
        let mut b = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "unexpected bytes");
            closed += 1;
        }
    }
    assert!(
        closed >= 3,
        "only {closed} connections over the cap were closed"
    );
    let fresh = reqwest::Client::new();
    assert!(
        fresh.get(front.url("/healthz")).send().await.is_err(),
        "a new connection was served beyond MAX_CONNECTIONS"
    );
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = fresh.get(front.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// A client that never answers a ping (it reads, but sends nothing) is closed after
/// WS_IDLE_MS; one that answers (any WebSocket library does) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_answers_no_ping_is_closed() {
    let perms = Perms::start(false).await;
    let front = Front::start(
        &perms.url(),
        &[("WS_PING_MS", "300"), ("WS_IDLE_MS", "1200")],
    )
    .await;
    let lively = {
        let mut req = front.ws("").into_client_request().unwrap();
        req.headers_mut()
            .insert("X-User-Claim", claim("bob", "web").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    };
    let (mut lively_tx, mut lively_rx) = lively.split();
    // Reading is what makes a WebSocket library answer pings.
    let lively_reader = tokio::spawn(async move {
        loop {
            match lively_rx.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => return format!("{other:?}"),
            }
        }
    });
    let t0 = Instant::now();
    let mut mute = raw_ws(front.port, "", "ann", None).await;
    let mut pings = 0;
    let mut close = None;
    let deadline = Duration::from_secs(6);
    while let Ok(Some((op, payload))) =
        tokio::time::timeout(deadline.saturating_sub(t0.elapsed()), read_frame(&mut mute)).await
    {
        match op {
            0x9 => pings += 1,
            0x8 => close = Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => {}
        }
    }
    let took = t0.elapsed();
    assert!(
        took < deadline,
        "the mute socket was still open after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(1000),
        "closed too early: {took:?}"
    );
    assert!(pings >= 2, "front sent {pings} pings");
    assert_eq!(close, Some(1001));
    println!("mute socket: {pings} pings, closed after {took:?}");
    // The socket that answered is open: it still takes frames and got nothing but pings.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !lively_reader.is_finished(),
        "the answering socket ended: {:?}",
        lively_reader.await
    );
    lively_tx
        .send(Message::text("ice::{\"candidate\":\"\"}"))
        .await
        .expect("the answering socket is open");
    lively_reader.abort();
}

/// A client that stops reading while front has frames for it (answers to a stream of
/// offers) is disconnected, and front's memory does not grow with what it owes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let perms = Perms::start(false).await;
    let front = Front::start(
        &perms.url(),
        &[
            ("OFFERS_PER_MINUTE", "100000"),
            ("WS_SEND_TIMEOUT_MS", "2000"),
            ("WS_SEND_QUEUE", "32"),
            ("WS_IDLE_MS", "600000"),
        ],
    )
    .await;
    let pid = front.child.id();
    let rss_before = rss_kib(pid);
    let mut s = raw_ws(front.port, "?conversation=room", "ann", Some(4096)).await;
    let offer = client_frame(0x1, format!("offer::{OFFER}").as_bytes());
    let t0 = Instant::now();
    let mut sent = 0;
    // An offer every millisecond or so, each answered (~1.5 KB) before the next replaces it, until front
    // stops taking them (it hung up on us) or 15 s pass.
    while t0.elapsed() < Duration::from_secs(15) {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(&offer)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!("sent {sent} offers in {:?} without reading", t0.elapsed());
    // Give front its send timeout, then see whether it is still there: reading now drains
    // whatever was buffered, then must find the end of the connection.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let rss_after = rss_kib(pid);
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    let mut errors = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => {
                got += n;
                errors += buf[..n].windows(7).filter(|w| w == b"error::").count();
            }
            Err(_) => break false,
        }
    };
    assert_eq!(
        errors, 0,
        "front closed the socket for another reason (an error:: frame)"
    );
    println!("read {got} bytes after; front RSS {rss_before} → {rss_after} KiB; ended: {ended}");
    assert!(
        ended,
        "front kept the connection of a client that stopped reading"
    );
    assert!(
        rss_after < rss_before + 64 * 1024,
        "front grew from {rss_before} to {rss_after} KiB"
    );
    front.assert_serving().await;
}

/// RLIMIT_NOFILE: front raises its soft limit to the hard one (its workers inherit it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised() {
    use nix::sys::resource::{Resource, getrlimit};
    use std::os::unix::process::CommandExt;
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 256 {
        println!("skipped: the hard limit is only {hard}");
        return;
    }
    let perms = Perms::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_tcp_port();
    let mut cmd = command(&base_env(port, dir.path(), &perms.url()), dir.path());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(Resource::RLIMIT_NOFILE, 256, hard)
                .map_err(std::io::Error::from)
        });
    }
    let front = Running(cmd.spawn().unwrap());
    assert!(wait_healthy(port).await);
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", front.0.id())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let v: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(v[3], hard.to_string(), "soft limit not raised: {line}");
}

// =======================================================================================
// Files

/// RUNTIME_DIR (or STATE_DIR) that is a symbolic link, that others may enter, or that
/// another user owns is refused at startup, naming the setting, and left as it was; one too
/// long for a socket path is refused naming RUNTIME_DIR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_runtime_and_state_directories_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
    let long: PathBuf = dir.path().join("x".repeat(110));
    let s = |p: &Path| p.display().to_string();

    let mut cases: Vec<(&str, String, &str)> = vec![
        ("RUNTIME_DIR", s(&link), "symbolic link"),
        ("STATE_DIR", s(&link), "symbolic link"),
        ("RUNTIME_DIR", s(&open), "mode 0755"),
        ("STATE_DIR", s(&open), "mode 0755"),
        ("RUNTIME_DIR", s(&long), "107"),
    ];
    let theirs = dir.path().join("theirs");
    if nix::unistd::geteuid().is_root() {
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        cases.push(("RUNTIME_DIR", s(&theirs), "owned by uid 65534"));
    }
    for (var, value, why) in &cases {
        let env = with(
            base_env(free_tcp_port(), dir.path(), "http://127.0.0.1:9"),
            &[(*var, value.as_str())],
        );
        let (code, err) = refused_start(&env, dir.path());
        assert_ne!(code, 0, "{var}={value}");
        assert!(
            err.contains(var) && err.contains(why),
            "{var}={value}: expected {why:?} in: {err}"
        );
    }
    assert_eq!(
        std::fs::metadata(&open).unwrap().permissions().mode() & 0o777,
        0o755,
        "front changed the mode of an existing directory"
    );
    assert!(
        std::fs::read_dir(&real).unwrap().next().is_none(),
        "front wrote through the symbolic link"
    );
}

/// Issue 16 point 5. Identities that are `.` or `..`, or hold a `/` or a control character,
/// are refused with 400 and a reason before any permission request (`..` made the URL
/// library ask about a different path than the identity); ordinary ones still get in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_identities_are_refused_before_the_permissions_service_is_asked() {
    let perms = CountingPerms::start().await;
    let front = Front::start(&perms.url, &[]).await;
    for (user, client, why) in [
        ("..", "web", "userid is not a valid identity: it is . or .."),
        (".", "web", "userid is not a valid identity: it is . or .."),
        (
            "ann",
            "..",
            "clientid is not a valid identity: it is . or ..",
        ),
        (
            "../../admin",
            "web",
            "userid is not a valid identity: it holds a /",
        ),
        (
            "ann\u{7}",
            "web",
            "userid is not a valid identity: it holds a control character",
        ),
        (
            "ann",
            "web\r\nx",
            "clientid is not a valid identity: it holds a control character",
        ),
    ] {
        let r = front
            .http
            .post(front.url("/join/room"))
            .header("x-user-claim", claim(user, client))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{user:?}/{client:?}");
        let body = r.text().await.unwrap();
        assert!(body.contains(why), "{user:?}/{client:?}: {body}");
    }
    assert_eq!(perms.asked(), 0, "the permissions service was asked");
    let r = front
        .http
        .post(front.url("/join/room"))
        .header("x-user-claim", claim("ann.smith", "web"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(perms.asked(), 1);
    front.assert_serving().await;
}

/// A permissions stand-in that allows everything and counts what it is asked (joins' GETs and
/// readiness HEADs alike).
struct CountingPerms {
    url: String,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingPerms {
    async fn start() -> CountingPerms {
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                StatusCode::OK
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        CountingPerms { url, asked, task }
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for CountingPerms {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Issue 16 point 4. The permissions service is protected from our own callers: 100 joins
/// from one client in a burst cost it `JOINS_PER_MINUTE` requests (the rest get 429 with
/// `Retry-After`, saying why), and 50 `/readyz` polls in a row cost it one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_floods_and_readiness_polls_do_not_reach_the_permissions_service() {
    let perms = CountingPerms::start().await;
    let front = Front::start(&perms.url, &[("JOINS_PER_MINUTE", "10")]).await;
    let asked_at_start = perms.asked();
    let mut statuses = std::collections::BTreeMap::new();
    let mut reason = String::new();
    for _ in 0..100 {
        let r = front
            .http
            .post(front.url("/join/room"))
            .header("x-user-claim", claim("ann", "web"))
            .send()
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            reason = r.text().await.unwrap();
        }
    }
    let asked = perms.asked() - asked_at_start;
    println!("100 joins: {statuses:?}, permission requests {asked}; 429 says {reason:?}");
    assert_eq!(statuses.get(&200), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&90), "{statuses:?}");
    assert!(
        reason.contains("more than 10 joins in a minute"),
        "{reason}"
    );
    assert_eq!(asked, 10);
    // Another client of the same user is not held back by ann/web's flood.
    let r = front
        .http
        .post(front.url("/join/room"))
        .header("x-user-claim", claim("ann", "phone"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let before = perms.asked();
    for _ in 0..50 {
        let r = front.http.get(front.url("/readyz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let polls = perms.asked() - before;
    println!("50 /readyz polls: {polls} permission requests");
    assert!(
        polls <= 2,
        "{polls} readiness requests reached the permissions service"
    );
    front.assert_serving().await;
}
