use std::time::{Duration, SystemTime};

use super::*;

/// 2026-12-06T13:05:34.5Z and `secs` seconds later.
fn at(secs: u64) -> Timestamp {
    Timestamp::new(SystemTime::UNIX_EPOCH + Duration::new(1_796_562_334 + secs, 500_000_000))
}

fn split_all(chunks: &[&[u8]], finish: bool) -> Vec<(Tag, Vec<u8>)> {
    let mut s = LineSplitter::default();
    let mut got = Vec::new();
    let mut emit = |tag: Tag, text: &[u8]| got.push((tag, text.to_vec()));
    for c in chunks {
        s.push(c, &mut emit);
    }
    if finish {
        s.finish(&mut emit);
    }
    got
}

fn write_records(path: &Path, rotation: Rotation, records: &[(u64, Stream, Tag, &str)]) {
    let mut w = CriWriter::open(path, rotation).unwrap();
    for (secs, stream, tag, text) in records {
        w.record(&at(*secs), *stream, *tag, text.as_bytes())
            .unwrap();
        w.flush().unwrap();
    }
}

async fn read(files: Vec<PathBuf>, opts: LogOptions) -> String {
    let mut out = Vec::new();
    let src = LogSource {
        files,
        exit_file: None,
    };
    copy_logs(&src, &opts, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn timestamps_are_rfc3339_utc_with_nine_fraction_digits() {
    let t = SystemTime::UNIX_EPOCH + Duration::new(1_796_562_334, 5_000);
    let ts = Timestamp::new(t);
    assert_eq!(ts.as_bytes(), b"2026-12-06T13:05:34.000005000Z");
    let parsed = parse_timestamp(ts.as_bytes()).unwrap();
    assert_eq!(parsed.unix_timestamp_nanos(), 1_796_562_334_000_005_000);
    assert_eq!(&ts.file_suffix(), b"20261206-130534.000005000");
}

#[test]
fn whole_lines_are_full_records_and_a_started_line_waits() {
    let got = split_all(&[b"one\ntw", b"o\n", b"thr"], false);
    assert_eq!(
        got,
        vec![(Tag::Full, b"one".to_vec()), (Tag::Full, b"two".to_vec())]
    );
    // At the end of the stream, the started line is complete as it is.
    let got = split_all(&[b"one\nthr"], true);
    assert_eq!(got.last(), Some(&(Tag::Full, b"thr".to_vec())));
    // An empty line is a record with empty text.
    assert_eq!(split_all(&[b"\n"], true), vec![(Tag::Full, Vec::new())]);
}

#[test]
fn lines_longer_than_16_kib_are_split_into_partial_records() {
    let long = vec![b'x'; 2 * MAX_LINE + 100];
    let mut input = long.clone();
    input.push(b'\n');
    // The same records whether the pipe delivers it at once or in odd pieces.
    let pieces: Vec<&[u8]> = input.chunks(1000).collect();
    for got in [split_all(&[&input], false), split_all(&pieces, false)] {
        let tags: Vec<Tag> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, vec![Tag::Partial, Tag::Partial, Tag::Full]);
        assert_eq!(got[0].1.len(), MAX_LINE);
        assert_eq!(got[1].1.len(), MAX_LINE);
        assert_eq!(got[2].1.len(), 100);
        assert_eq!(got.concat_texts(), long);
    }
    // A line of exactly 16 KiB is still one full record.
    let mut exact = vec![b'y'; MAX_LINE];
    exact.push(b'\n');
    let got = split_all(&[&exact], false);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, Tag::Full);
}

trait ConcatTexts {
    fn concat_texts(&self) -> Vec<u8>;
}

impl ConcatTexts for Vec<(Tag, Vec<u8>)> {
    fn concat_texts(&self) -> Vec<u8> {
        self.iter().flat_map(|(_, t)| t.iter().copied()).collect()
    }
}

#[test]
fn a_waiting_line_can_be_flushed_as_partial() {
    let mut s = LineSplitter::default();
    let mut got = Vec::new();
    let mut emit = |tag: Tag, text: &[u8]| got.push((tag, text.to_vec()));
    s.push(b"password: ", &mut emit);
    assert!(s.has_pending());
    s.flush_partial(&mut emit);
    assert!(!s.has_pending());
    s.push(b"ok\n", &mut emit);
    assert_eq!(
        got,
        vec![
            (Tag::Partial, b"password: ".to_vec()),
            (Tag::Full, b"ok".to_vec())
        ]
    );
}

#[test]
fn the_writer_writes_cri_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    write_records(
        &path,
        Rotation::default(),
        &[
            (0, Stream::Stdout, Tag::Full, "hello"),
            (1, Stream::Stderr, Tag::Partial, "par"),
            (1, Stream::Stderr, Tag::Full, "tial"),
        ],
    );
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text,
        "2026-12-06T13:05:34.500000000Z stdout F hello\n\
         2026-12-06T13:05:35.500000000Z stderr P par\n\
         2026-12-06T13:05:35.500000000Z stderr F tial\n"
    );
    let line = text.lines().next().unwrap().as_bytes();
    assert_eq!(
        parse_record(line),
        Some(Record {
            timestamp: b"2026-12-06T13:05:34.500000000Z",
            stream: Stream::Stdout,
            tag: Tag::Full,
            text: b"hello",
        })
    );
    assert_eq!(parse_record(b"garbage"), None);
}

#[test]
fn rotation_bounds_file_size_and_count_and_keeps_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    // Each record is 30 + 1 + 6 + 3 + 4 + 1 = 45 bytes: two fit in 100 bytes.
    let rotation = Rotation {
        max_size: 100,
        max_files: 3,
    };
    let mut w = CriWriter::open(&path, rotation).unwrap();
    for i in 0..10u64 {
        // Distinct times, so rotated names differ as they would in life.
        w.record(
            &at(i),
            Stream::Stdout,
            Tag::Full,
            format!("l{i:03}").as_bytes(),
        )
        .unwrap();
        w.flush().unwrap();
    }
    let files = log_files(&path).unwrap();
    assert_eq!(files.len(), 3, "{files:?}");
    let mut lines = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(text.len() <= 100, "{f:?} has {} bytes", text.len());
        lines.extend(
            text.lines()
                .map(|l| l.rsplit(' ').next().unwrap().to_owned()),
        );
    }
    // The oldest records went with the deleted files; the rest are in order.
    assert_eq!(lines, ["l004", "l005", "l006", "l007", "l008", "l009"]);
    // A file that is not one of ours is never touched.
    std::fs::write(dir.path().join("0.log.keep"), "x").unwrap();
    assert_eq!(rotated_files(&path).unwrap().len(), 2);
}

#[tokio::test]
async fn the_reader_joins_partial_lines_and_prefixes_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    write_records(
        &path,
        Rotation::default(),
        &[
            (0, Stream::Stdout, Tag::Full, "first"),
            (1, Stream::Stderr, Tag::Partial, "sec"),
            (2, Stream::Stderr, Tag::Full, "ond"),
        ],
    );
    // An unfinished record at the end (a write in progress) is not shown yet.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"2026-12-06T13:05:37.5Z stdout F unfini")
        .unwrap();
    let plain = read(vec![path.clone()], LogOptions::default()).await;
    assert_eq!(plain, "first\nsecond\n");
    let opts = LogOptions {
        timestamps: true,
        ..LogOptions::default()
    };
    assert_eq!(
        read(vec![path], opts).await,
        "2026-12-06T13:05:34.5Z first\n2026-12-06T13:05:35.5Z second\n"
    );
}

#[tokio::test]
async fn tail_counts_lines_across_rotated_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let rotation = Rotation {
        max_size: 200,
        max_files: 10,
    };
    let mut w = CriWriter::open(&path, rotation).unwrap();
    for i in 0..20u64 {
        // Every third line is split into two records, one of them possibly in the
        // previous file.
        if i % 3 == 0 {
            w.record(
                &at(i),
                Stream::Stdout,
                Tag::Partial,
                format!("l{i:02}a").as_bytes(),
            )
            .unwrap();
            w.flush().unwrap();
        }
        w.record(
            &at(i),
            Stream::Stdout,
            Tag::Full,
            format!("l{i:02}").as_bytes(),
        )
        .unwrap();
        w.flush().unwrap();
    }
    let files = log_files(&path).unwrap();
    assert!(files.len() > 5, "{files:?}");
    let expected = |from: u64| -> String {
        (from..20)
            .map(|i| {
                if i % 3 == 0 {
                    format!("l{i:02}al{i:02}\n")
                } else {
                    format!("l{i:02}\n")
                }
            })
            .collect()
    };
    for n in [0, 1, 2, 3, 7, 19, 20, 25] {
        let opts = LogOptions {
            tail_lines: Some(n),
            ..LogOptions::default()
        };
        let got = read(files.clone(), opts).await;
        assert_eq!(got, expected(20u64.saturating_sub(n)), "tail {n}");
    }
    // A line still being written (P records, no F yet) counts as the last line.
    w.record(&at(30), Stream::Stdout, Tag::Partial, b"open")
        .unwrap();
    w.flush().unwrap();
    let opts = LogOptions {
        tail_lines: Some(2),
        ..LogOptions::default()
    };
    assert_eq!(read(log_files(&path).unwrap(), opts).await, "l19\nopen");
}

#[tokio::test]
async fn since_skips_older_records_and_limit_bytes_cuts_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let records: Vec<(u64, Stream, Tag, &str)> = (0..5)
        .map(|i| {
            (
                i,
                Stream::Stdout,
                Tag::Full,
                ["a", "b", "c", "d", "e"][i as usize],
            )
        })
        .collect();
    write_records(&path, Rotation::default(), &records);
    let since = parse_timestamp(at(3).as_bytes()).unwrap();
    let opts = LogOptions {
        since: Some(since),
        ..LogOptions::default()
    };
    assert_eq!(read(vec![path.clone()], opts).await, "d\ne\n");
    let opts = LogOptions {
        limit_bytes: Some(5),
        ..LogOptions::default()
    };
    assert_eq!(read(vec![path.clone()], opts).await, "a\nb\nc");
    // The limit counts the timestamp prefix too, as kubelet's does.
    let opts = LogOptions {
        limit_bytes: Some(10),
        timestamps: true,
        tail_lines: Some(1),
        ..LogOptions::default()
    };
    assert_eq!(read(vec![path], opts).await, "2026-12-06");
}

#[tokio::test]
async fn a_follower_sees_new_lines_across_rotation_and_ends_after_the_exit_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let exit = dir.path().join("exit.json");
    let rotation = Rotation {
        max_size: 120,
        max_files: 2,
    };
    let mut w = CriWriter::open(&path, rotation).unwrap();
    w.record(&at(0), Stream::Stdout, Tag::Full, b"before")
        .unwrap();
    w.flush().unwrap();
    let (tx, mut rx) = tokio::io::duplex(4096);
    let src = LogSource {
        files: log_files(&path).unwrap(),
        exit_file: Some(exit.clone()),
    };
    let follower = tokio::spawn(async move {
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let mut tx = tx;
        copy_logs(&src, &opts, &mut tx).await
    });
    let mut got = Vec::new();
    read_within(&mut rx, &mut got, "before\n").await;
    // Each of these rotates (two records fill a file); the follower must not lose one.
    for (i, text) in ["after1", "after2", "after3"].iter().enumerate() {
        w.record(
            &at(1 + i as u64),
            Stream::Stdout,
            Tag::Full,
            text.as_bytes(),
        )
        .unwrap();
        w.flush().unwrap();
        read_within(&mut rx, &mut got, &format!("{text}\n")).await;
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "before\nafter1\nafter2\nafter3\n"
    );
    w.record(&at(9), Stream::Stdout, Tag::Full, b"last")
        .unwrap();
    w.flush().unwrap();
    std::fs::write(&exit, "{}").unwrap();
    let written = tokio::time::timeout(Duration::from_secs(2), follower)
        .await
        .expect("the follower ends once the exit file exists")
        .unwrap()
        .unwrap();
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut rx, &mut rest)
        .await
        .unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "before\nafter1\nafter2\nafter3\nlast\n"
    );
    assert_eq!(written, got.len() as u64);
}

/// Reads from `rx` until the text ends with `want`; fails after 250 ms (the follow latency
/// bound).
async fn read_within(rx: &mut tokio::io::DuplexStream, got: &mut Vec<u8>, want: &str) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(250);
    let mut buf = [0u8; 256];
    while !String::from_utf8_lossy(got).ends_with(want) {
        let n = tokio::time::timeout_at(deadline, rx.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{want:?} not seen within 250 ms: {got:?}"))
            .unwrap();
        got.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn a_follower_survives_truncation_when_only_one_file_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("0.log");
    let exit = dir.path().join("exit.json");
    // One file kept: each rotation replaces the only file.
    let rotation = Rotation {
        max_size: 100,
        max_files: 1,
    };
    let mut w = CriWriter::open(&path, rotation).unwrap();
    w.record(&at(0), Stream::Stdout, Tag::Full, b"first-line")
        .unwrap();
    w.flush().unwrap();
    let (tx, mut rx) = tokio::io::duplex(4096);
    let src = LogSource {
        files: vec![path.clone()],
        exit_file: Some(exit.clone()),
    };
    let follower = tokio::spawn(async move {
        let opts = LogOptions {
            follow: true,
            ..LogOptions::default()
        };
        let mut tx = tx;
        copy_logs(&src, &opts, &mut tx).await
    });
    let mut got = Vec::new();
    read_within(&mut rx, &mut got, "first-line\n").await;
    for text in ["second-line", "third"] {
        w.record(&at(1), Stream::Stdout, Tag::Full, text.as_bytes())
            .unwrap();
        w.flush().unwrap();
        read_within(&mut rx, &mut got, &format!("{text}\n")).await;
    }
    assert_eq!(
        String::from_utf8_lossy(&got),
        "first-line\nsecond-line\nthird\n"
    );
    assert_eq!(
        log_files(&path).unwrap(),
        vec![path.clone()],
        "only one file is kept"
    );
    std::fs::write(&exit, "{}").unwrap();
    tokio::time::timeout(Duration::from_secs(2), follower)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
