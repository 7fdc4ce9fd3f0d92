//! The agent's side of the link, for the tests and benchmarks that stand in for an agent: the
//! mTLS connection a real agent dials (its certificate from the relay's CA, the relay checked as
//! `localhost`) and a stream opened with a hello. It uses crates only, so that a benchmark can
//! include it by path.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use pwrelay_proto::agent::v1 as pb;
use pwrelay_shared::tls::{self, TrustAnchors};
use tokio::sync::mpsc;

/// What the stand-in says to the relay, and what the relay says to it.
pub type Stream = (mpsc::Sender<pb::AgentMessage>, tonic::Streaming<pb::RelayMessage>);

/// The link TLS of the agent whose `agent.pem` and `agent.key` are in `dir`.
pub fn agent_tls(dir: &Path, anchors: &TrustAnchors) -> Arc<rustls::ClientConfig> {
    let identity = tls::CertifiedKey::from_files(&dir.join("agent.pem"), &dir.join("agent.key")).expect("identity");
    tls::link_client(identity, anchors).expect("link tls")
}

/// A channel to the relay's link at `link` (TCP_NODELAY, as the agent's).
pub async fn channel(tls: Arc<rustls::ClientConfig>, link: SocketAddr) -> tonic::transport::Channel {
    let connector = tokio_rustls::TlsConnector::from(tls);
    let dial = tower::service_fn(move |_: tonic::transport::Uri| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(link).await?;
            tcp.set_nodelay(true)?;
            let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(dial)
        .await
        .expect("the link accepts the stand-in's connection")
}

/// A hello for `domains`, as a fresh agent process (a new instance id).
pub fn hello(agent_version: &str, domains: &[impl AsRef<str>], max_jobs_in_flight: u32) -> pb::Hello {
    pb::Hello {
        agent_version: agent_version.to_owned(),
        domains: domains.iter().map(|d| d.as_ref().to_owned()).collect(),
        max_jobs_in_flight,
        instance_id: uuid::Uuid::new_v4().to_string(),
    }
}

/// Opens the agent stream on `channel` with `hello`, `buffer` messages queued at most. An error
/// is the relay refusing the stream.
pub async fn open(
    channel: tonic::transport::Channel,
    hello: pb::Hello,
    buffer: usize,
) -> Result<Stream, tonic::Status> {
    let (tx, rx) = mpsc::channel(buffer);
    tx.send(pb::AgentMessage { body: Some(pb::agent_message::Body::Hello(hello)) }).await.expect("hello");
    let mut client = pb::agent_link_client::AgentLinkClient::new(channel);
    let inbound = client.open(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    Ok((tx, inbound))
}

/// Heartbeat number `sequence`, with the health of `directories`.
pub fn heartbeat(sequence: u64, directories: Vec<pb::DirectoryHealth>) -> pb::AgentMessage {
    let beat = pb::Heartbeat { sequence, directories, ..Default::default() };
    pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(beat)) }
}
