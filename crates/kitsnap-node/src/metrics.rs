//! Prometheus metrics of `kitsnap serve`, served on an opt-in address (`--metrics-addr`,
//! `metrics_addr`): pulls and their bytes, layers filled for containerd, layers held and
//! mounts (read when scraped), errors by component, and the latency of every gRPC method
//! and mirror request.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tonic::codegen::http;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Component {
    pub component: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Request {
    pub service: String,
    pub method: String,
}

pub struct Metrics {
    pub pulls: Family<Outcome, Counter>,
    pub pull_bytes: Counter,
    pub layers_unpacked: Counter,
    pub fills: Family<Outcome, Counter>,
    pub errors: Family<Component, Counter>,
    pub requests: Family<Request, Histogram, fn() -> Histogram>,
    pub layers_held: Gauge,
    pub mounts: Gauge,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 2 min: a Mounts call to a multi-gigabyte pull.
    Histogram::new(exponential_buckets(0.0005, 4.0, 10))
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            pulls: Family::default(),
            pull_bytes: Counter::default(),
            layers_unpacked: Counter::default(),
            fills: Family::default(),
            errors: Family::default(),
            requests: Family::new_with_constructor(latency_histogram),
            layers_held: Gauge::default(),
            mounts: Gauge::default(),
            registry: Registry::with_prefix("kitsnap"),
        };
        let r = &mut m.registry;
        r.register(
            "pulls",
            "ModelKit pulls into containerd, by result",
            m.pulls.clone(),
        );
        r.register(
            "pull_bytes",
            "Bytes downloaded by pulls",
            m.pull_bytes.clone(),
        );
        r.register(
            "layers_unpacked",
            "Layers unpacked into snapshots by pulls",
            m.layers_unpacked.clone(),
        );
        r.register(
            "fills",
            "Layers filled for containerd's own pulls (remote snapshots), by result",
            m.fills.clone(),
        );
        r.register("errors", "Errors, by component", m.errors.clone());
        r.register(
            "request_duration_seconds",
            "Latency of gRPC methods and mirror requests",
            m.requests.clone(),
        );
        r.register(
            "layers_held",
            "Committed snapshots (layers) the snapshotter holds",
            m.layers_held.clone(),
        );
        r.register(
            "mounts",
            "Host mounts of ModelKits (kitsnap mount)",
            m.mounts.clone(),
        );
        // Series that exist from the start read 0, not "absent", on dashboards and alerts.
        for result in ["ok", "error"] {
            let _ = m.pulls.get_or_create(&Outcome { result });
        }
        for result in ["filled", "skipped", "left_to_containerd"] {
            let _ = m.fills.get_or_create(&Outcome { result });
        }
        for component in ["pull", "mirror"] {
            let _ = m.errors.get_or_create(&Component { component });
        }
        m
    }

    pub fn error(&self, component: &'static str) {
        self.errors.get_or_create(&Component { component }).inc();
    }

    pub fn observe(&self, service: &str, method: &str, seconds: f64) {
        self.requests
            .get_or_create(&Request {
                service: service.to_string(),
                method: method.to_string(),
            })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

/// The process's metrics (one daemon per process).
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Times every gRPC call by its path (`/containerd.services.snapshots.v1.Snapshots/Prepare`).
#[derive(Clone)]
pub struct Timed<S> {
    inner: S,
}

pub fn timed<S>(inner: S) -> Timed<S> {
    Timed { inner }
}

impl<S, B> tower::Service<http::Request<B>> for Timed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let r = fut.await;
            let (service, method) = path
                .trim_start_matches('/')
                .split_once('/')
                .unwrap_or(("unknown", &path));
            let service = service.rsplit('.').next().unwrap_or(service).to_lowercase();
            metrics().observe(&service, method, started.elapsed().as_secs_f64());
            r
        })
    }
}

/// Serves `GET /metrics` on `addr` until `stop`; `refresh` updates the gauges first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    refresh: Arc<dyn Fn() + Send + Sync>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let (conn, _) = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => match c {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "metrics: accept");
                    continue;
                }
            },
        };
        let refresh = refresh.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let refresh = refresh.clone();
                    async move {
                        let (status, ctype, body) = if req.uri().path() == "/metrics" {
                            // The gauges read the metadata databases: off the async workers.
                            let _ = tokio::task::spawn_blocking(move || refresh()).await;
                            (
                                200,
                                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                metrics().encode(),
                            )
                        } else {
                            (
                                404,
                                "text/plain",
                                "kitsnap serves /metrics only\n".to_string(),
                            )
                        };
                        hyper::Response::builder()
                            .status(status)
                            .header("content-type", ctype)
                            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(conn), svc)
                .await;
        });
    }
}

/// Binds the metrics address, with an error that names the fix.
pub async fn bind(addr: SocketAddr) -> crate::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        crate::Error::invalid(format!(
            "metrics: cannot listen on {addr}: {e} (set another --metrics-addr)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_every_metric() {
        let m = metrics();
        m.pulls.get_or_create(&Outcome { result: "ok" }).inc();
        m.observe("snapshots", "Prepare", 0.002);
        let text = m.encode();
        for name in [
            "kitsnap_pulls_total{result=\"ok\"}",
            "kitsnap_pull_bytes_total",
            "kitsnap_layers_held",
            "kitsnap_mounts",
            "kitsnap_request_duration_seconds_bucket",
        ] {
            assert!(text.contains(name), "{name} in\n{text}");
        }
    }
}
