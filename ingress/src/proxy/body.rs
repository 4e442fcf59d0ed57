//! Bodies: the request body handed to the upstream client so that it can be
//! taken back when a connection attempt fails, and the response body type.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// What the proxy answers with: the upstream's streamed body, or a small
/// body of its own (errors).
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

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
}

impl BodySlot {
    /// Parks `body`.
    pub fn new(body: Incoming) -> Self {
        BodySlot {
            hint: body.size_hint(),
            end: body.is_end_stream(),
            slot: Arc::new(Mutex::new(Some(body))),
        }
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

    /// A body for one attempt.
    pub fn attempt(&self) -> UpstreamBody {
        UpstreamBody {
            slot: self.clone(),
            body: None,
        }
    }
}

/// The request body of one upstream attempt (see [`BodySlot`]).
#[derive(Debug)]
pub struct UpstreamBody {
    slot: BodySlot,
    body: Option<Incoming>,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
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
            Some(body) => Pin::new(body).poll_frame(cx),
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
