//! Request message size limit, enforced on the wire before anything is buffered.
//!
//! Every gRPC message is framed as 1 flag byte, a 4-byte big-endian length, then the payload.
//! [`MessageSizeLimitLayer`] reads those headers as the request body streams in and fails the
//! call with RESOURCE_EXHAUSTED as soon as a frame announces more than the limit — before the
//! payload is read, and the same for every service (tonic's own check would answer OUT_OF_RANGE,
//! and only after the handler's decoder saw the header). The layer sits inside the gRPC-Web
//! translation, so browser calls are held to the same limit.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http::Request;
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::{Layer, Service};

/// Bulk methods whose requests carry whole files may send larger messages, so that an oversized
/// document inside one reaches the handler and is refused there with INVALID_ARGUMENT naming
/// the source, instead of failing the whole call at the transport.
pub const BULK_METHODS: &[&str] = &["/platform.catalog.v1.CatalogService/ImportEntities"];
/// The message limit of [`BULK_METHODS`] (never below the general limit).
pub const BULK_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

/// Caps the size of every gRPC message in a request body.
#[derive(Debug, Clone, Copy)]
pub struct MessageSizeLimitLayer {
    limit: usize,
}

impl MessageSizeLimitLayer {
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for MessageSizeLimitLayer {
    type Service = MessageSizeLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MessageSizeLimit {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MessageSizeLimit<S> {
    inner: S,
    limit: usize,
}

impl<S> Service<Request<tonic::body::Body>> for MessageSizeLimit<S>
where
    S: Service<Request<tonic::body::Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let limit = if BULK_METHODS.contains(&request.uri().path()) {
            self.limit.max(BULK_MESSAGE_BYTES)
        } else {
            self.limit
        };
        let request = request.map(|body| {
            tonic::body::Body::new(LimitedBody {
                inner: body,
                frames: FrameLimit::new(limit),
            })
        });
        self.inner.call(request)
    }
}

/// Tracks gRPC frame boundaries across arbitrarily split chunks.
#[derive(Debug)]
struct FrameLimit {
    limit: usize,
    header: [u8; 5],
    header_filled: usize,
    payload_remaining: usize,
}

impl FrameLimit {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; 5],
            header_filled: 0,
            payload_remaining: 0,
        }
    }

    /// Feeds the next chunk of the body; errs on the first frame over the limit.
    fn feed(&mut self, mut chunk: &[u8]) -> Result<(), Status> {
        while !chunk.is_empty() {
            if self.payload_remaining > 0 {
                let step = self.payload_remaining.min(chunk.len());
                self.payload_remaining -= step;
                chunk.advance(step);
                continue;
            }
            let step = (5 - self.header_filled).min(chunk.len());
            self.header[self.header_filled..self.header_filled + step]
                .copy_from_slice(&chunk[..step]);
            self.header_filled += step;
            chunk.advance(step);
            if self.header_filled == 5 {
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    return Err(Status::resource_exhausted(format!(
                        "request message is {len} bytes; the limit is {} bytes",
                        self.limit
                    )));
                }
                self.header_filled = 0;
                self.payload_remaining = len;
            }
        }
        Ok(())
    }
}

pin_project_lite::pin_project! {
    struct LimitedBody {
        #[pin]
        inner: tonic::body::Body,
        frames: FrameLimit,
    }
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.frames.feed(data)?;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.extend(std::iter::repeat_n(7u8, len));
        f
    }

    #[test]
    fn frames_at_the_limit_pass_in_any_split() {
        let mut body = frame(10);
        body.extend(frame(0));
        body.extend(frame(10));
        for split in 1..body.len() {
            let mut limit = FrameLimit::new(10);
            for chunk in body.chunks(split) {
                limit.feed(chunk).expect("within limit");
            }
        }
    }

    #[test]
    fn a_frame_over_the_limit_fails_on_its_header() {
        let mut limit = FrameLimit::new(10);
        limit.feed(&frame(3)).expect("small frame");
        // Only the header of the big frame: rejected before its payload arrives.
        let err = limit.feed(&frame(11)[..5]).expect_err("over limit");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("11 bytes"));
    }
}
