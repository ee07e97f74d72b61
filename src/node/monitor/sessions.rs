//! The monitor's end of the attach socket ([`crate::node::attach`]): accepts the node's
//! sessions, feeds their stdin bytes to the container and applies their terminal resizes.
//! The monitor's poll loop owns the descriptors' readiness; this module only says what to
//! poll ([`Sessions::register`]) and acts on what was ready ([`Sessions::handle`]).
//!
//! Invariants:
//! - nothing here blocks: the socket, the sessions, the stdin pipe and the terminal are all
//!   non-blocking, so a container that does not read its stdin stalls its attach sessions
//!   (no session is read while stdin bytes wait, at most [`MAX_PAYLOAD`] of them), never the
//!   log copy or the reaping;
//! - memory is bounded: at most [`MAX_SESSIONS`] sessions, each buffering at most one frame;
//! - with `stdinOnce`, the first session that fed stdin and ended (`StdinClose` or a
//!   disconnect) closes the container's stdin after its last bytes were written, and stdin
//!   is never offered again.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags};

use crate::node::attach::{self, Frame, Hello, MAX_FRAME, MAX_PAYLOAD};

/// Attach sessions served at once; more wait in the listen backlog.
pub const MAX_SESSIONS: usize = 4;

/// The attach socket and what it reaches.
pub struct Sessions {
    /// Bound to the state directory's [`attach::SOCKET`]; closed with the monitor (the file is
    /// removed before the exit file is written).
    listener: UnixListener,
    sessions: Vec<Session>,
    /// Where stdin bytes go: the write end of the container's stdin pipe, or (a copy of) its
    /// terminal's master. `None` when the container has no stdin, or once `stdinOnce`
    /// closed it.
    stdin: Option<OwnedFd>,
    /// The terminal's master (a copy), for resizes; `None` without `tty`.
    terminal: Option<OwnedFd>,
    stdin_once: bool,
    /// Whether the container was started with stdin at all (the hello says so even after
    /// `stdinOnce` closed it).
    had_stdin: bool,
    /// Stdin bytes read from a session and not yet taken by the container.
    /// Invariant: at most [`MAX_PAYLOAD`] bytes; while non-empty no session is read.
    pending: Vec<u8>,
    /// Close stdin once `pending` is written (a `stdinOnce` session ended).
    close_when_written: bool,
}

/// One connection from a node.
struct Session {
    stream: UnixStream,
    /// Received bytes not decoded yet. Invariant: at most [`MAX_FRAME`] bytes.
    buf: Vec<u8>,
    /// This session sent `StdinOpen` and has not ended its stdin.
    feeds_stdin: bool,
}

/// Where the descriptors of [`Sessions::register`] sit in the poll set.
pub struct Registered {
    listener: Option<usize>,
    sessions: Vec<Option<usize>>,
    stdin: Option<usize>,
}

/// What the poll found ready, by [`Registered`]'s slots.
pub struct Ready {
    listener: bool,
    sessions: Vec<bool>,
    stdin: bool,
}

// === impl Sessions ===

impl Sessions {
    /// Serves `listener` (bound, any mode); `stdin` and `terminal` are made non-blocking.
    pub fn new(
        listener: UnixListener,
        stdin: Option<OwnedFd>,
        terminal: Option<OwnedFd>,
        stdin_once: bool,
    ) -> io::Result<Sessions> {
        listener.set_nonblocking(true)?;
        for fd in stdin.iter().chain(terminal.iter()) {
            set_nonblocking(fd)?;
        }
        Ok(Sessions {
            listener,
            sessions: Vec::new(),
            had_stdin: stdin.is_some(),
            stdin,
            terminal,
            stdin_once,
            pending: Vec::new(),
            close_when_written: false,
        })
    }

    /// Someone is attached (the log's partial lines should then go out at once).
    pub fn attached(&self) -> bool {
        !self.sessions.is_empty()
    }

    /// Adds what the loop should wait for to `fds`.
    pub fn register<'a>(&'a self, fds: &mut Vec<PollFd<'a>>) -> Registered {
        let mut slot = |fd: std::os::fd::BorrowedFd<'a>, flags| {
            fds.push(PollFd::new(fd, flags));
            Some(fds.len() - 1)
        };
        let listener = if self.sessions.len() < MAX_SESSIONS {
            slot(self.listener.as_fd(), PollFlags::POLLIN)
        } else {
            None
        };
        let waiting = !self.pending.is_empty();
        let sessions = self
            .sessions
            .iter()
            // Back-pressure: read no more input while the container has not taken the last.
            .map(|s| {
                (!waiting)
                    .then(|| slot(s.stream.as_fd(), PollFlags::POLLIN))
                    .flatten()
            })
            .collect();
        let stdin = match &self.stdin {
            Some(fd) if waiting => slot(fd.as_fd(), PollFlags::POLLOUT),
            _ => None,
        };
        Registered {
            listener,
            sessions,
            stdin,
        }
    }

    /// Acts on what was ready.
    pub fn handle(&mut self, ready: Ready) {
        if ready.stdin {
            self.write_pending();
            // Frames that waited behind those bytes.
            for i in (0..self.sessions.len()).rev() {
                if !self.decode_session(i) {
                    self.end_session(i);
                }
            }
        }
        // Sessions by index, last first, so removing one keeps the others' indices.
        for i in (0..self.sessions.len()).rev() {
            if ready.sessions.get(i).copied().unwrap_or(false) {
                self.read_session(i);
            }
        }
        if ready.listener {
            self.accept();
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            stdin: self.had_stdin,
            tty: self.terminal.is_some(),
            stdin_open: self.stdin.is_some(),
            stdin_once: self.stdin_once,
        }
    }

    fn accept(&mut self) {
        while self.sessions.len() < MAX_SESSIONS {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                // WouldBlock: none left; anything else: that connection is lost, not us.
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let mut hello = Vec::with_capacity(attach::HEADER + 1);
            attach::encode(&Frame::Hello(self.hello()), &mut hello);
            // A fresh connection's buffer takes four bytes; if not, the node gave up.
            if (&stream).write_all(&hello).is_err() {
                continue;
            }
            self.sessions.push(Session {
                stream,
                buf: Vec::new(),
                feeds_stdin: false,
            });
        }
    }

    /// Reads what session `i` sent and acts on its whole frames; drops it at EOF or on a
    /// frame it should not have sent.
    fn read_session(&mut self, i: usize) {
        let Some(session) = self.sessions.get_mut(i) else {
            return;
        };
        let start = session.buf.len();
        let room = MAX_FRAME.saturating_sub(start);
        if room == 0 {
            // A full buffer holds a whole frame (or a bad one): decode it first.
            if !self.decode_session(i) {
                self.end_session(i);
            }
            return;
        }
        session.buf.resize(MAX_FRAME, 0);
        let read = (&session.stream).read(&mut session.buf[start..start + room]);
        let n = match read {
            // EOF: the node ended the session.
            Ok(0) => {
                self.end_session(i);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                self.end_session(i);
                return;
            }
        };
        session.buf.truncate(start + n);
        if !self.decode_session(i) {
            self.end_session(i);
        }
    }

    /// Acts on session `i`'s buffered frames until one is incomplete or stdin bytes wait;
    /// `false` if the session sent something bad.
    fn decode_session(&mut self, i: usize) -> bool {
        loop {
            if !self.pending.is_empty() {
                return true;
            }
            let Some(session) = self.sessions.get_mut(i) else {
                return true;
            };
            let used = match attach::decode(&session.buf) {
                Ok((frame, used)) => {
                    match frame {
                        Frame::StdinOpen => session.feeds_stdin = self.stdin.is_some(),
                        Frame::Stdin(data) if session.feeds_stdin && self.stdin.is_some() => {
                            self.pending.extend_from_slice(data);
                        }
                        // Input from a session that does not feed stdin goes nowhere.
                        Frame::Stdin(_) => {}
                        Frame::StdinClose => {
                            if std::mem::take(&mut session.feeds_stdin) && self.stdin_once {
                                self.close_when_written = true;
                            }
                        }
                        Frame::Resize { rows, cols } => {
                            if let Some(t) = &self.terminal {
                                let _ = super::runc::set_terminal_size(t.as_fd(), rows, cols);
                            }
                        }
                        // Only monitors say hello.
                        Frame::Hello(_) => return false,
                    }
                    used
                }
                Err(attach::Error::Incomplete) => return true,
                Err(_) => return false,
            };
            if let Some(session) = self.sessions.get_mut(i) {
                session.buf.drain(..used);
            }
            self.write_pending();
        }
    }

    fn end_session(&mut self, i: usize) {
        if i >= self.sessions.len() {
            return;
        }
        let session = self.sessions.swap_remove(i);
        if session.feeds_stdin && self.stdin_once {
            self.close_when_written = true;
            self.write_pending();
        }
    }

    /// Gives the container what stdin bytes wait; closes stdin when asked and done.
    fn write_pending(&mut self) {
        if let Some(fd) = &self.stdin
            && !self.pending.is_empty()
        {
            match nix::unistd::write(fd, &self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(Errno::EAGAIN | Errno::EINTR) => {}
                // The container closed its stdin (or exited): input has nowhere to go.
                Err(_) => {
                    self.stdin = None;
                }
            }
        }
        if self.stdin.is_none() {
            self.pending = Vec::new();
        }
        if self.close_when_written && self.pending.is_empty() {
            // EOF on the container's pipe; a terminal just takes no more input.
            self.stdin = None;
            self.close_when_written = false;
        }
        if self.pending.is_empty() && self.pending.capacity() > MAX_PAYLOAD {
            self.pending = Vec::new();
        }
    }
}

// === impl Registered ===

impl Registered {
    /// Reads the poll's results for these slots.
    pub fn ready(&self, fds: &[PollFd<'_>]) -> Ready {
        let ready = |slot: Option<usize>| {
            slot.and_then(|i| fds.get(i))
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty())
        };
        Ready {
            listener: ready(self.listener),
            sessions: self.sessions.iter().map(|s| ready(*s)).collect(),
            stdin: ready(self.stdin),
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}
