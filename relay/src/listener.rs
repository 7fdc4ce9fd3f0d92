//! TLS accept loop shared by the HTTPS API and the agent link.
//!
//! Accepts TCP connections, completes each TLS handshake in its own task (bounded by a timeout),
//! logs refused handshakes at WARN (rustls alone logs them only at DEBUG, which hides a wrong agent
//! certificate from operators) and hands finished streams to the server that owns the listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Finished handshakes waiting for the server to pick them up.
const BACKLOG: usize = 64;

/// The finished TLS connections of one listener.
#[derive(Debug)]
pub struct TlsIncoming {
    connections: mpsc::Receiver<TlsStream<TcpStream>>,
    local_addr: SocketAddr,
}

impl TlsIncoming {
    /// Starts accepting on `listener` until `cancel` fires.
    pub fn spawn(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
        name: &'static str,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> std::io::Result<Self> {
        let local_addr = listener.local_addr()?;
        let (tx, connections) = mpsc::channel(BACKLOG);
        let acceptor = TlsAcceptor::from(config);
        let handshakes = tracker.clone();
        tracker.spawn(async move {
            loop {
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
                let (acceptor, tx, cancel) = (acceptor.clone(), tx.clone(), cancel.clone());
                handshakes.spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                    let stream = tokio::select! {
                        () = cancel.cancelled() => return,
                        result = handshake => match result {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::warn!(listener = name, %peer, %error, "TLS handshake refused");
                                return;
                            }
                            Err(_) => {
                                tracing::warn!(listener = name, %peer, "TLS handshake timed out");
                                return;
                            }
                        },
                    };
                    let _server_gone = tx.send(stream).await;
                });
            }
        });
        Ok(Self { connections, local_addr })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Turns the connections into the stream tonic's `serve_with_incoming` expects.
    pub fn into_stream(self) -> impl tokio_stream::Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
        tokio_stream::wrappers::ReceiverStream::new(self.connections).map(Ok::<_, std::io::Error>)
    }
}

use tokio_stream::StreamExt as _;

impl axum::serve::Listener for TlsIncoming {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.connections.recv().await {
                Some(stream) => match stream.get_ref().0.peer_addr() {
                    Ok(peer) => return (stream, peer),
                    Err(_) => continue, // closed before we looked at it
                },
                // The accept loop stopped (shutdown): wait for the server's own shutdown signal.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

/// The peer address of an API connection, for handlers that rate-limit by client
/// (`ConnectInfo<ClientAddr>`). Behind a load balancer this is the balancer's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsIncoming>> for ClientAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsIncoming>) -> Self {
        Self(*stream.remote_addr())
    }
}
