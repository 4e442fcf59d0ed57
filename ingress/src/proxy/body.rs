//! Bodies: the request body handed to the upstream client so that it can be
//! taken back when a connection attempt fails (and cut off past the size
//! limit), and the response body, which closes the request's record when
//! it ends.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::client::PooledBody;
use super::record::RequestRecord;

/// Error type of request bodies sent upstream.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past [`ProxyConfig::max_body_bytes`](super::ProxyConfig).
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    /// The limit.
    pub limit: u64,
}

/// What the proxy answers with: the upstream's streamed body or a small
/// body of its own (errors), plus what is closed when the response ends:
/// the request's record (access log, metrics, in-flight count) and the
/// connection's count of active requests.
#[derive(Debug)]
pub struct ResponseBody {
    inner: Either<PooledBody, Full<Bytes>>,
    record: Option<RequestRecord>,
    active: Option<ActiveRequest>,
}

/// Something dropped when a response ends (see
/// [`ResponseBody::on_end`]).
pub type ActiveRequest = Box<dyn std::any::Any + Send + Sync>;

impl ResponseBody {
    /// A body without a record.
    pub fn new(inner: Either<PooledBody, Full<Bytes>>) -> Self {
        ResponseBody {
            inner,
            record: None,
            active: None,
        }
    }

    /// Closes `record` when the response ends.
    pub fn with_record(mut self, record: RequestRecord) -> Self {
        self.record = Some(record);
        self
    }

    /// Drops `guard` when the response ends.
    pub fn on_end(&mut self, guard: ActiveRequest) {
        self.active = Some(guard);
    }

    fn finish(&mut self) {
        self.record = None;
        self.active = None;
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Either::Left(body) => Pin::new(body).poll_frame(cx),
            Either::Right(body) => Pin::new(body)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(record), Some(data)) = (this.record.as_mut(), frame.data_ref()) {
                    record.bytes += data.remaining() as u64;
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's request body, parked until the upstream connection first
/// polls it.
///
/// The hyper client consumes the request it is given, even when it fails to
/// connect, so a body passed directly could not be retried on another
/// endpoint. Instead each attempt gets an [`UpstreamBody`] sharing this
/// slot: the body moves out only on the first poll, which happens after a
/// connection exists, so after a connect error it is still here
/// ([`BodySlot::is_untouched`]) for the next attempt. Nothing is buffered.
#[derive(Clone, Debug)]
pub struct BodySlot {
    slot: Arc<Mutex<Option<Incoming>>>,
    hint: SizeHint,
    end: bool,
    limit: u64,
    too_large: Arc<AtomicBool>,
}

impl BodySlot {
    /// Parks `body`, which may be at most `limit` bytes long.
    pub fn new(body: Incoming, limit: u64) -> Self {
        BodySlot {
            hint: body.size_hint(),
            end: body.is_end_stream(),
            slot: Arc::new(Mutex::new(Some(body))),
            limit,
            too_large: Arc::default(),
        }
    }

    /// Whether an attempt failed because the body outgrew the limit (the
    /// client gets 413).
    pub fn was_too_large(&self) -> bool {
        self.too_large.load(Ordering::Relaxed)
    }

    /// Whether the body is empty (a request without payload), known before
    /// any of it is read.
    pub fn is_empty(&self) -> bool {
        self.end
    }

    /// Whether no attempt has started reading the body yet.
    pub fn is_untouched(&self) -> bool {
        self.slot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// No body at all (tests of the upstream client).
    #[cfg(test)]
    pub(crate) fn empty() -> Self {
        BodySlot {
            slot: Arc::default(),
            hint: SizeHint::with_exact(0),
            end: true,
            limit: 0,
            too_large: Arc::default(),
        }
    }

    /// A body for one attempt.
    pub fn attempt(&self) -> UpstreamBody {
        UpstreamBody {
            slot: self.clone(),
            body: None,
            sent: 0,
            // Nothing to send is sent already.
            finished: Arc::new(AtomicBool::new(self.end)),
        }
    }
}

/// The request body of one upstream attempt (see [`BodySlot`]).
#[derive(Debug)]
pub struct UpstreamBody {
    slot: BodySlot,
    body: Option<Incoming>,
    sent: u64,
    /// Set once the whole body has been handed to the connection.
    finished: Arc<AtomicBool>,
}

impl UpstreamBody {
    /// Turns true once the whole body has been sent: only then may the
    /// connection carry another request (an upstream can answer before
    /// reading an upload to the end).
    pub fn finished(&self) -> Arc<AtomicBool> {
        self.finished.clone()
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if this.body.is_none() {
            this.body = this
                .slot
                .slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        match this.body.as_mut() {
            Some(body) => match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.sent += data.remaining() as u64;
                        if this.sent > this.slot.limit {
                            // Streamed, never buffered: the limit is
                            // noticed mid-body and the upstream request is
                            // aborted.
                            this.slot.too_large.store(true, Ordering::Relaxed);
                            let limit = this.slot.limit;
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge { limit }))));
                        }
                    }
                    if body.is_end_stream() {
                        this.finished.store(true, Ordering::Relaxed);
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => {
                    this.finished.store(true, Ordering::Relaxed);
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            },
            // Another attempt already took the body: nothing to send. Not
            // reached: an attempt only starts while the slot is full.
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Some(body) => body.is_end_stream(),
            None => self.slot.end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Some(body) => body.size_hint(),
            None => self.slot.hint,
        }
    }
}
