use crate::error::DecodeError;

/// Bytes in the length prefix of every frame.
pub const LEN_PREFIX: usize = 4;

/// The smallest request body: `op:u8 req_id:u64`.
pub const MIN_BODY_LEN: u32 = 9;

/// The smallest response body: `op:u8 req_id:u64 status:u8`.
pub(crate) const MIN_RESPONSE_BODY_LEN: u32 = 10;

/// Phase one of decoding a request: is a whole frame buffered?
///
/// Returns the frame's total length (prefix included) when it is. Looks at the length
/// prefix only, so an oversized length is rejected as soon as its four bytes arrive,
/// before any of the body is buffered.
pub fn check_request(buf: &[u8], max_frame: u32) -> Result<usize, DecodeError> {
    check(buf, MIN_BODY_LEN, max_frame)
}

/// Phase one of decoding a response; see [`check_request`].
pub fn check_response(buf: &[u8], max_frame: u32) -> Result<usize, DecodeError> {
    check(buf, MIN_RESPONSE_BODY_LEN, max_frame)
}

fn check(buf: &[u8], min: u32, max: u32) -> Result<usize, DecodeError> {
    let Some((prefix, _)) = buf.split_first_chunk::<LEN_PREFIX>() else {
        return Err(DecodeError::Incomplete);
    };
    let len = u32::from_be_bytes(*prefix);
    if len < min {
        return Err(DecodeError::FrameTooShort { len });
    }
    if len > max {
        return Err(DecodeError::FrameTooLarge { len, max });
    }
    let frame_len = LEN_PREFIX + len as usize;
    if buf.len() < frame_len {
        return Err(DecodeError::Incomplete);
    }
    Ok(frame_len)
}

/// Reads big-endian integers off the front of a byte slice, answering `None` instead of
/// panicking when the slice is too short.
pub(crate) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.0.len()
    }

    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take::<1>().map(|[b]| b)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_be_bytes)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_be_bytes)
    }

    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_be_bytes)
    }

    pub(crate) fn i64(&mut self) -> Option<i64> {
        self.take().map(i64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fewer_than_four_bytes_is_incomplete() {
        for n in 0..LEN_PREFIX {
            assert_eq!(
                check_request(&[0; 3][..n], 1024),
                Err(DecodeError::Incomplete)
            );
        }
    }

    #[test]
    fn length_below_nine_cannot_be_framed() {
        assert_eq!(
            check_request(&[0, 0, 0, 8], 1024),
            Err(DecodeError::FrameTooShort { len: 8 })
        );
        assert_eq!(
            check_request(&[0, 0, 0, 0], 1024),
            Err(DecodeError::FrameTooShort { len: 0 })
        );
    }

    #[test]
    fn oversized_length_is_rejected_before_the_body_arrives() {
        assert_eq!(
            check_request(&[0, 0, 4, 1], 1024),
            Err(DecodeError::FrameTooLarge {
                len: 1025,
                max: 1024
            })
        );
        assert_eq!(
            check_request(&[0xFF, 0xFF, 0xFF, 0xFF], 1024),
            Err(DecodeError::FrameTooLarge {
                len: u32::MAX,
                max: 1024
            })
        );
    }

    #[test]
    fn exact_max_is_accepted_once_whole() {
        let mut frame = vec![0, 0, 4, 0];
        frame.resize(4 + 1024, 0);
        assert_eq!(
            check_request(&frame[..100], 1024),
            Err(DecodeError::Incomplete)
        );
        assert_eq!(check_request(&frame, 1024), Ok(1028));
    }

    #[test]
    fn response_minimum_is_ten() {
        assert_eq!(
            check_response(&[0, 0, 0, 9], 1024),
            Err(DecodeError::FrameTooShort { len: 9 })
        );
    }

    #[test]
    fn reader_stops_at_the_end_instead_of_panicking() {
        let mut r = Reader::new(&[1, 2, 3]);
        assert_eq!(r.u16(), Some(0x0102));
        assert_eq!(r.u16(), None);
        assert_eq!(r.u8(), Some(3));
        assert_eq!(r.u8(), None);
    }
}
