//! Reading request bodies: every body has a deadline ([`DeadlineBody`], from the request's
//! headers to its last byte: `api.limits.body_read_timeout_seconds`), and every handler reads its
//! body through [`read_body`], which also applies the size limit and tells the three failures
//! apart (too large → 413, too slow → 408, cut off → 400).

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::LengthLimitError;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;

/// A request body that fails with [`BodyTimedOut`] once its deadline passes.
#[derive(Debug)]
pub(super) struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl DeadlineBody {
    /// `inner`, which must be read completely within `timeout` from now.
    pub(super) fn new(inner: Body, timeout: Duration) -> Self {
        Self { inner, deadline: Box::pin(tokio::time::sleep_until(Instant::now() + timeout)), timeout }
    }
}

/// The body was not read completely before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", .0.as_secs())]
pub(super) struct BodyTimedOut(Duration);

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut(self.timeout))))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The whole body, at most `limit` bytes.
pub(super) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if caused_by::<LengthLimitError>(&e) {
            ApiError::too_large(limit)
        } else if caused_by::<BodyTimedOut>(&e) {
            ApiError::request_timeout("the request body did not arrive in time; send it faster or in a smaller request")
        } else {
            ApiError::malformed("the request body could not be read (the connection ended before it did)")
        }
    })
}

/// Whether `error` or any of its sources is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_body_past_its_deadline_is_a_timeout_and_an_oversized_one_too_large() {
        let (tx, slow) = {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(1);
            (tx, Body::new(http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx))))
        };
        tx.send(Ok(Frame::data(Bytes::from_static(b"{")))).await.expect("sent");
        let body = Body::new(DeadlineBody::new(slow, Duration::from_millis(50)));
        let error = read_body(body, 1024).await.expect_err("too slow");
        assert_eq!(error.code(), super::super::error::ApiErrorCode::RequestTimeout);
        drop(tx);

        let big = Body::new(DeadlineBody::new(Body::from(vec![b'x'; 2048]), Duration::from_secs(5)));
        assert_eq!(
            read_body(big, 1024).await.expect_err("too big").code(),
            super::super::error::ApiErrorCode::BodyTooLarge
        );
        let fine = Body::new(DeadlineBody::new(Body::from("{}"), Duration::from_secs(5)));
        assert_eq!(read_body(fine, 1024).await.expect("read").as_ref(), b"{}");
    }
}
