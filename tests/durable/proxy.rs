//! A TCP proxy between the tests and a PostgreSQL or MySQL/MariaDB server that can lose one
//! reply: it forwards both ways until the statement it was told about has been sent, then
//! discards the rest of that connection's replies for a moment (so the server finishes what it
//! was doing, commit included) and closes it. The client sees a broken connection after its
//! statement took effect: the ambiguous error a retry must cope with.
//!
//! The statement whose reply is lost is chosen by the client's side of the protocol, by its
//! text and how many such statements come before it ([`Proxy::lose_reply_to`] for the next
//! `COMMIT`, say, [`Proxy::lose_reply_to_nth`] for the n-th `INSERT`), or, as before, by the
//! server's reply ([`Proxy::lose_reply_containing`], for PostgreSQL's `INSERT 0 1`-style
//! tags). The client side is read message by message: PostgreSQL's frontend messages (a
//! simple `Query`, or an `Execute` of the extended protocol, is one statement) and MySQL's
//! command packets (a `COM_QUERY` or `COM_STMT_EXECUTE` at sequence 0 is one statement), so
//! connections must be in clear text (`sslmode=disable`, `ssl-mode=disabled`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::Backend;

/// A running proxy; it stops with the test's runtime.
pub(crate) struct Proxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    /// The task accepting connections (`None` while the server looks unreachable).
    accepting: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Accepts connections on `listener` and relays each to `upstream`, until aborted.
fn accept(
    listener: TcpListener,
    shared: Arc<Shared>,
    upstream: SocketAddr,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                if let Ok(server) = TcpStream::connect(upstream).await {
                    relay(client, server, shared).await;
                }
            });
        }
    })
}

/// Which reply to lose next.
#[derive(Clone)]
enum Target {
    /// The next server reply containing these bytes.
    Reply(Vec<u8>),
    /// The reply to the statement whose text contains these bytes, after this many more such
    /// statements (0: the next one).
    Statement(Vec<u8>, u32),
}

struct Shared {
    backend: Backend,
    target: std::sync::Mutex<Option<Target>>,
    dropped: AtomicU32,
    /// Set while the server is to look unreachable: connections are refused.
    down: AtomicBool,
    /// Told when an outage begins, to break the open connections.
    outage: tokio::sync::Notify,
}

impl Shared {
    fn target(&self) -> std::sync::MutexGuard<'_, Option<Target>> {
        self.target
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn arm(&self, target: Target) {
        *self.target() = Some(target);
    }

    /// Whether the statement the client just sent, whose text is `text`, is the one whose
    /// reply is lost (and if so, disarms).
    fn statement_hit(&self, text: &[u8]) -> bool {
        let mut target = self.target();
        let hit = match target.as_mut() {
            Some(Target::Statement(needle, n)) if contains(text, needle) => {
                let hit = *n == 0;
                *n = n.saturating_sub(1);
                hit
            }
            _ => false,
        };
        if hit {
            *target = None;
        }
        hit
    }

    /// Whether `chunk` of a server reply is the one to lose (and if so, disarms).
    fn reply_hit(&self, chunk: &[u8]) -> bool {
        let mut target = self.target();
        let hit =
            matches!(target.as_ref(), Some(Target::Reply(needle)) if reply_contains(chunk, needle));
        if hit {
            *target = None;
        }
        hit
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn reply_contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && contains(haystack, needle)
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream`, a server of `backend`.
    pub(crate) async fn start(backend: Backend, upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            backend,
            target: std::sync::Mutex::new(None),
            dropped: AtomicU32::new(0),
            down: AtomicBool::new(false),
            outage: tokio::sync::Notify::new(),
        });
        let accepting = accept(listener, Arc::clone(&shared), upstream);
        Ok(Proxy {
            addr,
            upstream,
            shared,
            accepting: std::sync::Mutex::new(Some(accepting)),
        })
    }

    /// The proxy's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loses the next server reply that contains `needle` (and breaks its connection).
    pub(crate) fn lose_reply_containing(&self, needle: &[u8]) {
        self.shared.arm(Target::Reply(needle.to_vec()));
    }

    /// Loses the reply to the next statement whose text contains `needle` (`b"COMMIT"`: the
    /// commit of the next transaction), after the server ran it.
    pub(crate) fn lose_reply_to(&self, needle: &[u8]) {
        self.lose_reply_to_nth(needle, 1);
    }

    /// Loses the reply to the `n`-th statement from now on (1: the next one) whose text
    /// contains `needle` (`b""`: any statement), counted over every connection, after the
    /// server ran it. Opening a connection runs statements of its own, so a count of every
    /// statement is only exact on a connection already open.
    pub(crate) fn lose_reply_to_nth(&self, needle: &[u8], n: u32) {
        self.shared
            .arm(Target::Statement(needle.to_vec(), n.saturating_sub(1)));
    }

    /// Makes the server look unreachable (`false`: every open connection breaks and the port
    /// refuses connections, as while a server restarts) or reachable again (`true`: the port
    /// accepts again).
    pub(crate) async fn set_reachable(&self, reachable: bool) -> anyhow::Result<()> {
        let mut accepting = self
            .accepting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if reachable {
            if accepting.is_none() {
                // The same port (tokio listeners reuse the address on Unix).
                let listener = TcpListener::bind(self.addr).await?;
                self.shared.down.store(false, Ordering::SeqCst);
                accepting = Some(accept(listener, Arc::clone(&self.shared), self.upstream));
            }
        } else {
            self.shared.down.store(true, Ordering::SeqCst);
            self.shared.outage.notify_waiters();
            if let Some(task) = accepting.take() {
                // Dropping the listener closes the port: connecting is refused.
                task.abort();
                let _ = task.await;
            }
        }
        *self
            .accepting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = accepting;
        Ok(())
    }

    /// How many replies were lost so far.
    pub(crate) fn lost(&self) -> u32 {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

/// Splits a client's byte stream into protocol messages, so statements can be counted, and
/// knows each statement's text: a prepared statement's execution carries only its name or id,
/// so the text is remembered from its preparation (PostgreSQL's `Parse`; MySQL's
/// `COM_STMT_PREPARE`, whose id comes in the server's reply, see [`Prepared::reply`]).
struct Frames {
    backend: Backend,
    buf: Vec<u8>,
    /// PostgreSQL's first message (startup) has no type byte.
    started: bool,
    prepared: Arc<std::sync::Mutex<Prepared>>,
    /// PostgreSQL: the text of the statement the last `Bind` bound.
    bound: Vec<u8>,
}

/// The texts of one connection's prepared statements.
#[derive(Default)]
pub(crate) struct Prepared {
    /// By PostgreSQL statement name, or by MySQL statement id (4 bytes, little-endian).
    texts: std::collections::HashMap<Vec<u8>, Vec<u8>>,
    /// MySQL: the text of a `COM_STMT_PREPARE` whose reply (with the id) has not come yet.
    pending: Option<Vec<u8>>,
}

impl Prepared {
    /// Reads the statement id from the server's reply to a MySQL `COM_STMT_PREPARE`.
    fn reply(&mut self, chunk: &[u8]) {
        if let Some(text) = self.pending.take()
            && chunk.len() >= 9
            && chunk[4] == 0
        {
            self.texts.insert(chunk[5..9].to_vec(), text);
        }
    }
}

/// The NUL-terminated string at the start of `bytes`, and what follows it.
fn cstr(bytes: &[u8]) -> (&[u8], &[u8]) {
    match bytes.iter().position(|b| *b == 0) {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[]),
    }
}

impl Frames {
    /// The complete messages buffered so far, removed from the buffer, each with the text of
    /// the statement it runs (`None`: it runs none).
    fn take(&mut self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let mut out = Vec::new();
        loop {
            let len = match self.backend {
                Backend::Postgres if !self.started => {
                    let Some(len) = self.buf.get(..4).map(be_len) else {
                        break;
                    };
                    // An SSL or GSS request is answered with one byte, then a startup
                    // message follows: still untyped.
                    let request = matches!(
                        self.buf.get(4..8),
                        Some([0x04, 0xd2, 0x16, 0x2f] | [0x04, 0xd2, 0x16, 0x30])
                    );
                    if !request && self.buf.len() >= len {
                        self.started = true;
                    }
                    len
                }
                Backend::Postgres => match self.buf.get(1..5) {
                    Some(len) => be_len(len) + 1,
                    None => break,
                },
                _ => match self.buf.get(..3) {
                    Some(head) => {
                        (usize::from(head[0])
                            | (usize::from(head[1]) << 8)
                            | (usize::from(head[2]) << 16))
                            + 4
                    }
                    None => break,
                },
            };
            if len == 0 || self.buf.len() < len {
                break;
            }
            let rest = self.buf.split_off(len);
            let message = std::mem::replace(&mut self.buf, rest);
            let text = self.statement(&message);
            out.push((message, text));
        }
        out
    }

    /// The text of the statement `message` runs, if it runs one.
    fn statement(&mut self, message: &[u8]) -> Option<Vec<u8>> {
        let mut prepared = self
            .prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.backend {
            Backend::Postgres if self.started => {
                let body = message.get(5..).unwrap_or_default();
                match message.first() {
                    Some(b'Q') => Some(cstr(body).0.to_vec()),
                    Some(b'P') => {
                        let (name, rest) = cstr(body);
                        prepared.texts.insert(name.to_vec(), cstr(rest).0.to_vec());
                        None
                    }
                    Some(b'B') => {
                        let (_portal, rest) = cstr(body);
                        self.bound = prepared
                            .texts
                            .get(cstr(rest).0)
                            .cloned()
                            .unwrap_or_default();
                        None
                    }
                    Some(b'E') => Some(self.bound.clone()),
                    _ => None,
                }
            }
            Backend::Postgres => None,
            _ => {
                // A command starts a new sequence (number 0); the login exchange does not.
                if message.get(3) != Some(&0) {
                    return None;
                }
                let body = message.get(5..).unwrap_or_default();
                match message.get(4) {
                    Some(0x03) => Some(body.to_vec()),
                    Some(0x16) => {
                        prepared.pending = Some(body.to_vec());
                        None
                    }
                    Some(0x17) => Some(
                        body.get(..4)
                            .and_then(|id| prepared.texts.get(id))
                            .cloned()
                            .unwrap_or_default(),
                    ),
                    _ => None,
                }
            }
        }
    }
}

fn be_len(bytes: &[u8]) -> usize {
    bytes
        .iter()
        .fold(0_usize, |n, b| (n << 8) | usize::from(*b))
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set once the statement whose reply is lost has been sent: every reply from then on is.
    let losing = Arc::new(AtomicBool::new(false));
    let prepared = Arc::new(std::sync::Mutex::new(Prepared::default()));
    let upstream = {
        let (shared, losing) = (Arc::clone(&shared), Arc::clone(&losing));
        let mut frames = Frames {
            backend: shared.backend,
            buf: Vec::new(),
            started: false,
            prepared: Arc::clone(&prepared),
            bound: Vec::new(),
        };
        tokio::spawn(async move {
            let mut buf = vec![0_u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                frames.buf.extend_from_slice(&buf[..n]);
                for (message, text) in frames.take() {
                    if text.is_some_and(|text| shared.statement_hit(&text)) {
                        losing.store(true, Ordering::SeqCst);
                    }
                    if server_write.write_all(&message).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let outage = shared.outage.notified();
        if shared.down.load(Ordering::SeqCst) {
            break;
        }
        let n = tokio::select! {
            read = server_read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            () = outage => break,
        };
        let chunk = &buf[..n];
        prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reply(chunk);
        if losing.load(Ordering::SeqCst) || shared.reply_hit(chunk) {
            shared.dropped.fetch_add(1, Ordering::SeqCst);
            // Let the server finish the statement (and its commit), then break the connection.
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
            break;
        }
        if client_write.write_all(chunk).await.is_err() {
            break;
        }
    }
    upstream.abort();
}

/// `url` with its host and port replaced by `addr`.
pub(crate) fn through(url: &str, addr: SocketAddr) -> anyhow::Result<String> {
    let authority_start = url
        .find('@')
        .map_or_else(|| url.find("://").map(|i| i + 3), |i| Some(i + 1));
    let start = authority_start.ok_or_else(|| anyhow::anyhow!("no host in {url}"))?;
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    Ok(format!("{}{}{}", &url[..start], addr, &url[end..]))
}

/// A pool of `max_connections` on `url`'s database (a PostgreSQL or MySQL/MariaDB one)
/// through a new proxy, in clear text so that the proxy can read the statements.
pub(crate) async fn connect_through(
    backend: Backend,
    url: &str,
    max_connections: u32,
) -> anyhow::Result<(Proxy, sea_orm::DatabaseConnection)> {
    connect_through_with(backend, url, max_connections, |_| {}).await
}

/// [`connect_through`], with `configure` changing the pool's options first.
pub(crate) async fn connect_through_with(
    backend: Backend,
    url: &str,
    max_connections: u32,
    configure: impl FnOnce(&mut sea_orm::ConnectOptions),
) -> anyhow::Result<(Proxy, sea_orm::DatabaseConnection)> {
    use std::net::ToSocketAddrs;
    let start = url.find('@').map_or(0, |i| i + 1);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    let upstream = url[start..end]
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow::anyhow!("no address in {url}"))?;
    let proxy = Proxy::start(backend, upstream).await?;
    let clear = match backend {
        Backend::Postgres => "sslmode=disable",
        _ => "ssl-mode=disabled",
    };
    let proxied = through(url, proxy.addr())?;
    let sep = if proxied.contains('?') { '&' } else { '?' };
    let mut options = crate::harness::connect_options(
        backend,
        &format!("{proxied}{sep}{clear}"),
        max_connections,
    );
    configure(&mut options);
    let db = sea_orm::Database::connect(options).await?;
    Ok((proxy, db))
}
