//! A real etcd cluster on loopback for the cluster tests: Debian's `etcd` binary (installed by
//! `.ci/install-cluster-deps`), three members by default, each in its own directory, killed when
//! dropped. Members can be killed with SIGKILL and started again on their data.

use crate::http::http_post_json;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct EtcdCluster {
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

struct Member {
    name: String,
    client: SocketAddr,
    peer: SocketAddr,
    data: PathBuf,
    child: Option<Child>,
}

/// The etcd binary: `BATON_TEST_ETCD`, or Debian's.
fn etcd_binary() -> PathBuf {
    let path = std::env::var_os("BATON_TEST_ETCD")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"));
    assert!(
        path.exists(),
        "{} is missing: run `bash .ci/install-cluster-deps` (Debian's etcd-server) first",
        path.display()
    );
    path
}

impl EtcdCluster {
    /// Starts `n` members and waits until they have elected a leader.
    pub async fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("etcd{i}"),
                client: crate::free_addr(),
                peer: crate::free_addr(),
                data: dir.path().join(format!("etcd{i}")),
                child: None,
            })
            .collect();
        let mut cluster = EtcdCluster { members, _dir: dir };
        for i in 0..n {
            cluster.spawn(i);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        cluster
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn spawn(&mut self, i: usize) {
        let initial = self.initial_cluster();
        let m = &mut self.members[i];
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(&m.data)
            .arg("--listen-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", m.client))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", m.peer))
            .arg("--initial-cluster")
            .arg(initial)
            .arg("--initial-cluster-token")
            .arg("baton-test")
            .arg("--initial-cluster-state")
            .arg("new")
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .args(["--max-txn-ops", "4096", "--max-request-bytes", "10485760"])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd starts");
        m.child = Some(child);
    }

    /// The members' client URLs, for `[cluster] etcd`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://{}", m.client))
            .collect()
    }

    /// `[cluster] etcd = [...]` as a TOML value.
    pub fn toml_endpoints(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// SIGKILL to member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
    }

    /// The index of the member that is raft leader, as the members that answer see it.
    pub async fn leader(&self) -> Option<usize> {
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            // A member still starting refuses connections (the GET helper would panic).
            if tokio::net::TcpStream::connect(m.client).await.is_err() {
                continue;
            }
            let status = tokio::time::timeout(
                Duration::from_secs(2),
                http_post_json(m.client, "/v3/maintenance/status", "{}"),
            )
            .await;
            let Ok(reply) = status else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&reply.body) else {
                continue;
            };
            let leader = v["leader"].as_str().map(str::to_owned);
            let me = v["header"]["member_id"].as_str().map(str::to_owned);
            if leader.is_some() && leader == me {
                return self.members.iter().position(|x| x.client == m.client);
            }
            // Ask the leader itself next round; the members agree once a leader is elected.
        }
        None
    }

    /// Waits until a member reports itself leader.
    pub async fn wait_healthy(&self, limit: Duration) {
        let started = Instant::now();
        while self.leader().await.is_none() {
            assert!(
                started.elapsed() < limit,
                "etcd elected no leader within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
