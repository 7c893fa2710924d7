//! The SSRC the answer names for each slot's m-line: how a test client tells which stream is
//! which slot (some clients route by SSRC only, so the server names them with `a=ssrc`).

/// `a=ssrc:` lines by m-line mid.
pub fn ssrcs_by_mid(sdp: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut mid: Option<String> = None;
    let mut pending: Vec<u32> = Vec::new();
    let flush = |mid: &mut Option<String>, pending: &mut Vec<u32>, out: &mut Vec<(String, u32)>| {
        if let Some(m) = mid.take() {
            let mut p: Vec<u32> = std::mem::take(pending);
            p.dedup();
            out.extend(p.into_iter().map(|s| (m.clone(), s)));
        }
        pending.clear();
    };
    for l in sdp.lines().map(str::trim) {
        if l.starts_with("m=") {
            flush(&mut mid, &mut pending, &mut out);
        } else if let Some(m) = l.strip_prefix("a=mid:") {
            mid = Some(m.to_string());
        } else if let Some(s) = l.strip_prefix("a=ssrc:")
            && let Some(n) = s.split_whitespace().next().and_then(|n| n.parse().ok())
            && !pending.contains(&n)
        {
            pending.push(n);
        }
    }
    flush(&mut mid, &mut pending, &mut out);
    out
}
