//! Log lines for journald: when systemd connected stderr to the journal, each line starts
//! with its syslog priority (`<3>` error … `<7>` debug, sd-daemon(3)'s prefixes) so
//! `journalctl -p warning` filters by level, and carries no timestamp (the journal stamps
//! every entry itself). Everywhere else logs keep their usual format.
//!
//! Only the shape of a line lives here; `main.rs` sets up the subscriber.

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Wraps an event format: prefixes every line it writes with the event's priority.
pub struct Prefixed<F>(pub F);

/// The `--log-format json` event format under journald: each JSON object after its priority
/// (journald strips the prefix, so the entry is the object alone), without our timestamp
/// (journald stamps entries itself). Pair it with a JSON layer's field formatter.
pub fn json()
-> Prefixed<tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json, ()>> {
    Prefixed(
        tracing_subscriber::fmt::format()
            .json()
            .with_span_list(false)
            .without_time(),
    )
}

/// Whether stderr is the journal stream systemd made: `JOURNAL_STREAM` (`DEVICE:INODE`)
/// names stderr's own file. A child that inherited the variable but writes elsewhere (a
/// file, a pipe) keeps the usual format, as systemd.exec(5) advises.
pub fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    // `dev_t` and `ino_t` are narrower than u64 on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (dev, ino) = (u64::from(stat.st_dev), u64::from(stat.st_ino));
    names_stream(&stream.to_string_lossy(), dev, ino)
}

/// The prefix sd-daemon(3) reads: syslog's err, warning, info and debug.
pub fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        Level::DEBUG | Level::TRACE => "<7>",
    }
}

// === impl Prefixed ===

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let mut text = String::new();
        self.0.format_event(ctx, Writer::new(&mut text), event)?;
        // The level is padded to five characters (" INFO"); after the prefix that is noise.
        let text = text.trim_start();
        writer.write_str(&prefix_lines(priority(*event.metadata().level()), text))
    }
}

/// `text` with `prefix` before each of its lines: journald makes one entry per line, and a
/// line without a prefix would be filed as info.
fn prefix_lines(prefix: &str, text: &str) -> String {
    let mut out = String::with_capacity(text.len() + prefix.len());
    for line in text.split_inclusive('\n') {
        out.push_str(prefix);
        out.push_str(line);
    }
    out
}

fn names_stream(stream: &str, dev: u64, ino: u64) -> bool {
    let mut parts = stream.trim().splitn(2, ':');
    let parse = |p: Option<&str>| p.and_then(|s| s.parse::<u64>().ok());
    match (parse(parts.next()), parse(parts.next())) {
        (Some(d), Some(i)) => d == dev && i == ino,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    /// A writer collecting everything logged into one string.
    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Collect {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let out = Collect::default();
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || sink.clone())
            .with_ansi(false)
            .event_format(Prefixed(tracing_subscriber::fmt::format().without_time()));
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_are_one_object_after_the_priority() {
        let out = Collect::default();
        let sink = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(move || sink.clone())
            .event_format(json());
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(retry_in = 5, "cannot join yet");
            tracing::info!("API serving");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        for (line, prefix, message) in [
            (lines[0], "<4>", "cannot join yet"),
            (lines[1], "<6>", "API serving"),
        ] {
            let object = line.strip_prefix(prefix).expect(line);
            let event: serde_json::Value = serde_json::from_str(object).expect(line);
            assert_eq!(event["fields"]["message"], message, "{line}");
            assert!(
                event["target"].is_string() && event["level"].is_string(),
                "{line}"
            );
            assert!(event.get("timestamp").is_none(), "{line}");
        }
    }

    #[test]
    fn each_line_starts_with_its_priority_and_has_no_timestamp() {
        let text = logged(|| {
            tracing::error!("boom");
            tracing::warn!(retry_in = 5, "cannot join yet");
            tracing::info!("API serving");
            tracing::debug!("detail");
            tracing::trace!("more detail");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for (line, prefix, word) in [
            (lines[0], "<3>", "ERROR"),
            (lines[1], "<4>", "WARN"),
            (lines[2], "<6>", "INFO"),
            (lines[3], "<7>", "DEBUG"),
            (lines[4], "<7>", "TRACE"),
        ] {
            assert!(line.starts_with(prefix), "{line:?}");
            // The level word right after the prefix: no timestamp before it.
            assert!(
                line[prefix.len()..].trim_start().starts_with(word),
                "{line:?}"
            );
        }
        assert!(lines[1].contains("cannot join yet retry_in=5"), "{text}");
    }

    #[test]
    fn a_message_of_several_lines_keeps_its_priority_on_each() {
        let text = logged(|| tracing::warn!("first\nsecond"));
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.starts_with("<4>")), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn the_journal_is_stderr_only_when_journal_stream_names_it() {
        assert!(names_stream("64769:1234", 64769, 1234));
        assert!(names_stream("64769:1234\n", 64769, 1234));
        assert!(!names_stream("64769:1234", 64769, 1235));
        assert!(!names_stream("64769", 64769, 1234));
        assert!(!names_stream("", 0, 0));
        assert!(!names_stream("a:b", 0, 0));
    }
}
