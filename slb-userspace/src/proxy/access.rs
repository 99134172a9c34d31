//! One access log line and one metrics update per request, written when the response body has
//! been sent to its end, or when the client went away first.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use hyper::{
    body::{Body as _, Frame, SizeHint},
    header::HeaderValue,
    http::uri::PathAndQuery,
    Response, StatusCode,
};
use serde_json::json;

use super::forward::{Body, BodyError};

/// What is known about a request when its response head is ready.
pub struct Record {
    pub listener: Arc<str>,
    pub client: SocketAddr,
    pub method: hyper::Method,
    pub host: Option<HeaderValue>,
    pub path: PathAndQuery,
    pub version: &'static str,
    /// `None` when the LB answered itself (503, redirect, no connection).
    pub backend: Option<SocketAddr>,
    pub status: StatusCode,
    pub start: Instant,
    /// Until the response head was ready.
    pub head: Duration,
}

#[derive(Default, Clone, Copy)]
struct Row {
    /// By status class 1xx..5xx.
    responses: [u64; 5],
    bytes: u64,
    seconds: f64,
    aborted: u64,
}

/// A listener and the backend that answered (`None`: the LB itself).
type Key = (Arc<str>, Option<SocketAddr>);

/// Request counters per listener and backend (`GET /metrics`).
#[derive(Default)]
pub struct Metrics {
    rows: Mutex<BTreeMap<Key, Row>>,
}

impl Metrics {
    fn add(&self, r: &Record, bytes: u64, total: Duration, complete: bool) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        let row = rows.entry((r.listener.clone(), r.backend)).or_default();
        let class = usize::from(r.status.as_u16() / 100).clamp(1, 5) - 1;
        row.responses[class] += 1;
        row.bytes += bytes;
        row.seconds += total.as_secs_f64();
        row.aborted += u64::from(!complete);
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let rows: Vec<_> = {
            let rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
            rows.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        let mut out = String::new();
        let labels = |(listener, backend): &Key| {
            let backend = backend.map_or_else(|| "-".to_string(), |b| b.to_string());
            format!("listener=\"{listener}\",backend=\"{backend}\"")
        };
        out.push_str("# HELP slb_http_responses_total Responses sent by HTTP/HTTPS listeners, by backend (\"-\": answered by the LB) and status class.\n# TYPE slb_http_responses_total counter\n");
        for (k, row) in &rows {
            for (i, n) in row.responses.iter().enumerate().filter(|(_, n)| **n > 0) {
                let _ = writeln!(
                    out,
                    "slb_http_responses_total{{{},code=\"{}xx\"}} {n}",
                    labels(k),
                    i + 1
                );
            }
        }
        type Field = fn(&Row) -> f64;
        let series: [(&str, &str, &str, Field); 3] = [
            (
                "slb_http_response_body_bytes_total",
                "counter",
                "Response body bytes sent to clients.",
                |r| r.bytes as f64,
            ),
            (
                "slb_http_request_duration_seconds_total",
                "counter",
                "Time from request head to the end of the response body, summed.",
                |r| r.seconds,
            ),
            (
                "slb_http_responses_aborted_total",
                "counter",
                "Responses the client went away from before their end.",
                |r| r.aborted as f64,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (k, row) in &rows {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(k), value(row));
            }
        }
        out
    }
}

/// Wraps `resp`'s body so that its end (or the client leaving) writes the access log line and
/// the metrics.
pub fn logged(resp: Response<Body>, record: Record, metrics: Arc<Metrics>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let body = Logged {
        inner: body,
        record: Some(record),
        bytes: 0,
        metrics,
    };
    Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
}

struct Logged {
    inner: Body,
    record: Option<Record>,
    bytes: u64,
    metrics: Arc<Metrics>,
}

impl Logged {
    fn finish(&mut self, complete: bool) {
        let Some(r) = self.record.take() else { return };
        let total = r.start.elapsed();
        self.metrics.add(&r, self.bytes, total, complete);
        if !log::log_enabled!(target: "slb::access", log::Level::Info) {
            return;
        }
        let time = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let line = json!({
            "time": time,
            "listener": &*r.listener,
            "client": r.client.to_string(),
            "method": r.method.as_str(),
            "host": r.host.as_ref().and_then(|h| h.to_str().ok()).unwrap_or(""),
            "path": r.path.as_str(),
            "version": r.version,
            "status": r.status.as_u16(),
            "backend": r.backend.map(|b| b.to_string()),
            "bytes": self.bytes,
            "head_ms": r.head.as_secs_f64() * 1e3,
            "total_ms": total.as_secs_f64() * 1e3,
            "complete": complete,
        });
        log::info!(target: "slb::access", "{line}");
    }
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.finish(true);
                }
            }
            Poll::Ready(None) => self.finish(true),
            Poll::Ready(Some(Err(_))) => self.finish(false),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // An empty body may never be polled.
        let complete = self.inner.is_end_stream();
        self.finish(complete);
    }
}
