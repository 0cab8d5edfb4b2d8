//! HTTP/2 as the Workload API socket carries it, watched and mended between the socket and the
//! gRPC server (h2). Pure: bytes in, bytes and events out.
//!
//! [`Inbound`] re-encodes every header block a client sends, replacing an `:authority` that is
//! not a URI authority by `localhost`. gRPC C-core (and so py-spiffe, grpcio) sends the
//! socket path percent-encoded (`tmp%2Fagent.sock`) for `unix:///tmp/agent.sock`, and grpc-java
//! sends the bare path; h2 (through the `http` crate's parser, which takes no `%` in a host)
//! resets such streams, and neither offers a setting. SPIRE's Go server takes them: so do we.
//! Whatever cannot be followed is passed on unchanged from then on, for h2 to refuse as it
//! would have.
//!
//! HPACK is `loona-hpack`'s. One [`Decoder`] per connection follows the client's dynamic table:
//! it is fed every header block in order (a HEADERS frame and its CONTINUATIONs joined), and
//! refuses table size updates above the 4096 bytes the agent's server allows (its
//! `SETTINGS_HEADER_TABLE_SIZE`, never changed). Its one leniency: a size update after a field,
//! which h2 would refuse, is followed (the client's table stays right) and the block mended.
//! Its cost: `loona-hpack` 0.4.3 builds its Huffman table for every Huffman-coded string
//! (about 45 µs each, optimized), so a block of empty Huffman strings costs about 15 µs of CPU
//! per byte; the block bound ([`MAX_LIST`]) is also what bounds that.
//!
//! The server's (h2's) table is kept empty. `loona-hpack`'s [`Encoder`] cannot be told not to
//! index: a field whose name is in no table is sent "with incremental indexing". So the encoder
//! is given a table of size 0 (it never refers to a dynamic entry), and the first block written
//! on a connection starts with a dynamic table size update to 0, so h2's decoder keeps nothing
//! either (RFC 7541 §4.2, §6.3). Encoder and decoder then agree with no state to keep in step,
//! and if the connection is passed on unchanged later, the client's references to its own
//! dynamic table find nothing in h2's (at most entries the client added since) and are
//! refused, never read as other fields. With no
//! table there is nothing to index, so fields the client sent "never indexed" stay unindexed.
//!
//! [`Outbound`] finds the `RST_STREAM` and `GOAWAY` frames the server writes, so that every
//! stream or connection the agent ends with an error is logged and counted (h2 only logs them
//! at debug).

use loona_hpack::decoder::DecoderError;
use loona_hpack::{Decoder, Encoder};
use tonic::codegen::http::uri::Authority;

/// The connection preface every client sends first (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADER_LEN: usize = 9;
/// The frame size every HTTP/2 peer accepts and the agent's server advertises.
const MAX_FRAME: usize = 16_384;
/// Header blocks, and the header lists they decode to (each field counted as name + value +
/// 32, as `SETTINGS_MAX_HEADER_LIST_SIZE` counts them), above this are left for h2 to refuse:
/// h2's own limit, so nothing h2 would serve is skipped. It also bounds the decoding cost of
/// one block (about 0.25 s of CPU for 16 KiB of empty Huffman strings, see above), which only a
/// local process allowed on the socket can spend.
const MAX_LIST: usize = 16 << 10;
/// The dynamic table size a client may use: HTTP/2's default `SETTINGS_HEADER_TABLE_SIZE`,
/// which the agent's server never changes.
const TABLE_SIZE: usize = 4096;
/// A dynamic table size update to 0 (RFC 7541 §6.3: `001` and a 5-bit integer), which opens
/// the first block written on a connection.
const EMPTY_TABLE: u8 = 0x20;
/// The value an unusable `:authority` is replaced by (what grpc-go sends on Unix sockets).
pub(super) const LOCAL_AUTHORITY: &[u8] = b"localhost";

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_head(b: &[u8]) -> FrameHead {
    FrameHead {
        len: usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]),
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    }
}

fn put_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: u32) {
    // `len` is at most MAX_FRAME: three bytes.
    out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A header block being gathered (a HEADERS frame and its CONTINUATIONs).
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// The frames as received, passed on unchanged if the block cannot be re-encoded.
    raw: Vec<u8>,
}

/// What the client side's bytes did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct InboundEvents {
    /// `:authority` values replaced.
    pub(super) rewritten: u32,
    /// Set when the stream stopped being re-encoded (unparsable): h2 gets the bytes as they
    /// are and will refuse them.
    pub(super) gave_up: Option<&'static str>,
}

/// The client-to-server byte stream, re-encoded.
pub(super) struct Inbound {
    preface_left: usize,
    /// An incomplete frame: its head, and for header frames their payload.
    pending: Vec<u8>,
    /// Payload bytes of a frame being passed through.
    passing: usize,
    block: Option<Block>,
    /// The client's HPACK state.
    decoder: Decoder<'static>,
    /// Encodes with an empty table (see the module docs).
    encoder: Encoder<'static>,
    /// Whether h2 has been told that its table is empty ([`EMPTY_TABLE`]).
    table_emptied: bool,
    /// Pass everything on unchanged from now on.
    transparent: bool,
}

impl Default for Inbound {
    fn default() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        let mut encoder = Encoder::new();
        encoder.set_max_table_size(0);
        Self {
            preface_left: PREFACE.len(),
            pending: Vec::new(),
            passing: 0,
            block: None,
            decoder,
            encoder,
            table_emptied: false,
            transparent: false,
        }
    }
}

/// A decoded header list: `(name, value)` in the client's order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a complete header block is not re-encoded.
#[derive(Debug, thiserror::Error)]
enum BlockError {
    /// Not HPACK the client's table can decode; the table is then unknown.
    #[error("undecodable header block: {0}")]
    Hpack(#[from] DecoderError),
    /// The decoded fields exceed [`MAX_LIST`].
    #[error("decoded header list larger than 16 KiB")]
    TooLarge,
}

impl BlockError {
    /// The reason given in [`InboundEvents::gave_up`].
    fn why(&self) -> &'static str {
        match self {
            Self::Hpack(_) => "undecodable header block",
            Self::TooLarge => "decoded header list larger than 16 KiB",
        }
    }
}

/// Decodes one complete header block with the client's table, each field as `(name, value)`.
/// At most [`MAX_LIST`] is kept; the block is still decoded to its end, so that the table
/// follows the client's.
fn decode(decoder: &mut Decoder<'_>, block: &[u8]) -> Result<Fields, BlockError> {
    let mut fields = Vec::new();
    let mut total = 0usize;
    decoder.decode_with_cb(block, |name, value| {
        total = total.saturating_add(name.len() + value.len() + 32);
        if total <= MAX_LIST {
            fields.push((name.into_owned(), value.into_owned()));
        }
    })?;
    if total > MAX_LIST {
        return Err(BlockError::TooLarge);
    }
    Ok(fields)
}

/// Whether an `:authority` value can reach h2 as it is.
fn usable_authority(value: &[u8]) -> bool {
    Authority::try_from(value).is_ok()
}

impl Inbound {
    /// Takes the next bytes from the client and appends what the server should read to `out`.
    pub(super) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> InboundEvents {
        let mut events = InboundEvents::default();
        while !input.is_empty() {
            if self.transparent {
                out.extend_from_slice(input);
                break;
            }
            if self.preface_left > 0 {
                let n = self.preface_left.min(input.len());
                let at = PREFACE.len() - self.preface_left;
                if input[..n] != PREFACE[at..at + n] {
                    events.gave_up = Some("no HTTP/2 connection preface");
                    self.transparent = true;
                    continue;
                }
                out.extend_from_slice(&input[..n]);
                self.preface_left -= n;
                input = &input[n..];
                continue;
            }
            if self.passing > 0 {
                let n = self.passing.min(input.len());
                out.extend_from_slice(&input[..n]);
                self.passing -= n;
                input = &input[n..];
                continue;
            }
            let want = if self.pending.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                HEADER_LEN + parse_head(&self.pending).len
            };
            let n = (want - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..n]);
            input = &input[n..];
            if self.pending.len() < want {
                continue;
            }
            let head = parse_head(&self.pending);
            let header_frame = head.kind == HEADERS || head.kind == CONTINUATION;
            if self.pending.len() == HEADER_LEN && header_frame && head.len > MAX_FRAME {
                events.gave_up = Some("header frame larger than 16 KiB");
                self.give_up(out);
                continue;
            }
            if self.pending.len() == HEADER_LEN && header_frame && head.len > 0 {
                continue; // gather the payload
            }
            let frame = std::mem::take(&mut self.pending);
            if let Err((why, held)) = self.frame(&head, &frame, out, &mut events) {
                if !held {
                    self.pending = frame;
                }
                events.gave_up = Some(why);
                self.give_up(out);
            }
        }
        events
    }

    /// Passes on whatever is held, unchanged, and everything after it.
    fn give_up(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        out.append(&mut self.pending);
        self.transparent = true;
    }

    /// Handles one frame: `frame` is its head, and its whole payload for header frames. An
    /// error says why the stream cannot be followed and whether the frame is held in the block
    /// (else the caller holds it).
    fn frame(
        &mut self,
        head: &FrameHead,
        frame: &[u8],
        out: &mut Vec<u8>,
        events: &mut InboundEvents,
    ) -> Result<(), (&'static str, bool)> {
        match (head.kind, &mut self.block) {
            (HEADERS, None) => {
                let block = headers_block(head, frame).map_err(|why| (why, false))?;
                self.block = Some(block);
            }
            (CONTINUATION, Some(block)) if block.stream == head.stream => {
                block.fragment.extend_from_slice(&frame[HEADER_LEN..]);
                block.raw.extend_from_slice(frame);
            }
            (HEADERS | CONTINUATION, _) => return Err(("header frames out of order", false)),
            (_, Some(_)) => return Err(("a frame inside a header block", false)),
            (_, None) => {
                out.extend_from_slice(frame);
                self.passing = head.len;
                return Ok(());
            }
        }
        if head.flags & END_HEADERS == 0 {
            if self.block.as_ref().is_some_and(|b| b.raw.len() > MAX_LIST) {
                return Err(("header block larger than 16 KiB", true));
            }
            return Ok(());
        }
        let Some(block) = self.block.take() else {
            return Ok(());
        };
        let mut fields = match decode(&mut self.decoder, &block.fragment) {
            Ok(f) => f,
            Err(e) => {
                self.block = Some(block);
                tracing::debug!(error = %e, "header block not re-encoded");
                return Err((e.why(), true));
            }
        };
        for (_, value) in fields.iter_mut().filter(|(name, _)| name == b":authority") {
            if !usable_authority(value) {
                *value = LOCAL_AUTHORITY.to_vec();
                events.rewritten += 1;
            }
        }
        let mut encoded = Vec::new();
        // Not in a block without fields: a block may not end with a size update.
        if !self.table_emptied && !fields.is_empty() {
            encoded.push(EMPTY_TABLE);
            self.table_emptied = true;
        }
        encoded.extend(
            self.encoder
                .encode(fields.iter().map(|(n, v)| (n.as_slice(), v.as_slice()))),
        );
        write_block(&block, &encoded, out);
        Ok(())
    }
}

/// The block a HEADERS frame (`frame`: head and payload) opens.
fn headers_block(head: &FrameHead, frame: &[u8]) -> Result<Block, &'static str> {
    let payload = &frame[HEADER_LEN..];
    let mut start = 0;
    let mut end = payload.len();
    if head.flags & PADDED != 0 {
        let pad = usize::from(*payload.first().ok_or("HEADERS without padding length")?);
        start = 1;
        end = end.checked_sub(pad).ok_or("HEADERS padding too long")?;
    }
    let mut priority = None;
    if head.flags & PRIORITY != 0 {
        let p = payload
            .get(start..start + 5)
            .ok_or("HEADERS priority truncated")?;
        priority = Some([p[0], p[1], p[2], p[3], p[4]]);
        start += 5;
    }
    let fragment = payload.get(start..end).ok_or("HEADERS too short")?.to_vec();
    Ok(Block {
        stream: head.stream,
        end_stream: head.flags & END_STREAM != 0,
        priority,
        fragment,
        raw: frame.to_vec(),
    })
}

/// Writes `encoded` as the HEADERS (and CONTINUATION) frames of `block`'s stream.
fn write_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let mut rest = encoded;
    let mut first = true;
    loop {
        let prefix = if first && block.priority.is_some() {
            5
        } else {
            0
        };
        let n = rest.len().min(MAX_FRAME - prefix);
        let last = n == rest.len();
        let (kind, mut flags) = if first {
            let mut f = if block.end_stream { END_STREAM } else { 0 };
            if block.priority.is_some() {
                f |= PRIORITY;
            }
            (HEADERS, f)
        } else {
            (CONTINUATION, 0)
        };
        if last {
            flags |= END_HEADERS;
        }
        put_head(out, prefix + n, kind, flags, block.stream);
        if let (true, Some(p)) = (first, block.priority) {
            out.extend_from_slice(&p);
        }
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
        if last {
            break;
        }
    }
}

/// A stream or connection the server ended with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reset {
    /// `GOAWAY` (the connection) rather than `RST_STREAM` (one stream).
    pub(super) connection: bool,
    /// The stream reset, or for `GOAWAY` the last stream processed.
    pub(super) stream: u32,
    /// The HTTP/2 error code (never `NO_ERROR`: those are ordinary ends).
    pub(super) code: u32,
}

impl Reset {
    /// `stream` or `connection`: the metric's label.
    pub(super) fn kind(&self) -> &'static str {
        if self.connection {
            "connection"
        } else {
            "stream"
        }
    }

    /// The error code's name (RFC 9113 §7), a bounded label.
    pub(super) fn code_name(&self) -> &'static str {
        match self.code {
            0x1 => "PROTOCOL_ERROR",
            0x2 => "INTERNAL_ERROR",
            0x3 => "FLOW_CONTROL_ERROR",
            0x4 => "SETTINGS_TIMEOUT",
            0x5 => "STREAM_CLOSED",
            0x6 => "FRAME_SIZE_ERROR",
            0x7 => "REFUSED_STREAM",
            0x8 => "CANCEL",
            0x9 => "COMPRESSION_ERROR",
            0xa => "CONNECT_ERROR",
            0xb => "ENHANCE_YOUR_CALM",
            0xc => "INADEQUATE_SECURITY",
            0xd => "HTTP_1_1_REQUIRED",
            _ => "unknown",
        }
    }
}

/// The server-to-client byte stream, watched for resets.
#[derive(Default)]
pub(super) struct Outbound {
    /// The head of the current frame, and for resets the payload's first 8 bytes.
    head: Vec<u8>,
    /// Payload bytes still to skip.
    skip: usize,
}

impl Outbound {
    /// Looks at the next bytes the server wrote; returns the resets among them.
    pub(super) fn observe(&mut self, mut bytes: &[u8]) -> Vec<Reset> {
        let mut found = Vec::new();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let want = if self.head.len() < HEADER_LEN {
                HEADER_LEN
            } else {
                let h = parse_head(&self.head);
                HEADER_LEN
                    + match h.kind {
                        RST_STREAM => h.len.min(4),
                        GOAWAY => h.len.min(8),
                        _ => 0,
                    }
            };
            let n = (want - self.head.len()).min(bytes.len());
            self.head.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.head.len() < want {
                continue;
            }
            let h = parse_head(&self.head);
            let payload = &self.head[HEADER_LEN..];
            let kind_wants = match h.kind {
                RST_STREAM => 4,
                GOAWAY => 8,
                _ => 0,
            };
            if payload.len() < kind_wants && h.len > payload.len() {
                continue; // read the reset's payload next
            }
            let code_at = |i: usize| {
                payload
                    .get(i..i + 4)
                    .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            };
            let reset = match h.kind {
                RST_STREAM => code_at(0).map(|code| (false, h.stream, code)),
                GOAWAY => code_at(4).map(|code| {
                    let last = code_at(0).unwrap_or(0) & 0x7fff_ffff;
                    (true, last, code)
                }),
                _ => None,
            };
            if let Some((connection, stream, code)) = reset.filter(|r| r.2 != 0) {
                found.push(Reset {
                    connection,
                    stream,
                    code,
                });
            }
            self.skip = h.len - payload.len();
            self.head.clear();
        }
        found
    }
}

#[cfg(test)]
mod tests;
