//! Connections and the keep-alive pool.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::{IDLE_TIMEOUT, Io, MAX_IDLE, READ_SIZE};

/// A connection and the bytes read from it but not yet taken.
pub(super) struct Conn {
    pub(super) io: Io,
    pub(super) buf: BytesMut,
}

impl Conn {
    /// Reads what the socket has (at most [`READ_SIZE`]) onto `buf`; `Ok(0)` at its end. The
    /// read goes through the stack, so an idle connection keeps no read buffer.
    pub(super) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut scratch = [MaybeUninit::<u8>::uninit(); READ_SIZE];
        let mut read = ReadBuf::uninit(&mut scratch);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    pub(super) async fn fill(&mut self) -> std::io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Whether an idle connection can still be used: the upstream has neither closed it nor
    /// sent anything unasked (which would be read as the next answer).
    fn is_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        let mut read = ReadBuf::uninit(&mut byte);
        matches!(
            Pin::new(&mut self.io).poll_read(&mut cx, &mut read),
            Poll::Pending
        )
    }
}

/// Idle connections, most recently used last.
#[derive(Default)]
pub(super) struct Pool {
    pub(super) idle: Mutex<VecDeque<(Conn, Instant)>>,
}

impl Pool {
    /// The idle list, locked only to push or pop (a poisoned lock still holds whole entries).
    pub(super) fn idle(&self) -> std::sync::MutexGuard<'_, VecDeque<(Conn, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn checkout(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle().pop_back()?;
            if since.elapsed() >= IDLE_TIMEOUT {
                // Everything under it waited longer still; closed outside the lock.
                let old = std::mem::take(&mut *self.idle());
                drop(old);
                return None;
            }
            if conn.is_usable() {
                return Some(conn);
            }
        }
    }

    pub(super) fn checkin(&self, conn: Conn) {
        let now = Instant::now();
        let mut closed = Vec::new();
        {
            let mut idle = self.idle();
            // The oldest go first: past the cap, past their time, or closed by the upstream
            // while they waited (checking one costs no syscall until its socket has news).
            loop {
                let full = idle.len() >= MAX_IDLE;
                let Some((oldest, since)) = idle.front_mut() else {
                    break;
                };
                if !full && now.duration_since(*since) < IDLE_TIMEOUT && oldest.is_usable() {
                    break;
                }
                closed.extend(idle.pop_front());
            }
            idle.push_back((conn, now));
        }
        // Sockets are closed outside the lock.
        drop(closed);
    }
}
