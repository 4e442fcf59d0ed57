//! gp-probe: the tiny server/client run inside simulated pods.
//!
//! `serve` answers with its name and the peer address it sees, so tests can
//! tell which backend answered and whether the source address was preserved.
//! `tcp`, `udp` and `hold` print one JSON object per attempt/line on stdout
//! (parsed by `gangplank_tests::probe`). Client reads are bounded by
//! `--timeout-ms`; network errors never panic.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde::Serialize;

#[derive(Parser)]
#[command(
    name = "gp-probe",
    about = "TCP/UDP test server and client for gangplank's simulated cluster"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bind 0.0.0.0 on the given ports, print `ready`, and answer forever
    /// with `pod=NAME client=IP:PORT`.
    Serve {
        /// Name reported in replies (usually the pod name).
        #[arg(long)]
        name: String,
        /// TCP port to serve (HTTP if the first line starts with `GET `, else line echo); repeatable.
        #[arg(long = "tcp", value_name = "PORT")]
        tcp: Vec<u16>,
        /// UDP port to serve; repeatable.
        #[arg(long = "udp", value_name = "PORT")]
        udp: Vec<u16>,
    },
    /// N sequential HTTP GETs, one connection each; one JSON line per attempt.
    Tcp {
        /// Server address.
        addr: SocketAddr,
        /// Number of attempts.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Bound for connect and for the whole exchange, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Request path (e.g. a health-check URL).
        #[arg(long, default_value = "/")]
        path: String,
        /// Pause between attempts, in milliseconds (steady load over time).
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
        /// Connect from this local port (IPv4 only; bound with SO_REUSEADDR)
        /// instead of an ephemeral one, so a test can repeat a flow's exact
        /// 5-tuple. With `--count` > 1 every attempt uses the same port.
        #[arg(long)]
        source_port: Option<u16>,
        /// Send this many bytes of a fixed pattern as the request body; the
        /// server checks every byte (bulk transfers through the datapath).
        #[arg(long, default_value_t = 0)]
        upload: usize,
    },
    /// N datagrams, one fresh socket each; one JSON line per attempt.
    Udp {
        /// Server address.
        addr: SocketAddr,
        /// Number of attempts.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// connect() the socket (and report its peer) instead of sendto/recvfrom.
        #[arg(long)]
        connected: bool,
        /// Bound for waiting for the reply, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Pause between attempts, in milliseconds.
        #[arg(long, default_value_t = 0)]
        interval_ms: u64,
    },
    /// Connect once, then send each stdin line and print the reply line.
    Hold {
        /// Server address.
        addr: SocketAddr,
        /// Bound for connect and for each reply, in milliseconds.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

/// One JSON line of client output.
#[derive(Serialize, Default)]
struct Report {
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    local: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reply: Option<String>,
    /// HTTP status code of the response (tcp mode), if it was HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'static str>,
}

impl Report {
    /// A failure at `stage`; timeouts become `"error":"timeout"` without errno.
    fn failure(stage: &'static str, e: &io::Error) -> Report {
        let timed_out = matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        );
        Report {
            ok: false,
            errno: if timed_out { None } else { e.raw_os_error() },
            error: Some(if timed_out {
                "timeout".into()
            } else {
                e.to_string()
            }),
            stage: Some(stage),
            ..Report::default()
        }
    }

    fn with_peer(mut self, peer: Option<String>, local: Option<String>) -> Report {
        self.peer = peer;
        self.local = local;
        self
    }

    fn print(&self) {
        let line = serde_json::to_string(self).unwrap_or_else(|e| {
            format!(
                "{{\"ok\":false,\"error\":{}}}",
                serde_json::Value::String(format!("serializing report: {e}"))
            )
        });
        let mut out = io::stdout().lock();
        // If stdout is gone there is nobody to tell; exit quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            std::process::exit(1);
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve { name, tcp, udp } => serve(name, &tcp, &udp),
        Cmd::Tcp {
            addr,
            count,
            timeout_ms,
            path,
            interval_ms,
            source_port,
            upload,
        } => {
            for i in 0..count {
                if i > 0 && interval_ms > 0 {
                    thread::sleep(Duration::from_millis(interval_ms));
                }
                let timeout = Duration::from_millis(timeout_ms.max(1));
                tcp_once(addr, source_port, &path, upload, timeout).print();
            }
            ExitCode::SUCCESS
        }
        Cmd::Udp {
            addr,
            count,
            connected,
            timeout_ms,
            interval_ms,
        } => {
            for i in 0..count {
                if i > 0 && interval_ms > 0 {
                    thread::sleep(Duration::from_millis(interval_ms));
                }
                udp_once(addr, connected, Duration::from_millis(timeout_ms.max(1))).print();
            }
            ExitCode::SUCCESS
        }
        Cmd::Hold { addr, timeout_ms } => hold(addr, Duration::from_millis(timeout_ms.max(1))),
    }
}

// ---------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------

fn serve(name: String, tcp: &[u16], udp: &[u16]) -> ExitCode {
    if tcp.is_empty() && udp.is_empty() {
        eprintln!("gp-probe serve: give at least one --tcp or --udp port");
        return ExitCode::from(2);
    }
    let name: Arc<str> = name.into();
    // Bind everything before announcing readiness.
    let mut listeners = Vec::new();
    for &port in tcp {
        match TcpListener::bind(("0.0.0.0", port)) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("gp-probe serve: bind tcp/{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let mut sockets = Vec::new();
    for &port in udp {
        match UdpSocket::bind(("0.0.0.0", port)) {
            Ok(s) => sockets.push(s),
            Err(e) => {
                eprintln!("gp-probe serve: bind udp/{port}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    for l in listeners {
        let name = name.clone();
        thread::spawn(move || accept_loop(l, name));
    }
    for s in sockets {
        let name = name.clone();
        thread::spawn(move || udp_loop(s, name));
    }
    println!("ready");
    if io::stdout().flush().is_err() {
        return ExitCode::FAILURE;
    }
    loop {
        thread::park();
    }
}

fn accept_loop(listener: TcpListener, name: Arc<str>) {
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                let name = name.clone();
                thread::spawn(move || {
                    if let Err(e) = handle_tcp(stream, &name) {
                        eprintln!("gp-probe serve: connection: {e}");
                    }
                });
            }
            Err(e) => {
                // E.g. EMFILE or ECONNABORTED: keep serving, don't spin.
                eprintln!("gp-probe serve: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

fn handle_tcp(stream: TcpStream, name: &str) -> io::Result<()> {
    let peer = stream.peer_addr()?;
    let mut writer = &stream;
    let mut reader = BufReader::new(&stream);
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line)? == 0 {
        return Ok(());
    }
    if line.starts_with(b"GET ") {
        // Consume the headers up to the blank line, so closing doesn't RST.
        let mut upload = 0usize;
        loop {
            let mut header = Vec::new();
            if reader.read_until(b'\n', &mut header)? == 0 || header == b"\r\n" || header == b"\n" {
                break;
            }
            let header = String::from_utf8_lossy(&header);
            if let Some(len) = header.strip_prefix("Content-Length:") {
                upload = len.trim().parse().unwrap_or(0);
            }
        }
        // A request body (bulk upload) must be the pattern, whole.
        let mut received = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        while received < upload {
            let want = (upload - received).min(buf.len());
            let n = reader.read(&mut buf[..want])?;
            if n == 0 {
                break;
            }
            if let Some(i) = pattern_mismatch(&buf[..n], received) {
                let status = format!("upload corrupt at byte {}", received + i);
                let response = format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{status}",
                    status.len()
                );
                writer.write_all(response.as_bytes())?;
                return stream.shutdown(std::net::Shutdown::Write);
            }
            received += n;
        }
        let path = String::from_utf8_lossy(&line)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let bulk = bulk_size(&path).unwrap_or(0);
        let body = format!("pod={name} client={peer}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len() + bulk
        );
        writer.write_all(response.as_bytes())?;
        let mut sent = 0;
        while sent < bulk {
            let n = (bulk - sent).min(64 * 1024);
            let block: Vec<u8> = (sent..sent + n).map(pattern).collect();
            writer.write_all(&block)?;
            sent += n;
        }
        writer.flush()?;
        return stream.shutdown(std::net::Shutdown::Write);
    }
    // Line mode: answer every line until EOF.
    loop {
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        writer.write_all(format!("pod={name} client={peer} line={text}\n").as_bytes())?;
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
    }
}

fn udp_loop(socket: UdpSocket, name: Arc<str>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf) {
            Ok((_, from)) => {
                let reply = format!("pod={name} client={from}\n");
                if let Err(e) = socket.send_to(reply.as_bytes(), from) {
                    eprintln!("gp-probe serve: udp reply to {from}: {e}");
                }
            }
            Err(e) => {
                eprintln!("gp-probe serve: udp recv: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// clients
// ---------------------------------------------------------------------------

/// Time left until `deadline`, or a timeout error (socket timeouts can't be zero).
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::from(io::ErrorKind::TimedOut))
    } else {
        Ok(left)
    }
}

fn addr_string(a: io::Result<SocketAddr>) -> Option<String> {
    a.ok().map(|a| a.to_string())
}

/// The trimmed body of an HTTP response, or the whole text if it isn't one.
fn http_body(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    match text.split_once("\r\n\r\n") {
        Some((_, body)) => body.trim().to_string(),
        None => text.trim().to_string(),
    }
}

/// The status code of an HTTP response (`HTTP/1.1 503 ...`).
fn http_status(data: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(data.get(..data.len().min(64))?).ok()?;
    let rest = text.strip_prefix("HTTP/")?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// `connect(2)` from `0.0.0.0:source_port` with a timeout. SO_REUSEADDR lets
/// the port be bound again while an earlier connection from it lingers in
/// TIME_WAIT (connect still refuses an identical 4-tuple: EADDRNOTAVAIL).
fn connect_from(addr: SocketAddr, source_port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let SocketAddr::V4(remote) = addr else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--source-port supports IPv4 only",
        ));
    };
    let sockaddr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: socket(2) has no memory arguments.
    let fd = check(unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })?;
    // SAFETY: fd is the socket just created; nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a live c_int of the given size.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    let local = sockaddr(std::net::Ipv4Addr::UNSPECIFIED, source_port);
    // SAFETY: local is a live sockaddr_in of `len` bytes.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&local as *const libc::sockaddr_in).cast(),
            len,
        )
    })?;
    let peer = sockaddr(*remote.ip(), remote.port());
    // SAFETY: peer is a live sockaddr_in of `len` bytes.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&peer as *const libc::sockaddr_in).cast(),
            len,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = remaining(deadline)?;
            let mut pfd = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
            // SAFETY: pfd is one live pollfd.
            match check(unsafe { libc::poll(&mut pfd, 1, ms) }) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::TimedOut)),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let mut err: libc::c_int = 0;
        let mut err_len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: err and err_len are live and sized for SO_ERROR.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut err as *mut libc::c_int).cast(),
                &mut err_len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Byte `i` of a bulk body: a pattern with period 251 (prime), so a lost,
/// duplicated or reordered segment shows up as a mismatch.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// The first index where `data` departs from the pattern (starting at
/// `offset`), if any.
fn pattern_mismatch(data: &[u8], offset: usize) -> Option<usize> {
    data.iter()
        .enumerate()
        .position(|(i, b)| *b != pattern(offset + i))
}

/// `/bulk/N` asks the server for N pattern bytes after its usual line.
fn bulk_size(path: &str) -> Option<usize> {
    path.strip_prefix("/bulk/")?.parse().ok()
}

fn tcp_once(
    addr: SocketAddr,
    source_port: Option<u16>,
    path: &str,
    upload: usize,
    timeout: Duration,
) -> Report {
    let deadline = Instant::now() + timeout;
    let connected = match source_port {
        Some(port) => connect_from(addr, port, timeout),
        None => TcpStream::connect_timeout(&addr, timeout),
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => return Report::failure("connect", &e),
    };
    let peer = match stream.peer_addr() {
        Ok(p) => Some(p.to_string()),
        Err(e) => return Report::failure("getpeername", &e),
    };
    let local = addr_string(stream.local_addr());
    let exchange = (|| -> Result<Vec<u8>, (&'static str, io::Error)> {
        stream
            .set_write_timeout(Some(remaining(deadline).map_err(|e| ("send", e))?))
            .map_err(|e| ("send", e))?;
        stream
            .write_all(
                format!("GET {path} HTTP/1.0\r\nHost: x\r\nContent-Length: {upload}\r\n\r\n")
                    .as_bytes(),
            )
            .map_err(|e| ("send", e))?;
        let mut sent = 0;
        while sent < upload {
            let n = (upload - sent).min(64 * 1024);
            let block: Vec<u8> = (sent..sent + n).map(pattern).collect();
            stream.write_all(&block).map_err(|e| ("send", e))?;
            sent += n;
        }
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = remaining(deadline).map_err(|e| ("recv", e))?;
            stream
                .set_read_timeout(Some(left))
                .map_err(|e| ("recv", e))?;
            match stream.read(&mut buf) {
                Ok(0) => return Ok(data),
                Ok(n) => data.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(("recv", e)),
            }
        }
    })();
    match exchange {
        Ok(data) => {
            let status = http_status(&data);
            let mut body = http_body(&data);
            if let Some(size) = bulk_size(path) {
                // The first line names the pod; the rest must be the
                // pattern, whole.
                let bytes = data
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map(|i| &data[i + 4..])
                    .unwrap_or_default();
                let line_end = bytes.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
                let payload = &bytes[line_end..];
                body = String::from_utf8_lossy(&bytes[..line_end])
                    .trim()
                    .to_string();
                let problem = if payload.len() != size {
                    Some(format!(
                        "bulk body has {} bytes, expected {size}",
                        payload.len()
                    ))
                } else {
                    pattern_mismatch(payload, 0).map(|i| format!("bulk body corrupt at byte {i}"))
                };
                if let Some(problem) = problem {
                    let e = io::Error::new(io::ErrorKind::InvalidData, problem);
                    return Report::failure("recv", &e).with_peer(peer, local);
                }
            }
            Report {
                ok: true,
                peer,
                local,
                status,
                reply: Some(body),
                ..Report::default()
            }
        }
        Err((stage, e)) => Report::failure(stage, &e).with_peer(peer, local),
    }
}

fn udp_once(addr: SocketAddr, connected: bool, timeout: Duration) -> Report {
    const PAYLOAD: &[u8] = b"gp-probe\n";
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return Report::failure("socket", &e),
    };
    if let Err(e) = socket.set_read_timeout(Some(timeout)) {
        return Report::failure("socket", &e);
    }
    let mut peer = None;
    if connected {
        if let Err(e) = socket.connect(addr) {
            return Report::failure("connect", &e);
        }
        peer = addr_string(socket.peer_addr());
        if let Err(e) = socket.send(PAYLOAD) {
            return Report::failure("send", &e).with_peer(peer, addr_string(socket.local_addr()));
        }
    } else if let Err(e) = socket.send_to(PAYLOAD, addr) {
        return Report::failure("send", &e);
    }
    let local = addr_string(socket.local_addr());
    let mut buf = vec![0u8; 65536];
    // recv_from also works on a connected socket and tells us who answered.
    match socket.recv_from(&mut buf) {
        Ok((n, from)) => Report {
            ok: true,
            peer,
            local,
            from: Some(from.to_string()),
            reply: Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            ..Report::default()
        },
        Err(e) => Report::failure("recv", &e).with_peer(peer, local),
    }
}

/// Reads '\n'-terminated lines from a socket with a per-line deadline.
struct LineReader {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl LineReader {
    /// The next line without its terminator; None on EOF.
    fn read_line(&mut self, timeout: Duration) -> io::Result<Option<String>> {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(Some(text.trim_end_matches(['\n', '\r']).to_string()));
            }
            self.stream.set_read_timeout(Some(remaining(deadline)?))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn hold(addr: SocketAddr, timeout: Duration) -> ExitCode {
    let stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            Report::failure("connect", &e).print();
            return ExitCode::FAILURE;
        }
    };
    let peer = addr_string(stream.peer_addr());
    let local = addr_string(stream.local_addr());
    Report {
        ok: true,
        peer: peer.clone(),
        local: local.clone(),
        ..Report::default()
    }
    .print();
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(e) => {
            Report::failure("socket", &e).with_peer(peer, local).print();
            return ExitCode::FAILURE;
        }
    };
    let mut reader = LineReader {
        stream,
        buf: Vec::new(),
    };
    for line in io::stdin().lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                Report::failure("stdin", &e).with_peer(peer, local).print();
                return ExitCode::FAILURE;
            }
        };
        let sent = writer
            .set_write_timeout(Some(timeout))
            .and_then(|()| writer.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = sent {
            Report::failure("send", &e).with_peer(peer, local).print();
            return ExitCode::FAILURE;
        }
        match reader.read_line(timeout) {
            Ok(Some(reply)) => Report {
                ok: true,
                peer: peer.clone(),
                reply: Some(reply),
                ..Report::default()
            }
            .print(),
            Ok(None) => {
                Report {
                    ok: false,
                    error: Some("connection closed by peer".into()),
                    stage: Some("recv"),
                    ..Report::default()
                }
                .with_peer(peer, local)
                .print();
                return ExitCode::FAILURE;
            }
            Err(e) => {
                Report::failure("recv", &e).with_peer(peer, local).print();
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
