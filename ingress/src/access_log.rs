//! The access log's `tracing` layer: each event of target
//! [`ACCESS_LOG_TARGET`](crate::proxy::record::ACCESS_LOG_TARGET) becomes
//! one JSON object on one line, fields at the top level
//! (`{"timestamp":…,"level":"INFO","target":"access","message":"request",
//! "method":…}`).
//!
//! Written by hand rather than with `tracing-subscriber`'s JSON formatter,
//! which builds a map per event: on the request path that cost a fifth of
//! the proxy's throughput. This one appends to a reused per-thread buffer
//! and hands the line to the writer in one call. [`LogBuffer`] is the
//! writer: lines are appended to a shared buffer that a thread of its own
//! writes out every few milliseconds, so a request costs no system call
//! and wakes no thread.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::{self, Write as _};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer};

/// Writes events as JSON lines to `W`.
#[derive(Debug)]
pub struct JsonLines<W> {
    writer: W,
}

impl<W> JsonLines<W> {
    /// A layer writing to `writer`.
    pub fn new(writer: W) -> Self {
        JsonLines { writer }
    }
}

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
}

impl<S, W> Layer<S> for JsonLines<W>
where
    S: Subscriber,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                // Re-entered from inside a write: drop rather than panic.
                return;
            };
            line.clear();
            line.push_str("{\"timestamp\":\"");
            push_timestamp(&mut line, time::OffsetDateTime::now_utc());
            line.push_str("\",\"level\":\"");
            line.push_str(event.metadata().level().as_str());
            line.push_str("\",\"target\":");
            push_json_str(&mut line, event.metadata().target());
            event.record(&mut Fields(&mut line));
            line.push_str("}\n");
            // A failed write (stdout closed) loses the line and nothing else.
            let _ = self.writer.make_writer().write_all(line.as_bytes());
        });
    }
}

/// RFC 3339 UTC with microseconds, e.g. `2026-11-22T20:12:39.185069Z`.
fn push_timestamp(out: &mut String, t: time::OffsetDateTime) {
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    );
}

/// Appends `s` as a JSON string (RFC 8259 escaping).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    escape_into(out, s);
    out.push('"');
}

fn escape_into(out: &mut String, s: &str) {
    // Fast path: most values (methods, paths, addresses) need no escaping.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
}

/// A `fmt::Write` that JSON-escapes what is written through it.
struct Escaping<'a>(&'a mut String);

impl fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        escape_into(self.0, s);
        Ok(())
    }
}

struct Fields<'a>(&'a mut String);

impl Fields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push(',');
        push_json_str(self.0, field.name());
        self.0.push(':');
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        push_json_str(self.0, value);
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            // JSON has no NaN or infinity.
            self.0.push_str("null");
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.key(field);
        self.0.push('"');
        // Formatted straight into the line, escaped on the way: no
        // temporary string per field.
        let _ = write!(Escaping(self.0), "{value:?}");
        self.0.push('"');
    }
}

/// How often [`LogBuffer`]'s thread writes out what accumulated.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// Past this many buffered bytes (the output is not keeping up), writers
/// wait for the flush thread: every request is logged, none is dropped.
const MAX_BUFFERED: usize = 4 << 20;

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<BufferState>,
    /// Signals the flush thread (stop, or too much buffered) and writers
    /// waiting for room.
    changed: Condvar,
}

#[derive(Debug, Default)]
struct BufferState {
    data: Vec<u8>,
    stopping: bool,
}

/// A buffered, asynchronously flushed writer (see the module docs). Clone
/// it freely; [`LogBuffer::flush_guard`] flushes the rest when dropped.
#[derive(Clone, Debug)]
pub struct LogBuffer {
    shared: Arc<Shared>,
}

/// Stops the flush thread of a [`LogBuffer`] after a last flush.
#[derive(Debug)]
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogBuffer {
    /// A buffer whose thread writes to `out`; keep the guard for as long as
    /// lines are logged.
    pub fn new<W: io::Write + Send + 'static>(mut out: W) -> io::Result<(LogBuffer, FlushGuard)> {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut spare = Vec::new();
                loop {
                    let stopping = {
                        let state = thread_shared
                            .state
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        let (mut state, _) = thread_shared
                            .changed
                            .wait_timeout_while(state, FLUSH_INTERVAL, |s| {
                                !s.stopping && s.data.len() < MAX_BUFFERED
                            })
                            .unwrap_or_else(PoisonError::into_inner);
                        std::mem::swap(&mut state.data, &mut spare);
                        state.stopping
                    };
                    thread_shared.changed.notify_all();
                    if !spare.is_empty() {
                        // A failed write (stdout closed) loses these lines
                        // and nothing else.
                        let _ = out.write_all(&spare).and_then(|()| out.flush());
                        spare.clear();
                    }
                    if stopping {
                        return;
                    }
                }
            })?;
        Ok((
            LogBuffer {
                shared: shared.clone(),
            },
            FlushGuard {
                shared,
                thread: Some(thread),
            },
        ))
    }

    fn append(&self, data: &[u8]) {
        let state = self
            .shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut state = if state.data.len() >= MAX_BUFFERED {
            self.shared.changed.notify_all();
            self.shared
                .changed
                .wait_while(state, |s| s.data.len() >= MAX_BUFFERED && !s.stopping)
                .unwrap_or_else(PoisonError::into_inner)
        } else {
            state
        };
        state.data.extend_from_slice(data);
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .stopping = true;
        self.shared.changed.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl io::Write for LogBuffer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.append(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;

    fn make_writer(&'a self) -> LogBuffer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Buffer {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    #[test]
    fn each_event_is_one_valid_json_line_with_top_level_fields() {
        let buffer = Buffer::default();
        let subscriber = tracing_subscriber::registry().with(JsonLines::new(buffer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(
                target: "access",
                method = "GET",
                host = "we\"ird\\host\n",
                status = 200u16,
                duration_ms = 1.5,
                upstream_ms = f64::NAN,
                ok = true,
                delta = -3i64,
                protocol = ?http::Version::HTTP_2,
                "request"
            );
            tracing::info!(target: "access", "second");
        });
        let text = String::from_utf8(buffer.0.lock().expect("buffer").clone()).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("valid JSON");
        assert_eq!(v["message"], "request");
        assert_eq!(v["target"], "access");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["host"], "we\"ird\\host\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["duration_ms"], 1.5);
        assert!(v["upstream_ms"].is_null());
        assert_eq!(v["ok"], true);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["protocol"], "HTTP/2.0");
        let ts = v["timestamp"].as_str().expect("timestamp");
        let shape: String = ts
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z", "RFC 3339 UTC: {ts}");
    }

    #[test]
    fn the_buffer_writes_everything_out_soon_and_on_drop() {
        let out = Buffer::default();
        let (mut log, guard) = LogBuffer::new(out.clone()).expect("thread");
        log.write_all(b"one\n").expect("write");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while out.0.lock().expect("buffer").is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "flushed within the interval"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        for i in 0..1000 {
            log.write_all(format!("{i}\n").as_bytes()).expect("write");
        }
        drop(guard);
        let text = String::from_utf8(out.0.lock().expect("buffer").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1001, "nothing lost at shutdown");
        assert_eq!(text.lines().last(), Some("999"));
    }
}
