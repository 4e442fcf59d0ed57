//! Processes started inside the simulated cluster: spawning into a netns and
//! cgroup without races, output capture, and kill-on-drop.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::sys;

/// Set to a non-empty value to copy every child's stdout/stderr lines to the
/// test's stderr as they arrive, prefixed with the process label.
pub const ECHO_ENV: &str = "GANGPLANK_TESTS_ECHO";

/// Locks a mutex, ignoring poisoning: a panicking test must not prevent cleanup.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A child shared between its `Proc` handle and the cluster's registry.
///
/// Every reap goes through this mutex, and `Child` remembers its exit status,
/// so whoever kills later knows the pid may have been recycled and leaves it
/// alone (std's `Child::kill` is a no-op once the status has been collected).
pub(crate) type SharedChild = Arc<Mutex<Child>>;

/// Where a process is placed before `exec`.
pub(crate) struct Placement {
    /// Human-readable label for messages, e.g. "pod-a1 (gpt-12-0)".
    pub label: String,
    /// Named netns to enter, if any.
    pub netns: Option<String>,
    /// cgroup2 directory to join, if any.
    pub cgroup: Option<PathBuf>,
}

// ---------------------------------------------------------------------------
// Spawning
// ---------------------------------------------------------------------------

struct SpawnRequest {
    cmd: Command,
    reply: mpsc::Sender<io::Result<Child>>,
}

/// Sender to the process-wide spawner thread.
///
/// Children get PR_SET_PDEATHSIG=SIGKILL so they die with the test binary even
/// if it is killed without unwinding (Ctrl-C, a cargo timeout). The "parent"
/// for that signal is the *thread* that forked, so all forks happen on one
/// thread that lives as long as the process; forking from test threads would
/// kill children when a test's thread (or a helper thread) ends.
fn spawner() -> Result<&'static mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Result<mpsc::Sender<SpawnRequest>, String>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("gp-spawner".into())
            .spawn(move || {
                for mut req in rx {
                    let res = req.cmd.spawn();
                    // The requester may have given up (panicked); then the
                    // Child is dropped here and, unregistered, only
                    // PDEATHSIG will end it. Nothing better to do.
                    let _ = req.reply.send(res);
                }
            })
            .map(|_| tx)
            .map_err(|e| format!("starting the spawner thread: {e}"))
    });
    tx.as_ref().map_err(|e| anyhow!("{e}"))
}

/// Spawns `cmd` placed per `placement`, with stdout/stderr captured and stdin
/// piped (or null).
///
/// The cgroup join and the `setns` happen in the child between fork and exec
/// (`pre_exec`), so the program never runs a single instruction elsewhere.
pub(crate) fn spawn(
    mut cmd: Command,
    placement: &Placement,
    piped_stdin: bool,
) -> Result<(Proc, SharedChild)> {
    let desc = format!("{cmd:?}");
    let netns: Option<File> = placement
        .netns
        .as_deref()
        .map(sys::open_netns)
        .transpose()?;
    let cgroup_procs: Option<File> = placement
        .cgroup
        .as_ref()
        .map(|cg| {
            let path = cg.join("cgroup.procs");
            OpenOptions::new()
                .write(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))
        })
        .transpose()?;
    let ns_fd: Option<RawFd> = netns.as_ref().map(|f| f.as_raw_fd());
    let cg_fd: Option<RawFd> = cgroup_procs.as_ref().map(|f| f.as_raw_fd());
    let parent_pid = std::process::id() as libc::pid_t;

    cmd.stdin(if piped_stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    // SAFETY: the closure only makes async-signal-safe syscalls (prctl,
    // getppid, write, setns) on fds that stay open until `spawn` returns
    // (`netns` / `cgroup_procs` outlive the request below); they are O_CLOEXEC
    // so the program does not inherit them.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent_pid {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if let Some(fd) = cg_fd {
                // "0" means "the writing process" in cgroup.procs.
                if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = ns_fd {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }

    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()?
        .send(SpawnRequest {
            cmd,
            reply: reply_tx,
        })
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    let spawned = reply_rx
        .recv()
        .map_err(|_| anyhow!("the spawner thread is gone"))?;
    drop((netns, cgroup_procs));
    let mut child = spawned.with_context(|| format!("starting {desc} in {}", placement.label))?;

    let pid = child.id();
    let label = format!("{} [{}]", placement.label, pid);
    let echo = std::env::var_os(ECHO_ENV).is_some_and(|v| !v.is_empty());
    let stdout = Capture::start(child.stdout.take(), echo.then(|| format!("{label} out")));
    let stderr = Capture::start(child.stderr.take(), echo.then(|| format!("{label} err")));
    let stdin = child.stdin.take();
    let shared = Arc::new(Mutex::new(child));
    let proc = Proc {
        label,
        desc,
        pid,
        child: shared.clone(),
        stdin,
        stdout,
        stderr,
        stdout_cursor: 0,
        stderr_cursor: 0,
    };
    Ok((proc, shared))
}

/// SIGKILLs (unless already reaped) and reaps a shared child.
pub(crate) fn kill_and_reap(child: &SharedChild) -> io::Result<ExitStatus> {
    let mut c = lock(child);
    c.kill()?;
    c.wait()
}

// ---------------------------------------------------------------------------
// Output capture
// ---------------------------------------------------------------------------

#[derive(Default)]
struct CaptureState {
    /// Everything read so far, raw.
    raw: Vec<u8>,
    /// Complete lines so far (without "\n" / "\r\n"), lossily decoded.
    lines: Vec<String>,
    /// Bytes of the current, not yet terminated line.
    partial: Vec<u8>,
    /// The pipe reached EOF (or failed).
    eof: bool,
}

/// A pipe drained by a background thread so the child never blocks on a full
/// pipe, with a condvar for waiters.
struct Capture {
    state: Mutex<CaptureState>,
    cond: Condvar,
}

impl Capture {
    fn start<R: Read + Send + 'static>(pipe: Option<R>, echo: Option<String>) -> Arc<Capture> {
        let cap = Arc::new(Capture {
            state: Mutex::new(CaptureState::default()),
            cond: Condvar::new(),
        });
        let Some(mut pipe) = pipe else {
            lock(&cap.state).eof = true;
            return cap;
        };
        let c = cap.clone();
        // Detached: if a grandchild keeps the pipe open the thread simply
        // stays blocked until the process exits, which is harmless.
        let started = std::thread::Builder::new()
            .name("gp-capture".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    let n = match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    };
                    let mut st = lock(&c.state);
                    st.raw.extend_from_slice(&buf[..n]);
                    for &b in &buf[..n] {
                        if b == b'\n' {
                            let mut line = std::mem::take(&mut st.partial);
                            if line.last() == Some(&b'\r') {
                                line.pop();
                            }
                            let line = String::from_utf8_lossy(&line).into_owned();
                            if let Some(prefix) = &echo {
                                eprintln!("[{prefix}] {line}");
                            }
                            st.lines.push(line);
                        } else {
                            st.partial.push(b);
                        }
                    }
                    drop(st);
                    c.cond.notify_all();
                }
                lock(&c.state).eof = true;
                c.cond.notify_all();
            });
        if started.is_err() {
            // Can't drain it: mark EOF so waiters fail instead of hanging.
            lock(&cap.state).eof = true;
        }
        cap
    }

    /// Waits for a line at index >= `*cursor` matching `pred`; on success the
    /// cursor moves just past it.
    fn wait_for_line(
        &self,
        cursor: &mut usize,
        pred: &mut dyn FnMut(&str) -> bool,
        deadline: Instant,
    ) -> std::result::Result<String, WaitFailure> {
        let mut st = lock(&self.state);
        let mut scanned = *cursor;
        loop {
            while scanned < st.lines.len() {
                if pred(&st.lines[scanned]) {
                    *cursor = scanned + 1;
                    return Ok(st.lines[scanned].clone());
                }
                scanned += 1;
            }
            if st.eof {
                return Err(WaitFailure::Eof);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFailure::Timeout);
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until EOF, at most until `deadline`; returns whether EOF was seen.
    fn wait_eof(&self, deadline: Instant) -> bool {
        let mut st = lock(&self.state);
        while !st.eof {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            st = self
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    fn lines(&self) -> Vec<String> {
        lock(&self.state).lines.clone()
    }

    fn raw(&self) -> Vec<u8> {
        lock(&self.state).raw.clone()
    }

    /// The last `max` bytes as text, for error messages.
    fn tail(&self, max: usize) -> String {
        let st = lock(&self.state);
        let start = st.raw.len().saturating_sub(max);
        let text = String::from_utf8_lossy(&st.raw[start..]).into_owned();
        if start > 0 {
            format!("...{text}")
        } else {
            text
        }
    }
}

enum WaitFailure {
    Eof,
    Timeout,
}

// ---------------------------------------------------------------------------
// Proc
// ---------------------------------------------------------------------------

/// A process running inside the simulated cluster.
///
/// stdout and stderr are piped and drained continuously by background threads
/// (read them with [`Proc::wait_for_line`], [`Proc::stdout_lines`], ...); stdin
/// is piped for `spawn_*` (see [`Proc::send_line`]).
///
/// Dropping the handle SIGKILLs and reaps the process; the owning `Cluster`
/// does the same for handles that were leaked. Children also get
/// `PR_SET_PDEATHSIG=SIGKILL`, so they die with the test binary even when it
/// is killed outright. Only the direct child is signalled: a program that
/// forks (e.g. `sh -c` without `exec`) must clean up its own children.
pub struct Proc {
    label: String,
    desc: String,
    pid: u32,
    child: SharedChild,
    stdin: Option<ChildStdin>,
    stdout: Arc<Capture>,
    stderr: Arc<Capture>,
    stdout_cursor: usize,
    stderr_cursor: usize,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("label", &self.label)
            .field("cmd", &self.desc)
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `where [pid]`, e.g. `pod-a1 (gpt-1234-0) [5678]`, for messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The command line as given (Debug format of the `Command`).
    pub fn command(&self) -> &str {
        &self.desc
    }

    /// Takes the child's stdin (None if already taken or not piped).
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Writes `line` plus "\n" to the child's stdin.
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        let label = &self.label;
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("{label}: stdin was taken or closed"))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .with_context(|| format!("{label}: writing to stdin"))
    }

    /// Closes the child's stdin (it sees EOF).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for a stdout line satisfying `pred` and returns it.
    ///
    /// Only lines after the previously matched one are considered, so
    /// successive calls walk forward through the output; all lines remain
    /// available from [`Proc::stdout_lines`]. Fails on timeout or when stdout
    /// closes (usually: the process exited), with the process's recent output.
    pub fn wait_for_line(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_on(false, &mut pred, timeout)
    }

    /// Like [`Proc::wait_for_line`], for stderr (where most loggers write).
    pub fn wait_for_stderr_line(
        &mut self,
        mut pred: impl FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_on(true, &mut pred, timeout)
    }

    fn wait_on(
        &mut self,
        stderr: bool,
        pred: &mut dyn FnMut(&str) -> bool,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        let (capture, cursor, stream) = if stderr {
            (&self.stderr, &mut self.stderr_cursor, "stderr")
        } else {
            (&self.stdout, &mut self.stdout_cursor, "stdout")
        };
        match capture.wait_for_line(cursor, pred, deadline) {
            Ok(l) => Ok(l),
            Err(f) => Err(self.wait_error(stream, f, timeout)),
        }
    }

    fn wait_error(&self, stream: &str, f: WaitFailure, timeout: Duration) -> anyhow::Error {
        let what = match f {
            WaitFailure::Timeout => format!("no matching {stream} line within {timeout:?}"),
            WaitFailure::Eof => {
                // Give the exit status a moment to become available.
                let status = self.wait_status_briefly();
                format!("{stream} closed before a matching line (process {status})")
            }
        };
        anyhow!(
            "{} `{}`: {what}\n{}",
            self.label,
            self.desc,
            self.output_summary()
        )
    }

    fn wait_status_briefly(&self) -> String {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            match lock(&self.child).try_wait() {
                Ok(Some(st)) => return describe_status(st),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Ok(None) => return "still running".into(),
                Err(e) => return format!("status unknown: {e}"),
            }
        }
    }

    /// Recent stdout and stderr, formatted for error messages.
    pub fn output_summary(&self) -> String {
        format!(
            "--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}",
            self.stdout.tail(4000).trim_end(),
            self.stderr.tail(4000).trim_end()
        )
    }

    /// All complete stdout lines so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lines()
    }

    /// All complete stderr lines so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines()
    }

    /// Everything read from stdout so far (lossily decoded).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout.raw()).into_owned()
    }

    /// Everything read from stderr so far (lossily decoded).
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.raw()).into_owned()
    }

    /// The exit status if the process has exited (reaping it), else None.
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        lock(&self.child)
            .try_wait()
            .with_context(|| format!("{}: waitpid", self.label))
    }

    /// Waits up to `timeout` for the process to exit; None if it is still
    /// running. After an exit, its output has been read to the end (bounded
    /// by a short grace, for a grandchild that may hold the pipes), so
    /// [`Proc::stdout_lines`] sees the last line too.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        // Polling keeps the lock free for Drop/kill; 5 ms is plenty for tests.
        loop {
            if let Some(st) = self.try_wait()? {
                let drained = Instant::now() + Duration::from_secs(2);
                self.stdout.wait_eof(drained);
                self.stderr.wait_eof(drained);
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) unless the process was already reaped.
    pub fn signal(&self, signal: i32) -> Result<()> {
        let mut c = lock(&self.child);
        // Holding the lock, nobody else can reap it between the check and the
        // kill(), so the pid cannot have been recycled.
        if c.try_wait()?.is_some() {
            bail!(
                "{}: already exited, not sending signal {signal}",
                self.label
            );
        }
        // SAFETY: plain syscall; the pid is our unreaped child.
        if unsafe { libc::kill(self.pid as libc::pid_t, signal) } != 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("{}: kill({signal})", self.label));
        }
        Ok(())
    }

    /// SIGKILLs the process (if still running) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        kill_and_reap(&self.child).with_context(|| format!("{}: kill", self.label))
    }

    /// SIGTERM, then up to `timeout` for a clean exit, then SIGKILL; returns
    /// the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(st) = self.try_wait()? {
            return Ok(st);
        }
        // It may exit between try_wait and signal; that's fine.
        let _ = self.signal(libc::SIGTERM);
        match self.wait_timeout(timeout)? {
            Some(st) => Ok(st),
            None => self.kill(),
        }
    }

    /// Waits up to `timeout` for exit and returns everything it printed.
    ///
    /// On timeout the process is killed and the error names the command and
    /// includes its stderr. A non-zero exit is *not* an error.
    pub fn wait_with_output(mut self, timeout: Duration) -> Result<Output> {
        self.close_stdin();
        let status = match self.wait_timeout(timeout)? {
            Some(st) => st,
            None => {
                let _ = self.kill();
                // Collect whatever the reader threads still get.
                let grace = Instant::now() + Duration::from_millis(200);
                self.stderr.wait_eof(grace);
                bail!(
                    "{} `{}` timed out after {timeout:?} and was killed\n{}",
                    self.label,
                    self.desc,
                    self.output_summary()
                );
            }
        };
        // The pipes close when the process exits unless it left children
        // holding them; don't wait forever for those.
        let deadline = Instant::now() + Duration::from_secs(2);
        self.stdout.wait_eof(deadline);
        self.stderr.wait_eof(deadline);
        Ok(Output {
            status,
            stdout: self.stdout.raw(),
            stderr: self.stderr.raw(),
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = kill_and_reap(&self.child) {
            eprintln!("gangplank-sim: {}: kill on drop failed: {e}", self.label);
        }
    }
}

/// "exited with 3", "killed by signal 9", for messages.
pub(crate) fn describe_status(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => format!("{st}"),
    }
}
