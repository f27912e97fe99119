//! A TCP proxy between the tests and a database server that can lose one reply: it forwards
//! both ways until told to drop the next server reply containing some bytes, then discards the
//! rest of that connection's replies for a moment (so the server finishes what it was doing,
//! commit included) and closes it. The client sees a broken connection after its statement took
//! effect: the ambiguous error a retry must cope with.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running proxy; it stops with the test's runtime.
pub(crate) struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    needle: std::sync::Mutex<Option<Vec<u8>>>,
    dropped: AtomicU32,
}

impl Proxy {
    /// Starts a proxy on a free loopback port in front of `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let shared = Arc::clone(&accepting);
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(upstream).await {
                        relay(client, server, shared).await;
                    }
                });
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// The proxy's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Loses the next server reply that contains `needle` (and breaks its connection).
    pub(crate) fn lose_reply_containing(&self, needle: &[u8]) {
        *self
            .shared
            .needle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(needle.to_vec());
    }

    /// How many replies were lost so far.
    pub(crate) fn lost(&self) -> u32 {
        self.shared.dropped.load(Ordering::SeqCst)
    }
}

async fn relay(client: TcpStream, server: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upstream = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut buf = vec![0_u8; 64 * 1024];
    loop {
        let n = match server_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let lose = {
            let mut needle = shared
                .needle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let hit = needle
                .as_deref()
                .is_some_and(|x| chunk.windows(x.len()).any(|w| w == x));
            if hit {
                *needle = None;
            }
            hit
        };
        if lose {
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
