//! Listener `Bandwidth` on layer 7 (B13.2, B13.6): one token bucket per listener, charged with
//! the response body bytes sent to its clients; a body that runs out of tokens waits. Any single
//! response may use the whole budget.
use std::{
    future::Future as _,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::{
    body::{Frame, SizeHint},
    Response,
};
use tokio::time::Sleep;

use super::forward::{Body, BodyError};

/// How much unused budget may accumulate: a tenth of a second of traffic.
const BURST: Duration = Duration::from_millis(100);

pub struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Tokens (bytes; negative while senders are waiting) as of the instant.
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(mbit_per_s: u32, now: Instant) -> Bucket {
        let rate = f64::from(mbit_per_s) * 1e6 / 8.0;
        Bucket {
            rate,
            state: Mutex::new((rate * BURST.as_secs_f64(), now)),
        }
    }

    /// Charges `bytes` at `now`; returns how long to wait before sending them.
    fn take(&self, bytes: usize, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, last) = &mut *state;
        let earned = now.saturating_duration_since(*last).as_secs_f64() * self.rate;
        *tokens = (*tokens + earned).min(self.rate * BURST.as_secs_f64()) - bytes as f64;
        *last = now.max(*last);
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / self.rate)
        }
    }
}

/// `resp` with its body paced by `bucket`.
pub fn limited(resp: Response<Body>, bucket: Arc<Bucket>) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let body = Limited {
        inner: body,
        bucket,
        held: None,
    };
    Response::from_parts(parts, body.boxed())
}

struct Limited {
    inner: Body,
    bucket: Arc<Bucket>,
    /// A frame waiting for its tokens.
    held: Option<(Pin<Box<Sleep>>, Frame<Bytes>)>,
}

impl hyper::body::Body for Limited {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.held.is_none() {
            let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => frame,
                other => return other,
            };
            let n = frame.data_ref().map_or(0, Bytes::len);
            let wait = self.bucket.take(n, Instant::now());
            if wait.is_zero() {
                return Poll::Ready(Some(Ok(frame)));
            }
            self.held = Some((Box::pin(tokio::time::sleep(wait)), frame));
        }
        let Some((sleep, _)) = self.held.as_mut() else {
            return Poll::Pending;
        };
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(self.held.take().map(|(_, frame)| Ok(frame))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = self
            .held
            .as_ref()
            .and_then(|(_, f)| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let inner = self.inner.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower() + held);
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// B13.2/B13.6: 8 Mbit/s is 1,000,000 bytes/s with a 100,000-byte burst; sending beyond
    /// it waits exactly as long as the bytes take at that rate, and idle time refills the
    /// bucket only up to the burst.
    #[test]
    fn bucket_paces_at_the_listener_rate() {
        let t0 = Instant::now();
        let b = Bucket::new(8, t0);
        assert_eq!(b.take(100_000, t0), Duration::ZERO);
        assert_eq!(b.take(500_000, t0), Duration::from_millis(500));
        // Half a second later the debt is paid; the next byte goes at once.
        assert_eq!(b.take(0, t0 + Duration::from_millis(500)), Duration::ZERO);
        // A long idle time refills only the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(100_000, later), Duration::ZERO);
        assert_eq!(b.take(1_000_000, later), Duration::from_secs(1));
    }

    #[test]
    fn an_earlier_instant_earns_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let b = Bucket::new(8, t0);
        assert_eq!(b.take(100_000, t0), Duration::ZERO);
        assert_eq!(
            b.take(100_000, t0 - Duration::from_secs(1)),
            Duration::from_millis(100)
        );
    }
}
