use crate::op::Op;

/// Why bytes could not be decoded. `Copy`, allocation-free, and precise enough for a
/// server to pick its answer: [`DecodeError::Incomplete`] means "read more";
/// [`DecodeError::is_framing`] errors mean the stream can no longer be split into
/// frames and must be closed; the rest name one well-framed but malformed frame that can
/// be skipped with [`DecodeError::frame_len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The buffer does not yet hold a whole frame.
    Incomplete,
    /// The length prefix is below the smallest body (9 for requests, 10 for responses).
    FrameTooShort { len: u32 },
    /// The length prefix is above the reader's `MAX_FRAME`.
    FrameTooLarge { len: u32, max: u32 },
    /// A framed request whose op this protocol version does not know.
    UnknownOp {
        op: u8,
        req_id: u64,
        frame_len: usize,
    },
    /// A framed request whose args are not the length its op requires.
    BadArgsLength {
        op: Op,
        req_id: u64,
        frame_len: usize,
    },
    /// A framed response whose op byte lacks the response bit.
    NotAResponse { op: u8, frame_len: usize },
    /// A framed response with a status code this version does not know.
    UnknownStatus { status: u8, frame_len: usize },
    /// A framed response whose result length does not fit its op and status.
    BadResultLength {
        op: u8,
        status: u8,
        frame_len: usize,
    },
}

impl DecodeError {
    /// True when the stream cannot be framed any more: the peer must be told once and
    /// the connection closed.
    pub const fn is_framing(&self) -> bool {
        matches!(
            self,
            DecodeError::FrameTooShort { .. } | DecodeError::FrameTooLarge { .. }
        )
    }

    /// For a well-framed but malformed frame, the bytes to skip (prefix included).
    pub const fn frame_len(&self) -> Option<usize> {
        match *self {
            DecodeError::UnknownOp { frame_len, .. }
            | DecodeError::BadArgsLength { frame_len, .. }
            | DecodeError::NotAResponse { frame_len, .. }
            | DecodeError::UnknownStatus { frame_len, .. }
            | DecodeError::BadResultLength { frame_len, .. } => Some(frame_len),
            DecodeError::Incomplete
            | DecodeError::FrameTooShort { .. }
            | DecodeError::FrameTooLarge { .. } => None,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            DecodeError::Incomplete => f.write_str("incomplete frame"),
            DecodeError::FrameTooShort { len } => write!(f, "frame length {len} is too short"),
            DecodeError::FrameTooLarge { len, max } => {
                write!(f, "frame length {len} exceeds the maximum of {max}")
            }
            DecodeError::UnknownOp { op, req_id, .. } => {
                write!(f, "unknown op 0x{op:02X} (req_id {req_id})")
            }
            DecodeError::BadArgsLength { op, req_id, frame_len } => write!(
                f,
                "{} (req_id {req_id}) needs {} arg bytes, frame of {frame_len} bytes has {}",
                op.name(),
                op.args_len(),
                frame_len.saturating_sub(crate::LEN_PREFIX + crate::MIN_BODY_LEN as usize)
            ),
            DecodeError::NotAResponse { op, .. } => {
                write!(f, "op byte 0x{op:02X} is not a response op")
            }
            DecodeError::UnknownStatus { status, .. } => write!(f, "unknown status {status}"),
            DecodeError::BadResultLength { op, status, frame_len } => write!(
                f,
                "response op 0x{op:02X} status {status}: wrong result length in a {frame_len}-byte frame"
            ),
        }
    }
}

impl std::error::Error for DecodeError {}
