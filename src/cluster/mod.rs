//! Cluster mode: one active node and standbys, with etcd as the authority (`[cluster]` in the
//! config; built with the `cluster` feature).
//!
//! A node is a loop of two phases. As a **standby** it serves every listener but answers each
//! `Hello` with `not_active` and the active node's address, keeps its own sled copy of the state
//! current by watching etcd ([`follow`]), and campaigns in the cluster's etcd election on its
//! lease. Once elected it waits until its copy has reached the last write, stops following, loads
//! its engine from the copy (as a restart does) and serves as the **active** node, every batch one
//! etcd transaction fenced on its election ([`store`]). When it learns it may no longer write (its
//! lease ended, a transaction's fence failed, a write etcd did not confirm landed after all) it
//! closes every session and goes back to being a standby.
//!
//! Where the data lives in etcd is in [`keys`]; why it is laid out so, and its limits, are in
//! PROTOCOL.md ("Running as a cluster").

mod fold;
mod follow;
mod keys;
pub mod status;
mod store;

use crate::config::{ClusterConfig, Config};
use crate::server::{
    start_with_options, ActiveNode, OnEngineFailure, ServerError, ServerHandle, StandbyView,
    StartOptions, ENGINE_FAILURE_EXIT_CODE,
};
use crate::store::{MemoryStore, SledStore, StoreError};
use etcd_client::{Client, ConnectOptions, ResignOptions};
use keys::Keys;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often each node reports itself under `<prefix>/nodes/` and a standby looks up the active
/// node.
const REPORT_EVERY: Duration = Duration::from_millis(500);
/// How often a node's unchanged report is written again (its `at_ms` shows it is alive).
const REPORT_AGAIN: Duration = Duration::from_secs(5);
/// How long an elected node waits for its copy to reach the last write before giving up the
/// election (its copy is broken; another node may do better).
const CATCH_UP_LIMIT: Duration = Duration::from_secs(30);

/// Connects to the cluster's etcd members.
pub(crate) async fn connect(cluster: &ClusterConfig) -> Result<Client, String> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_require_leader(true);
    Client::connect(&cluster.etcd, Some(options))
        .await
        .map_err(|e| format!("cannot reach etcd at {}: {e}", cluster.etcd.join(", ")))
}

/// Serves as one node of the cluster until `stop` is cancelled (or the engine dies, which with
/// [`OnEngineFailure::ExitProcess`] exits the process).
pub async fn run(
    config: Config,
    opts: StartOptions,
    stop: CancellationToken,
    reloader: Arc<Mutex<Option<ServerHandleReload>>>,
) -> Result<(), ServerError> {
    let cluster = config
        .cluster
        .clone()
        .expect("cluster::run is only called with [cluster]");
    let local = open_copy(&config).await?;
    let keys = Keys::new(&cluster.prefix);
    let client = loop {
        match connect(&cluster).await {
            Ok(c) => break c,
            Err(e) => {
                warn!("{e}; trying again");
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    let node = Node {
        config,
        cluster,
        keys,
        client,
        local,
        opts,
        reloader,
    };
    node.run(stop).await
}

/// Reloads the current phase's server (SIGHUP): set by [`run`] as phases change.
pub type ServerHandleReload = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Opens the node's own copy. A data directory that holds a single node's store is refused: the
/// copy would replace it.
async fn open_copy(config: &Config) -> Result<Arc<SledStore>, ServerError> {
    let (dir, cache) = (config.data_dir.clone(), config.store_cache_bytes);
    let opened = tokio::task::spawn_blocking(move || -> Result<SledStore, StoreError> {
        let store = SledStore::open_with_cache(&dir, cache)?;
        if !store.is_mirror()? && !store.raw_range(&[], 1)?.is_empty() {
            return Err(StoreError::Cluster(
                "it holds the store of a single node, which a cluster node's copy of the cluster's state would replace: give this node an empty data_dir".into(),
            ));
        }
        Ok(store)
    })
    .await
    .expect("store open does not panic");
    opened.map(Arc::new).map_err(|error| ServerError::Store {
        dir: config.data_dir.display().to_string(),
        error,
    })
}

struct Node {
    config: Config,
    cluster: ClusterConfig,
    keys: Keys,
    client: Client,
    local: Arc<SledStore>,
    opts: StartOptions,
    reloader: Arc<Mutex<Option<ServerHandleReload>>>,
}

/// A lease of this node in etcd, kept alive until it is lost (`lost`) or dropped.
struct Lease {
    id: i64,
    lost: CancellationToken,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

impl Node {
    fn ttl_secs(&self) -> i64 {
        (self.cluster.lease_ms as i64 + 999) / 1000
    }

    fn me(&self) -> ActiveNode {
        ActiveNode {
            node: self.cluster.node_id.clone(),
            advertise: self.cluster.advertise.clone(),
            advertise_http: self.cluster.http_advertise(self.config.http_addr()),
        }
    }

    async fn run(self, stop: CancellationToken) -> Result<(), ServerError> {
        let mut lease: Option<Lease> = None;
        while !stop.is_cancelled() {
            let current = match lease.take() {
                Some(l) if !l.lost.is_cancelled() => l,
                _ => match self.grant_lease().await {
                    Ok(l) => l,
                    Err(e) => {
                        warn!("{e}; trying again");
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                },
            };
            let Some(elected) = self.standby(&current, &stop).await? else {
                lease = Some(current);
                continue;
            };
            self.active(&current, elected, &stop).await?;
            lease = Some(current);
        }
        if let Some(l) = lease {
            let mut client = self.client.clone();
            let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(l.id)).await;
        }
        info!("cluster node stopped");
        Ok(())
    }

    async fn grant_lease(&self) -> Result<Lease, String> {
        let mut client = self.client.clone();
        let granted = tokio::time::timeout(
            Duration::from_secs(5),
            client.lease_grant(self.ttl_secs(), None),
        )
        .await
        .map_err(|_| "etcd did not grant a lease within 5 s".to_owned())?
        .map_err(|e| format!("etcd did not grant a lease: {e}"))?;
        let id = granted.id();
        let lost = CancellationToken::new();
        let keeper = tokio::spawn(keep_alive(
            self.client.clone(),
            id,
            Duration::from_millis(self.cluster.lease_ms),
            lost.clone(),
        ));
        Ok(Lease { id, lost, keeper })
    }

    /// Serves as a standby until elected (returns the election key) or until the lease is lost
    /// or the node is stopped (returns `None`).
    async fn standby(
        &self,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Result<Option<etcd_client::LeaderKey>, ServerError> {
        let view = Arc::new(StandbyView::default());
        let server = self.start_phase(None, Some(view.clone())).await?;
        info!(node = %self.cluster.node_id, "standby: following the cluster's state and waiting for the election");
        let (applied_tx, applied) = watch::channel(0i64);
        let follow_stop = CancellationToken::new();
        let follower = tokio::spawn(follow::follow(
            self.client.clone(),
            self.keys.clone(),
            self.local.clone(),
            applied_tx,
            follow_stop.clone(),
        ));
        let reporter_stop = CancellationToken::new();
        let reporter = tokio::spawn(report(
            self.client.clone(),
            self.keys.clone(),
            self.me(),
            "standby",
            lease.id,
            self.cluster.lease_ms,
            self.local.clone(),
            Some(view.clone()),
            reporter_stop.clone(),
        ));
        let value = serde_json::to_string(&self.me()).expect("serializes");
        let mut election = self.client.election_client();
        let campaign = election.campaign(self.keys.election(), value, lease.id);
        let elected = tokio::select! {
            _ = stop.cancelled() => None,
            _ = lease.lost.cancelled() => None,
            r = campaign => match r {
                Ok(mut r) => r.take_leader(),
                Err(e) => {
                    warn!("campaign in the election failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    None
                }
            },
        };
        let elected = match elected {
            Some(leader) => match self.catch_up(&applied, lease, stop).await {
                Ok(()) => Some(leader),
                Err(e) => {
                    error!("elected, but cannot take over: {e}; giving up the election");
                    self.resign(leader).await;
                    None
                }
            },
            None => None,
        };
        reporter_stop.cancel();
        let _ = reporter.await;
        follow_stop.cancel();
        let _ = follower.await;
        self.end_phase(server).await;
        Ok(elected)
    }

    /// Waits until the copy has reached the last write the cluster made.
    async fn catch_up(
        &self,
        applied: &watch::Receiver<i64>,
        lease: &Lease,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let mut client = self.client.clone();
        let head = client
            .get(self.keys.head(), None)
            .await
            .map_err(|e| format!("cannot read the head: {e}"))?;
        let head_rev = head.kvs().first().map_or(0, |kv| kv.mod_revision());
        let mut applied = applied.clone();
        let started = Instant::now();
        let reached = tokio::select! {
            _ = stop.cancelled() => return Err("stopping".into()),
            _ = lease.lost.cancelled() => return Err("the lease ended".into()),
            r = tokio::time::timeout(CATCH_UP_LIMIT, applied.wait_for(|r| *r >= head_rev)) => r,
        };
        match reached {
            Ok(Ok(_)) => {
                info!(
                    revision = head_rev,
                    catch_up_ms = started.elapsed().as_millis() as u64,
                    "elected: the copy has every write"
                );
                Ok(())
            }
            _ => Err(format!(
                "the copy did not reach revision {head_rev} within {} s",
                CATCH_UP_LIMIT.as_secs()
            )),
        }
    }

    /// Serves as the active node until the lease or the fence is lost, or the node is stopped.
    async fn active(
        &self,
        lease: &Lease,
        leader: etcd_client::LeaderKey,
        stop: &CancellationToken,
    ) -> Result<(), ServerError> {
        let mut client = self.client.clone();
        let head_rev = match client.get(self.keys.head(), None).await {
            Ok(r) => r.kvs().first().map_or(0, |kv| kv.mod_revision()),
            Err(e) => {
                warn!("cannot read the head before serving: {e}; giving up the election");
                self.resign(leader).await;
                return Ok(());
            }
        };
        let store = store::ClusterStore::new(
            self.local.clone(),
            self.client.clone(),
            self.keys.clone(),
            store::Fence {
                leader_key: leader.key().to_vec(),
                leader_rev: leader.rev(),
            },
            head_rev,
            self.cluster.node_id.clone(),
            lease.lost.clone(),
            Duration::from_millis(self.cluster.commit_timeout_ms),
            self.cluster.max_txn_ops as usize,
        );
        let taking_over = Instant::now();
        let store = Arc::new(store);
        let folding = store.clone();
        match tokio::task::spawn_blocking(move || folding.finish_fold()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!("cannot fold the previous active node's last batch: {e}; giving up the election");
                self.resign(leader).await;
                return Ok(());
            }
            Err(e) => {
                error!("folding task failed: {e}; giving up the election");
                self.resign(leader).await;
                return Ok(());
            }
        }
        let server = match self.start_phase(Some(store), None).await {
            Ok(s) => s,
            Err(e) => {
                error!("cannot serve as the active node: {e}; giving up the election");
                self.resign(leader).await;
                return Ok(());
            }
        };
        info!(
            node = %self.cluster.node_id,
            load_ms = taking_over.elapsed().as_millis() as u64,
            "ACTIVE: this node serves the cluster"
        );
        let reporter_stop = CancellationToken::new();
        let reporter = tokio::spawn(report(
            self.client.clone(),
            self.keys.clone(),
            self.me(),
            "active",
            lease.id,
            self.cluster.lease_ms,
            self.local.clone(),
            None,
            reporter_stop.clone(),
        ));
        let exit = self.opts.on_engine_failure == OnEngineFailure::ExitProcess;
        let ended = server.ended();
        tokio::select! {
            _ = stop.cancelled() => info!("stopping the active node"),
            _ = lease.lost.cancelled() => warn!("STEPPING DOWN: this node may no longer write; closing every session"),
            _ = ended.cancelled() => {}
        }
        reporter_stop.cancel();
        let _ = reporter.await;
        let result = self.end_phase_result(server).await;
        if let Err(ServerError::EngineFailed(why)) = &result {
            if exit {
                error!("ENGINE FAILURE: {why}; exiting with status {ENGINE_FAILURE_EXIT_CODE}");
                std::process::exit(ENGINE_FAILURE_EXIT_CODE);
            }
        }
        if !lease.lost.is_cancelled() {
            // Hand over at once rather than when the lease runs out.
            self.resign(leader).await;
        }
        result
    }

    async fn resign(&self, leader: etcd_client::LeaderKey) {
        let mut election = self.client.election_client();
        let resign = election.resign(Some(ResignOptions::new().with_leader(leader)));
        match tokio::time::timeout(Duration::from_secs(2), resign).await {
            Ok(Ok(_)) => info!("resigned from the election"),
            Ok(Err(e)) => warn!("could not resign from the election: {e}"),
            Err(_) => warn!("could not resign from the election within 2 s"),
        }
    }

    async fn start_phase(
        &self,
        store: Option<Arc<dyn crate::store::Store>>,
        standby: Option<Arc<StandbyView>>,
    ) -> Result<ServerHandle, ServerError> {
        let opts = StartOptions {
            store: Some(store.unwrap_or_else(|| Arc::new(MemoryStore::new()))),
            standby,
            ..self.opts.clone()
        };
        // The previous phase's listeners were just closed: binding again may take a moment.
        let mut tries = 0;
        let server = loop {
            match start_with_options(self.config.clone(), opts.clone()).await {
                Err(ServerError::Bind { .. }) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other?,
            }
        };
        *self.reloader.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Box::new(server.reloader()));
        Ok(server)
    }

    async fn end_phase(&self, server: ServerHandle) {
        if let Err(e) = self.end_phase_result(server).await {
            error!("{e}");
        }
    }

    async fn end_phase_result(&self, server: ServerHandle) -> Result<(), ServerError> {
        *self.reloader.lock().unwrap_or_else(|p| p.into_inner()) = None;
        server.stop_token().cancel();
        server.wait().await
    }
}

/// Renews the lease every third of its time; `lost` once etcd says it ended, or once it has not
/// been renewed for its whole time (etcd may have ended it: nothing more may be acknowledged).
async fn keep_alive(client: Client, id: i64, ttl: Duration, lost: CancellationToken) {
    let mut last_renewed = Instant::now();
    let every = ttl / 3;
    let mut stream = None;
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if stream.is_none() {
            let mut c = client.clone();
            if let Ok(Ok(s)) = tokio::time::timeout(every, c.lease_keep_alive(id)).await {
                stream = Some(s);
            }
        }
        let renewed = match stream.as_mut() {
            Some((keeper, responses)) => {
                let round = async {
                    keeper.keep_alive().await?;
                    responses.message().await
                };
                match tokio::time::timeout(every, round).await {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => Some(true),
                    Ok(Ok(Some(_))) => Some(false),
                    _ => None,
                }
            }
            None => None,
        };
        match renewed {
            Some(true) => last_renewed = Instant::now(),
            Some(false) => {
                warn!(lease = id, "etcd says this node's lease has ended");
                lost.cancel();
                return;
            }
            None => {
                stream = None;
                if last_renewed.elapsed() >= ttl {
                    warn!(
                        lease = id,
                        "this node's lease could not be renewed for {} ms",
                        ttl.as_millis()
                    );
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

/// What a node reports of itself under `<prefix>/nodes/<node_id>` (for `baton cluster status`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    #[serde(flatten)]
    pub node: ActiveNode,
    pub role: String,
    /// The etcd revision this node's copy of the state has reached.
    pub revision: i64,
    pub lease_ms: u64,
    pub at_ms: u64,
}

/// Reports this node every [`REPORT_EVERY`] on its lease, and, for a standby, keeps `view`
/// told which node is active.
#[allow(clippy::too_many_arguments)]
async fn report(
    client: Client,
    keys: Keys,
    me: ActiveNode,
    role: &'static str,
    lease: i64,
    lease_ms: u64,
    local: Arc<SledStore>,
    view: Option<Arc<StandbyView>>,
    stop: CancellationToken,
) {
    let mut client = client;
    // Written when the copy moved on, and at least every REPORT_AGAIN: each put is a revision
    // in etcd's history.
    let mut reported: Option<(i64, Instant)> = None;
    loop {
        let l = local.clone();
        let revision = tokio::task::spawn_blocking(move || l.mirror_revision())
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(0);
        let report = NodeReport {
            node: me.clone(),
            role: role.into(),
            revision,
            lease_ms,
            at_ms: crate::server::now_ms(),
        };
        let due = reported.is_none_or(|(r, at)| r != revision || at.elapsed() >= REPORT_AGAIN);
        if due {
            let put = client.put(
                keys.node(&me.node),
                serde_json::to_vec(&report).expect("serializes"),
                Some(etcd_client::PutOptions::new().with_lease(lease)),
            );
            if let Ok(Ok(_)) = tokio::time::timeout(REPORT_EVERY, put).await {
                reported = Some((revision, Instant::now()));
            }
        }
        if let Some(view) = &view {
            let mut election = client.election_client();
            if let Ok(Ok(r)) =
                tokio::time::timeout(REPORT_EVERY, election.leader(keys.election())).await
            {
                let active = r
                    .kv()
                    .and_then(|kv| serde_json::from_slice::<ActiveNode>(kv.value()).ok());
                view.set_active(active);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REPORT_EVERY) => {}
        }
    }
}
