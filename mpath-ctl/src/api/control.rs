//! The control socket between mpathctl and mpathd.
//!
//! A Unix stream socket (mode 0600, root only) carrying newline-delimited JSON: the client
//! sends one [`Request`] line and reads [`Reply`] lines, one for most requests, a stream for
//! [`Request::Probes`] that lasts until the client hangs up.
//!
//! Clients cost the daemon descriptors, so their number and time are bounded: at most
//! [`MAX_CLIENTS`] at once (more are closed as soon as they are accepted), and each has
//! [`REQUEST_TIMEOUT`] to send its request and to take each reply.

use std::{
    fs, io,
    io::{BufRead as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, broadcast, mpsc, oneshot},
    time::timeout,
};

use crate::{
    api::views::{ProbeRow, Status},
    config::socket_path_problem,
};

/// Longest request line accepted; anything longer is refused unread.
pub(crate) const MAX_REQUEST_BYTES: u64 = 4096;

/// Control clients served at once. Far more than operators and tools need, far fewer than
/// the descriptors mpathd has: idle clients cannot starve a failover.
pub(crate) const MAX_CLIENTS: usize = 64;

/// How long a client may take to send its request line, and to take each reply: a client
/// that connects and sends nothing, or stops reading, is dropped after that.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// All status views. (Empty braces: serde refuses unknown fields only on struct
    /// variants.)
    Status {},
    /// Take a NIC out of use (if_mpadm -d).
    Offline { interface: String },
    /// Put an offlined NIC back (if_mpadm -r).
    Online { interface: String },
    /// Stream each probe as it completes.
    Probes {},
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Status(Status),
    Done { message: String },
    Refused { message: String },
    Probe(ProbeRow),
}

/// A request for the daemon's event loop, with where to send the answer.
#[derive(Debug)]
pub struct Command {
    pub request: Request,
    pub reply: oneshot::Sender<Reply>,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("mpathd is not running (nothing listens on {0})")]
    NotRunning(PathBuf),
    #[error("mpathd sent a reply mpathctl does not understand: {0}")]
    BadReply(String),
    #[error("mpathd closed the connection without replying")]
    NoReply,
}

/// Binds the control socket at `path`, replacing a stale one left by a daemon that died,
/// but refusing to steal the socket of a daemon that is still running.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another mpathd is running",
        )));
    }
    if let Some(kind) = socket_path_problem(path) {
        return Err(io_err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("a {kind} is there, not a socket; mpathd replaces only a stale socket"),
        )));
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(io_err)?;
    Ok(listener)
}

/// Serves clients until the listener fails: each connection is handled on its own task,
/// up to [`MAX_CLIENTS`] at once; the rest are closed at once, with one log line per burst.
pub(crate) async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    probes: broadcast::Sender<ProbeRow>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut refusing = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    if !refusing {
                        tracing::warn!(
                            "{MAX_CLIENTS} control clients connected already: closing new ones until one leaves"
                        );
                        refusing = true;
                    }
                    continue;
                };
                refusing = false;
                let commands = commands.clone();
                let probes = probes.subscribe();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, commands, probes).await {
                        tracing::debug!("control connection: {e}");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::error!("control socket accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    stream: UnixStream,
    commands: mpsc::Sender<Command>,
    mut probes: broadcast::Receiver<ProbeRow>,
) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    // The request is read even when it will be refused, so the client is not cut off while
    // it writes and sees the refusal.
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST_BYTES + 1));
    let read = timeout(REQUEST_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| timed_out("no complete request"))?;
    if uid != 0 {
        let refusal = Reply::Refused {
            message: format!("only root may use mpathd's control socket (you are uid {uid})"),
        };
        return send(&mut write, &refusal).await;
    }
    let request = match read {
        Ok(_) if line.len() as u64 > MAX_REQUEST_BYTES => Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes refused"
        )),
        Ok(_) => serde_json::from_str::<Request>(line.trim())
            .map_err(|e| format!("malformed request: {e}")),
        Err(e) => Err(format!("unreadable request: {e}")),
    };
    let request = match request {
        Ok(r) => r,
        Err(message) => return send(&mut write, &Reply::Refused { message }).await,
    };
    if request == (Request::Probes {}) {
        loop {
            match probes.recv().await {
                Ok(row) => send(&mut write, &Reply::Probe(row)).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
    let (reply, answer) = oneshot::channel();
    if commands.send(Command { request, reply }).await.is_err() {
        return Ok(());
    }
    match answer.await {
        Ok(reply) => send(&mut write, &reply).await,
        Err(_) => Ok(()),
    }
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{what} within {REQUEST_TIMEOUT:?}; dropped"),
    )
}

/// Writes one reply line, giving up on a client that does not take it in time.
async fn send(write: &mut tokio::net::unix::OwnedWriteHalf, reply: &Reply) -> io::Result<()> {
    let mut line = serde_json::to_vec(reply).map_err(io::Error::other)?;
    line.push(b'\n');
    timeout(REQUEST_TIMEOUT, write.write_all(&line))
        .await
        .map_err(|_| timed_out("reply not taken"))?
}

/// Client side (blocking): sends `request` and hands each reply to `each` until the daemon
/// closes the stream or `each` returns false.
pub fn call(
    path: &Path,
    request: &Request,
    mut each: impl FnMut(Reply) -> bool,
) -> Result<(), ControlError> {
    let io_err = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| {
        if matches!(
            e.kind(),
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
        ) {
            ControlError::NotRunning(path.to_owned())
        } else {
            io_err(e)
        }
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut replied = false;
    for line in io::BufReader::new(stream).lines() {
        let line = line.map_err(io_err)?;
        let reply: Reply =
            serde_json::from_str(&line).map_err(|_| ControlError::BadReply(line.clone()))?;
        replied = true;
        if !each(reply) {
            break;
        }
    }
    if replied {
        Ok(())
    } else {
        Err(ControlError::NoReply)
    }
}

/// Sends one request and returns its one reply.
pub fn request(path: &Path, request: &Request) -> Result<Reply, ControlError> {
    let mut answer = None;
    call(path, request, |reply| {
        answer = Some(reply);
        false
    })?;
    answer.ok_or(ControlError::NoReply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_stable_json() {
        let offline = Request::Offline {
            interface: "h0".into(),
        };
        let json = serde_json::to_string(&offline).unwrap();
        assert_eq!(json, r#"{"request":"offline","interface":"h0"}"#);
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), offline);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"request":"status"}"#).unwrap(),
            Request::Status {}
        );
    }

    #[test]
    fn malformed_requests_do_not_parse() {
        for bad in [
            "",
            "{}",
            r#"{"request":"reboot"}"#,
            r#"{"request":"offline"}"#,
            r#"{"request":"status","extra":1}"#,
            "\u{0}\u{1}",
        ] {
            assert!(
                serde_json::from_str::<Request>(bad).is_err(),
                "{bad:?} parsed"
            );
        }
    }

    #[tokio::test]
    async fn serves_a_request_and_refuses_garbage_and_oversized_lines() {
        let dir = std::env::temp_dir().join(format!("mpath-control-{}", std::process::id()));
        let path = dir.join("mpathd.sock");
        let listener = bind(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            bind(&path).is_err(),
            "a second daemon must not steal the socket"
        );

        let (tx, mut rx) = mpsc::channel(4);
        let (probes, _) = broadcast::channel(4);
        tokio::spawn(serve(listener, tx, probes));
        tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                let message = format!("{:?}", cmd.request);
                let _ = cmd.reply.send(Reply::Done { message });
            }
        });

        let p = path.clone();
        let reply = tokio::task::spawn_blocking(move || request(&p, &Request::Status {}))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            reply,
            Reply::Done {
                message: "Status".into()
            }
        );

        for garbage in [b"not json\n".to_vec(), vec![b'x'; 10_000]] {
            let p = path.clone();
            let reply = tokio::task::spawn_blocking(move || {
                let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
                let _ = s.write_all(&garbage);
                let _ = s.write_all(b"\n");
                let mut line = String::new();
                io::BufReader::new(s).read_line(&mut line).unwrap();
                serde_json::from_str::<Reply>(&line).unwrap()
            })
            .await
            .unwrap();
            assert!(matches!(reply, Reply::Refused { .. }), "{reply:?}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_at_the_socket_path_is_left_alone() {
        let dir = std::env::temp_dir().join(format!("mpath-control-file-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mpathd.sock");
        fs::write(&path, "not a socket").unwrap();
        let err = bind(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "control socket {}: a regular file is there, not a socket; mpathd replaces only \
                 a stale socket",
                path.display()
            )
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn says_when_the_daemon_is_not_running() {
        let path = Path::new("/nonexistent/mpathd.sock");
        let err = request(path, &Request::Status {}).unwrap_err();
        assert!(matches!(err, ControlError::NotRunning(_)));
        assert_eq!(
            err.to_string(),
            "mpathd is not running (nothing listens on /nonexistent/mpathd.sock)"
        );
    }
}
