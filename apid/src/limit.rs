//! The message limit on a client stream: every message's length prefix is
//! checked on its way through, as grpc-go checks every message it receives,
//! without holding the stream back.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use machinery::h2::{Body, BoxError, boxed};
use tokio::sync::oneshot;

use crate::MAX_MESSAGE;
use crate::inject::declared_len;

/// What a caller is told about a message over the limit. Upstream's apid is
/// a grpc-go proxy: grpc-go refuses the message (ResourceExhausted) and the
/// proxy hands that on wrapped in an Internal error, so clients see this.
#[must_use]
pub fn too_large(declared: usize) -> tonic::Status {
    tonic::Status::internal(format!(
        "failed proxying s2c: rpc error: code = ResourceExhausted desc = grpc: received message \
         larger than max ({declared} vs. {MAX_MESSAGE})"
    ))
}

/// Where messages begin in a gRPC byte stream, as far as their length
/// prefixes tell.
#[derive(Debug, Default)]
struct Boundaries {
    /// Bytes of the current message still to come.
    rest: usize,
    /// A length prefix split across chunks.
    prefix: [u8; 5],
    have: usize,
}

impl Boundaries {
    /// Walks `data`; the declared length of a message over `max`, if one
    /// begins in it.
    fn check(&mut self, mut data: &[u8], max: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.rest > 0 {
                let n = self.rest.min(data.len());
                self.rest -= n;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 5 {
                self.have = 0;
                let declared = declared_len(&self.prefix).unwrap_or_default();
                if declared > max {
                    return Err(declared);
                }
                self.rest = declared;
            }
        }
        Ok(())
    }
}

/// A client stream with its messages checked. A message over the limit
/// fails the stream where it begins, so none of it is passed on, and tells
/// the [`Refusal`] that goes with it.
#[derive(Debug)]
pub struct Checked {
    inner: Incoming,
    bounds: Boundaries,
    refuse: Option<oneshot::Sender<tonic::Status>>,
    failed: bool,
}

/// Wraps `body`; the refusal answers the call if a message is too large.
#[must_use]
pub fn checked(body: Incoming) -> (Checked, Refusal) {
    let (tx, rx) = oneshot::channel();
    let body = Checked {
        inner: body,
        bounds: Boundaries::default(),
        refuse: Some(tx),
        failed: false,
    };
    (body, Refusal(Some(rx)))
}

impl HttpBody for Checked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            // The stream is over either way: no refusal can follow, and
            // the response need not wait for one.
            Some(Err(e)) => {
                self.refuse = None;
                return Poll::Ready(Some(Err(e.into())));
            }
            None => {
                self.refuse = None;
                return Poll::Ready(None);
            }
        };
        if let Some(data) = frame.data_ref()
            && let Err(declared) = self.bounds.check(data, MAX_MESSAGE)
        {
            let status = too_large(declared);
            self.failed = true;
            // Told before the stream fails, so the answer is this status
            // rather than whatever the backend makes of the reset.
            if let Some(tx) = self.refuse.take() {
                let _ = tx.send(status.clone());
            }
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer to a call whose client stream was refused, if it is.
#[derive(Debug)]
pub struct Refusal(Option<oneshot::Receiver<tonic::Status>>);

impl Refusal {
    /// For a request read whole, which cannot be refused later.
    #[must_use]
    pub fn none() -> Refusal {
        Refusal(None)
    }

    /// Runs `call`. A refusal while it waits for its response answers the
    /// call instead, as does one found when the call ends (the backend's
    /// side of a refused stream fails at once, and may be seen first); one
    /// after the response began ends the response with the refusal's
    /// status in its trailers.
    pub async fn answer(
        self,
        call: impl Future<Output = Result<http::Response<Body>, tonic::Status>>,
    ) -> Result<http::Response<Body>, tonic::Status> {
        let Some(rx) = self.0 else {
            return call.await;
        };
        let mut rx = Some(rx);
        let mut call = std::pin::pin!(call);
        let result = std::future::poll_fn(|cx| {
            if let Some(pending) = rx.as_mut() {
                match Pin::new(pending).poll(cx) {
                    Poll::Ready(Ok(status)) => return Poll::Ready(Err(status)),
                    // The stream ended without a refusal.
                    Poll::Ready(Err(_)) => rx = None,
                    Poll::Pending => {}
                }
            }
            call.as_mut().poll(cx)
        })
        .await;
        if let Some(status) = rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
            return Err(status);
        }
        let response = result?;
        Ok(match rx {
            // A response that has ended (trailers-only) stays as it is, so
            // its headers still carry END_STREAM.
            Some(rx) if !response.body().is_end_stream() => response.map(|body| {
                boxed(Ending {
                    inner: body,
                    refused: Some(rx),
                    ended: false,
                })
            }),
            _ => response,
        })
    }
}

/// A response that ends with the refusal's status if one comes.
struct Ending {
    inner: Body,
    refused: Option<oneshot::Receiver<tonic::Status>>,
    ended: bool,
}

impl Ending {
    /// The refusal's status as the response's trailers, ending it.
    fn refuse(&mut self, status: &tonic::Status) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.ended = true;
        self.refused = None;
        let mut trailers = http::HeaderMap::new();
        let _ = status.add_header(&mut trailers);
        Poll::Ready(Some(Ok(Frame::trailers(trailers))))
    }
}

impl HttpBody for Ending {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        if let Some(rx) = self.refused.as_mut() {
            match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(status)) => return self.refuse(&status),
                Poll::Ready(Err(_)) => self.refused = None,
                Poll::Pending => {}
            }
        }
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        // The backend's side of a refused stream fails (or ends) at once,
        // and may be seen before the refusal: the refusal is the answer.
        if matches!(frame, Some(Err(_)) | None)
            && let Some(status) = self.refused.as_mut().and_then(|rx| rx.try_recv().ok())
        {
            return self.refuse(&status);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefix(len: u32) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&len.to_be_bytes());
        out
    }

    #[test]
    fn boundaries_follow_messages_across_chunks() {
        let mut stream = prefix(3);
        stream.extend_from_slice(b"abc");
        stream.extend_from_slice(&prefix(0));
        stream.extend_from_slice(&prefix(10));
        stream.extend_from_slice(&[7; 10]);
        stream.extend_from_slice(&prefix(11));
        // Every way of cutting the stream in two finds the same: the last
        // message is over a limit of 10, the others are not.
        for cut in 0..=stream.len() {
            let mut b = Boundaries::default();
            let (head, tail) = stream.split_at(cut);
            let result = b.check(head, 10).and_then(|()| b.check(tail, 10));
            assert_eq!(result, Err(11), "cut at {cut}");
        }
        let mut b = Boundaries::default();
        assert_eq!(b.check(&stream[..stream.len() - 5], 10), Ok(()));
        assert_eq!((b.rest, b.have), (0, 0));
    }

    #[test]
    fn a_body_of_a_message_is_not_read_as_a_prefix() {
        // Bytes inside a message that look like a huge prefix are data.
        let mut stream = prefix(5);
        stream.extend_from_slice(&[0, 0xff, 0xff, 0xff, 0xff]);
        stream.extend_from_slice(&prefix(1));
        stream.push(1);
        let mut b = Boundaries::default();
        for byte in &stream {
            assert_eq!(b.check(std::slice::from_ref(byte), 10), Ok(()));
        }
    }

    /// A trailers-only answer (the backend refused the call before the
    /// client finished its stream) is passed on as it is, so its headers
    /// still end the stream; grpc-go clients read no status otherwise.
    #[tokio::test]
    async fn a_trailers_only_answer_still_ends_with_its_headers() {
        let (_refuse, rx) = oneshot::channel::<tonic::Status>();
        let answer = Refusal(Some(rx))
            .answer(async {
                Ok(machinery::h2::status_response(
                    &tonic::Status::unimplemented("not here"),
                ))
            })
            .await
            .expect("the backend's answer");
        assert!(answer.body().is_end_stream());
        assert_eq!(
            answer.headers().get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"12"[..])
        );
    }

    /// A refusal that is there when the call ends is the answer, whatever
    /// the call came back with.
    #[tokio::test]
    async fn a_refusal_there_when_the_call_ends_is_the_answer() {
        let (refuse, rx) = oneshot::channel::<tonic::Status>();
        let status = Refusal(Some(rx))
            .answer(async move {
                // As the backend's side does: the refusal is sent, then the
                // stream fails before `answer` looks at the refusal again.
                refuse.send(too_large(40)).expect("sent");
                Err(tonic::Status::unavailable("stream error sent by user"))
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Internal);
        assert!(status.message().contains("(40 vs. 33554432)"), "{status:?}");
    }

    #[test]
    fn the_refusal_reads_as_upstream_words_it() {
        let status = too_large(33_554_438);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(
            status.message(),
            "failed proxying s2c: rpc error: code = ResourceExhausted desc = grpc: received \
             message larger than max (33554438 vs. 33554432)"
        );
    }
}
