//! A request body with a deadline: one that has not arrived in full by then
//! fails with [`BodyTimeout`] (the extractors answer 408), so a client that
//! trickles a body cannot hold a connection and a handler for ever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error of a body that came too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// The timeout, if `error` or an error it wraps is a [`BodyTimeout`].
pub fn timeout_of(error: &(dyn std::error::Error + 'static)) -> Option<Duration> {
    std::iter::successors(Some(error), |e| e.source())
        .find_map(|e| e.downcast_ref::<BodyTimeout>())
        .map(|timeout| timeout.0)
}

/// `inner`, failing `timeout` from now if it has not ended by then.
pub struct TimedBody<B> {
    inner: B,
    timeout: Duration,
    deadline: Instant,
    /// Made on the first wait only: most bodies are already there.
    sleep: Option<Pin<Box<Sleep>>>,
    expired: bool,
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Instant::now() + timeout,
            sleep: None,
            expired: false,
        }
    }
}

impl<B> HttpBody for TimedBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.expired {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.expired = true;
                Poll::Ready(Some(Err(Box::new(BodyTimeout(this.timeout)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.expired || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::body::Body;
    use futures::StreamExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        let (tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let inner = http_body_util::StreamBody::new(rx);
        let mut tx = tx;
        tx.try_send(Ok(Frame::data(Bytes::from_static(b"partial"))))
            .unwrap();
        let body = TimedBody::new(inner, Duration::from_secs(30));
        let started = Instant::now();
        let error = axum::body::to_bytes(Body::new(body), 1024)
            .await
            .expect_err("the body never ends");
        assert_eq!(
            timeout_of(&error),
            Some(Duration::from_secs(30)),
            "{error:?}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_in_time_is_whole() {
        let chunks = futures::stream::iter([b"a".as_slice(), b"bc"])
            .map(|c| Ok::<_, Infallible>(Frame::data(Bytes::from_static(c))));
        let body = TimedBody::new(
            http_body_util::StreamBody::new(chunks),
            Duration::from_secs(1),
        );
        let bytes = axum::body::to_bytes(Body::new(body), 1024).await.unwrap();
        assert_eq!(&bytes[..], b"abc");
    }
}
