//! One write for the answers that become ready together on an HTTP/2 connection.
//!
//! A group commit answers a few hundred requests at once. On an HTTP/2 connection each answer
//! wakes the connection's task, and tokio runs a task woken by the running one next (its LIFO
//! slot), so the connection wrote and flushed one answer at a time: a `writev` a request, and
//! on the other side a read a request. [`Coalescing`] holds a connection's writes back for a
//! turn of the scheduler: the first flush with data waiting puts the task at the back of the
//! run queue instead, the request tasks ahead of it add their answers, and the next flush
//! writes them all at once; while each turn adds answers, another follows (up to
//! [`MOST_YIELDS`]). On an idle server the queue is empty and a turn costs one poll.
//!
//! Only connections that open with HTTP/2's preface are held back: an HTTP/1.1 connection has
//! one request in flight, with nothing to gather.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How an HTTP/2 connection (with prior knowledge) starts.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Turns a flush waits at most, while each adds answers to what it holds.
const MOST_YIELDS: u8 = 4;
/// Bytes held back at most: past this a write goes out without waiting for the flush.
const MOST_HELD: usize = 256 * 1024;

/// What the connection has shown of itself so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Fewer bytes read than the preface is long, all of them the preface's.
    Undecided,
    HTTP2,
    Other,
}

/// A connection whose writes an HTTP/2 connection's flush holds back for one turn.
pub struct Coalescing<T> {
    inner: T,
    protocol: Protocol,
    /// Bytes of the preface matched so far.
    matched: usize,
    held: Vec<u8>,
    /// How much of `held` is written.
    written: usize,
    /// Turns this flush has let the other tasks go first.
    yields: u8,
    /// How much was held at the last of them.
    held_at_yield: usize,
}

impl<T> Coalescing<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            protocol: Protocol::Undecided,
            matched: 0,
            held: Vec::new(),
            written: 0,
            yields: 0,
            held_at_yield: 0,
        }
    }

    /// Follows the preface through the bytes just read.
    fn observe(&mut self, read: &[u8]) {
        if self.protocol != Protocol::Undecided {
            return;
        }
        let want = &PREFACE[self.matched..];
        let n = want.len().min(read.len());
        if read[..n] != want[..n] {
            self.protocol = Protocol::Other;
        } else if self.matched + n == PREFACE.len() {
            self.protocol = Protocol::HTTP2;
        } else {
            self.matched += n;
        }
    }
}

impl<T: AsyncWrite + Unpin> Coalescing<T> {
    /// Writes out everything held.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.held.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalescing<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        let this = &mut *self;
        this.observe(&buf.filled()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalescing<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.protocol != Protocol::HTTP2 && this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        }
        if this.held.len() >= MOST_HELD {
            ready!(this.poll_write_held(cx))?;
        }
        let mut n = 0;
        for buf in bufs {
            this.held.extend_from_slice(buf);
            n += buf.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.held.is_empty() {
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        if this.yields == 0 || (this.held.len() > this.held_at_yield && this.yields < MOST_YIELDS) {
            // Woken by itself, the task goes to the back of the run queue, behind the tasks
            // about to add their answers.
            this.yields += 1;
            this.held_at_yield = this.held.len();
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        ready!(this.poll_write_held(cx))?;
        this.yields = 0;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_write_held(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The API's listener: TCP connections, each [`Coalescing`].
pub struct CoalescingListener(pub TcpListener);

impl Listener for CoalescingListener {
    type Io = Coalescing<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = Listener::accept(&mut self.0).await;
        (Coalescing::new(stream), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Listener::local_addr(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A writer that records each write it is given.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl AsyncWrite for Writes {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn http2(writes: &Writes) -> Coalescing<Writes> {
        let mut io = Coalescing::new(writes.clone());
        io.observe(&PREFACE[..5]);
        io.observe(&PREFACE[5..]);
        io
    }

    #[test]
    fn the_preface_decides_read_in_any_pieces() {
        let writes = Writes::default();
        assert_eq!(http2(&writes).protocol, Protocol::HTTP2);
        let mut io = Coalescing::new(writes.clone());
        io.observe(b"PRI");
        assert_eq!(io.protocol, Protocol::Undecided);
        io.observe(b" * HTTP/1.1");
        assert_eq!(io.protocol, Protocol::Other);
        let mut io = Coalescing::new(writes);
        io.observe(b"POST /api/v1/tokens/consume HTTP/1.1\r\n");
        assert_eq!(io.protocol, Protocol::Other);
    }

    /// Polls `io`'s flush once, as its task would.
    fn poll_flush(io: &mut Coalescing<Writes>) -> Poll<io::Result<()>> {
        Pin::new(io).poll_flush(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test]
    async fn an_http2_flush_waits_while_answers_are_added_then_writes_them_at_once() {
        let writes = Writes::default();
        let written = || writes.0.lock().unwrap().clone();
        let mut io = http2(&writes);
        io.write_all(b"first ").await.unwrap();
        // The first poll of a flush lets the others go first, writing nothing; another turn
        // follows while answers are added in between.
        assert!(poll_flush(&mut io).is_pending());
        io.write_all(b"second ").await.unwrap();
        assert!(poll_flush(&mut io).is_pending());
        assert!(written().is_empty());
        // A turn that added nothing ends the wait: everything goes in one write.
        assert!(poll_flush(&mut io).is_ready());
        assert_eq!(written(), [b"first second ".to_vec()]);
        // However busy the others, a flush waits at most MOST_YIELDS turns.
        for turn in 0..MOST_YIELDS {
            io.write_all(format!("{turn}").as_bytes()).await.unwrap();
            assert!(poll_flush(&mut io).is_pending(), "turn {turn}");
        }
        io.write_all(b"!").await.unwrap();
        assert!(poll_flush(&mut io).is_ready());
        assert_eq!(written(), [b"first second ".to_vec(), b"0123!".to_vec()]);
        // With nothing held, a flush is at once.
        assert!(poll_flush(&mut io).is_ready());
    }

    #[tokio::test]
    async fn an_http1_connection_writes_through() {
        let writes = Writes::default();
        let mut io = Coalescing::new(writes.clone());
        io.observe(b"GET /health/live HTTP/1.1\r\n");
        io.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(writes.0.lock().unwrap().len(), 1, "written before any flush");
        io.flush().await.unwrap();
    }

    #[tokio::test]
    async fn bytes_cross_in_order_both_ways() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let mut server = Coalescing::new(server);
        let mut client = client;
        client.write_all(PREFACE).await.unwrap();
        let mut preface = vec![0; PREFACE.len()];
        server.read_exact(&mut preface).await.unwrap();
        assert_eq!(server.protocol, Protocol::HTTP2);
        let sent: Vec<u8> = (0..MOST_HELD * 2 + 17).map(|i| (i % 251) as u8).collect();
        for chunk in sent.chunks(1000) {
            server.write_all(chunk).await.unwrap();
        }
        server.flush().await.unwrap();
        let mut received = vec![0; sent.len()];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(received, sent);
    }
}
