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

use super::{
    forward::{Body, BodyError},
    steer::Load,
};

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

impl Row {
    fn merge(&mut self, other: &Row) {
        for (n, m) in self.responses.iter_mut().zip(other.responses) {
            *n += m;
        }
        self.bytes += other.bytes;
        self.seconds += other.seconds;
        self.aborted += other.aborted;
    }
}

/// Per listener, per backend that answered (`None`: the LB itself).
type Rows = BTreeMap<Arc<str>, BTreeMap<Option<SocketAddr>, Row>>;

/// A listener and the backend that answered, as `GET /metrics` labels a row.
type Key = (Arc<str>, Option<SocketAddr>);

/// One worker's request counters, which only that worker writes: requests on different cores
/// never wait for one lock nor pass a cache line back and forth. Aligned so that no other
/// allocation shares its cache lines.
#[derive(Default)]
#[repr(align(128))]
pub struct Shard {
    rows: Mutex<Rows>,
}

impl Shard {
    fn add(&self, r: &Record, bytes: u64, total: Duration, complete: bool) {
        let mut rows = self.rows.lock().unwrap_or_else(PoisonError::into_inner);
        // The listener's name is shared by every worker: cloned only for its first request.
        if !rows.contains_key(&*r.listener) {
            rows.insert(r.listener.clone(), BTreeMap::new());
        }
        let Some(backends) = rows.get_mut(&*r.listener) else {
            return;
        };
        let row = backends.entry(r.backend).or_default();
        let class = usize::from(r.status.as_u16() / 100).clamp(1, 5) - 1;
        row.responses[class] += 1;
        row.bytes += bytes;
        row.seconds += total.as_secs_f64();
        row.aborted += u64::from(!complete);
    }
}

/// Request counters per listener and backend (`GET /metrics`): the sum of the workers' shards;
/// and the client connections each worker has open, where the worker picker counts them.
#[derive(Default)]
pub struct Metrics {
    shards: Vec<Arc<Shard>>,
    loads: Vec<Arc<Load>>,
}

impl Metrics {
    pub fn new(shards: Vec<Arc<Shard>>, loads: Vec<Arc<Load>>) -> Metrics {
        Metrics { shards, loads }
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut sum = BTreeMap::<Key, Row>::new();
        for shard in &self.shards {
            let rows = shard.rows.lock().unwrap_or_else(PoisonError::into_inner);
            for (listener, backends) in rows.iter() {
                for (backend, row) in backends {
                    sum.entry((listener.clone(), *backend))
                        .or_default()
                        .merge(row);
                }
            }
        }
        let mut out = String::new();
        let labels = |(listener, backend): &Key| {
            let backend = backend.map_or_else(|| "-".to_string(), |b| b.to_string());
            format!("listener=\"{listener}\",backend=\"{backend}\"")
        };
        out.push_str("# HELP slb_http_responses_total Responses sent by HTTP/HTTPS listeners, by backend (\"-\": answered by the LB) and status class.\n# TYPE slb_http_responses_total counter\n");
        for (k, row) in &sum {
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
            for (k, row) in &sum {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(k), value(row));
            }
        }
        if !self.loads.is_empty() {
            out.push_str("# HELP slb_proxy_worker_connections Client connections open on each proxy worker.\n# TYPE slb_proxy_worker_connections gauge\n");
        }
        for (worker, load) in self.loads.iter().enumerate() {
            let n = load.open_connections();
            let _ = writeln!(
                out,
                "slb_proxy_worker_connections{{worker=\"{worker}\"}} {n}"
            );
        }
        out
    }
}

/// Wraps `resp`'s body so that its end (or the client leaving) writes the access log line and
/// the metrics.
pub fn logged(resp: Response<Body>, record: Record, metrics: Arc<Shard>) -> Response<Body> {
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
    metrics: Arc<Shard>,
}

impl Logged {
    fn finish(&mut self, complete: bool) {
        let Some(r) = self.record.take() else { return };
        let total = super::now().duration_since(r.start);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(listener: &Arc<str>, backend: Option<SocketAddr>, status: u16) -> Record {
        Record {
            listener: listener.clone(),
            client: SocketAddr::from(([192, 0, 2, 1], 40000)),
            method: hyper::Method::GET,
            host: None,
            path: PathAndQuery::from_static("/"),
            version: "1.1",
            backend,
            status: StatusCode::from_u16(status).expect("a status code"),
            start: Instant::now(),
            head: Duration::ZERO,
        }
    }

    /// Each worker counts in its own shard; `GET /metrics` shows their sum per listener and
    /// backend.
    #[test]
    fn metrics_sum_the_workers_shards() {
        let shards: Vec<Arc<Shard>> = (0..2).map(|_| Arc::default()).collect();
        let metrics = Metrics::new(shards.clone(), Vec::new());
        let web: Arc<str> = "lb-1/http/80".into();
        let b1 = Some(SocketAddr::from(([10, 0, 0, 1], 8080)));
        let ms = Duration::from_millis;
        shards[0].add(&record(&web, b1, 200), 64, ms(250), true);
        shards[1].add(&record(&web, b1, 204), 36, ms(250), true);
        shards[1].add(&record(&web, b1, 502), 0, ms(500), false);
        shards[0].add(&record(&web, None, 503), 24, ms(1), true);
        let text = metrics.render();
        let labels = "listener=\"lb-1/http/80\",backend=\"10.0.0.1:8080\"";
        for row in [
            format!("slb_http_responses_total{{{labels},code=\"2xx\"}} 2\n"),
            format!("slb_http_responses_total{{{labels},code=\"5xx\"}} 1\n"),
            "slb_http_responses_total{listener=\"lb-1/http/80\",backend=\"-\",code=\"5xx\"} 1\n"
                .to_string(),
            format!("slb_http_response_body_bytes_total{{{labels}}} 100\n"),
            format!("slb_http_request_duration_seconds_total{{{labels}}} 1\n"),
            format!("slb_http_responses_aborted_total{{{labels}}} 1\n"),
        ] {
            assert!(text.contains(&row), "{row} in {text}");
        }
    }
}
