//! The control socket between mpathctl and mpathd.
//!
//! A Unix stream socket carrying newline-delimited JSON: the client sends one [`Request`]
//! line and reads [`Reply`] lines, one for most requests, a stream for [`Request::Probes`]
//! that lasts until the client hangs up. Root may send anything; where the group
//! [`VIEW_GROUP`] exists its members may connect too (mode 0660), for the views alone, as
//! anyone may read /proc/net/bonding (otherwise the socket is root's, mode 0600).
//!
//! mpathd leaves the socket's and its pin directory's paths in [`HINT_PATH`], so that an
//! mpathctl that cannot read the configuration still finds a daemon on another socket.
//!
//! Clients cost the daemon descriptors, so their number and time are bounded: at most
//! [`MAX_CLIENTS`] at once (more are closed as soon as they are accepted), and each has
//! [`REQUEST_TIMEOUT`] to send its request and to take each reply.

use std::{
    ffi::CString,
    fs, io,
    io::{BufRead as _, Write as _},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{broadcast, mpsc, oneshot},
    time::timeout,
};

use crate::{
    api::admission::Admission,
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

/// The group whose members may use the views (see the module documentation).
pub const VIEW_GROUP: &str = "mpath";

/// Where mpathd leaves the paths it runs with (see [`Hint`]).
pub const HINT_PATH: &str = "/run/mpath/mpathd.paths";

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
    /// Read the configuration again, as SIGHUP does, and reply with the result: `Done` when
    /// it was applied (or had not changed), `Refused` with the reasons when not.
    Reload {},
}

impl Request {
    /// Whether the request changes what mpathd does (root only) rather than shows it.
    fn changes_state(&self) -> bool {
        match self {
            Request::Status {} | Request::Probes {} => false,
            Request::Offline { .. } | Request::Online { .. } | Request::Reload {} => true,
        }
    }
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
    #[error(
        "no permission to connect to {0}: the views are for root and members of group \
         {VIEW_GROUP}, the commands for root"
    )]
    PermissionDenied(PathBuf),
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
    open_to_view_group(path);
    Ok(listener)
}

/// Gives the socket to [`VIEW_GROUP`] (mode 0660) when that group exists; the socket stays
/// root's alone when it does not or the change fails (logged: the daemon runs on).
fn open_to_view_group(path: &Path) {
    let gid = match group_id(VIEW_GROUP) {
        Ok(Some(gid)) => gid,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(
                "looking up group {VIEW_GROUP}: {e}; the control socket is root's alone"
            );
            return;
        }
    };
    let opened = std::os::unix::fs::chown(path, None, Some(gid))
        .and_then(|()| fs::set_permissions(path, fs::Permissions::from_mode(0o660)));
    match opened {
        Ok(()) => tracing::debug!(
            "control socket {} open to group {VIEW_GROUP} for the views",
            path.display()
        ),
        Err(e) => tracing::warn!(
            "cannot give the control socket {} to group {VIEW_GROUP} ({e}); it is root's alone",
            path.display()
        ),
    }
}

/// The id of group `name`, `None` when there is no such group.
fn group_id(name: &str) -> io::Result<Option<u32>> {
    let name = CString::new(name).map_err(io::Error::other)?;
    let mut buffer = vec![0u8; 4096];
    loop {
        // SAFETY: `group` and `found` are written by getgrnam_r, which keeps its strings in
        // `buffer`; both outlive the call, and only the gid is read afterwards.
        let mut group: libc::group = unsafe { std::mem::zeroed() };
        let mut found = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                name.as_ptr(),
                &mut group,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        match rc {
            0 if found.is_null() => return Ok(None),
            0 => return Ok(Some(group.gr_gid)),
            libc::ERANGE if buffer.len() < 1 << 20 => buffer.resize(buffer.len() * 2, 0),
            errno => return Err(io::Error::from_raw_os_error(errno)),
        }
    }
}

/// Leaves the daemon's paths in [`HINT_PATH`] for mpathctl; a failure is logged, not fatal.
pub fn leave_hint(socket: &Path, bpf_pin_dir: &Path) {
    let hint = Hint {
        socket: socket.to_owned(),
        bpf_pin_dir: bpf_pin_dir.to_owned(),
    };
    if let Err(e) = hint.write(Path::new(HINT_PATH)) {
        tracing::warn!("cannot leave mpathctl the paths in {HINT_PATH}: {e}");
    }
}

/// Takes the hint back as the daemon stops (unless a newer daemon's is there).
pub fn remove_hint(socket: &Path) {
    Hint::remove(Path::new(HINT_PATH), socket);
}

/// The paths a running mpathd uses, as it leaves them in [`HINT_PATH`]: `SOCKET=` and
/// `BPF_PIN_DIR=` lines, which mpathctl reads when it cannot read the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    pub socket: PathBuf,
    pub bpf_pin_dir: PathBuf,
}

impl Hint {
    /// Writes the hint to `file` (atomically: a reader sees the old one or the new one).
    /// Paths a line cannot hold (a newline, not UTF-8) are refused.
    pub fn write(&self, file: &Path) -> io::Result<()> {
        let line = |key: &str, path: &Path| match path.to_str() {
            Some(p) if !p.contains('\n') => Ok(format!("{key}={p}\n")),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} cannot be written on one line", path.display()),
            )),
        };
        let text = format!(
            "# mpathd's control socket and pin directory, for mpathctl (mpathctl(1))\n{}{}",
            line("SOCKET", &self.socket)?,
            line("BPF_PIN_DIR", &self.bpf_pin_dir)?
        );
        if let Some(dir) = file.parent() {
            fs::create_dir_all(dir)?;
        }
        let temporary = file.with_extension(format!("tmp.{}", std::process::id()));
        fs::write(&temporary, text)?;
        fs::set_permissions(&temporary, fs::Permissions::from_mode(0o644))?;
        fs::rename(&temporary, file).inspect_err(|_| {
            let _: Result<_, _> = fs::remove_file(&temporary);
        })
    }

    /// The hint in `file`, `None` when there is none or it is not one.
    pub fn read(file: &Path) -> Option<Hint> {
        let text = fs::read_to_string(file).ok()?;
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        Some(Hint {
            socket: value("SOCKET")?,
            bpf_pin_dir: value("BPF_PIN_DIR")?,
        })
    }

    /// Removes the hint in `file` if it still names `socket` (a newer mpathd's stays).
    pub fn remove(file: &Path, socket: &Path) {
        if Hint::read(file).is_some_and(|h| h.socket == socket) {
            let _: Result<_, _> = fs::remove_file(file);
        }
    }
}

/// Serves clients until the listener fails: each connection is handled on its own task,
/// up to [`MAX_CLIENTS`] at once; the rest are closed at once, with one log line per burst.
pub(crate) async fn serve(
    listener: UnixListener,
    commands: mpsc::Sender<Command>,
    probes: broadcast::Sender<ProbeRow>,
) {
    let mut admission = Admission::new(
        MAX_CLIENTS,
        format!(
            "{MAX_CLIENTS} control clients connected already: closing new ones until one leaves"
        ),
    );
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let Some(slot) = admission.admit() else {
                    continue;
                };
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
        .map_err(|_elapsed| timed_out("no complete request"))?;
    let request = match read {
        Ok(_) if line.len() as u64 > MAX_REQUEST_BYTES => Err(format!(
            "request longer than {MAX_REQUEST_BYTES} bytes refused"
        )),
        Ok(_) => serde_json::from_str::<Request>(line.trim())
            .map_err(|e| format!("malformed request: {e}")),
        Err(e) => Err(format!("unreadable request: {e}")),
    };
    let request = match request {
        Ok(r) if r.changes_state() && uid != 0 => Err(format!(
            "only root may take NICs offline or online or reload mpathd (you are uid {uid}); \
             members of group {VIEW_GROUP} may use the views"
        )),
        other => other,
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
        .map_err(|_elapsed| timed_out("reply not taken"))?
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
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ControlError::NotRunning(path.to_owned())
        }
        io::ErrorKind::PermissionDenied => ControlError::PermissionDenied(path.to_owned()),
        _ => io_err(e),
    })?;
    let mut line = serde_json::to_vec(request).map_err(|e| io_err(io::Error::other(e)))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io_err)?;
    let mut replied = false;
    for line in io::BufReader::new(stream).lines() {
        let line = line.map_err(io_err)?;
        let reply: Reply = serde_json::from_str(&line)
            .map_err(|_not_json| ControlError::BadReply(line.clone()))?;
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
                let _: Result<_, _> = cmd.reply.send(Reply::Done { message });
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
                let _: Result<_, _> = s.write_all(&garbage);
                let _: Result<_, _> = s.write_all(b"\n");
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
    fn only_offline_and_online_change_state() {
        assert!(!Request::Status {}.changes_state());
        assert!(!Request::Probes {}.changes_state());
        for r in [
            Request::Offline {
                interface: "h0".into(),
            },
            Request::Online {
                interface: "h0".into(),
            },
        ] {
            assert!(r.changes_state(), "{r:?}");
        }
    }

    #[test]
    fn groups_are_looked_up_by_name() {
        assert_eq!(group_id("root").unwrap(), Some(0));
        assert_eq!(group_id("no-such-group-mpath-test").unwrap(), None);
    }

    #[test]
    fn a_hint_is_read_back_and_removed_only_by_its_own_daemon() {
        let dir = std::env::temp_dir().join(format!("mpath-hint-{}", std::process::id()));
        let file = dir.join("run/mpathd.paths");
        let hint = Hint {
            socket: "/run/other/ctl.sock".into(),
            bpf_pin_dir: "/sys/fs/bpf/other".into(),
        };
        hint.write(&file).unwrap();
        assert_eq!(Hint::read(&file), Some(hint.clone()));
        Hint::remove(&file, Path::new("/run/mpath/mpathd.sock"));
        assert_eq!(Hint::read(&file), Some(hint.clone()));
        Hint::remove(&file, &hint.socket);
        assert!(!file.exists());

        let bad = Hint {
            socket: "/run/a\nSOCKET=/evil".into(),
            ..hint
        };
        assert!(bad.write(&file).is_err());
        assert!(!file.exists(), "a refused hint changes nothing");
        fs::write(&file, "SOCKET=\nBPF_PIN_DIR=/x\n").unwrap();
        assert_eq!(Hint::read(&file), None);
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
