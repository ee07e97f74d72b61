//! SPDY/3.1 framing without IO: bytes in, [`Frame`]s out ([`Decoder`]); frames in, bytes out
//! ([`Encoder`]). `kubectl port-forward` speaks it (see [`super::portforward`]); what runs over
//! the streams is that module's business, not this one's.
//!
//! The frame layout, types and flags are the SPDY/3 draft's ("SPDY Protocol - Draft 3", also
//! draft-mbelshe-httpbis-spdy-00 §2.2–§2.6), plus SPDY/3.1's connection-level WINDOW_UPDATE
//! (stream 0). Name/value header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib-compressed
//! with the draft's preset [`DICTIONARY`] as **one zlib stream per direction for the whole
//! connection**: every block continues where the previous block of that direction stopped, so
//! a connection's frames go through one `Decoder` and one `Encoder`, in order.
//!
//! Decoding inflates raw deflate with miniz_oxide (pure Rust: we cross-compile to musl). Its
//! zlib-header parser refuses a preset dictionary (FDICT), so the 2-byte zlib header and the
//! dictionary id are checked here and the deflate data is inflated into a buffer that starts
//! out holding the dictionary, as if the dictionary had been decompressed before it. Encoding
//! writes deflate *stored* blocks (no compression: the blocks this side sends are a few bytes),
//! the first after a zlib header naming the dictionary, and ends each header block with an
//! empty stored block, as zlib's sync flush does, so each block is complete in its frame.
//!
//! Invariants: a frame's length is checked against [`MAX_DATA`] / [`MAX_CONTROL`] before its
//! body is waited for; a header block inflates to at most [`MAX_HEADER_BLOCK`] bytes; the
//! inflater keeps at most [`HISTORY`] bytes (deflate's 32 KiB window) between blocks; nothing
//! here panics on input.

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::{DecompressorOxide, decompress, inflate_flags};

/// The protocol version in every control frame.
pub const VERSION: u16 = 3;
/// Largest data frame accepted. The length field allows 16 MiB; kubectl writes what one read
/// of its local connection gave (32 KiB), so this only bounds what a hostile peer makes us hold.
pub const MAX_DATA: usize = 1 << 20;
/// Largest decompressed name/value header block accepted.
pub const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Largest control frame accepted: a header block plus its frame fields (stored deflate blocks
/// are a little larger than what they hold).
pub const MAX_CONTROL: usize = MAX_HEADER_BLOCK + 1024;
/// The window each stream and the connection start with (SPDY/3.1).
pub const INITIAL_WINDOW: u32 = 64 * 1024;
/// Decompressed history the inflater keeps between header blocks: deflate refers back at most
/// 32 KiB.
const HISTORY: usize = 32 * 1024;
/// Output space the inflater adds per step.
const INFLATE_STEP: usize = 4096;

/// A stream's identifier (31 bits; odd ones are the client's).
pub type StreamId = u32;

/// RST_STREAM status codes this side sends (SPDY/3 §2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const STREAM_IN_USE: u32 = 8;
}

/// GOAWAY status codes (SPDY/3 §2.6.6; 0 is OK, 2 INTERNAL_ERROR).
pub mod goaway {
    pub const PROTOCOL_ERROR: u32 = 1;
}

/// Why bytes are not SPDY/3.1 this side accepts. The peer is at fault in every case; the
/// connection cannot continue (the header compression state is lost), so the answer is a
/// GOAWAY with [`Error::goaway_status`]. Not retryable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("a {kind} frame of {len} bytes is larger than the {max} bytes accepted")]
    TooLarge {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("SPDY version {0} is not supported: this server speaks SPDY/3.1")]
    Version(u16),
    #[error("unknown control frame type {0}")]
    UnknownType(u16),
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        kind: &'static str,
        why: &'static str,
    },
    #[error("header block compression: {0}")]
    Compression(&'static str),
    #[error("a header block inflates to more than {MAX_HEADER_BLOCK} bytes")]
    HeadersTooLarge,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The GOAWAY status this error is answered with.
    pub fn goaway_status(&self) -> u32 {
        goaway::PROTOCOL_ERROR
    }
}

/// One SPDY frame, header blocks decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: StreamId,
        fin: bool,
        data: Vec<u8>,
    },
    SynStream {
        stream: StreamId,
        associated: StreamId,
        /// 0 (highest) to 7.
        priority: u8,
        fin: bool,
        unidirectional: bool,
        headers: Headers,
    },
    SynReply {
        stream: StreamId,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        stream: StreamId,
        status: u32,
    },
    Settings {
        clear: bool,
        settings: Vec<Setting>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_good: StreamId,
        status: u32,
    },
    Headers {
        stream: StreamId,
        fin: bool,
        headers: Headers,
    },
    /// Stream 0 is the whole connection's window (SPDY/3.1).
    WindowUpdate {
        stream: StreamId,
        delta: u32,
    },
}

/// One entry of a SETTINGS frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub flags: u8,
    pub id: u32,
    pub value: u32,
}

/// A name/value header block: names as sent (SPDY requires lowercase), a value holding several
/// values separated by NUL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    /// The value of `name` (compared without case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Turns a connection's bytes into frames. Feed what arrives with [`Decoder::push`], then take
/// frames with [`Decoder::next`] until it says it needs more bytes.
pub struct Decoder {
    /// Bytes received and not yet decoded: at most one frame's worth plus what the last push
    /// brought, since the caller drains frames before pushing more.
    buf: Vec<u8>,
    inflater: Inflater,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder {
            buf: Vec::new(),
            inflater: Inflater::new(),
        }
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or `None` when more bytes are needed for it. An error leaves the
    /// decoder unusable: the connection must end.
    pub fn next(&mut self) -> Result<Option<Frame>> {
        let (Some(w0), Some(w1)) = (word(&self.buf, 0), word(&self.buf, 4)) else {
            return Ok(None);
        };
        let flags = (w1 >> 24) as u8;
        let len = (w1 & 0x00ff_ffff) as usize;
        let control = w0 & 0x8000_0000 != 0;
        if control {
            let version = ((w0 >> 16) & 0x7fff) as u16;
            let kind = (w0 & 0xffff) as u16;
            if version != VERSION {
                return Err(Error::Version(version));
            }
            if control_name(kind).is_none() {
                return Err(Error::UnknownType(kind));
            }
            if len > MAX_CONTROL {
                return Err(Error::TooLarge {
                    kind: control_name(kind).unwrap_or("control"),
                    len,
                    max: MAX_CONTROL,
                });
            }
        } else if len > MAX_DATA {
            return Err(Error::TooLarge {
                kind: "data",
                len,
                max: MAX_DATA,
            });
        }
        let Some(body) = self.buf.get(8..8 + len) else {
            return Ok(None);
        };
        let body = body.to_vec();
        self.buf.drain(..8 + len);
        if !control {
            return Ok(Some(Frame::Data {
                stream: w0 & 0x7fff_ffff,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        self.control((w0 & 0xffff) as u16, flags, &body).map(Some)
    }

    fn control(&mut self, kind: u16, flags: u8, body: &[u8]) -> Result<Frame> {
        let name = control_name(kind).unwrap_or("control");
        let short = || Error::Malformed {
            kind: name,
            why: "shorter than its fields",
        };
        let exact = |n: usize| {
            if body.len() == n {
                Ok(())
            } else {
                Err(Error::Malformed {
                    kind: name,
                    why: "its length does not fit its type",
                })
            }
        };
        let id = |at: usize| word(body, at).map(|w| w & 0x7fff_ffff).ok_or_else(short);
        let fin = flags & FLAG_FIN != 0;
        Ok(match kind {
            SYN_STREAM => {
                let stream = id(0)?;
                let associated = id(4)?;
                let priority = body.get(8).ok_or_else(short)? >> 5;
                let block = body.get(10..).ok_or_else(short)?;
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    fin,
                    unidirectional: flags & FLAG_UNIDIRECTIONAL != 0,
                    headers: self.headers(block)?,
                }
            }
            SYN_REPLY | HEADERS => {
                let stream = id(0)?;
                let headers = self.headers(body.get(4..).ok_or_else(short)?)?;
                if kind == SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        fin,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        fin,
                        headers,
                    }
                }
            }
            RST_STREAM => {
                exact(8)?;
                Frame::RstStream {
                    stream: id(0)?,
                    status: word(body, 4).ok_or_else(short)?,
                }
            }
            SETTINGS => {
                let count = word(body, 0).ok_or_else(short)? as usize;
                // Checked before anything is allocated for `count` entries.
                if body.len().checked_sub(4) != count.checked_mul(8) {
                    return Err(Error::Malformed {
                        kind: name,
                        why: "its entry count does not fit its length",
                    });
                }
                let settings = body[4..]
                    .chunks_exact(8)
                    .map(|e| Setting {
                        flags: e[0],
                        id: u32::from_be_bytes([0, e[1], e[2], e[3]]),
                        value: u32::from_be_bytes([e[4], e[5], e[6], e[7]]),
                    })
                    .collect();
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    settings,
                }
            }
            PING => {
                exact(4)?;
                Frame::Ping {
                    id: word(body, 0).ok_or_else(short)?,
                }
            }
            GOAWAY => {
                exact(8)?;
                Frame::GoAway {
                    last_good: id(0)?,
                    status: word(body, 4).ok_or_else(short)?,
                }
            }
            WINDOW_UPDATE => {
                exact(8)?;
                Frame::WindowUpdate {
                    stream: id(0)?,
                    delta: id(4)?,
                }
            }
            other => return Err(Error::UnknownType(other)),
        })
    }

    fn headers(&mut self, compressed: &[u8]) -> Result<Headers> {
        let block = self.inflater.inflate(compressed)?;
        parse_block(&block)
    }
}

/// Turns frames into a connection's bytes.
#[derive(Default)]
pub struct Encoder {
    deflater: Deflater,
}

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Appends `frame`'s bytes to `out`. Fails only for a frame too large for its length field
    /// (this side never builds one).
    pub fn encode(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Result<()> {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match frame {
            Frame::Data {
                stream,
                fin: f,
                data,
            } => {
                if data.len() > MAX_DATA {
                    return Err(Error::TooLarge {
                        kind: "data",
                        len: data.len(),
                        max: MAX_DATA,
                    });
                }
                out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                out.extend_from_slice(&length_word(fin(*f), data.len()).to_be_bytes());
                out.extend_from_slice(data);
                Ok(())
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin: f,
                unidirectional,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x07) << 5);
                body.push(0); // credential slot: unused
                self.deflater.deflate(&block(headers), &mut body);
                let flags = fin(*f)
                    | if *unidirectional {
                        FLAG_UNIDIRECTIONAL
                    } else {
                        0
                    };
                control(out, SYN_STREAM, flags, &body)
            }
            Frame::SynReply {
                stream,
                fin: f,
                headers,
            }
            | Frame::Headers {
                stream,
                fin: f,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    SYN_REPLY
                } else {
                    HEADERS
                };
                let mut body = (stream & 0x7fff_ffff).to_be_bytes().to_vec();
                self.deflater.deflate(&block(headers), &mut body);
                control(out, kind, fin(*f), &body)
            }
            Frame::RstStream { stream, status } => {
                control(out, RST_STREAM, 0, &pair(*stream & 0x7fff_ffff, *status))
            }
            Frame::Settings { clear, settings } => {
                let mut body = (settings.len() as u32).to_be_bytes().to_vec();
                for s in settings {
                    body.push(s.flags);
                    body.extend_from_slice(&s.id.to_be_bytes()[1..]);
                    body.extend_from_slice(&s.value.to_be_bytes());
                }
                let flags = if *clear { FLAG_CLEAR_SETTINGS } else { 0 };
                control(out, SETTINGS, flags, &body)
            }
            Frame::Ping { id } => control(out, PING, 0, &id.to_be_bytes()),
            Frame::GoAway { last_good, status } => {
                control(out, GOAWAY, 0, &pair(*last_good & 0x7fff_ffff, *status))
            }
            Frame::WindowUpdate { stream, delta } => control(
                out,
                WINDOW_UPDATE,
                0,
                &pair(*stream & 0x7fff_ffff, *delta & 0x7fff_ffff),
            ),
        }
    }
}

// === impl Inflater ===

/// The receiving half of a connection's header compression: one zlib stream, continued by
/// every header block.
struct Inflater {
    state: Box<DecompressorOxide>,
    /// The dictionary, then everything inflated since; back-references reach into it.
    /// Invariant: between blocks it holds at most [`HISTORY`] bytes (or the dictionary alone).
    history: Vec<u8>,
    /// Whether the zlib header (with the dictionary id) was read: it opens the first block.
    started: bool,
    /// The peer finished its zlib stream (a final deflate block): no block may follow.
    ended: bool,
}

impl Inflater {
    fn new() -> Inflater {
        Inflater {
            state: Box::default(),
            history: DICTIONARY.to_vec(),
            started: false,
            ended: false,
        }
    }

    fn inflate(&mut self, mut input: &[u8]) -> Result<Vec<u8>> {
        if self.ended {
            return Err(Error::Compression("the peer ended its header stream"));
        }
        if !self.started {
            let Some(&[cmf, flg, a, b, c, d]) = input.get(..6) else {
                return Err(Error::Compression(
                    "the first header block is shorter than a zlib header",
                ));
            };
            // RFC 1950 §2.2: method 8 (deflate), a window of at most 32 KiB, a header check.
            if cmf & 0x0f != 8 || cmf >> 4 > 7 || (u16::from(cmf) << 8 | u16::from(flg)) % 31 != 0 {
                return Err(Error::Compression("the header stream is not zlib"));
            }
            if flg & ZLIB_FDICT == 0 || u32::from_be_bytes([a, b, c, d]) != DICTIONARY_ADLER32 {
                return Err(Error::Compression(
                    "the header stream does not use SPDY/3's dictionary",
                ));
            }
            input = &input[6..];
            self.started = true;
        }
        let start = self.history.len();
        let flags = inflate_flags::TINFL_FLAG_HAS_MORE_INPUT
            | inflate_flags::TINFL_FLAG_USING_NON_WRAPPING_OUTPUT_BUF;
        loop {
            let at = self.history.len();
            self.history.resize(at + INFLATE_STEP, 0);
            let (status, read, written) =
                decompress(&mut self.state, input, &mut self.history, at, flags);
            self.history.truncate(at + written);
            input = input.get(read..).unwrap_or_default();
            if self.history.len() - start > MAX_HEADER_BLOCK {
                return Err(Error::HeadersTooLarge);
            }
            match status {
                TINFLStatus::HasMoreOutput => continue,
                TINFLStatus::NeedsMoreInput if input.is_empty() => break,
                TINFLStatus::NeedsMoreInput if read > 0 || written > 0 => continue,
                TINFLStatus::Done => {
                    self.ended = true;
                    break;
                }
                _ => return Err(Error::Compression("a header block is not valid deflate")),
            }
        }
        let block = self.history[start..].to_vec();
        if self.history.len() > HISTORY {
            self.history.drain(..self.history.len() - HISTORY);
        }
        Ok(block)
    }
}

// === impl Deflater ===

/// The sending half of a connection's header compression: stored blocks, no compression.
#[derive(Default)]
struct Deflater {
    /// Whether the zlib header went out (with the first block).
    started: bool,
}

impl Deflater {
    fn deflate(&mut self, block: &[u8], out: &mut Vec<u8>) {
        if !self.started {
            // CMF 0x78: deflate, 32 KiB window. FLG 0x20: FDICT, level 0, and its check bits
            // are 0 because 0x7820 is a multiple of 31 (RFC 1950 §2.2).
            out.extend_from_slice(&[0x78, ZLIB_FDICT]);
            out.extend_from_slice(&DICTIONARY_ADLER32.to_be_bytes());
            self.started = true;
        }
        // RFC 1951 §3.2.4: BFINAL 0, BTYPE 00, padding to the byte, LEN and its complement.
        for chunk in block.chunks(usize::from(u16::MAX)) {
            let len = chunk.len() as u16;
            out.push(0);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&(!len).to_le_bytes());
            out.extend_from_slice(chunk);
        }
        // Then an empty stored block, as zlib's sync flush ends a block. Go's inflater (in
        // kubectl) hands out a stored block's bytes only when the next block begins: without
        // this it reads on into the next frame, fails, and drops the connection.
        out.extend_from_slice(&SYNC_FLUSH);
    }
}

/// A name/value block's pairs, uncompressed (SPDY/3 §2.6.10): a 32-bit count, then each name
/// and value with a 32-bit length.
fn parse_block(block: &[u8]) -> Result<Headers> {
    let bad = |why| Error::Malformed {
        kind: "header block",
        why,
    };
    let count = word(block, 0).ok_or_else(|| bad("truncated"))? as usize;
    // Each pair takes at least 8 bytes: refuse a count the block cannot hold before
    // allocating for it.
    if count > block.len() / 8 {
        return Err(bad("it counts more pairs than it holds"));
    }
    let mut at = 4;
    let take = |at: &mut usize| -> Result<String> {
        let len = word(block, *at).ok_or_else(|| bad("truncated"))? as usize;
        let bytes = block
            .get(*at + 4..*at + 4 + len)
            .ok_or_else(|| bad("truncated"))?;
        *at += 4 + len;
        String::from_utf8(bytes.to_vec()).map_err(|_| bad("a name or value is not UTF-8"))
    };
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take(&mut at)?;
        let value = take(&mut at)?;
        pairs.push((name, value));
    }
    if at != block.len() {
        return Err(bad("bytes follow its last pair"));
    }
    Ok(Headers(pairs))
}

fn block(headers: &Headers) -> Vec<u8> {
    let mut b = (headers.0.len() as u32).to_be_bytes().to_vec();
    for (name, value) in &headers.0 {
        for s in [name, value] {
            b.extend_from_slice(&(s.len() as u32).to_be_bytes());
            b.extend_from_slice(s.as_bytes());
        }
    }
    b
}

fn control(out: &mut Vec<u8>, kind: u16, flags: u8, body: &[u8]) -> Result<()> {
    if body.len() > 0x00ff_ffff {
        return Err(Error::TooLarge {
            kind: control_name(kind).unwrap_or("control"),
            len: body.len(),
            max: 0x00ff_ffff,
        });
    }
    let head = 0x8000_0000 | u32::from(VERSION) << 16 | u32::from(kind);
    out.extend_from_slice(&head.to_be_bytes());
    out.extend_from_slice(&length_word(flags, body.len()).to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

fn length_word(flags: u8, len: usize) -> u32 {
    u32::from(flags) << 24 | (len as u32 & 0x00ff_ffff)
}

fn pair(a: u32, b: u32) -> [u8; 8] {
    let mut p = [0; 8];
    p[..4].copy_from_slice(&a.to_be_bytes());
    p[4..].copy_from_slice(&b.to_be_bytes());
    p
}

fn word(b: &[u8], at: usize) -> Option<u32> {
    let w = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
}

fn control_name(kind: u16) -> Option<&'static str> {
    Some(match kind {
        SYN_STREAM => "SYN_STREAM",
        SYN_REPLY => "SYN_REPLY",
        RST_STREAM => "RST_STREAM",
        SETTINGS => "SETTINGS",
        PING => "PING",
        GOAWAY => "GOAWAY",
        HEADERS => "HEADERS",
        WINDOW_UPDATE => "WINDOW_UPDATE",
        _ => return None,
    })
}

/// RFC 1950 §8.2's checksum, which names a zlib preset dictionary.
const fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b, mut i) = (1u32, 0u32, 0);
    while i < data.len() {
        a = (a + data[i] as u32) % 65521;
        b = (b + a) % 65521;
        i += 1;
    }
    b << 16 | a
}

// Control frame types (SPDY/3 §2.6; 5, NOOP, was SPDY/2's; 10, CREDENTIAL, is not used by
// anyone this serves).
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const SETTINGS: u16 = 4;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const WINDOW_UPDATE: u16 = 9;

const FLAG_FIN: u8 = 0x01;
const FLAG_UNIDIRECTIONAL: u8 = 0x02;
const FLAG_CLEAR_SETTINGS: u8 = 0x01;
const ZLIB_FDICT: u8 = 0x20;
/// An empty non-final stored block: what zlib's `Z_SYNC_FLUSH` writes.
const SYNC_FLUSH: [u8; 5] = [0, 0, 0, 0xff, 0xff];

/// SPDY/3's header compression dictionary: "SPDY Protocol - Draft 3" §2.6.10.1
/// (draft-mbelshe-httpbis-spdy-00 §2.6.10.1) lists it as these words, each preceded by its
/// length as a 32-bit big-endian number, followed by [`DICTIONARY_TAIL`] as is.
const DICTIONARY_WORDS: [&str; 65] = [
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];

/// The end of SPDY/3's dictionary (same section), without length prefixes.
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information",
    "204 No Content",
    "301 Moved Permanently",
    "400 Bad Request",
    "401 Unauthorized",
    "403 Forbidden",
    "404 Not Found",
    "500 Internal Server Error",
    "501 Not Implemented",
    "503 Service Unavailable",
    "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec",
    " 00:00:00",
    " Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT",
    "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,",
    "text/plain,text/javascript,public",
    "privatemax-age=gzip,deflate,sdch",
    "charset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

const DICTIONARY_LEN: usize = {
    let (mut n, mut i) = (DICTIONARY_TAIL.len(), 0);
    while i < DICTIONARY_WORDS.len() {
        n += 4 + DICTIONARY_WORDS[i].len();
        i += 1;
    }
    n
};

/// SPDY/3's dictionary as bytes, built from [`DICTIONARY_WORDS`] and [`DICTIONARY_TAIL`].
pub const DICTIONARY: [u8; DICTIONARY_LEN] = {
    let mut d = [0u8; DICTIONARY_LEN];
    let (mut at, mut i) = (0, 0);
    while i < DICTIONARY_WORDS.len() {
        let w = DICTIONARY_WORDS[i].as_bytes();
        let len = (w.len() as u32).to_be_bytes();
        let mut j = 0;
        while j < 4 {
            d[at + j] = len[j];
            j += 1;
        }
        at += 4;
        j = 0;
        while j < w.len() {
            d[at + j] = w[j];
            j += 1;
        }
        at += w.len();
        i += 1;
    }
    let tail = DICTIONARY_TAIL.as_bytes();
    let mut j = 0;
    while j < tail.len() {
        d[at + j] = tail[j];
        j += 1;
    }
    d
};

/// The dictionary id a zlib header names it by.
pub const DICTIONARY_ADLER32: u32 = adler32(&DICTIONARY);

#[cfg(test)]
mod tests;
