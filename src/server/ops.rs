//! The operator's endpoints on the HTTP listener: `/metrics` for Prometheus, `/healthz` and
//! `/readyz` for a load balancer or a supervisor. Read-only, and never in the engine's way: a
//! scrape asks the engine task for its state through the same queue as everyone else, and gives
//! up after [`ENGINE_ANSWER`].

use super::accept::Admission;
use super::engine_task::EngineMsg;
use super::metrics::Snapshot;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::warn;

/// How long a scrape or a readiness check waits for the engine task: a place in its queue and
/// the answer, together.
const ENGINE_ANSWER: Duration = Duration::from_secs(2);

/// The engine's state, or why it cannot be had.
async fn observe(admission: &Admission) -> Result<Snapshot, &'static str> {
    let (tx, rx) = oneshot::channel();
    let ask = async {
        admission
            .engine
            .send(EngineMsg::Observe(tx))
            .await
            .map_err(drop)?;
        rx.await.map_err(drop)
    };
    match tokio::time::timeout(ENGINE_ANSWER, ask).await {
        Ok(Ok(snapshot)) => Ok(snapshot),
        Ok(Err(())) => Err("the engine has stopped"),
        Err(_) => Err("the engine did not answer within 2 s"),
    }
}

/// `GET /metrics`: the classic Prometheus text format, or OpenMetrics when the `Accept` header
/// asks for it. If the engine does not answer, the state gauges keep their last values and the
/// counters are still served: the scrape that shows a stuck engine should not lose the rest.
pub(super) async fn metrics(
    State(admission): State<Arc<Admission>>,
    headers: HeaderMap,
) -> Response {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let snapshot = match observe(&admission).await {
        Ok(s) => Some(s),
        Err(why) => {
            warn!("metrics scrape without the engine's state: {why}");
            None
        }
    };
    let durable = *admission.shared.announcer.durable.borrow();
    let (body, content_type) =
        admission
            .shared
            .metrics
            .encode(snapshot.as_ref(), durable, openmetrics);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `GET /healthz`: the process is up and serves HTTP. For liveness: restart it if this fails.
pub(super) async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

/// `GET /readyz`: this server takes work. The store is open (it is, once the listener is up),
/// the engine answers, and the disk has not failed its last write. For readiness: send no
/// agents here while it answers 503.
pub(super) async fn readyz(State(admission): State<Arc<Admission>>) -> Response {
    let text = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
    if let Some(view) = &admission.shared.standby {
        let why = match view.active() {
            Some(a) => format!(
                "not ready: standby node; the active node is {} ({})\n",
                a.node, a.advertise
            ),
            None => "not ready: standby node; no node is active yet\n".to_owned(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, text, why).into_response();
    }
    match observe(&admission).await {
        Ok(s) if s.storage_failing => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "not ready: the store refused its last write or flush\n".to_owned(),
        )
            .into_response(),
        Ok(_) => (text, "ready\n".to_owned()).into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}
