//! Who is calling and where they want to go: the `X-User-Claim` header set by the auth proxy,
//! and conversation ids. Only that exact header is read: it is the one the proxy overwrites,
//! so any other spelling could be set by the client itself. It is believed only from a peer
//! address in `TRUSTED_PROXIES` (the proxy itself), and only when it appears once.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

pub const CLAIM_HEADER: &str = "x-user-claim";

/// A session is one client of one user: the same user may be connected from several clients.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity {
    pub userid: String,
    pub clientid: String,
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.userid, self.clientid)
    }
}

/// Why a claim was refused; the text is the reason sent back with a 400.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ClaimError {
    #[error("missing X-User-Claim header")]
    Missing,
    #[error("X-User-Claim is not valid JSON {{\"userid\",\"clientid\"}}: {0}")]
    NotJson(String),
    #[error("X-User-Claim has no {0}")]
    NoField(&'static str),
    #[error("X-User-Claim {0} is longer than 256 bytes")]
    TooLong(&'static str),
    /// `.`, `..`, a `/` or a control character: an identity becomes a path segment of the
    /// permission request (where `..` would name another path) and a field of logs and bite
    /// headers.
    #[error("X-User-Claim {0} is not a valid identity: {1}")]
    Malformed(&'static str, &'static str),
    #[error("X-User-Claim appears more than once")]
    Duplicate,
    /// Not a 400: the sender may not speak for anyone ([`ClaimError::status`]).
    #[error("X-User-Claim is accepted only from the auth proxy (TRUSTED_PROXIES), not from {0}")]
    Untrusted(IpAddr),
}

impl ClaimError {
    /// The HTTP status of the refusal: 403 for a claim from an untrusted peer, else 400.
    pub fn status(&self) -> u16 {
        match self {
            ClaimError::Untrusted(_) => 403,
            _ => 400,
        }
    }
}

/// The peers whose `X-User-Claim` is believed (`TRUSTED_PROXIES`).
///
/// CIDR matching comes from the `ipnet` crate: small, well kept, already in our dependency
/// tree (hyper-util's proxy rules), and it parses both address families and their canonical
/// forms, which is exactly the kind of parser better not hand-written on a trust boundary.
#[derive(Clone, Debug, PartialEq)]
pub enum TrustedProxies {
    /// `*`: any peer (front is reachable only through the proxy by other means).
    Any,
    Nets(Vec<ipnet::IpNet>),
}

impl Default for TrustedProxies {
    /// Loopback only: a bare `LISTEN=:80` deployment is not an open door.
    fn default() -> Self {
        TrustedProxies::Nets(vec![
            "127.0.0.0/8".parse().expect("valid CIDR"),
            "::1/128".parse().expect("valid CIDR"),
        ])
    }
}

impl TrustedProxies {
    /// `*`, or a comma-separated list of addresses and CIDRs (`10.0.0.5, 10.1.0.0/16, ::1`).
    pub fn parse(s: &str) -> Result<TrustedProxies, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(TrustedProxies::Any);
        }
        let mut nets = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let net = match item.parse::<ipnet::IpNet>() {
                Ok(n) => n.trunc(),
                Err(_) => match item.parse::<IpAddr>() {
                    Ok(ip) => ipnet::IpNet::from(ip),
                    Err(_) => {
                        return Err(format!(
                            "{item:?} is not an IP address or CIDR (expected e.g. 10.0.0.0/8, ::1, or * for any)"
                        ));
                    }
                },
            };
            nets.push(net);
        }
        if nets.is_empty() {
            return Err("expected addresses or CIDRs, or * for any".into());
        }
        Ok(TrustedProxies::Nets(nets))
    }

    /// Whether a request from `peer` may carry the claim. An IPv4 peer seen through an IPv6
    /// socket (`::ffff:a.b.c.d`) is matched as the IPv4 address it is.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        match self {
            TrustedProxies::Any => true,
            TrustedProxies::Nets(nets) => {
                let peer = peer.to_canonical();
                nets.iter().any(|n| n.contains(&peer))
            }
        }
    }
}

/// The claim of a request: refuses one sent twice (`values` are all the header's values), and
/// one from a peer outside `trusted` (`peer` is `None` when the address is unknown, which
/// is not trusted either). Without a claim header this is [`ClaimError::Missing`].
pub fn claim_from<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
    peer: Option<IpAddr>,
    trusted: &TrustedProxies,
) -> Result<Identity, ClaimError> {
    let mut values = values.into_iter();
    let first = values.next().ok_or(ClaimError::Missing)?;
    if values.next().is_some() {
        return Err(ClaimError::Duplicate);
    }
    match peer {
        Some(ip) if trusted.trusts(ip) => parse_claim(Some(first)),
        Some(ip) => Err(ClaimError::Untrusted(ip)),
        None => Err(ClaimError::Untrusted(IpAddr::from([0, 0, 0, 0]))),
    }
}

/// Parses the claim header's value.
pub fn parse_claim(value: Option<&[u8]>) -> Result<Identity, ClaimError> {
    let raw = value.ok_or(ClaimError::Missing)?;
    #[derive(Deserialize)]
    struct Claim {
        userid: Option<String>,
        clientid: Option<String>,
    }
    let c: Claim = serde_json::from_slice(raw).map_err(|e| ClaimError::NotJson(e.to_string()))?;
    let field = |v: Option<String>, name: &'static str| match v {
        Some(s) if s.len() > 256 => Err(ClaimError::TooLong(name)),
        Some(s) if s == "." || s == ".." => Err(ClaimError::Malformed(name, "it is . or ..")),
        Some(s) if s.contains('/') => Err(ClaimError::Malformed(name, "it holds a /")),
        Some(s) if s.chars().any(char::is_control) => {
            Err(ClaimError::Malformed(name, "it holds a control character"))
        }
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ClaimError::NoField(name)),
    };
    Ok(Identity {
        userid: field(c.userid, "userid")?,
        clientid: field(c.clientid, "clientid")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims() {
        let ok = parse_claim(Some(br#"{"userid":"u1","clientid":"c1"}"#)).unwrap();
        assert_eq!(ok.to_string(), "u1/c1");
        let reason = |v: Option<&[u8]>| parse_claim(v).unwrap_err().to_string();
        assert!(reason(None).contains("missing"));
        assert!(reason(Some(b"{nope")).contains("JSON"));
        assert!(reason(Some(br#"{"userid":"u1"}"#)).contains("clientid"));
        assert!(reason(Some(br#"{"userid":"","clientid":"c"}"#)).contains("userid"));
        for (claim, why) in [
            (
                r#"{"userid":"..","clientid":"c"}"#,
                "userid is not a valid identity: it is . or ..",
            ),
            (
                r#"{"userid":"u","clientid":"."}"#,
                "clientid is not a valid identity: it is . or ..",
            ),
            (
                r#"{"userid":"a/b","clientid":"c"}"#,
                "userid is not a valid identity: it holds a /",
            ),
            (
                r#"{"userid":"u","clientid":"c\u0000"}"#,
                "clientid is not a valid identity: it holds a control character",
            ),
            (
                r#"{"userid":"u\nx","clientid":"c"}"#,
                "userid is not a valid identity: it holds a control character",
            ),
        ] {
            let e = parse_claim(Some(claim.as_bytes())).unwrap_err();
            assert_eq!(e.status(), 400);
            assert!(e.to_string().ends_with(why), "{claim}: {e}");
        }
        // Dots inside a name, spaces, e-mail addresses and non-ASCII letters are fine.
        for ok in ["a.b", "...", "ann smith", "ann@example.org", "Zoë"] {
            let claim = serde_json::json!({"userid": ok, "clientid": "c"}).to_string();
            assert_eq!(parse_claim(Some(claim.as_bytes())).unwrap().userid, ok);
        }
    }

    #[test]
    fn trusted_proxies() {
        let local = TrustedProxies::default();
        assert!(local.trusts("127.0.0.1".parse().unwrap()));
        assert!(local.trusts("127.3.2.1".parse().unwrap()));
        assert!(local.trusts("::1".parse().unwrap()));
        assert!(local.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!local.trusts("10.0.0.1".parse().unwrap()));
        assert!(!local.trusts("::ffff:10.0.0.1".parse().unwrap()));
        let t = TrustedProxies::parse(" 10.0.0.0/8, 192.168.1.7 ,fd00::/8").unwrap();
        assert!(t.trusts("10.200.0.1".parse().unwrap()));
        assert!(t.trusts("192.168.1.7".parse().unwrap()));
        assert!(!t.trusts("192.168.1.8".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("127.0.0.1".parse().unwrap()));
        // Host bits are ignored, as `ip route` would.
        assert!(
            TrustedProxies::parse("10.1.2.3/8")
                .unwrap()
                .trusts("10.9.9.9".parse().unwrap())
        );
        assert_eq!(TrustedProxies::parse("*").unwrap(), TrustedProxies::Any);
        for bad in ["", " , ", "10.0.0.0/33", "proxy.local", "*,10.0.0.1"] {
            assert!(TrustedProxies::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_need_a_trusted_peer_and_one_header() {
        let c: &[u8] = br#"{"userid":"u","clientid":"c"}"#;
        let local = TrustedProxies::default();
        let lo = Some("127.0.0.1".parse().unwrap());
        assert!(claim_from([c], lo, &local).is_ok());
        assert_eq!(claim_from([c, c], lo, &local), Err(ClaimError::Duplicate));
        assert_eq!(claim_from([], lo, &local), Err(ClaimError::Missing));
        let far = "10.0.0.1".parse().unwrap();
        let e = claim_from([c], Some(far), &local).unwrap_err();
        assert_eq!(e, ClaimError::Untrusted(far));
        assert_eq!(e.status(), 403);
        assert!(e.to_string().contains("TRUSTED_PROXIES"));
        assert!(claim_from([c], None, &local).is_err());
        assert!(claim_from([c], Some(far), &TrustedProxies::Any).is_ok());
    }
}
