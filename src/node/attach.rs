//! The attach socket: how a node reaches the stdin and the terminal of a container whose
//! monitor ([`super::monitor`]) holds them. It owns the framing both ends speak and the
//! socket's address; the monitor's poll loop and the node's stream handler
//! ([`super::exec`]) drive their own sockets.
//!
//! A monitor listens on [`SOCKET`] in the container's state directory when the container has
//! `stdin: true` or `tty: true` (no socket otherwise: nothing could be written or resized).
//! The socket belongs to the monitor, so it outlives the keelson process that started the
//! container; a later process connects to the same file. The container's output is not on
//! the socket: attach reads it from the CRI log.
//!
//! Wire format, both directions: `kind (1 byte) | length (2 bytes, big endian) | payload`.
//!
//! | kind | direction      | payload                                   | meaning |
//! |------|----------------|-------------------------------------------|---------|
//! | 0x81 | monitor → node | 1 byte: bit 0 stdin, bit 1 tty, bit 2 open, bit 3 once | [`Frame::Hello`], the first frame of every connection |
//! | 0x01 | node → monitor | none                                      | [`Frame::StdinOpen`]: this session feeds stdin |
//! | 0x02 | node → monitor | 1..=[`MAX_PAYLOAD`] bytes                 | [`Frame::Stdin`]: bytes for the container's stdin |
//! | 0x03 | node → monitor | none                                      | [`Frame::StdinClose`]: this session's stdin ended |
//! | 0x04 | node → monitor | rows, cols: 2 bytes each, big endian      | [`Frame::Resize`] of the terminal |
//!
//! A session that sent `StdinOpen` ends its stdin with `StdinClose` or by disconnecting; for a
//! container with `stdinOnce`, that closes the container's stdin for good (EOF on its pipe; a
//! terminal refuses further input, as it cannot be given an EOF without hanging it up).
//!
//! Invariants: a frame's length is checked against [`MAX_PAYLOAD`] before anything is
//! buffered, so a reader never holds more than [`MAX_FRAME`] bytes of one connection; an
//! unknown kind or a length that does not fit its kind is an error, and the reader drops the
//! connection.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "attach.sock";
/// Largest payload of one frame; longer input is sent as several [`Frame::Stdin`].
pub const MAX_PAYLOAD: usize = 4096;
/// Bytes before a frame's payload.
pub const HEADER: usize = 3;
/// Largest frame on the wire.
pub const MAX_FRAME: usize = HEADER + MAX_PAYLOAD;

const HELLO: u8 = 0x81;
const STDIN_OPEN: u8 = 0x01;
const STDIN: u8 = 0x02;
const STDIN_CLOSE: u8 = 0x03;
const RESIZE: u8 = 0x04;

/// One message on the attach socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Hello(Hello),
    StdinOpen,
    Stdin(&'a [u8]),
    StdinClose,
    Resize { rows: u16, cols: u16 },
}

/// What a container offers to attach, as its monitor announces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hello {
    /// The container was started with `stdin: true`.
    pub stdin: bool,
    /// The container has a terminal (`tty: true`).
    pub tty: bool,
    /// Its stdin still takes input (false once a `stdinOnce` session ended it).
    pub stdin_open: bool,
    /// `stdinOnce`: the first session feeding stdin closes it when it ends.
    pub stdin_once: bool,
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Control flow, not failure: read more and decode again.
    #[error("incomplete frame")]
    Incomplete,
    /// The peer misbehaved (or speaks a newer protocol): drop the connection.
    #[error("unknown attach frame kind {0:#04x}")]
    UnknownKind(u8),
    /// The peer misbehaved: drop the connection.
    #[error("attach frame of kind {kind:#04x} has a bad length {len}")]
    BadLength { kind: u8, len: usize },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Decodes the frame at the start of `buf`; returns it and the bytes it took.
pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize)> {
    let [kind, hi, lo, ..] = *buf else {
        return Err(Error::Incomplete);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    let fits = match kind {
        HELLO => len == 1,
        STDIN_OPEN | STDIN_CLOSE => len == 0,
        STDIN => (1..=MAX_PAYLOAD).contains(&len),
        RESIZE => len == 4,
        other => return Err(Error::UnknownKind(other)),
    };
    if !fits {
        return Err(Error::BadLength { kind, len });
    }
    let Some(payload) = buf.get(HEADER..HEADER + len) else {
        return Err(Error::Incomplete);
    };
    let frame = match (kind, payload) {
        (HELLO, &[flags]) => Frame::Hello(Hello {
            stdin: flags & 1 != 0,
            tty: flags & 2 != 0,
            stdin_open: flags & 4 != 0,
            stdin_once: flags & 8 != 0,
        }),
        (STDIN_OPEN, _) => Frame::StdinOpen,
        (STDIN_CLOSE, _) => Frame::StdinClose,
        (RESIZE, &[r0, r1, c0, c1]) => Frame::Resize {
            rows: u16::from_be_bytes([r0, r1]),
            cols: u16::from_be_bytes([c0, c1]),
        },
        // STDIN; the lengths of the others were checked above.
        _ => Frame::Stdin(payload),
    };
    Ok((frame, HEADER + len))
}

/// Appends `frame` to `out`. Input longer than [`MAX_PAYLOAD`] goes as several frames (and
/// empty input as none), so any `Stdin` can be encoded.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) {
    let mut put = |kind: u8, payload: &[u8]| {
        // Every payload passed here is at most MAX_PAYLOAD (< u16::MAX) bytes.
        let len = u16::try_from(payload.len()).unwrap_or(u16::MAX);
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(payload);
    };
    match *frame {
        Frame::Hello(h) => {
            let flags = u8::from(h.stdin)
                | u8::from(h.tty) << 1
                | u8::from(h.stdin_open) << 2
                | u8::from(h.stdin_once) << 3;
            put(HELLO, &[flags]);
        }
        Frame::StdinOpen => put(STDIN_OPEN, &[]),
        Frame::StdinClose => put(STDIN_CLOSE, &[]),
        Frame::Stdin(data) => {
            for chunk in data.chunks(MAX_PAYLOAD) {
                put(STDIN, chunk);
            }
        }
        Frame::Resize { rows, cols } => {
            let [r0, r1] = rows.to_be_bytes();
            let [c0, c1] = cols.to_be_bytes();
            put(RESIZE, &[r0, r1, c0, c1]);
        }
    }
}

/// A state directory opened for its sockets: paths into it stay short however long the
/// directory's own path is (a unix socket's path has at most 107 bytes).
#[derive(Debug)]
pub struct Dir {
    /// An `O_PATH` descriptor of the directory, close-on-exec; the short paths go through
    /// it, so they are valid only while this is held, and only in this process (see
    /// [`Dir::path_for`] for another one).
    fd: OwnedFd,
}

// === impl Dir ===

impl Dir {
    pub fn open(dir: &Path) -> io::Result<Dir> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)?;
        Ok(Dir { fd: file.into() })
    }

    /// `name` in the directory, as this process reaches it: `/proc/self/fd/N/name`.
    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
    }

    /// `name` in the directory as another process (a child such as runc) reaches it while
    /// this one runs: `/proc/<our pid>/fd/N/name`.
    pub fn path_for_others(&self, name: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/fd/{}/{name}",
            std::process::id(),
            self.fd.as_raw_fd()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(frame: Frame<'_>) {
        let mut wire = Vec::new();
        encode(&frame, &mut wire);
        let (back, used) = decode(&wire).unwrap();
        assert_eq!(back, frame);
        assert_eq!(used, wire.len());
    }

    #[test]
    fn every_frame_round_trips() {
        for stdin in [false, true] {
            for tty in [false, true] {
                for stdin_open in [false, true] {
                    for stdin_once in [false, true] {
                        round_trip(Frame::Hello(Hello {
                            stdin,
                            tty,
                            stdin_open,
                            stdin_once,
                        }));
                    }
                }
            }
        }
        round_trip(Frame::StdinOpen);
        round_trip(Frame::StdinClose);
        round_trip(Frame::Stdin(b"echo hi\n"));
        round_trip(Frame::Stdin(&[0u8; MAX_PAYLOAD]));
        round_trip(Frame::Resize {
            rows: 30,
            cols: 100,
        });
    }

    #[test]
    fn long_input_is_split_into_frames_that_fit() {
        let data: Vec<u8> = (0..MAX_PAYLOAD * 2 + 10).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        encode(&Frame::Stdin(&data), &mut wire);
        let mut rest = &wire[..];
        let mut back = Vec::new();
        while !rest.is_empty() {
            let (frame, used) = decode(rest).unwrap();
            let Frame::Stdin(part) = frame else {
                panic!("not stdin: {frame:?}")
            };
            assert!(part.len() <= MAX_PAYLOAD);
            back.extend_from_slice(part);
            rest = &rest[used..];
        }
        assert_eq!(back, data);
        let mut none = Vec::new();
        encode(&Frame::Stdin(b""), &mut none);
        assert!(none.is_empty(), "empty input is no frame");
    }

    #[test]
    fn a_partial_frame_asks_for_more_bytes_at_every_cut() {
        let mut wire = Vec::new();
        encode(&Frame::Stdin(b"hello"), &mut wire);
        encode(&Frame::Resize { rows: 1, cols: 2 }, &mut wire);
        let first = HEADER + 5;
        for cut in 0..first {
            assert_eq!(decode(&wire[..cut]), Err(Error::Incomplete), "cut at {cut}");
        }
        let (frame, used) = decode(&wire).unwrap();
        assert_eq!((frame, used), (Frame::Stdin(b"hello"), first));
        assert_eq!(
            decode(&wire[used..]).unwrap().0,
            Frame::Resize { rows: 1, cols: 2 }
        );
    }

    #[test]
    fn bad_frames_are_refused_before_their_payload_arrives() {
        assert_eq!(decode(&[0x7f, 0, 0]), Err(Error::UnknownKind(0x7f)));
        // A length over the cap is refused from the header alone.
        assert_eq!(
            decode(&[STDIN, 0xff, 0xff]),
            Err(Error::BadLength {
                kind: STDIN,
                len: 0xffff
            })
        );
        assert_eq!(
            decode(&[STDIN, 0, 0]),
            Err(Error::BadLength {
                kind: STDIN,
                len: 0
            })
        );
        assert_eq!(
            decode(&[RESIZE, 0, 3, 1, 2, 3]),
            Err(Error::BadLength {
                kind: RESIZE,
                len: 3
            })
        );
        assert_eq!(
            decode(&[STDIN_OPEN, 0, 1, 0]),
            Err(Error::BadLength {
                kind: STDIN_OPEN,
                len: 1
            })
        );
    }

    #[test]
    fn short_socket_paths_reach_a_long_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let long = tmp.path().join("d".repeat(100)).join("e".repeat(100));
        std::fs::create_dir_all(&long).unwrap();
        let dir = Dir::open(&long).unwrap();
        let path = dir.path(SOCKET);
        assert!(path.as_os_str().len() < 108, "{}", path.display());
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(long.join(SOCKET).exists());
        let _client = std::os::unix::net::UnixStream::connect(dir.path(SOCKET)).unwrap();
        let _ = listener.accept().unwrap();
    }
}
