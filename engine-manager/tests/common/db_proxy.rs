//! [`DbProxy`]: a TCP proxy between one manager and PostgreSQL, for the tests of a
//! database that is unreachable ([`DbProxy::cut`]: every connection through it
//! severed, new ones refused) or slow ([`DbProxy::stall`]: connections stay open but
//! nothing passes, new ones included, until [`DbProxy::release`]) for that manager
//! only, while the test reads and writes the database directly.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How often a held or severable connection looks at the proxy's switches.
const LOOK_EVERY: Duration = Duration::from_millis(10);

#[derive(Default)]
struct Switches {
    cut: AtomicBool,
    stalled: AtomicBool,
    /// Bumped by each cut: connections born before it are severed.
    generation: AtomicU64,
}

pub struct DbProxy {
    /// The database URL through the proxy.
    pub url: String,
    switches: Arc<Switches>,
}

impl DbProxy {
    /// A proxy to the database of `db_url`, letting everything through.
    pub async fn start(db_url: &str) -> DbProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let parsed = url::Url::parse(db_url).unwrap();
        let upstream = format!(
            "{}:{}",
            parsed.host_str().unwrap_or("127.0.0.1"),
            parsed.port().unwrap_or(5432)
        );
        let mut through = parsed.clone();
        through.set_host(Some("127.0.0.1")).unwrap();
        through.set_port(Some(port)).unwrap();
        let switches = Arc::new(Switches::default());
        let shared = switches.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if shared.cut.load(Ordering::Acquire) {
                    drop(client);
                    continue;
                }
                tokio::spawn(relay(client, upstream.clone(), shared.clone()));
            }
        });
        DbProxy {
            url: through.to_string(),
            switches,
        }
    }

    /// Sever every connection and refuse new ones until [`Self::restore`].
    pub fn cut(&self) {
        self.switches.generation.fetch_add(1, Ordering::AcqRel);
        self.switches.cut.store(true, Ordering::Release);
    }

    pub fn restore(&self) {
        self.switches.cut.store(false, Ordering::Release);
    }

    /// Hold every byte in either direction (connections stay open, queries hang)
    /// until [`Self::release`].
    pub fn stall(&self) {
        self.switches.stalled.store(true, Ordering::Release);
    }

    /// Let the held bytes through, and what follows.
    pub fn release(&self) {
        self.switches.stalled.store(false, Ordering::Release);
    }
}

/// One connection: bytes both ways, held while stalled, until either side closes or
/// a cut severs it.
async fn relay(client: TcpStream, upstream: String, switches: Arc<Switches>) {
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let born = switches.generation.load(Ordering::Acquire);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let severed = async {
        while !switches.cut.load(Ordering::Acquire)
            && switches.generation.load(Ordering::Acquire) == born
        {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    };
    tokio::select! {
        _ = pump(client_read, server_write, &switches) => {}
        _ = pump(server_read, client_write, &switches) => {}
        _ = severed => {}
    }
}

/// Copy `from` to `to`, holding each chunk read while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    switches: &Switches,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while switches.stalled.load(Ordering::Acquire) {
            tokio::time::sleep(LOOK_EVERY).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
