//! The several-hosts settings (SPEC §7, README "Several hosts"): `CLUSTER` turns placement
//! through NATS on, `NODE_ID` names this node (default: the host name), `CLUSTER_BUCKET`
//! names the key-value bucket and the subjects' prefix, `CLUSTER_NODE_TTL_MS` how long a
//! silent node counts as alive.

use std::time::Duration;

use super::ConfigError;
use super::lookup::{Lookup, err};
use crate::wire::ids::NodeId;

#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    pub node: NodeId,
    /// The conversations' bucket; `{bucket}-nodes` holds liveness and load, and relayed
    /// signalling goes on `{bucket}.relay.{node}` / `{bucket}.deliver.{node}`.
    pub bucket: String,
    /// A node whose liveness key is older than this is dead.
    pub node_ttl: Duration,
}

impl ClusterConfig {
    /// The bucket of the nodes' liveness keys (with `node_ttl` as its age limit).
    pub fn nodes_bucket(&self) -> String {
        format!("{}-nodes", self.bucket)
    }

    /// How often a node refreshes its liveness key: four times per TTL, so one lost refresh
    /// never kills it.
    pub fn heartbeat(&self) -> Duration {
        self.node_ttl / 4
    }
}

/// `None` when `CLUSTER` is off.
pub(super) fn cluster<F: Fn(&str) -> Option<String>>(
    l: &Lookup<F>,
    hostname: impl FnOnce() -> Option<String>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    // Every setting is read either way (a bad TTL is refused even with CLUSTER off, as any
    // bad number is); the node id and the bucket name are checked only when it is on.
    let on = l.flag("CLUSTER")?;
    let node_ttl = l.millis("CLUSTER_NODE_TTL_MS")?;
    let node_id = l.var("NODE_ID");
    let bucket = l.text("CLUSTER_BUCKET");
    if !on {
        return Ok(None);
    }
    let valid = (1..=64).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(err(
            "CLUSTER_BUCKET",
            &bucket,
            "expected 1-64 characters of A-Z a-z 0-9 _ - (a bucket name and a subject token)"
                .into(),
        ));
    }
    let node = match node_id {
        Some(v) => NodeId::parse(v.trim()).map_err(|e| err("NODE_ID", &v, e.to_string()))?,
        None => {
            let host = hostname().unwrap_or_default();
            NodeId::from_hostname(&host).map_err(|e| {
                err(
                    "NODE_ID",
                    "",
                    format!("unset, and the host name {host:?} makes none ({e}); set NODE_ID"),
                )
            })?
        }
    };
    Ok(Some(ClusterConfig {
        node,
        bucket,
        node_ttl,
    }))
}

/// The host name, as `NODE_ID`'s default.
pub(super) fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        vars: &[(&str, &str)],
        host: Option<&str>,
    ) -> Result<Option<ClusterConfig>, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let l = Lookup {
            get: move |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        };
        cluster(&l, || host.map(str::to_string))
    }

    #[test]
    fn cluster_is_off_by_default_and_names_its_node() {
        assert_eq!(read(&[], Some("h")).unwrap(), None);
        assert_eq!(read(&[("CLUSTER", "off")], Some("h")).unwrap(), None);
        let c = read(&[("CLUSTER", "on")], Some("sfu-2.example.org"))
            .unwrap()
            .unwrap();
        assert_eq!(c.node.as_str(), "sfu-2-example-org");
        assert_eq!(c.bucket, "beep-webrtc");
        assert_eq!(c.nodes_bucket(), "beep-webrtc-nodes");
        assert_eq!(c.node_ttl, Duration::from_secs(6));
        assert_eq!(c.heartbeat(), Duration::from_millis(1500));
        let c = read(
            &[
                ("CLUSTER", "1"),
                ("NODE_ID", "a"),
                ("CLUSTER_BUCKET", "b_1"),
                ("CLUSTER_NODE_TTL_MS", "2000"),
            ],
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.node.as_str(), c.bucket.as_str()), ("a", "b_1"));
        assert_eq!(c.node_ttl, Duration::from_secs(2));
    }

    #[test]
    fn bad_cluster_settings_name_their_variable() {
        for (vars, var) in [
            (vec![("CLUSTER", "maybe")], "CLUSTER"),
            (vec![("CLUSTER", "on"), ("NODE_ID", "a.b")], "NODE_ID"),
            (
                vec![("CLUSTER", "on"), ("CLUSTER_BUCKET", "a.b")],
                "CLUSTER_BUCKET",
            ),
            (
                vec![("CLUSTER", "on"), ("CLUSTER_NODE_TTL_MS", "10")],
                "CLUSTER_NODE_TTL_MS",
            ),
        ] {
            assert_eq!(read(&vars, Some("h")).unwrap_err().var, var);
        }
        let e = read(&[("CLUSTER", "on")], None).unwrap_err();
        assert!(e.reason.contains("set NODE_ID"), "{}", e.reason);
    }
}
