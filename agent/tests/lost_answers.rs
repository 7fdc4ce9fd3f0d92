//! Password writes whose answer is lost: the agent finds out from the DC whether the write was
//! applied before it reports, so a write that landed is never reported as failed (and retried
//! with another password) and one that did not is given back at once.
//!
//! The agent reaches the throwaway DC through a TCP relay in this test that, when told to, stops
//! passing the DC's answers (or the agent's requests too) on the connections open at that moment
//! and closes them, exactly when the agent starts its write (the write gate is asked right
//! before the modify is sent). Connections opened afterwards pass untouched.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pwrelay_agent::directory::{AccountTarget, Directory, DirectoryError, WriteGate, WriteOptions};
use pwrelay_proto::agent::v1::FailureCode;
use pwrelay_shared::secret::SecretString;
use pwrelay_shared::testkit;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// What a cut stops passing on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The DC's answers: the request arrives, the answer never does.
    Answers,
    /// Both ways: the request never arrives either.
    Everything,
}

/// A TCP relay to one upstream address that can cut the connections open at a given moment.
struct CuttingRelay {
    addr: SocketAddr,
    /// One sender per connection not cut yet.
    open: Arc<Mutex<Vec<watch::Sender<Option<Cut>>>>>,
    /// The senders of cut connections, kept so that their receivers do not see them dropped.
    cut: Mutex<Vec<watch::Sender<Option<Cut>>>>,
    /// Whether new connections are passed on (or closed at once).
    accepting: Arc<std::sync::atomic::AtomicBool>,
}

impl CuttingRelay {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open: Arc<Mutex<Vec<watch::Sender<Option<Cut>>>>> = Arc::default();
        let register = Arc::clone(&open);
        let accepting = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let admit = Arc::clone(&accepting);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !admit.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else { continue };
                let (sender, receiver) = watch::channel(None);
                register.lock().expect("lock").push(sender);
                tokio::spawn(pipe(client, server, receiver));
            }
        });
        Self { addr, open, cut: Mutex::default(), accepting }
    }

    /// Cuts every connection open now; they close 300 ms later.
    fn cut(&self, how: Cut) {
        let open = std::mem::take(&mut *self.open.lock().expect("lock"));
        for sender in &open {
            let _ = sender.send(Some(how));
        }
        self.cut.lock().expect("lock").extend(open);
    }
}

async fn pipe(
    mut client: tokio::net::TcpStream,
    mut server: tokio::net::TcpStream,
    mut cut: watch::Receiver<Option<Cut>>,
) {
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let mut close_at: Option<tokio::time::Instant> = None;
    loop {
        let closing = async {
            match close_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            read = client_read.read(&mut up) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if *cut.borrow() != Some(Cut::Everything) && server_write.write_all(&up[..n]).await.is_err() {
                    return;
                }
            }
            read = server_read.read(&mut down) => {
                let n = match read { Ok(0) | Err(_) => return, Ok(n) => n };
                if cut.borrow().is_none() && client_write.write_all(&down[..n]).await.is_err() {
                    return;
                }
            }
            changed = cut.changed(), if close_at.is_none() => {
                if changed.is_err() {
                    return;
                }
                close_at = Some(tokio::time::Instant::now() + Duration::from_millis(300));
            }
            () = closing => return,
        }
    }
}

/// Admits every write and cuts the relay's connections as it does, once.
struct CutOnWrite<'a> {
    relay: &'a CuttingRelay,
    how: Cut,
    done: std::sync::atomic::AtomicBool,
}

impl WriteGate for CutOnWrite<'_> {
    fn admit_write(&self, timeout: Duration) -> Result<Duration, DirectoryError> {
        if !self.done.swap(true, std::sync::atomic::Ordering::SeqCst) {
            self.relay.cut(self.how);
        }
        Ok(timeout)
    }
}

async fn through_relay() -> (CuttingRelay, Directory) {
    let dc = testkit::dc();
    let upstream: SocketAddr = dc.ldaps_url.trim_start_matches("ldaps://").parse().expect("the DC's LDAPS address");
    let relay = CuttingRelay::start(upstream).await;
    let mut config = support::domain_config(dc);
    config.urls = vec![support::dc_url(&format!("ldaps://{}", relay.addr))];
    (relay, Directory::new(config).expect("directory"))
}

#[tokio::test]
async fn a_write_whose_answer_is_lost_is_found_applied_and_reported_done() {
    let dc = testkit::dc();
    let (relay, directory) = through_relay().await;
    let user = dc.create_user("lostans").await;
    let target = AccountTarget::Upn(user.upn.clone());
    let prepared = directory.prepare_write(&target, false).await.expect("prepared");
    let before = prepared.account.pwd_last_set;
    let password = SecretString::from("LostAnswer!Pass-1");
    let gate = CutOnWrite { relay: &relay, how: Cut::Answers, done: Default::default() };
    let applied = directory
        .write(prepared, &password, WriteOptions::default(), &gate)
        .await
        .expect("the DC applied the write; its lost answer must not turn it into a failure");
    assert!(applied.verified, "{applied:?}");
    assert_ne!(applied.account.pwd_last_set, before, "read again after the write");
    assert!(dc.bind(&user.dn, "LostAnswer!Pass-1").await.ok(), "the write landed");
}

#[tokio::test]
async fn a_must_change_write_whose_answer_is_lost_is_told_by_a_bind() {
    let dc = testkit::dc();
    let (relay, directory) = through_relay().await;
    let user = dc.create_user("lostmc").await;
    let target = AccountTarget::Upn(user.upn.clone());
    let options = WriteOptions { must_change: true, ..WriteOptions::default() };
    // pwdLastSet 0 before and after: only a bind can tell whether this write landed.
    directory.set_password(&target, &SecretString::from("LostFirst!Pass-2"), options).await.expect("first write");
    let prepared = directory.prepare_write(&target, true).await.expect("prepared");
    assert_eq!(prepared.account.pwd_last_set, 0);
    let gate = CutOnWrite { relay: &relay, how: Cut::Answers, done: Default::default() };
    let applied = directory
        .write(prepared, &SecretString::from("LostSecond!Pass-3"), options, &gate)
        .await
        .expect("the write landed");
    assert!(applied.verified);
    assert_eq!(applied.account.pwd_last_set, 0);
}

#[tokio::test]
async fn a_write_lost_on_its_way_is_given_back_as_not_started() {
    let dc = testkit::dc();
    let (relay, directory) = through_relay().await;
    let user = dc.create_user("lostreq").await;
    let target = AccountTarget::Upn(user.upn.clone());
    let prepared = directory.prepare_write(&target, false).await.expect("prepared");
    let gate = CutOnWrite { relay: &relay, how: Cut::Everything, done: Default::default() };
    let e = directory
        .write(prepared, &SecretString::from("NeverSent!Pass-4"), WriteOptions::default(), &gate)
        .await
        .expect_err("the write never reached the DC");
    assert_eq!(e.code, FailureCode::NotStarted, "{}", e.message);
    assert!(e.retryable && !e.maybe_applied, "{e:?}");
    assert!(e.message.contains("did not apply"), "{}", e.message);
    assert!(dc.bind(&user.dn, user.password.expose_secret()).await.ok(), "the old password still holds");
}

/// A gate whose lease is lost as the write is sent, while the DC is out of reach: nobody can tell
/// whether the write landed, and the holder can no longer wait to find out.
struct LostWithTheDc<'a> {
    relay: &'a CuttingRelay,
    sent: std::sync::atomic::AtomicBool,
}

impl WriteGate for LostWithTheDc<'_> {
    fn admit_write(&self, timeout: Duration) -> Result<Duration, DirectoryError> {
        self.sent.store(true, std::sync::atomic::Ordering::SeqCst);
        self.relay.accepting.store(false, std::sync::atomic::Ordering::SeqCst);
        self.relay.cut(Cut::Answers);
        Ok(timeout)
    }

    fn held(&self) -> bool {
        !self.sent.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_lost_answer_that_cannot_be_looked_into_is_reported_unresolved() {
    let dc = testkit::dc();
    let (relay, directory) = through_relay().await;
    let user = dc.create_user("lostdc").await;
    let target = AccountTarget::Upn(user.upn.clone());
    let prepared = directory.prepare_write(&target, false).await.expect("prepared");
    let gate = LostWithTheDc { relay: &relay, sent: Default::default() };
    let e = directory
        .write(prepared, &SecretString::from("Unresolved!Pass-5"), WriteOptions::default(), &gate)
        .await
        .expect_err("nothing can tell that the write landed");
    assert!(e.retryable && e.maybe_applied, "{e:?}");
    assert_eq!(e.code, FailureCode::DirectoryUnavailable);
    assert!(e.message.contains("unknown"), "{}", e.message);
    assert!(dc.bind(&user.dn, "Unresolved!Pass-5").await.ok(), "the write landed all the same");
}
