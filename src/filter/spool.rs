//! The part of a held request body past `max_inspect_bytes`, on disk
//! (`on_oversize: spool`), like nginx's `client_body_temp_path`: memory per
//! request stays bounded by `max_inspect_bytes`, the rest waits in an
//! unlinked temporary file until the verdict is known, then the whole body
//! is forwarded from memory, the file and what followed, in order.
//!
//! The file is written on the filter pool (with the inspection of the same
//! bytes), never on a network thread, and read back through tokio's
//! blocking-I/O pool. Its length is checked on the way out: a short file is
//! a body error the upstream sees, never a silently shorter body.

use std::collections::VecDeque;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};

use crate::body::BoxError;

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Bytes read from the file per data frame.
const READ_CHUNK: usize = 64 * 1024;

/// An unlinked temporary file holding the spilled part of one body.
#[derive(Debug)]
pub struct SpoolFile {
    file: std::fs::File,
    len: u64,
}

impl SpoolFile {
    /// A new file in `dir`, readable only by sift's user and unlinked at
    /// once: nothing is left behind, whatever happens to the request.
    pub fn create(dir: &Path) -> std::io::Result<SpoolFile> {
        use std::os::unix::fs::OpenOptionsExt;
        loop {
            let name = format!(
                ".sift-spool-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => {
                    std::fs::remove_file(&path)?;
                    return Ok(SpoolFile { file, len: 0 });
                }
                // Left by an earlier process with the same pid: next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", dir.display()),
                    ));
                }
            }
        }
    }

    pub fn write(&mut self, chunks: &[Bytes]) -> std::io::Result<()> {
        for c in chunks {
            self.file.write_all(c)?;
            self.len += c.len() as u64;
        }
        Ok(())
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rewound, for reading back.
    pub fn into_reader(mut self) -> std::io::Result<SpoolReader> {
        self.file.flush()?;
        self.file.seek(SeekFrom::Start(0))?;
        Ok(SpoolReader {
            file: tokio::fs::File::from_std(self.file),
            left: self.len,
            scratch: Vec::new(),
        })
    }
}

#[derive(Debug)]
pub struct SpoolReader {
    file: tokio::fs::File,
    /// Bytes still to read: the file must hold exactly what was written.
    left: u64,
    scratch: Vec<u8>,
}

impl SpoolReader {
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let want = (self.left as usize).min(READ_CHUNK);
        self.scratch.resize(want, 0);
        let mut rb = ReadBuf::new(&mut self.scratch);
        match Pin::new(&mut self.file).poll_read(cx, &mut rb) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("spool file ended {} bytes early", self.left),
                    ))));
                }
                self.left -= n as u64;
                Poll::Ready(Some(Ok(Bytes::copy_from_slice(rb.filled()))))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A held body: the in-memory head, the spool file, the bytes read
    /// but not yet spooled, trailers, then whatever is still unread (also
    /// the body of a prefix held without spooling: head, trailers, rest).
    pub struct Spooled<B> {
        head: VecDeque<Bytes>,
        file: Option<SpoolReader>,
        tail: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
        #[pin]
        rest: Option<B>,
        len: u64,
    }
}

impl<B> Spooled<B> {
    pub fn new(
        head: Vec<Bytes>,
        file: Option<SpoolReader>,
        tail: Vec<Bytes>,
        trailers: Option<HeaderMap>,
        rest: Option<B>,
    ) -> Spooled<B> {
        let len = head
            .iter()
            .chain(&tail)
            .map(|b| b.len() as u64)
            .sum::<u64>()
            + file.as_ref().map_or(0, |f| f.left);
        Spooled {
            head: head.into_iter().filter(|b| !b.is_empty()).collect(),
            file,
            tail: tail.into(),
            trailers,
            rest,
            len,
        }
    }
}

impl<B> HttpBody for Spooled<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            if let Some(h) = this.head.pop_front() {
                *this.len -= h.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(h))));
            }
            if let Some(f) = this.file.as_mut() {
                match f.poll_chunk(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Ok(b))) => {
                        *this.len -= b.len() as u64;
                        return Poll::Ready(Some(Ok(Frame::data(b))));
                    }
                    Poll::Ready(Some(Err(e))) => {
                        *this.file = None;
                        this.tail.clear();
                        *this.trailers = None;
                        this.rest.set(None);
                        return Poll::Ready(Some(Err(e.into())));
                    }
                    Poll::Ready(None) => *this.file = None,
                }
                continue;
            }
            if let Some(t) = this.tail.pop_front() {
                *this.len -= t.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(t))));
            }
            if let Some(t) = this.trailers.take() {
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return match this.rest.as_pin_mut() {
                Some(rest) => rest.poll_frame(cx).map_err(Into::into),
                None => Poll::Ready(None),
            };
        }
    }

    fn is_end_stream(&self) -> bool {
        self.len == 0
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let h = crate::body::hint_after(self.len, self.rest.as_ref().map(|r| r.size_hint()));
        match (&self.trailers, h.exact()) {
            // Trailers still to send: no exact length, so an HTTP/1.1
            // upstream gets the body chunked, the one framing that carries
            // them (with a Content-Length they would be dropped).
            (Some(_), Some(_)) => {
                let mut open = SizeHint::new();
                open.set_lower(h.lower());
                open
            }
            _ => h,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn head_file_tail_in_order_and_no_file_left() {
        let dir = std::env::temp_dir().join(format!("sift-spool-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut f = SpoolFile::create(&dir).unwrap();
        // Unlinked at once: the directory stays empty.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        f.write(&[Bytes::from(big.clone()), Bytes::from_static(b"|mid")])
            .unwrap();
        assert_eq!(f.len(), 200_004);
        let body = Spooled::new(
            vec![Bytes::from_static(b"head|")],
            Some(f.into_reader().unwrap()),
            vec![Bytes::from_static(b"|tail")],
            None,
            None::<http_body_util::Empty<Bytes>>,
        );
        assert_eq!(body.size_hint().exact(), Some(5 + 200_004 + 5));
        let got = body.collect().await.unwrap().to_bytes();
        let mut want = b"head|".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"|mid|tail");
        assert_eq!(got.len(), want.len());
        assert!(got == want);
        std::fs::remove_dir(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_short_file_is_an_error_not_a_shorter_body() {
        let mut f = SpoolFile::create(&std::env::temp_dir()).unwrap();
        f.write(&[Bytes::from_static(b"0123456789")]).unwrap();
        let mut r = f.into_reader().unwrap();
        r.left += 5; // the file lost bytes
        let body = Spooled::new(
            Vec::new(),
            Some(r),
            vec![Bytes::from_static(b"tail")],
            None,
            None::<http_body_util::Empty<Bytes>>,
        );
        let err = body.collect().await.unwrap_err();
        assert!(err.to_string().contains("ended 5 bytes early"), "{err}");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let e = SpoolFile::create(Path::new("/nonexistent/sift-spool")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/sift-spool"), "{e}");
    }
}
