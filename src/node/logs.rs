//! Container logs in the CRI file format: the writer the monitor feeds from a container's
//! pipes (with size-based rotation), and the reader `kubectl logs` is served from.
//!
//! One record per line: `<RFC3339Nano> <stdout|stderr> <P|F> <text>\n`. A line the container
//! writes longer than [`MAX_LINE`] bytes is cut into `P` (partial) records and ends with an
//! `F` (full) record, as kubelet's runtimes do; the reader joins them again. Which files make
//! up a container's log, and where they live, is the caller's business (kubelet's layout is
//! `/var/log/pods/<ns>_<pod>_<uid>/<container>/<restart>.log`); this module only rotates the
//! current file into `<file>.<UTC time>` siblings beside it.
//!
//! Invariants:
//! - every record the writer emits is whole and ends with `\n`; a record never spans two
//!   files, but a logical line (P… F) may;
//! - a record's text holds at most [`MAX_LINE`] bytes and no `\n`;
//! - the reader's memory is bounded by a few records whatever the file sizes: `--tail` scans
//!   backwards from the end, everything else streams forwards.
//!
//! The splitter ([`LineSplitter`]) is IO-free; [`CriWriter`] owns the file and its rotation;
//! [`copy_logs`] is the reader (async, for the API server's side), and [`follow_output`] the
//! same follower handing attach the new records with their streams.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// Longest text of one record; longer lines are split, like kubelet's runtimes do (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;
/// kubelet's `--container-log-max-size` default (10Mi).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 20;
/// kubelet's `--container-log-max-files` default: the current file and four rotated ones.
pub const DEFAULT_MAX_FILES: u32 = 5;
/// How often a follower looks for new data, rotation and the exit file (≤ 250 ms latency).
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);
/// Bytes of a record read to learn its tag during a `--tail` scan (timestamp, stream, tag).
const HEADER_PEEK: usize = 80;
/// Chunk the `--tail` scan reads backwards.
const SCAN_CHUNK: usize = 8 * 1024;
/// Longest record the reader accepts; a longer one (not written by [`CriWriter`]) is cut.
const MAX_RECORD: u64 = MAX_LINE as u64 + 256;
/// Length of the timestamps the writer emits: `2006-01-02T15:04:05.000000000Z`.
const TIMESTAMP_LEN: usize = 30;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read log file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The client went away (or its stream broke); not retryable.
    #[error("cannot write logs to the client: {0}")]
    Write(#[source] io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which of the container's pipes a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Whether a record ends a line (`F`) or continues in the next record (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Partial,
    Full,
}

// === impl Stream ===

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

// === impl Tag ===

impl Tag {
    fn as_byte(self) -> u8 {
        match self {
            Tag::Partial => b'P',
            Tag::Full => b'F',
        }
    }
}

/// A record's timestamp as text: RFC 3339 in UTC with nine fraction digits, so the text
/// sorts like the time and has a fixed length (Go's RFC3339Nano parser reads it).
#[derive(Clone, Copy)]
pub struct Timestamp([u8; TIMESTAMP_LEN]);

// === impl Timestamp ===

impl Timestamp {
    pub fn new(t: SystemTime) -> Timestamp {
        let nanos = match t.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => i128::try_from(d.as_nanos()).unwrap_or(0),
            Err(e) => -i128::try_from(e.duration().as_nanos()).unwrap_or(0),
        };
        let t =
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let mut b = *b"0000-00-00T00:00:00.000000000Z";
        // Years outside 0..=9999 cannot come from a sane clock; clamp instead of widening.
        let year = u32::try_from(t.year().clamp(0, 9999)).unwrap_or(0);
        put_digits(&mut b[0..4], year);
        put_digits(&mut b[5..7], u32::from(u8::from(t.month())));
        put_digits(&mut b[8..10], u32::from(t.day()));
        put_digits(&mut b[11..13], u32::from(t.hour()));
        put_digits(&mut b[14..16], u32::from(t.minute()));
        put_digits(&mut b[17..19], u32::from(t.second()));
        put_digits(&mut b[20..29], t.nanosecond());
        Timestamp(b)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `YYYYMMDD-HHMMSS.nnnnnnnnn`: the suffix of a rotated file, sorting like the time.
    fn file_suffix(&self) -> [u8; 25] {
        let b = &self.0;
        let mut s = [0u8; 25];
        s[0..4].copy_from_slice(&b[0..4]);
        s[4..6].copy_from_slice(&b[5..7]);
        s[6..8].copy_from_slice(&b[8..10]);
        s[8] = b'-';
        s[9..11].copy_from_slice(&b[11..13]);
        s[11..13].copy_from_slice(&b[14..16]);
        s[13..15].copy_from_slice(&b[17..19]);
        s[15..25].copy_from_slice(&b[19..29]);
        s
    }
}

fn put_digits(out: &mut [u8], mut v: u32) {
    for d in out.iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Cuts one stream's bytes into record texts: whole lines become `F` records, a line longer
/// than [`MAX_LINE`] is cut into `P` records first. IO-free: bytes in, records out.
///
/// Invariant: `pending` holds less than [`MAX_LINE`] bytes and no `\n` between calls.
#[derive(Debug, Default)]
pub struct LineSplitter {
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
}

// === impl LineSplitter ===

impl LineSplitter {
    /// Feeds bytes read from the pipe; calls `emit` for every record they complete.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            let room = MAX_LINE - self.pending.len();
            // One byte past the room, so a line of exactly MAX_LINE bytes stays whole.
            let window = &data[..data.len().min(room + 1)];
            if let Some(nl) = window.iter().position(|&b| b == b'\n') {
                self.emit_with_pending(&data[..nl], Tag::Full, emit);
                data = &data[nl + 1..];
            } else if window.len() > room {
                self.emit_with_pending(&data[..room], Tag::Partial, emit);
                data = &data[room..];
            } else {
                self.pending.extend_from_slice(data);
                data = &[];
            }
        }
    }

    /// Whether a line has started and not ended.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Emits the started line as a `P` record now (it has waited long enough: a prompt, a
    /// progress bar), so readers see it before its end arrives.
    pub fn flush_partial(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Partial, &self.pending);
            self.release();
        }
    }

    /// The stream ended: a started line is complete as it is (an `F` record, as kubelet's
    /// runtimes write the last line of a stream without a newline).
    pub fn finish(&mut self, emit: &mut impl FnMut(Tag, &[u8])) {
        if !self.pending.is_empty() {
            emit(Tag::Full, &self.pending);
            self.release();
        }
    }

    fn emit_with_pending(&mut self, tail: &[u8], tag: Tag, emit: &mut impl FnMut(Tag, &[u8])) {
        if self.pending.is_empty() {
            emit(tag, tail);
        } else {
            self.pending.extend_from_slice(tail);
            emit(tag, &self.pending);
            self.release();
        }
    }

    /// Empties `pending`, and gives its memory back once a long line has passed: an idle
    /// container costs no buffer.
    fn release(&mut self) {
        self.pending.clear();
        if self.pending.capacity() > 1024 {
            self.pending = Vec::new();
        }
    }
}

/// Size and count bounds of one container's log files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before the current file would pass this many bytes (at least one record
    /// is always written to a fresh file, so a file can exceed a tiny bound by one record).
    pub max_size: u64,
    /// Files kept, the current one included (1: rotation starts a new file and deletes the
    /// old one).
    pub max_files: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Rotation {
            max_size: DEFAULT_MAX_SIZE,
            max_files: DEFAULT_MAX_FILES,
        }
    }
}

/// Appends CRI records to a container's current log file and rotates it.
///
/// Records are gathered in `out` and reach the file on [`CriWriter::flush`], one `write`
/// per batch (the monitor flushes after each pipe read, so readers see data at once).
pub struct CriWriter {
    path: PathBuf,
    /// The current file, opened for appending; replaced on rotation.
    file: File,
    /// Bytes in the current file, plus those waiting in `out`.
    size: u64,
    rotation: Rotation,
    /// Records not yet written. Invariant: empty whenever the file is rotated.
    out: Vec<u8>,
}

// === impl CriWriter ===

impl CriWriter {
    /// Opens (or creates, 0640) the current file for appending; its parent must exist.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<CriWriter> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(CriWriter {
            path: path.to_owned(),
            file,
            size,
            rotation,
            out: Vec::new(),
        })
    }

    /// Adds one record; rotates first if it would take the file past the size bound.
    pub fn record(
        &mut self,
        ts: &Timestamp,
        stream: Stream,
        tag: Tag,
        text: &[u8],
    ) -> io::Result<()> {
        let stream = stream.as_str().as_bytes();
        let len = (TIMESTAMP_LEN + 1 + stream.len() + 3 + text.len() + 1) as u64;
        if self.size > 0 && self.size + len > self.rotation.max_size {
            self.flush()?;
            self.rotate(ts)?;
        }
        self.out.extend_from_slice(ts.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(stream);
        self.out.push(b' ');
        self.out.push(tag.as_byte());
        self.out.push(b' ');
        self.out.extend_from_slice(text);
        self.out.push(b'\n');
        self.size += len;
        Ok(())
    }

    /// Writes the gathered records to the file.
    pub fn flush(&mut self) -> io::Result<()> {
        let result = self.file.write_all(&self.out);
        self.out.clear();
        if self.out.capacity() > 2 * MAX_LINE {
            self.out = Vec::new();
        }
        result
    }

    /// Renames the current file to `<file>.<time>`, starts an empty one and deletes the
    /// oldest rotated files beyond the count bound.
    fn rotate(&mut self, now: &Timestamp) -> io::Result<()> {
        // Always a new file (a new inode), even when no old one is kept: a follower tells a
        // rotation by the inode, which truncating in place would not change.
        let mut name = self.path.as_os_str().to_owned();
        name.push(".");
        name.push(std::str::from_utf8(&now.file_suffix()).unwrap_or("0"));
        fs::rename(&self.path, PathBuf::from(name))?;
        self.file = open_append(&self.path)?;
        self.size = 0;
        let rotated = rotated_files(&self.path)?;
        let keep = self.rotation.max_files.saturating_sub(1) as usize;
        for old in rotated.iter().take(rotated.len().saturating_sub(keep)) {
            // Already gone (another cleaner) is what we wanted.
            let _ = fs::remove_file(old);
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

/// The rotated siblings of a current log file (`<file>.<time>`), oldest first.
pub fn rotated_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (current.parent(), current.file_name()) else {
        return Ok(Vec::new());
    };
    let mut prefix = name.to_owned();
    prefix.push(".");
    let prefix = prefix.as_encoded_bytes().to_vec();
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let n = entry.file_name();
        let n = n.as_encoded_bytes();
        // Only our own suffix: digits, '-' and '.', which sort like the time.
        if n.len() > prefix.len()
            && n.starts_with(&prefix)
            && n[prefix.len()..]
                .iter()
                .all(|b| b.is_ascii_digit() || *b == b'-' || *b == b'.')
        {
            found.push(entry.path());
        }
    }
    found.sort();
    Ok(found)
}

/// A container's log, oldest file first: the rotated files and then the current one (see
/// [`log_files`]), or one restart's file alone for `--previous`.
#[derive(Debug, Clone)]
pub struct LogSource {
    /// Oldest first; the last is the file being written (if any). Missing files read as
    /// empty.
    pub files: Vec<PathBuf>,
    /// The monitor's exit file: once it exists, the writer is done, and a follower ends
    /// after draining. Without it a follower runs until the caller drops it.
    pub exit_file: Option<PathBuf>,
}

/// `kubectl logs` options, as kubelet applies them: `tail_lines` picks the start, then
/// records older than `since` are skipped, then output stops after `limit_bytes`.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// Only the last N lines (a line split into P records counts once).
    pub tail_lines: Option<u64>,
    pub since: Option<OffsetDateTime>,
    /// Prefix each line with its RFC3339Nano timestamp and a space.
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
}

/// The files of a container's log whose current file is `current`: rotated ones first.
pub fn log_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files = rotated_files(current)?;
    files.push(current.to_owned());
    Ok(files)
}

/// Writes the log text `kubectl logs` shows to `out`, following the last file if asked.
/// Returns the bytes written.
pub async fn copy_logs<W: AsyncWrite + Unpin>(
    src: &LogSource,
    opts: &LogOptions,
    out: &mut W,
) -> Result<u64> {
    // Open every file first: a rotation while we work renames paths but not open files.
    let mut files: Vec<Option<(PathBuf, File)>> = Vec::with_capacity(src.files.len());
    for path in &src.files {
        match File::open(path) {
            Ok(f) => files.push(Some((path.clone(), f))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => files.push(None),
            Err(source) => {
                return Err(Error::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    let (first, offset) = match opts.tail_lines {
        None => (0, 0),
        Some(n) => {
            let handles: Vec<Option<File>> = files
                .iter()
                .map(|f| f.as_ref().and_then(|(_, f)| f.try_clone().ok()))
                .collect();
            let paths = src.files.clone();
            tokio::task::spawn_blocking(move || tail_start(handles, n, &paths))
                .await
                .map_err(|e| Error::Read {
                    path: src.files.last().cloned().unwrap_or_default(),
                    source: io::Error::other(e),
                })??
        }
    };
    let mut sink = Sink {
        out,
        opts,
        written: 0,
        line_open: false,
    };
    let last = files.len().saturating_sub(1);
    for (i, file) in files.into_iter().enumerate().skip(first) {
        let start = if i == first { offset } else { 0 };
        let following = opts.follow && i == last;
        let file = file.map(|(path, f)| (path, tokio::fs::File::from_std(f)));
        if following {
            let path = src.files.get(i).cloned().unwrap_or_default();
            follow(file, &path, start, src.exit_file.as_deref(), &mut sink).await?;
            return Ok(sink.written);
        }
        if let Some((path, f)) = file {
            let mut reader = Records::new(f, start, path).await?;
            while let Some(record) = reader.next().await? {
                if sink.record(&record).await? == Flow::Stop {
                    return Ok(sink.written);
                }
            }
        }
    }
    Ok(sink.written)
}

/// A container's output from now on, for `kubectl attach`: the records appended to its
/// current log file `current` (across rotations) after this call, sent to `out` as the
/// stream they came from and their text (a line's with its `\n`, a partial record's
/// without), until the exit file exists and everything before it was sent, or `out` is
/// closed.
pub async fn follow_output(
    from: LogEnd,
    exit_file: Option<&Path>,
    out: mpsc::Sender<(Stream, Vec<u8>)>,
) -> Result<()> {
    let file = from
        .file
        .map(|f| (from.path.clone(), tokio::fs::File::from_std(f)));
    follow(file, &from.path, from.start, exit_file, &mut Output { out }).await
}

/// Where a log ends now: taken before anything can make the container write (an attach's
/// input), so none of its answer falls before the point a follower starts from.
pub struct LogEnd {
    path: PathBuf,
    file: Option<File>,
    start: u64,
}

impl LogEnd {
    pub fn of(current: &Path) -> Result<LogEnd> {
        let read_err = |source| Error::Read {
            path: current.to_owned(),
            source,
        };
        let (file, start) = match File::open(current) {
            Ok(f) => {
                let end = f.metadata().map_err(read_err)?.len();
                (Some(f), end)
            }
            // Not written yet: it is read from its start once it appears.
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, 0),
            Err(e) => return Err(read_err(e)),
        };
        Ok(LogEnd {
            path: current.to_owned(),
            file,
            start,
        })
    }
}

/// Streams `path` from `start`, then keeps reading what is appended, across rotations,
/// until the exit file exists and everything before it is read (or the consumer stops).
async fn follow(
    file: Option<(PathBuf, tokio::fs::File)>,
    path: &Path,
    start: u64,
    exit_file: Option<&Path>,
    sink: &mut impl Consumer,
) -> Result<()> {
    let mut reader = match file {
        Some((p, f)) => Some(Records::new(f, start, p).await?),
        None => None,
    };
    loop {
        // Seen before draining: the monitor writes the exit file only after its last record,
        // so a drain that starts after seeing it reads everything.
        let exited = exit_file.is_some_and(Path::exists);
        if let Some(r) = reader.as_mut() {
            while let Some(record) = r.next().await? {
                if sink.record(&record).await? == Flow::Stop {
                    return Ok(());
                }
            }
        }
        // Rotated (or created) under us: read the old file to its end (done above), then
        // go on with the new one from its start. A file truncated in place by someone else
        // (shorter than what we read) is read again from its start too.
        let replaced = match (&reader, fs::metadata(path)) {
            (Some(r), Ok(now)) => Some(now.ino()) != r.inode || now.len() < r.pos,
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        };
        if replaced {
            match File::open(path) {
                Ok(f) => {
                    let f = tokio::fs::File::from_std(f);
                    reader = Some(Records::new(f, 0, path.to_owned()).await?);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Read {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
        if exited {
            return Ok(());
        }
        sink.idle().await?;
        tokio::time::sleep(FOLLOW_POLL).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// What a follower hands the records it reads to.
trait Consumer {
    async fn record(&mut self, r: &Record<'_>) -> Result<Flow>;
    /// Nothing new for now: push out what is buffered.
    async fn idle(&mut self) -> Result<()>;
}

/// Records as (stream, text) messages, for attach.
struct Output {
    out: mpsc::Sender<(Stream, Vec<u8>)>,
}

impl Consumer for Output {
    async fn record(&mut self, r: &Record<'_>) -> Result<Flow> {
        let mut text = Vec::with_capacity(r.text.len() + 1);
        text.extend_from_slice(r.text);
        if r.tag == Tag::Full {
            text.push(b'\n');
        }
        Ok(match self.out.send((r.stream, text)).await {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop,
        })
    }

    async fn idle(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Where log text goes: applies `since`, `timestamps` and `limit_bytes`.
struct Sink<'a, W> {
    out: &'a mut W,
    opts: &'a LogOptions,
    written: u64,
    /// The last record written was a `P`: the next one continues its line (no prefix).
    line_open: bool,
}

// === impl Sink ===

impl<W: AsyncWrite + Unpin> Consumer for Sink<'_, W> {
    async fn record(&mut self, r: &Record<'_>) -> Result<Flow> {
        Sink::record(self, r).await
    }

    async fn idle(&mut self) -> Result<()> {
        self.out.flush().await.map_err(Error::Write)
    }
}

impl<W: AsyncWrite + Unpin> Sink<'_, W> {
    async fn record(&mut self, r: &Record<'_>) -> Result<Flow> {
        if let Some(since) = self.opts.since {
            match parse_timestamp(r.timestamp) {
                Some(t) if t >= since => {}
                // Unparseable timestamps cannot be placed in time; kubelet skips them too.
                _ => return Ok(Flow::Continue),
            }
        }
        if self.opts.timestamps && !self.line_open {
            let ts = trim_fraction_zeros(r.timestamp);
            if self.put(&ts).await? == Flow::Stop || self.put(b" ").await? == Flow::Stop {
                return Ok(Flow::Stop);
            }
        }
        if self.put(r.text).await? == Flow::Stop {
            return Ok(Flow::Stop);
        }
        self.line_open = r.tag == Tag::Partial;
        if r.tag == Tag::Full {
            return self.put(b"\n").await;
        }
        Ok(Flow::Continue)
    }

    async fn put(&mut self, bytes: &[u8]) -> Result<Flow> {
        let (bytes, last) = match self.opts.limit_bytes {
            Some(limit) => {
                let left = limit.saturating_sub(self.written);
                let take = bytes.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                (&bytes[..take], take as u64 == left)
            }
            None => (bytes, false),
        };
        self.out.write_all(bytes).await.map_err(Error::Write)?;
        self.written += bytes.len() as u64;
        if last {
            self.out.flush().await.map_err(Error::Write)?;
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }
}

/// Go's RFC3339Nano drops trailing zeros of the fraction (and the dot with them); kubelet
/// prints timestamps that way.
fn trim_fraction_zeros(ts: &[u8]) -> Vec<u8> {
    let Some(dot) = ts.iter().position(|&b| b == b'.') else {
        return ts.to_vec();
    };
    let digits_end = ts[dot + 1..]
        .iter()
        .position(|b| !b.is_ascii_digit())
        .map_or(ts.len(), |p| dot + 1 + p);
    let mut keep = digits_end;
    while keep > dot + 1 && ts[keep - 1] == b'0' {
        keep -= 1;
    }
    if keep == dot + 1 {
        keep = dot;
    }
    let mut out = ts[..keep].to_vec();
    out.extend_from_slice(&ts[digits_end..]);
    out
}

fn parse_timestamp(ts: &[u8]) -> Option<OffsetDateTime> {
    let s = std::str::from_utf8(ts).ok()?;
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// One parsed record, borrowing the reader's line buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a [u8],
    pub stream: Stream,
    pub tag: Tag,
    pub text: &'a [u8],
}

/// Parses one record (without its `\n`). `None` for a line that is not a CRI record.
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let timestamp = parts.next()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let tag = match parts.next()? {
        b"P" => Tag::Partial,
        b"F" => Tag::Full,
        _ => return None,
    };
    // `text` may be absent for an empty line written without the separating space.
    let text = parts.next().unwrap_or(b"");
    if timestamp.is_empty() {
        return None;
    }
    Some(Record {
        timestamp,
        stream,
        tag,
        text,
    })
}

/// Reads whole records forward from an offset; holds at most one record.
struct Records {
    reader: tokio::io::BufReader<tokio::fs::File>,
    path: PathBuf,
    inode: Option<u64>,
    /// Offset in the file of the end of what has been read.
    pos: u64,
    /// The record being read. Invariant: between calls, holds only the start of a record
    /// whose `\n` has not been written yet (a follower waits for the rest).
    line: Vec<u8>,
    /// The record last returned, owned here so [`Record`] can borrow it.
    current: Vec<u8>,
}

// === impl Records ===

impl Records {
    async fn new(mut file: tokio::fs::File, start: u64, path: PathBuf) -> Result<Records> {
        let read_err = |source| Error::Read {
            path: path.clone(),
            source,
        };
        let inode = file.metadata().await.map_err(read_err)?.ino();
        file.seek(SeekFrom::Start(start)).await.map_err(read_err)?;
        Ok(Records {
            reader: tokio::io::BufReader::with_capacity(8 * 1024, file),
            path,
            inode: Some(inode),
            pos: start,
            line: Vec::new(),
            current: Vec::new(),
        })
    }

    /// The next whole record, or `None` at the end of what is written so far. Lines that
    /// are not records are skipped.
    async fn next(&mut self) -> Result<Option<Record<'_>>> {
        loop {
            let room = MAX_RECORD.saturating_sub(self.line.len() as u64);
            let n = (&mut self.reader)
                .take(room.max(1))
                .read_until(b'\n', &mut self.line)
                .await
                .map_err(|source| Error::Read {
                    path: self.path.clone(),
                    source,
                })?;
            self.pos += n as u64;
            let complete = self.line.last() == Some(&b'\n');
            let overlong = self.line.len() as u64 >= MAX_RECORD;
            if !complete && !overlong {
                if n == 0 {
                    // The end of what is written; an unfinished record stays in `line`.
                    return Ok(None);
                }
                continue;
            }
            std::mem::swap(&mut self.current, &mut self.line);
            self.line.clear();
            if parse_record(strip_newline(&self.current)).is_some() {
                break;
            }
        }
        Ok(parse_record(strip_newline(&self.current)))
    }
}

fn strip_newline(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\n").unwrap_or(line)
}

/// Where the last `n` lines start: (index into `files`, byte offset). Reads backwards in
/// small chunks, so its cost follows `n`, not the file sizes.
fn tail_start(files: Vec<Option<File>>, n: u64, paths: &[PathBuf]) -> Result<(usize, u64)> {
    let mut counter = TailCounter { n, seen: 0 };
    for (i, file) in files.into_iter().enumerate().rev() {
        let Some(mut file) = file else { continue };
        let path = paths.get(i).cloned().unwrap_or_default();
        let read_err = |source| Error::Read {
            path: path.clone(),
            source,
        };
        let len = file.metadata().map_err(read_err)?.len();
        if let Some(offset) = tail_in_file(&mut file, len, &mut counter).map_err(read_err)? {
            return Ok((i, offset));
        }
    }
    Ok((0, 0))
}

/// Counts lines backwards over records. Going backwards, an `F` record ends a line; a run of
/// `P` records at the very end (a line still being written) is a line too.
struct TailCounter {
    n: u64,
    seen: u64,
}

// === impl TailCounter ===

impl TailCounter {
    /// Called for each record from the last to the first with the offset just past it;
    /// returns the start offset once `n` lines are found.
    fn record(&mut self, tag: Tag, end: u64, first_seen: bool) -> Option<u64> {
        if tag == Tag::Full || first_seen {
            if self.seen == self.n {
                return Some(end);
            }
            self.seen += 1;
        }
        None
    }
}

/// Scans one file backwards; `Some(offset)` when the start was found in it.
fn tail_in_file(file: &mut File, len: u64, counter: &mut TailCounter) -> io::Result<Option<u64>> {
    // Ignore an unfinished record at the end: scan only up to the last `\n`.
    let mut end = len;
    let mut chunk = vec![0u8; SCAN_CHUNK];
    let mut header = [0u8; HEADER_PEEK];
    // Find the last newline: everything after it is unfinished.
    let mut pos = len;
    let mut found_last = false;
    while pos > 0 && !found_last {
        let start = pos.saturating_sub(SCAN_CHUNK as u64);
        let buf = &mut chunk[..(pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        if let Some(i) = buf.iter().rposition(|&b| b == b'\n') {
            end = start + i as u64 + 1;
            found_last = true;
        }
        pos = start;
    }
    if !found_last {
        return Ok(None);
    }
    // Walk the record boundaries (the byte after each `\n`) from `end` backwards.
    let mut rec_end = end;
    let mut pos = end - 1; // the last record's own `\n` is not a boundary
    let mut first_seen = counter.seen == 0;
    loop {
        let start = pos.saturating_sub(SCAN_CHUNK as u64);
        let buf = &mut chunk[..(pos - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(buf)?;
        let mut boundaries: Vec<u64> = buf
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'\n')
            .map(|(i, _)| start + i as u64 + 1)
            .collect();
        if start == 0 {
            boundaries.insert(0, 0);
        }
        for &rec_start in boundaries.iter().rev() {
            let tag = record_tag(file, rec_start, rec_end, &mut header)?;
            if let Some(found) = counter.record(tag, rec_end, first_seen) {
                return Ok(Some(found));
            }
            first_seen = false;
            rec_end = rec_start;
        }
        if start == 0 {
            return Ok(None);
        }
        pos = start;
    }
}

/// The tag of the record at `start..end`; a line that is not a record counts as `F`.
fn record_tag(file: &mut File, start: u64, end: u64, header: &mut [u8]) -> io::Result<Tag> {
    let len = ((end - start) as usize).min(header.len());
    let buf = &mut header[..len];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(buf)?;
    let mut parts = buf.splitn(4, |&b| b == b' ');
    let tag = parts
        .nth(2)
        .map_or(Tag::Full, |t| match t.strip_suffix(b"\n").unwrap_or(t) {
            b"P" => Tag::Partial,
            _ => Tag::Full,
        });
    Ok(tag)
}

#[cfg(test)]
mod tests;
