//! Where a connection starts: the listeners (one per core on the same address, and the
//! admin one), bound before the cores start and waiting out a killed relay's port, the open
//! files limit connections need, and each core's accept loop.

use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use glommio::net::TcpListener;
use glommio::TaskQueueHandle;

use super::core::Core;
use super::stats::Handshake;
use super::throttle;

/// How often a core's accept loop looks for a shutdown request.
const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// How long a start waits for its port to be let go: a relay killed with SIGKILL keeps its
/// listening socket until the kernel has torn down its io_uring rings, which takes a moment
/// after the process is gone, so a restart right after a crash would otherwise fail.
const PORT_RELEASE_WAIT: Duration = Duration::from_secs(5);

/// Bind `address`, retrying while it is in use for up to `PORT_RELEASE_WAIT` (or until
/// `stop` is set).
pub(super) fn bind_when_free(
    address: std::net::SocketAddr,
    stop: &AtomicBool,
) -> std::io::Result<std::net::TcpListener> {
    let deadline = std::time::Instant::now() + PORT_RELEASE_WAIT;
    let mut said = false;
    loop {
        match std::net::TcpListener::bind(address) {
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline
                    && !stop.load(Ordering::SeqCst) =>
            {
                if !said {
                    tracing::info!(%address, "the address is in use; waiting up to 5 s for it to be let go");
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other,
        }
    }
}

/// Every connection is a descriptor: take the hard limit on open files, as a login shell's
/// soft limit (often 1,024) would refuse connections long before memory runs out. Returns
/// the limit in force.
pub(super) fn raise_open_files_limit() -> u64 {
    // SAFETY: get/setrlimit on a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return raised.rlim_cur;
            }
        }
        limit.rlim_cur
    }
}

/// Pending connections a listener queues (the kernel caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4_096;

/// A listener for one core. SO_REUSEPORT lets every core (and a relay taking over) listen on
/// the address; SO_REUSEADDR, which glommio's own `bind` leaves out, is inherited by accepted
/// sockets so that their TIME_WAIT remains do not stop a restarted relay from binding for a
/// minute.
fn reuseport_listener(address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// One listener per core on `address`, bound before the cores start.
pub(super) fn bind_listeners(
    address: std::net::SocketAddr,
    count: usize,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    (0..count).map(|_| reuseport_listener(address).with_context(|| format!("cannot listen on {address}"))).collect()
}

/// The admin listener (`metrics_listen`), on core 0.
pub(super) fn listen(address: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let listener = reuseport_listener(address)?;
    // SAFETY: the descriptor is a bound, listening TCP socket that we own and hand over.
    Ok(unsafe { TcpListener::from_raw_fd(listener.into_raw_fd()) })
}

/// Accept until the stop flag is set, serving each connection with `serve` in its own task.
pub(super) async fn accept_until_stopped<F: std::future::Future<Output = ()> + 'static>(
    core: &Rc<Core>,
    listener: &TcpListener,
    stop: &AtomicBool,
    sessions: TaskQueueHandle,
    serve: fn(Rc<Core>, glommio::net::TcpStream, Handshake) -> F,
) {
    enum Step {
        Accepted(glommio::Result<glommio::net::TcpStream, ()>),
        Stop,
    }
    let accept_errors = throttle::LogThrottle::new(throttle::REPEATED_ERROR_LOG_INTERVAL);
    loop {
        let step = futures_lite::future::or(async { Step::Accepted(listener.accept().await) }, async {
            while !stop.load(Ordering::SeqCst) {
                glommio::timer::sleep(SHUTDOWN_POLL).await;
            }
            Step::Stop
        })
        .await;
        match step {
            Step::Accepted(Ok(stream)) => {
                if core.stats.handshakes.get() as usize >= crate::limits::HANDSHAKES_PER_CORE_MAX {
                    core.stats.handshakes_shed.inc();
                    drop(stream);
                    continue;
                }
                let handshake = Handshake::begin(core.stats.clone());
                match glommio::spawn_local_into(serve(core.clone(), stream, handshake), sessions) {
                    // The connection's task is owned through its `Session` once upgraded (the
                    // core closes it through its outbox, and `connections_per_ip_max` bounds
                    // them); before that it is counted as a `Handshake`, at most
                    // `HANDSHAKES_PER_CORE_MAX` per core, each for at most the 10 s handshake
                    // timeout.
                    Ok(task) => {
                        task.detach();
                    }
                    Err(error) => tracing::error!(core = core.id().0, %error, "cannot start a session"),
                }
            }
            Step::Accepted(Err(error)) => {
                if let Some(held_back) = accept_errors.admit() {
                    tracing::warn!(core = core.id().0, %error, held_back, "accept failed");
                }
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
            Step::Stop => return,
        }
    }
}
