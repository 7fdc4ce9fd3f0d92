//! A tiny DNS server for tests: answers SRV and A queries from a fixed table over UDP and TCP on
//! 127.0.0.1, and NXDOMAIN for every other name.
//!
//! The throwaway Samba DC runs without DNS (`--dns-backend=NONE`), so DC discovery tests point the
//! agent's resolver at this server instead. It is written by hand on tokio sockets: it reads the
//! header and the one question of a query (no compression pointers there; EDNS and other extra
//! records are ignored) and answers authoritatively, without EDNS, so a UDP answer over 512 bytes
//! is sent truncated (TC) and the client asks again over TCP. Malformed input never panics: it is
//! answered with FORMERR, NOTIMP or REFUSED, or dropped when it cannot be answered at all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
/// Record type SRV.
pub const TYPE_SRV: u16 = 33;

const CLASS_IN: u16 = 1;
const HEADER_LEN: usize = 12;
/// The classic UDP limit, for a server that does not speak EDNS.
const UDP_LIMIT: usize = 512;

/// Response codes.
mod rcode {
    pub(super) const NOERROR: u16 = 0;
    pub(super) const FORMERR: u16 = 1;
    pub(super) const SERVFAIL: u16 = 2;
    pub(super) const NXDOMAIN: u16 = 3;
    pub(super) const NOTIMP: u16 = 4;
    pub(super) const REFUSED: u16 = 5;
}

/// One SRV record's data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Srv {
    /// Lower is tried first.
    pub priority: u16,
    /// Share within a priority.
    pub weight: u16,
    /// The service's port.
    pub port: u16,
    /// The target host, absolute (`dc1.pwrelay.test.`); `.` means "no service here".
    pub target: String,
}

/// What the server answers: SRV and A records by name, names that fail, and one TTL for all.
/// Names are case-insensitive, with or without the trailing dot.
#[derive(Debug, Clone)]
pub struct DnsRecords {
    srv: BTreeMap<String, Vec<Srv>>,
    a: BTreeMap<String, Vec<Ipv4Addr>>,
    failing: BTreeSet<String>,
    ttl: u32,
}

impl Default for DnsRecords {
    fn default() -> Self {
        Self { srv: BTreeMap::new(), a: BTreeMap::new(), failing: BTreeSet::new(), ttl: 300 }
    }
}

impl DnsRecords {
    /// No records (every name is NXDOMAIN), TTL 300 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an SRV record at `name`. Panics (failing the test) when `target` is not a DNS name.
    pub fn srv(mut self, name: &str, priority: u16, weight: u16, port: u16, target: &str) -> Self {
        assert!(encode_name(target).is_some(), "{target:?} is not a DNS name");
        let target = normalize(target);
        self.srv.entry(normalize(name)).or_default().push(Srv { priority, weight, port, target });
        self
    }

    /// Adds an A record at `name`.
    pub fn a(mut self, name: &str, address: Ipv4Addr) -> Self {
        self.a.entry(normalize(name)).or_default().push(address);
        self
    }

    /// Makes every query for `name` fail with SERVFAIL.
    pub fn failing(mut self, name: &str) -> Self {
        self.failing.insert(normalize(name));
        self
    }

    /// Sets the TTL of every answer.
    pub fn ttl(mut self, seconds: u32) -> Self {
        self.ttl = seconds;
        self
    }
}

/// Lower-case with a trailing dot, as names are compared.
fn normalize(name: &str) -> String {
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    format!("{name}.")
}

/// A question the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Lower-case, absolute (`_ldap._tcp.dc._msdcs.pwrelay.test.`).
    pub name: String,
    /// The record type ([`TYPE_SRV`], [`TYPE_A`], ...).
    pub record_type: u16,
    /// Whether it came over TCP.
    pub tcp: bool,
}

/// The running server; stopped when dropped.
#[derive(Debug)]
pub struct FakeDns {
    addr: SocketAddr,
    queries: Arc<Mutex<Vec<Query>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeDns {
    /// Starts the server on 127.0.0.1, UDP and TCP on the same free port. Panics (failing the
    /// test) when no port can be bound.
    pub async fn start(records: DnsRecords) -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("bound UDP socket has an address");
        let records = Arc::new(records);
        let queries = Arc::new(Mutex::new(Vec::new()));
        let server = Server { records, queries: Arc::clone(&queries) };
        let tasks = vec![tokio::spawn(server.clone().serve_udp(udp)), tokio::spawn(server.serve_tcp(tcp))];
        Self { addr, queries, tasks }
    }

    /// The address to configure as the nameserver (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every well-formed question received so far, in order.
    pub fn queries(&self) -> Vec<Query> {
        self.queries.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The names of the SRV questions received so far, in order.
    pub fn srv_queries(&self) -> Vec<String> {
        self.queries().into_iter().filter(|q| q.record_type == TYPE_SRV).map(|q| q.name).collect()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// UDP and TCP sockets on the same port of 127.0.0.1 (a resolver takes one address for both).
async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("a UDP socket binds on 127.0.0.1");
        let addr = udp.local_addr().expect("bound UDP socket has an address");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port of 127.0.0.1 is free for both UDP and TCP");
}

#[derive(Debug, Clone)]
struct Server {
    records: Arc<DnsRecords>,
    queries: Arc<Mutex<Vec<Query>>>,
}

impl Server {
    async fn serve_udp(self, socket: UdpSocket) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (len, peer) = match socket.recv_from(&mut buf).await {
                Ok(received) => received,
                Err(_) => {
                    // A refused earlier reply (ICMP) can surface here; keep serving.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some(request) = buf.get(..len) else { continue };
            if let Some(reply) = self.reply(request, false) {
                let _ = socket.send_to(&reply, peer).await;
            }
        }
    }

    async fn serve_tcp(self, listener: TcpListener) {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            tokio::spawn(self.clone().serve_connection(stream));
        }
    }

    /// Length-prefixed messages until the client closes.
    async fn serve_connection(self, mut stream: TcpStream) {
        loop {
            let Ok(len) = stream.read_u16().await else { return };
            let mut request = vec![0u8; usize::from(len)];
            if stream.read_exact(&mut request).await.is_err() {
                return;
            }
            let Some(reply) = self.reply(&request, true) else { continue };
            let Ok(reply_len) = u16::try_from(reply.len()) else { return };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&reply_len.to_be_bytes());
            framed.extend_from_slice(&reply);
            if stream.write_all(&framed).await.is_err() {
                return;
            }
        }
    }

    /// The reply to one message, or `None` when it is not a query that can be answered.
    fn reply(&self, request: &[u8], tcp: bool) -> Option<Vec<u8>> {
        let question = match parse(request) {
            Ok(question) => question,
            Err(Unanswerable::Drop) => return None,
            Err(Unanswerable::Refuse { id, flags, rcode }) => return Some(header_only(id, flags, rcode)),
        };
        if let Ok(mut log) = self.queries.lock() {
            log.push(Query { name: question.name.clone(), record_type: question.record_type, tcp });
        }
        let (code, answers) = self.answers(&question);
        let reply = build_reply(&question, code, &answers, self.records.ttl, false);
        if !tcp && reply.len() > UDP_LIMIT {
            return Some(build_reply(&question, code, &[], self.records.ttl, true));
        }
        Some(reply)
    }

    fn answers(&self, question: &Question<'_>) -> (u16, Vec<Answer>) {
        let records = &self.records;
        if question.class != CLASS_IN {
            return (rcode::REFUSED, Vec::new());
        }
        if records.failing.contains(&question.name) {
            return (rcode::SERVFAIL, Vec::new());
        }
        let srv = records.srv.get(&question.name);
        let a = records.a.get(&question.name);
        if srv.is_none() && a.is_none() {
            return (rcode::NXDOMAIN, Vec::new());
        }
        let answers = match question.record_type {
            TYPE_SRV => srv.into_iter().flatten().filter_map(srv_answer).collect(),
            TYPE_A => {
                a.into_iter().flatten().map(|ip| Answer { record_type: TYPE_A, data: ip.octets().to_vec() }).collect()
            }
            // The name exists, with no record of this type (NODATA).
            _ => Vec::new(),
        };
        (rcode::NOERROR, answers)
    }
}

/// One answer record's type and data; its name is always the question's.
#[derive(Debug)]
struct Answer {
    record_type: u16,
    data: Vec<u8>,
}

fn srv_answer(srv: &Srv) -> Option<Answer> {
    let mut data = Vec::with_capacity(32);
    data.extend_from_slice(&srv.priority.to_be_bytes());
    data.extend_from_slice(&srv.weight.to_be_bytes());
    data.extend_from_slice(&srv.port.to_be_bytes());
    // RFC 2782: no compression in the target.
    data.extend_from_slice(&encode_name(&srv.target)?);
    Some(Answer { record_type: TYPE_SRV, data })
}

/// The parsed header and question of a query.
#[derive(Debug)]
struct Question<'a> {
    id: u16,
    flags: u16,
    /// Lower-case, absolute.
    name: String,
    record_type: u16,
    class: u16,
    /// The question as received (name case preserved), echoed in the reply.
    raw: &'a [u8],
}

/// Why a message gets no answer.
#[derive(Debug, PartialEq, Eq)]
enum Unanswerable {
    /// Too short for a header, or itself a response: nothing is sent.
    Drop,
    /// Answered with `rcode` and no question.
    Refuse { id: u16, flags: u16, rcode: u16 },
}

fn be16(message: &[u8], at: usize) -> Option<u16> {
    let bytes = message.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]))
}

fn parse(message: &[u8]) -> Result<Question<'_>, Unanswerable> {
    if message.len() < HEADER_LEN {
        return Err(Unanswerable::Drop);
    }
    let (Some(id), Some(flags), Some(question_count)) = (be16(message, 0), be16(message, 2), be16(message, 4)) else {
        return Err(Unanswerable::Drop);
    };
    if flags & 0x8000 != 0 {
        return Err(Unanswerable::Drop);
    }
    let refuse = |rcode| Err(Unanswerable::Refuse { id, flags, rcode });
    if (flags >> 11) & 0xF != 0 {
        return refuse(rcode::NOTIMP);
    }
    if question_count != 1 {
        return refuse(rcode::FORMERR);
    }
    let Some((name, end)) = read_name(message, HEADER_LEN) else { return refuse(rcode::FORMERR) };
    let (Some(record_type), Some(class)) = (be16(message, end), be16(message, end + 2)) else {
        return refuse(rcode::FORMERR);
    };
    let Some(raw) = message.get(HEADER_LEN..end + 4) else { return refuse(rcode::FORMERR) };
    Ok(Question { id, flags, name, record_type, class, raw })
}

/// Reads an uncompressed name at `start`: the name (lower-case, absolute) and the offset after it.
fn read_name(message: &[u8], start: usize) -> Option<(String, usize)> {
    let mut labels = Vec::new();
    let mut at = start;
    let mut wire_len = 0usize;
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            // A compression pointer or an extended label type: not expected in a question.
            return None;
        }
        let label = message.get(at..at + len)?;
        wire_len += len + 1;
        if wire_len > 254 {
            return None;
        }
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    Some((format!("{}.", labels.join(".")), at))
}

/// `name` in wire format (labels, then the root), or `None` when it is not a DNS name.
fn encode_name(name: &str) -> Option<Vec<u8>> {
    let name = name.trim().trim_end_matches('.');
    let mut wire = Vec::with_capacity(name.len() + 2);
    if !name.is_empty() {
        for label in name.split('.') {
            let len = u8::try_from(label.len()).ok().filter(|&len| (1..=63).contains(&len))?;
            wire.push(len);
            wire.extend_from_slice(label.as_bytes());
        }
    }
    wire.push(0);
    (wire.len() <= 255).then_some(wire)
}

/// Flags of a reply to a query with `query_flags`: QR, AA and RA set, opcode and RD copied.
fn reply_flags(query_flags: u16, rcode: u16, truncated: bool) -> u16 {
    let copied = query_flags & 0x7900; // opcode and RD
    let tc = if truncated { 0x0200 } else { 0 };
    0x8000 | copied | 0x0400 | tc | 0x0080 | (rcode & 0xF)
}

fn header_only(id: u16, query_flags: u16, rcode: u16) -> Vec<u8> {
    let mut reply = Vec::with_capacity(HEADER_LEN);
    for field in [id, reply_flags(query_flags, rcode, false), 0, 0, 0, 0] {
        reply.extend_from_slice(&field.to_be_bytes());
    }
    reply
}

fn build_reply(question: &Question<'_>, rcode: u16, answers: &[Answer], ttl: u32, truncated: bool) -> Vec<u8> {
    let answers = if truncated { &[][..] } else { answers };
    let count = u16::try_from(answers.len()).unwrap_or(u16::MAX);
    let mut reply = Vec::with_capacity(HEADER_LEN + question.raw.len() + answers.len() * 48);
    for field in [question.id, reply_flags(question.flags, rcode, truncated), 1, count, 0, 0] {
        reply.extend_from_slice(&field.to_be_bytes());
    }
    reply.extend_from_slice(question.raw);
    for answer in answers.iter().take(usize::from(count)) {
        // The question's name, by a pointer to offset 12.
        reply.extend_from_slice(&0xC00Cu16.to_be_bytes());
        reply.extend_from_slice(&answer.record_type.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ttl.to_be_bytes());
        let data_len = u16::try_from(answer.data.len()).unwrap_or(u16::MAX);
        reply.extend_from_slice(&data_len.to_be_bytes());
        reply.extend_from_slice(answer.data.get(..usize::from(data_len)).unwrap_or_default());
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, record_type: u16) -> Vec<u8> {
        let mut message = Vec::new();
        for field in [id, 0x0100, 1, 0, 0, 0] {
            message.extend_from_slice(&field.to_be_bytes());
        }
        message.extend_from_slice(&encode_name(name).expect("name"));
        message.extend_from_slice(&record_type.to_be_bytes());
        message.extend_from_slice(&CLASS_IN.to_be_bytes());
        message
    }

    fn server(records: DnsRecords) -> Server {
        Server { records: Arc::new(records), queries: Arc::default() }
    }

    fn rcode_of(reply: &[u8]) -> u16 {
        be16(reply, 2).expect("header") & 0xF
    }

    #[test]
    fn srv_and_a_questions_are_answered_from_the_table() {
        let s = server(
            DnsRecords::new()
                .srv("_ldap._tcp.dc._msdcs.pwrelay.test", 0, 100, 389, "dc1.pwrelay.test.")
                .a("DC1.pwrelay.test", Ipv4Addr::LOCALHOST),
        );
        let request = query(0x1234, "_LDAP._tcp.dc._msdcs.pwrelay.test", TYPE_SRV);
        let reply = s.reply(&request, false).expect("answered");
        assert_eq!(be16(&reply, 0), Some(0x1234));
        assert_eq!(rcode_of(&reply), rcode::NOERROR);
        assert_eq!(be16(&reply, 6), Some(1), "one answer");
        // The question is echoed as sent (case preserved), then the answer follows.
        assert_eq!(reply.get(HEADER_LEN..request.len()), request.get(HEADER_LEN..));
        let srv = encode_name("dc1.pwrelay.test").expect("name");
        assert!(reply.ends_with(&srv));
        let a = s.reply(&query(7, "dc1.pwrelay.test.", TYPE_A), true).expect("answered");
        assert!(a.ends_with(&[0, 4, 127, 0, 0, 1]));
        let aaaa = s.reply(&query(8, "dc1.pwrelay.test", TYPE_AAAA), false).expect("answered");
        assert_eq!((rcode_of(&aaaa), be16(&aaaa, 6)), (rcode::NOERROR, Some(0)), "NODATA");
        let other = s.reply(&query(9, "dc2.pwrelay.test", TYPE_A), false).expect("answered");
        assert_eq!(rcode_of(&other), rcode::NXDOMAIN);
        let names: Vec<String> = s.queries.lock().expect("log").iter().map(|q| q.name.clone()).collect();
        assert_eq!(names[0], "_ldap._tcp.dc._msdcs.pwrelay.test.");
    }

    #[test]
    fn long_udp_answers_are_truncated_but_not_over_tcp() {
        let mut records = DnsRecords::new();
        for i in 0..40 {
            records = records.srv("_ldap._tcp.x.test", 0, 0, 389, &format!("dc{i}.pwrelay.test"));
        }
        let s = server(records);
        let request = query(1, "_ldap._tcp.x.test", TYPE_SRV);
        let udp = s.reply(&request, false).expect("answered");
        assert!(udp.len() <= UDP_LIMIT);
        assert_eq!(be16(&udp, 2).map(|f| f & 0x0200), Some(0x0200), "TC set");
        let tcp = s.reply(&request, true).expect("answered");
        assert_eq!(be16(&tcp, 6), Some(40));
    }

    #[test]
    fn malformed_messages_never_panic() {
        let s = server(DnsRecords::new().srv("a.test", 0, 0, 1, "b.test"));
        assert_eq!(s.reply(&[], false), None);
        assert_eq!(s.reply(&[0; 11], false), None);
        let valid = query(5, "a.test", TYPE_SRV);
        for cut in 0..valid.len() {
            let _ = s.reply(&valid[..cut], false);
        }
        let mut compressed = query(5, "a.test", TYPE_SRV);
        compressed.splice(HEADER_LEN.., [0xC0, 0x0C, 0, 33, 0, 1]);
        assert_eq!(s.reply(&compressed, false).map(|r| rcode_of(&r)), Some(rcode::FORMERR));
        let mut two_questions = valid.clone();
        two_questions[5] = 2;
        assert_eq!(s.reply(&two_questions, false).map(|r| rcode_of(&r)), Some(rcode::FORMERR));
        let mut update = valid.clone();
        update[2] |= 0x28; // opcode 5
        assert_eq!(s.reply(&update, false).map(|r| rcode_of(&r)), Some(rcode::NOTIMP));
        let mut response = valid.clone();
        response[2] |= 0x80;
        assert_eq!(s.reply(&response, false), None);
        // Pseudo-random garbage behind a plausible header.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..5000 {
            let mut message = query(9, "a.test", TYPE_SRV);
            let len = (state % 64) as usize;
            message.truncate(HEADER_LEN);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                message.push((state & 0xFF) as u8);
            }
            let _ = s.reply(&message, state % 2 == 0);
        }
    }

    #[test]
    fn names_are_encoded_in_wire_format() {
        assert_eq!(encode_name("."), Some(vec![0]));
        assert_eq!(encode_name("a.bc."), Some(vec![1, b'a', 2, b'b', b'c', 0]));
        assert_eq!(encode_name("a..b"), None);
        assert_eq!(encode_name(&"x".repeat(64)), None);
    }
}
