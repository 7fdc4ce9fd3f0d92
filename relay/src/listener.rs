//! TLS accept loop shared by the HTTPS API and the agent link.
//!
//! Accepts TCP connections up to a cap of open connections (further ones wait in the listen
//! backlog until one closes), completes each TLS handshake in its own task (bounded by a
//! timeout), logs refused handshakes at WARN (rustls alone logs them only at DEBUG, which hides a
//! wrong agent certificate from operators) and hands finished connections to the server that owns
//! the listener. A [`TlsConnection`] holds its place under the cap until it is dropped.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::{HandshakeRefusals, RefusalReason};

/// How long a client may take to finish its TLS handshake, unless configured.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to pick them up.
const BACKLOG: usize = 64;
/// Open connections of the agent link at once unless `link.max_connections` says otherwise
/// (agents hold one each; more is a flood).
pub const LINK_MAX_CONNECTIONS: usize = 1024;

/// How many connections a listener keeps open at once, how long a handshake may take, and
/// where refused handshakes are counted.
#[derive(Clone, Debug)]
pub struct AcceptLimits {
    /// Open connections (handshakes included); `None` for no cap.
    pub max_connections: Option<usize>,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// The metric refused handshakes are counted in, if any.
    pub refusals: Option<HandshakeRefusals>,
    /// Where refused handshakes are audited (`tls.handshake_refused`), if anywhere.
    pub audit: Option<Arc<crate::audit::Audit>>,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self { max_connections: None, handshake_timeout: HANDSHAKE_TIMEOUT, refusals: None, audit: None }
    }
}

/// One accepted TLS connection; it counts against its listener's cap until dropped.
#[derive(Debug)]
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: SocketAddr,
    _permit: Option<OwnedSemaphorePermit>,
}

impl TlsConnection {
    /// The client's address (the TCP peer).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The protocol negotiated with ALPN (`h2`, `http/1.1`), if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.stream.get_ref().1.alpn_protocol()
    }

    /// The TLS stream and the place under the cap, for a close that outlives the server's use of
    /// the connection (the API's lingering close).
    pub fn into_parts(self) -> (TlsStream<TcpStream>, Option<OwnedSemaphorePermit>) {
        (self.stream, self._permit)
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// tonic reads the client certificate (`Request::peer_certs`) from this.
impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = <TlsStream<TcpStream> as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// The finished TLS connections of one listener.
#[derive(Debug)]
pub struct TlsIncoming {
    connections: mpsc::Receiver<TlsConnection>,
    local_addr: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` until `cancel` fires, with no cap on open connections.
    pub fn spawn(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        name: &'static str,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        Self::spawn_limited(listener, config, name, AcceptLimits::default(), cancel, tracker)
    }

    /// Starts accepting on `listener` until `cancel` fires, within `limits`.
    pub fn spawn_limited(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        name: &'static str,
        limits: AcceptLimits,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = tracker.clone();
        let cap = limits.max_connections.map(|n| Arc::new(Semaphore::new(n)));
        let mut full_logged = false;
        let AcceptLimits { max_connections, handshake_timeout, refusals, audit } = limits;
        tracker.spawn(async move {
            loop {
                let permit = match &cap {
                    None => None,
                    Some(cap) => {
                        if cap.available_permits() == 0 && !std::mem::replace(&mut full_logged, true) {
                            tracing::warn!(
                                listener = name,
                                max_connections,
                                "connection cap reached; new connections wait until one closes"
                            );
                        }
                        tokio::select! {
                            () = cancel.cancelled() => break,
                            permit = Arc::clone(cap).acquire_owned() => match permit {
                                Ok(permit) => Some(permit),
                                Err(_closed) => break,
                            },
                        }
                    }
                };
                if cap.as_ref().is_some_and(|c| c.available_permits() > 0) {
                    full_logged = false;
                }
                let (tcp, peer) = tokio::select! {
                    () = cancel.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(error) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(listener = name, %error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx, cancel, refusals) = (acceptor.clone(), tx.clone(), cancel.clone(), refusals.clone());
                let audit = audit.clone();
                handshakes.spawn(async move {
                    let refused = |reason: RefusalReason| {
                        if let Some(refusals) = &refusals {
                            refusals.record(reason);
                        }
                        if let Some(audit) = &audit {
                            use crate::audit::{Event, Kind};
                            audit.record(
                                Event::new(Kind::HandshakeRefused)
                                    .address(peer.ip())
                                    .detail("listener", name)
                                    .detail("reason", reason.as_str()),
                            );
                        }
                    };
                    let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        () = cancel.cancelled() => return,
                        result = handshake => match result {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                let reason = RefusalReason::of(&error);
                                tracing::warn!(listener = name, %peer, %error, reason = reason.as_str(), "TLS handshake refused");
                                refused(reason);
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(listener = name, %peer, "TLS handshake timed out");
                                refused(RefusalReason::Timeout);
                                return;
                            }
                        },
                    };
                    let _server_gone = tx.send(TlsConnection { stream, peer, _permit: permit }).await;
                });
            }
        });
        Ok(Self { connections, local_addr })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The next finished connection; `None` once the accept loop has stopped.
    pub async fn next(&mut self) -> Option<TlsConnection> {
        self.connections.recv().await
    }

    /// Turns the connections into the stream tonic's `serve_with_incoming` expects.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = std::io::Result<TlsConnection>> {
        tokio_stream::wrappers::ReceiverStream::new(self.connections).map(Ok::<_, std::io::Error>)
    }
}

use tokio_stream::StreamExt as _;

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.connections.recv().await {
            Some(connection) => {
                let peer = connection.peer;
                (connection, peer)
            }
            // The accept loop stopped (shutdown): wait for the server's own shutdown signal.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The peer address of an API connection (`ConnectInfo<ClientAddr>`). Behind a load balancer
/// this is the balancer's address; `api::client_address` resolves the client's from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsIncoming>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsIncoming>) -> Self {
        Self(*stream.remote_addr())
    }
}
