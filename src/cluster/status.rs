//! `baton cluster status`: the etcd members, the active node and its lease, and how far each
//! node's copy of the state has followed, read from etcd (no node need be up).

use super::keys::Keys;
use super::{connect, NodeReport};
use crate::config::ClusterConfig;
use crate::server::ActiveNode;
use etcd_client::GetOptions;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    pub prefix: String,
    pub members: Vec<Member>,
    pub active: Option<Active>,
    /// The revision of the last write of the active node (0 before the first).
    pub head_revision: i64,
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Serialize)]
pub struct Member {
    pub name: String,
    pub client_urls: Vec<String>,
    /// Whether this member is etcd's raft leader.
    pub leader: bool,
}

#[derive(Debug, Serialize)]
pub struct Active {
    #[serde(flatten)]
    pub node: ActiveNode,
    pub lease_id: i64,
    /// Seconds the active node's lease has left (it renews it every third of its time).
    pub lease_ttl_s: i64,
}

#[derive(Debug, Serialize)]
pub struct NodeStatus {
    #[serde(flatten)]
    pub report: NodeReport,
    /// Whether its copy has every write (`revision >= head_revision`).
    pub caught_up: bool,
}

/// Reads the cluster's status from etcd.
pub async fn status(cluster: &ClusterConfig) -> Result<ClusterStatus, String> {
    let mut client = connect(cluster).await?;
    let keys = Keys::new(&cluster.prefix);
    let etcd_err = |e: etcd_client::Error| format!("etcd: {e}");
    let members = client.member_list().await.map_err(etcd_err)?;
    let raft_leader = client.status().await.ok().map(|s| s.leader());
    let members = members
        .members()
        .iter()
        .map(|m| Member {
            name: m.name().to_owned(),
            client_urls: m.client_urls().to_vec(),
            leader: raft_leader == Some(m.id()),
        })
        .collect();
    let mut election = client.election_client();
    let active = match election.leader(keys.election()).await {
        Ok(r) => match r.kv() {
            Some(kv) => {
                let node: ActiveNode = serde_json::from_slice(kv.value())
                    .map_err(|e| format!("the election's value is not a node: {e}"))?;
                let ttl = client
                    .lease_time_to_live(kv.lease(), None)
                    .await
                    .map(|t| t.ttl())
                    .unwrap_or(-1);
                Some(Active {
                    node,
                    lease_id: kv.lease(),
                    lease_ttl_s: ttl,
                })
            }
            None => None,
        },
        // etcd answers "no leader" as an error when nobody campaigns.
        Err(e) if e.to_string().contains("no leader") => None,
        Err(e) => return Err(etcd_err(e)),
    };
    let head = client.get(keys.head(), None).await.map_err(etcd_err)?;
    let head_revision = head.kvs().first().map_or(0, |kv| kv.mod_revision());
    let reports = client
        .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(etcd_err)?;
    let mut nodes: Vec<NodeStatus> = reports
        .kvs()
        .iter()
        .filter_map(|kv| serde_json::from_slice::<NodeReport>(kv.value()).ok())
        .map(|report| NodeStatus {
            caught_up: report.revision >= head_revision,
            report,
        })
        .collect();
    nodes.sort_by(|a, b| a.report.node.node.cmp(&b.report.node.node));
    Ok(ClusterStatus {
        prefix: cluster.prefix.clone(),
        members,
        active,
        head_revision,
        nodes,
    })
}

/// The status as text for a terminal.
pub fn render(s: &ClusterStatus) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "cluster {}: {} etcd member(s)\n",
        s.prefix,
        s.members.len()
    ));
    for m in &s.members {
        out.push_str(&format!(
            "  etcd {:<12} {}{}\n",
            m.name,
            m.client_urls.join(","),
            if m.leader { "  (raft leader)" } else { "" }
        ));
    }
    match &s.active {
        Some(a) => out.push_str(&format!(
            "active: {} at {}{}, lease {:x} with {} s left\n",
            a.node.node,
            a.node.advertise,
            a.node
                .advertise_http
                .as_deref()
                .map(|h| format!(" (http {h})"))
                .unwrap_or_default(),
            a.lease_id,
            a.lease_ttl_s
        )),
        None => out.push_str("active: none (no node holds the election)\n"),
    }
    out.push_str(&format!("last write at revision {}\n", s.head_revision));
    if s.nodes.is_empty() {
        out.push_str("no node reports itself\n");
    }
    for n in &s.nodes {
        let r = &n.report;
        let followed = if n.caught_up {
            "has every write".to_owned()
        } else {
            format!(
                "{} revision(s) behind",
                s.head_revision.saturating_sub(r.revision)
            )
        };
        out.push_str(&format!(
            "  node {:<12} {:<8} {:<21} copy at revision {} ({followed})\n",
            r.node.node, r.role, r.node.advertise, r.revision
        ));
    }
    out
}
