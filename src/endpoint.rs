//! The operator's HTTP endpoint, on `metrics.listen`: `/metrics`
//! (Prometheus), `/healthz` (the process is up: it answers) and `/readyz`
//! (200 once every condition of [`crate::health`] is met, else 503; the
//! body lists each condition either way).
//!
//! One small HTTP/1 server for the three, so that a container's
//! HEALTHCHECK, a Kubernetes probe and Prometheus all reach the process on
//! the one port an operator already opened for metrics, and nothing is
//! served on a port nobody asked for.

use std::net::SocketAddr;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::debug;

use crate::health::Health;

/// The routes, for messages.
pub const ROUTES: &str = "/metrics, /healthz, /readyz";

/// Serve on `listener` until the runtime stops. `metrics`: the recorder's
/// handle (`None`: `/metrics` answers 404, for tests of the health routes
/// in a process whose recorder is another's).
pub fn spawn(listener: std::net::TcpListener, metrics: Option<PrometheusHandle>, health: Health) {
    tokio::spawn(async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "the metrics endpoint cannot listen");
                return;
            }
        };
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                // Out of file descriptors, say: the next accept may work.
                Err(e) => {
                    debug!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let (metrics, health) = (metrics.clone(), health.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    answer(req, metrics.clone(), health.clone())
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "a metrics connection ended badly");
                }
            });
        }
    });
}

/// Bind `addr` now, so that a taken port is an error at start-up.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    Ok(l)
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

async fn answer(
    req: Request<Incoming>,
    metrics: Option<PrometheusHandle>,
    health: Health,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => {
            let report = health.report().await;
            let status = if report.ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, report.text())
        }
        "/metrics" => match metrics {
            // Rendering walks every series: off the async threads.
            Some(h) => match tokio::task::spawn_blocking(move || h.render()).await {
                Ok(body) => {
                    let mut r = text(StatusCode::OK, body);
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            None => text(
                StatusCode::NOT_FOUND,
                "metrics are recorded by another endpoint in this process\n".into(),
            ),
        },
        other => text(
            StatusCode::NOT_FOUND,
            format!("no route {other}: this endpoint serves {ROUTES}\n"),
        ),
    })
}
