//! Dialing the relay's link port: TCP, then TLS with the given configuration, then an HTTP/2
//! channel for tonic. Used by the link, by renewal, and by `pwrelay-agent enroll`.

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{LinkError, error_chain};

/// Connects to `host:port`, expecting the relay's certificate to carry `server_name`.
pub async fn dial(
    host: &str,
    port: u16,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Channel, LinkError> {
    let address = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let server_name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| LinkError::ServerName(server_name.to_owned()))?;
    let connector = TlsConnector::from(tls);
    let host = host.to_owned();
    let dial = tower::service_fn(move |_: Uri| {
        let (connector, server_name, host) = (connector.clone(), server_name.clone(), host.clone());
        async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(TokioIo::new(tls))
        }
    });
    let connect_err =
        |e: &dyn std::error::Error| LinkError::Connect { address: address.clone(), message: error_chain(e) };
    Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| connect_err(&e))?
        .connect_timeout(Duration::from_secs(10))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_with_connector(dial)
        .await
        .map_err(|e| connect_err(&e))
}
