//! The API's HTTP server: one task per accepted TLS connection (the listener caps how many are
//! open), HTTP/1.1 or HTTP/2 as ALPN chose, within `[api.limits]`:
//!
//! - a connection with no request in flight for `idle_timeout` is closed (HTTP/2: GOAWAY);
//! - HTTP/1.1 request heads must arrive within `header_read_timeout` (hyper's timer; a 1 byte/s
//!   header trickle is dropped), and be at most `max_header_bytes`; HTTP/2 header lists too;
//! - HTTP/2 connections carry at most `http2_max_concurrent_streams` requests at once;
//! - body and request deadlines, rate limits and typed errors are middleware (`edge.rs`);
//! - a closing connection is closed lingeringly: the response is sent, the write side shut
//!   (TLS close_notify, TCP FIN), and what the client still sends is read and dropped for up to
//!   `lingering_close`, so the kernel does not answer it with a reset that destroys the response
//!   (a 413 to a 10 MB upload still being sent).
//!
//! On shutdown every connection is asked to finish (HTTP/1.1: after its current response;
//! HTTP/2: GOAWAY) and dropped after the drain grace.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use super::limits::ApiLimits;
use crate::listener::{ClientAddr, TlsConnection, TlsIncoming};

/// How long a connection asked to close on shutdown may take to finish its requests.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long an idle connection asked to close may take: it has no request to finish; an HTTP/2
/// client only has to answer the GOAWAY's ping, and one that does not is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(2);
/// HTTP/2 streams a client may reset before it is told to go away (CVE-2023-44487, "rapid reset").
const MAX_PENDING_RESETS: usize = 20;

/// Serves `router` on the connections of `incoming` until `cancel` fires; connection tasks are
/// tracked by `tracker`, so the relay's drain waits for them.
pub async fn serve(
    mut incoming: TlsIncoming,
    router: Router,
    limits: ApiLimits,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let limits = Arc::new(limits);
    loop {
        let connection = tokio::select! {
            () = cancel.cancelled() => break,
            next = incoming.next() => match next {
                Some(connection) => connection,
                None => break,
            },
        };
        tracker.spawn(serve_connection(connection, router.clone(), Arc::clone(&limits), cancel.child_token()));
    }
}

async fn serve_connection(
    connection: TlsConnection,
    router: Router,
    limits: Arc<ApiLimits>,
    cancel: CancellationToken,
) {
    let peer = connection.peer();
    let h2 = connection.alpn_protocol() == Some(b"h2");
    let (busy, idle) = watch::channel(0usize);
    let busy = Arc::new(busy);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let in_flight = InFlight::start(&busy);
        request.extensions_mut().insert(ConnectInfo(ClientAddr(peer)));
        let router = router.clone();
        async move {
            let response = router.oneshot(request.map(axum::body::Body::new)).await;
            drop(in_flight);
            response
        }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .keep_alive_interval(None);
    // The protocol is ALPN's choice, so no bytes are read to guess it.
    let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
    let io = TokioIo::new(Lingering::new(connection, limits.lingering_close));
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = idle_for(idle, limits.idle_timeout) => {
            tracing::debug!(%peer, "closing an idle API connection");
            served.as_mut().graceful_shutdown();
            finish(served, IDLE_CLOSE_GRACE).await
        }
        () = cancel.cancelled() => {
            served.as_mut().graceful_shutdown();
            finish(served, CLOSE_GRACE).await
        }
    };
    if let Err(error) = result {
        // Clients that go away, send garbage or are too slow: nothing to act on.
        tracing::debug!(%peer, %error, "API connection ended with an error");
    }
}

/// The rest of a connection asked to close, for at most `grace`.
async fn finish<F, E>(served: Pin<&mut F>, grace: Duration) -> Result<(), E>
where
    F: Future<Output = Result<(), E>>,
{
    tokio::time::timeout(grace, served).await.unwrap_or(Ok(()))
}

/// Completes once the connection has had no request in flight for `timeout`.
async fn idle_for(mut busy: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if busy.wait_for(|in_flight| *in_flight == 0).await.is_err() {
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, busy.changed()).await {
            Err(_elapsed) => return,
            Ok(Ok(())) => continue,
            Ok(Err(_closed)) => return std::future::pending().await,
        }
    }
}

/// One request in flight on a connection (counted while alive).
struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    fn start(busy: &Arc<watch::Sender<usize>>) -> Self {
        busy.send_modify(|n| *n += 1);
        Self(Arc::clone(busy))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A connection that, when the server drops it, is closed lingeringly (see the module
/// documentation) in a task of its own.
struct Lingering {
    /// `None` only once dropped.
    connection: Option<TlsConnection>,
    linger: Duration,
}

impl Lingering {
    fn new(connection: TlsConnection, linger: Duration) -> Self {
        Self { connection: Some(connection), linger }
    }

    fn connection(&mut self) -> io::Result<&mut TlsConnection> {
        self.connection.as_mut().ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl AsyncRead for Lingering {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.connection() {
            Ok(connection) => Pin::new(connection).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Lingering {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.connection() {
            Ok(connection) => Pin::new(connection).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.connection() {
            Ok(connection) => Pin::new(connection).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.connection() {
            Ok(connection) => Pin::new(connection).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.connection() {
            Ok(connection) => Pin::new(connection).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.connection.as_ref().is_some_and(|c| c.is_write_vectored())
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else { return };
        if self.linger.is_zero() {
            return;
        }
        // Dropped inside the connection's task, so on the runtime; without one it just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(connection, self.linger));
        }
    }
}

/// Shuts the write side and drops what the client still sends, until it closes or `linger` passes.
async fn linger(connection: TlsConnection, linger: Duration) {
    let (mut tls, _permit) = connection.into_parts();
    let _ = tokio::time::timeout(linger, async move {
        // A no-op when hyper has shut it already; otherwise TLS close_notify, then TCP FIN.
        let _ = tls.shutdown().await;
        let (mut tcp, _) = tls.into_inner();
        let mut sink = [0u8; 16 * 1024];
        while let Ok(1..) = tcp.read(&mut sink).await {}
    })
    .await;
}
