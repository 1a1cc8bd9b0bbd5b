//! Response frames in parts, so that record sets read for a fetch go to the socket from
//! the buffer they were read into instead of being copied into the encoded response.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::ops::Range;

use bytes::buf::UninitSlice;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;

/// Byte fields shorter than this are copied: a separate part costs more than the copy.
const SHARE_MIN: usize = 16 << 10;

/// A size-prefixed response frame as a sequence of byte parts (a [`Buf`]; written with
/// vectored I/O).
#[derive(Debug, Default, Clone)]
pub struct Frame {
    parts: VecDeque<Bytes>,
    remaining: usize,
}

impl Frame {
    fn push(&mut self, part: Bytes) {
        if !part.is_empty() {
            self.remaining += part.len();
            self.parts.push_back(part);
        }
    }

    /// The frame in one contiguous buffer (copies when it has several parts).
    #[cfg(test)]
    fn to_bytes(&self) -> Bytes {
        match self.parts.len() {
            0 => Bytes::new(),
            1 => self.parts[0].clone(),
            _ => {
                let mut out = BytesMut::with_capacity(self.remaining);
                for p in &self.parts {
                    out.extend_from_slice(p);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for Frame {
    fn from(b: Bytes) -> Frame {
        let mut f = Frame::default();
        f.push(b);
        f
    }
}

impl Buf for Frame {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.parts.front().map(|b| &b[..]).unwrap_or_default()
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of a frame");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.parts.front_mut() else {
                return;
            };
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.parts.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, part) in dst.iter_mut().zip(&self.parts) {
            *slot = IoSlice::new(part);
            n += 1;
        }
        n
    }
}

/// Encoding target: bytes are appended to `head`, except slices of `shared` buffers
/// (at least [`SHARE_MIN`] long), which become parts of their own without a copy.
pub(crate) struct FrameBuf<'a> {
    frame: Frame,
    head: BytesMut,
    shared: &'a [Bytes],
}

impl<'a> FrameBuf<'a> {
    pub(crate) fn new(shared: &'a [Bytes]) -> FrameBuf<'a> {
        FrameBuf {
            frame: Frame::default(),
            head: BytesMut::with_capacity(64),
            shared,
        }
    }

    /// The encoded frame, prefixed with its size.
    pub(crate) fn finish(mut self) -> Frame {
        let head = self.head.split().freeze();
        self.frame.push(head);
        let size = (self.frame.remaining as i32).to_be_bytes();
        self.frame.remaining += size.len();
        self.frame.parts.push_front(Bytes::copy_from_slice(&size));
        self.frame
    }

    /// The shared buffer `src` lies in, if any.
    fn owner(&self, src: &[u8]) -> Option<&Bytes> {
        if src.len() < SHARE_MIN {
            return None;
        }
        let (start, end) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
        self.shared.iter().find(|b| {
            let at = b.as_ptr() as usize;
            at <= start && end <= at + b.len()
        })
    }

    /// Copies every part back into `head`: the rare case of a write before the last part.
    fn flatten(&mut self) {
        let mut all = BytesMut::with_capacity(self.frame.remaining + self.head.len());
        for p in self.frame.parts.drain(..) {
            all.extend_from_slice(&p);
        }
        all.extend_from_slice(&self.head);
        self.frame.remaining = 0;
        self.head = all;
    }

    /// `offset` in `head`, flattening first when it lies in an earlier part.
    fn local(&mut self, offset: usize) -> usize {
        if offset < self.frame.remaining {
            self.flatten();
        }
        offset - self.frame.remaining
    }
}

// SAFETY: every method delegates to `head`, a `BytesMut`, whose own implementation
// upholds the trait's contract; `put_slice` only adds whole initialized parts.
unsafe impl BufMut for FrameBuf<'_> {
    fn remaining_mut(&self) -> usize {
        self.head.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialized `cnt` bytes of `head`'s spare capacity.
        unsafe { self.head.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.head.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        match self.owner(src).map(|b| b.slice_ref(src)) {
            Some(part) => {
                let head = self.head.split().freeze();
                self.frame.push(head);
                self.frame.push(part);
            }
            None => self.head.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for FrameBuf<'_> {
    fn offset(&self) -> usize {
        self.frame.remaining + self.head.len()
    }

    fn seek(&mut self, offset: usize) {
        let at = self.local(offset);
        self.head.resize(at, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        let start = self.local(r.start);
        let end = start + r.len();
        &mut self.head[start..end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_slices_become_parts_and_the_rest_is_copied() {
        let records = Bytes::from(vec![7u8; 64 << 10]);
        let shared = [records.clone()];
        let mut b = FrameBuf::new(&shared);
        b.put_slice(b"head");
        b.put_slice(&records[1..]);
        b.put_slice(&records[..10]);
        assert_eq!(b.offset(), 4 + (64 << 10) - 1 + 10);
        let mut f = b.finish();
        assert_eq!(f.parts.len(), 4);
        assert_eq!(f.parts[2].as_ptr(), records[1..].as_ptr(), "not copied");
        let whole = f.to_bytes();
        assert_eq!(&whole[..4], &((whole.len() - 4) as i32).to_be_bytes());
        assert_eq!(&whole[4..8], b"head");
        assert!(whole[8..].iter().all(|&x| x == 7));
        let mut out = Vec::new();
        while f.has_remaining() {
            let n = f.chunk().len().min(1000);
            out.extend_from_slice(&f.chunk()[..n]);
            f.advance(n);
        }
        assert_eq!(out, whole);
    }

    #[test]
    fn writing_into_an_earlier_part_flattens_the_frame() {
        let records = Bytes::from(vec![1u8; 32 << 10]);
        let shared = [records.clone()];
        let mut b = FrameBuf::new(&shared);
        b.put_slice(b"abcd");
        b.put_slice(&records);
        b.put_slice(b"tail");
        b.range(0..2).copy_from_slice(b"xy");
        let whole = b.finish().to_bytes();
        assert_eq!(&whole[4..8], b"xycd");
        assert_eq!(whole.len(), 4 + 4 + (32 << 10) + 4);
        assert_eq!(&whole[whole.len() - 4..], b"tail");
    }
}
