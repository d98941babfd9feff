//! A TCP proxy a test puts between the app and Redis or Postgres, then slows, black-holes or cuts.
//!
//! - [`FaultProxy::set_delay`]: every reply from the target waits this long
//!   (a slow Redis); requests pass at once, replies keep their order.
//! - [`FaultProxy::black_hole`]: connections are accepted and nothing is
//!   answered, as on a route that drops packets. Bytes already on the way
//!   stay queued (TCP would retransmit them), so after
//!   [`FaultProxy::restore`] every connection carries on where it stopped.
//! - [`FaultProxy::cut`]: every connection is closed and new ones are
//!   closed at once, as a dependency that is gone; `restore` lets new ones through.
//!
//! Listens on 127.0.0.1 and stops, with all its connections, when dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Open,
    BlackHole,
    Cut,
}

pub struct FaultProxy {
    address: SocketAddr,
    route: watch::Sender<Route>,
    delay_ms: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy to `127.0.0.1:target_port`, passing everything until told otherwise.
    pub async fn start(target_port: u16) -> Self {
        let target = SocketAddr::from(([127, 0, 0, 1], target_port));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (route, _) = watch::channel(Route::Open);
        let delay_ms = Arc::new(AtomicU64::new(0));
        let (routes, delay) = (route.clone(), Arc::clone(&delay_ms));
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((inbound, _)) = listener.accept().await {
                if *routes.borrow() == Route::Cut {
                    drop(inbound);
                    continue;
                }
                connections.spawn(relay(
                    inbound,
                    target,
                    routes.subscribe(),
                    Arc::clone(&delay),
                ));
                // Forget the connections that ended, so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            address,
            route,
            delay_ms,
            task,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The proxy as a Redis URL.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.address)
    }

    /// Delays every reply from the target by `delay` (zero: none).
    pub fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Accepts and answers nothing, holding what is on the way until [`FaultProxy::restore`].
    pub fn black_hole(&self) {
        self.route.send_replace(Route::BlackHole);
    }

    /// Closes every connection and each new one.
    pub fn cut(&self) {
        self.route.send_replace(Route::Cut);
    }

    /// Passes traffic again: held connections carry on, new ones go through.
    pub fn restore(&self) {
        self.route.send_replace(Route::Open);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits while the route is a black hole; false once it is cut.
async fn flowing(route: &mut watch::Receiver<Route>) -> bool {
    match route.wait_for(|route| *route != Route::BlackHole).await {
        Ok(route) => *route == Route::Open,
        Err(_) => false,
    }
}

async fn relay(
    inbound: TcpStream,
    target: SocketAddr,
    mut route: watch::Receiver<Route>,
    delay_ms: Arc<AtomicU64>,
) {
    // Held, not refused, while the route is a black hole.
    if !flowing(&mut route).await {
        return;
    }
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (from_app, to_app) = inbound.into_split();
    let (from_target, to_target) = outbound.into_split();
    let requests = pump(from_app, to_target, route.clone(), None);
    let replies = pump(from_target, to_app, route.clone(), Some(delay_ms));
    let cut = route.wait_for(|route| *route == Route::Cut);
    // Whichever ends first ends the connection: both sockets are dropped here.
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
        _ = cut => {}
    }
}

/// Copies `from` to `to` while the route is open, each chunk `delay_ms` late if given.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    route: watch::Receiver<Route>,
    delay_ms: Option<Arc<AtomicU64>>,
) {
    // Reading and writing are apart so that a delay holds replies without
    // holding back later ones' reading: each chunk is due when it arrived
    // plus the delay, and chunks leave in order.
    let (chunks, mut due_chunks) = tokio::sync::mpsc::unbounded_channel();
    let mut read_route = route.clone();
    let read = async move {
        let mut buffer = vec![0; 16 * 1024];
        loop {
            if !flowing(&mut read_route).await {
                break;
            }
            let Ok(read @ 1..) = from.read(&mut buffer).await else {
                break;
            };
            let delay = delay_ms
                .as_ref()
                .map_or(0, |delay| delay.load(Ordering::Relaxed));
            let due = tokio::time::Instant::now() + Duration::from_millis(delay);
            if chunks.send((due, buffer[..read].to_vec())).is_err() {
                break;
            }
        }
    };
    let mut write_route = route;
    let write = async move {
        while let Some((due, chunk)) = due_chunks.recv().await {
            // The delay is the fault under test, not a wait for a condition.
            tokio::time::sleep_until(due).await;
            if !flowing(&mut write_route).await || to.write_all(&chunk).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(read, write);
}
