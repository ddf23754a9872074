//! The subscriber that writes the logs: tracing-subscriber's `fmt` layer
//! for every event, except that the access line is formatted here, byte
//! for byte as that layer would print it, at a fraction of the cost.
//!
//! The `fmt` layer records each field through `Debug` and `fmt::write`,
//! formats the full date and time on every line and, for JSON, serializes
//! through serde: about 10,000 instructions per access line, a sixth of a
//! whole proxied request. Here the fields go straight into a reused buffer,
//! the date and time up to the second are formatted once a second, and the
//! line leaves in one `write_all`. Whatever this module does not reproduce
//! exactly — an access event inside a span, a field of a kind it does not
//! format — goes to the `fmt` layer as before.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// The target of the access line (see [`super::Entry::write`]).
const TARGET: &str = "tokengate::access";

/// The process's subscriber: `filter` decides what is logged, in `format`,
/// to `writer`.
pub fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    tracing_subscriber::registry()
        .with(filter)
        .with(layer(format, writer))
}

/// The `fmt` layer configured as the logs have always been, with the
/// access line taken over.
fn layer<S, W>(format: LogFormat, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    // Plain text, no colours: the `ansi` feature is off because its styling
    // cost more than a third of the work on the 401 path.
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    match format {
        LogFormat::Json => Box::new(AccessLines {
            fmt: fmt.json().flatten_event(true),
            format,
            writer,
        }),
        LogFormat::Text => Box::new(AccessLines {
            fmt,
            format,
            writer,
        }),
    }
}

/// Wraps the `fmt` layer: every call goes to it, except access events that
/// [`AccessLines::write`] can reproduce exactly.
struct AccessLines<L, W> {
    /// The layer whose output this one reproduces, and that writes every
    /// other line.
    fmt: L,
    /// The format `fmt` was configured with.
    format: LogFormat,
    /// Where `fmt` writes: the access line goes to the same place.
    writer: W,
}

impl<S, L, W> Layer<S> for AccessLines<L, W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    L: Layer<S>,
    W: for<'a> MakeWriter<'a> + 'static,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Inside a span the `fmt` layer prints the span too (text: its name
        // and fields before the target; JSON: `span` and `spans`).
        let alone = event.parent().is_none() && ctx.lookup_current().is_none();
        if event.metadata().target() == TARGET && alone && self.write(event) {
            return;
        }
        self.fmt.on_event(event, ctx);
    }

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.fmt.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.fmt.on_layer(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.fmt.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, ctx: Context<'_, S>) -> bool {
        self.fmt.enabled(metadata, ctx)
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        self.fmt.on_new_span(attrs, id, ctx);
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.fmt.max_level_hint()
    }

    fn on_record(&self, span: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        self.fmt.on_record(span, values, ctx);
    }

    fn on_follows_from(&self, span: &span::Id, follows: &span::Id, ctx: Context<'_, S>) {
        self.fmt.on_follows_from(span, follows, ctx);
    }

    fn event_enabled(&self, event: &Event<'_>, ctx: Context<'_, S>) -> bool {
        self.fmt.event_enabled(event, ctx)
    }

    fn on_enter(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.fmt.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &span::Id, ctx: Context<'_, S>) {
        self.fmt.on_exit(id, ctx);
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        self.fmt.on_close(id, ctx);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, ctx: Context<'_, S>) {
        self.fmt.on_id_change(old, new, ctx);
    }
}

/// Per-thread state, so that a line costs no allocation and no lock but
/// the writer's.
struct Scratch {
    /// The line being formatted.
    line: Vec<u8>,
    /// The Unix second [`Scratch::prefix`] was formatted for.
    second: u64,
    /// `YYYY-MM-DDTHH:MM:SS.` for `second`.
    prefix: [u8; 20],
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const {
        RefCell::new(Scratch { line: Vec::new(), second: u64::MAX, prefix: [0; 20] })
    };
}

#[cfg(test)]
thread_local! {
    /// Access lines formatted here rather than by `fmt`, for the tests.
    static FAST_LINES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

impl<L, W> AccessLines<L, W>
where
    W: for<'a> MakeWriter<'a>,
{
    /// Formats and writes `event` as the `fmt` layer would; `false`, having
    /// written nothing, when the event has a field it cannot reproduce.
    fn write(&self, event: &Event<'_>) -> bool {
        SCRATCH.with(|scratch| {
            // Busy: a field's `Debug` logged something. Let `fmt` do it.
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return false;
            };
            let scratch = &mut *scratch;
            scratch.line.clear();
            let meta = event.metadata();
            let exact = match self.format {
                LogFormat::Text => {
                    scratch.timestamp();
                    let line = &mut scratch.line;
                    line.push(b' ');
                    line.extend_from_slice(text_level(meta.level()).as_bytes());
                    line.push(b' ');
                    line.extend_from_slice(meta.target().as_bytes());
                    line.extend_from_slice(b": ");
                    let mut fields = Fields::new(line, LogFormat::Text);
                    event.record(&mut fields);
                    let exact = fields.exact;
                    line.push(b'\n');
                    exact
                }
                LogFormat::Json => {
                    scratch.line.extend_from_slice(b"{\"timestamp\":\"");
                    scratch.timestamp();
                    let line = &mut scratch.line;
                    line.extend_from_slice(b"\",\"level\":\"");
                    line.extend_from_slice(json_level(meta.level()).as_bytes());
                    line.push(b'"');
                    let mut fields = Fields::new(line, LogFormat::Json);
                    event.record(&mut fields);
                    let exact = fields.exact;
                    line.extend_from_slice(b",\"target\":");
                    json_string(line, meta.target());
                    line.extend_from_slice(b"}\n");
                    exact
                }
            };
            #[cfg(test)]
            if exact {
                FAST_LINES.set(FAST_LINES.get() + 1);
            }
            if exact {
                // As unbuffered as `fmt`: one write of the whole line (for
                // stderr, under its lock). A failed write loses the line;
                // `fmt` would report it on stderr, which is what failed.
                let _ = self.writer.make_writer_for(meta).write_all(&scratch.line);
            }
            exact
        })
    }
}

impl Scratch {
    /// Appends the time as tracing-subscriber's `SystemTime` timer prints
    /// it: UTC, microseconds, e.g. `2026-11-26T21:57:15.123456Z`.
    fn timestamp(&mut self) {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) if since.as_secs() <= LAST_SECOND_OF_9999 => {
                if since.as_secs() != self.second {
                    self.second = since.as_secs();
                    self.prefix = second_prefix(self.second);
                }
                self.line.extend_from_slice(&self.prefix);
                let mut micros = since.subsec_micros();
                let mut digits = [b'0'; 6];
                for digit in digits.iter_mut().rev() {
                    *digit = b'0' + (micros % 10) as u8;
                    micros /= 10;
                }
                self.line.extend_from_slice(&digits);
                self.line.push(b'Z');
            }
            // A clock before 1970 or after 9999: the timer's own formatting.
            _ => {
                use tracing_subscriber::fmt::time::FormatTime;
                let mut text = String::new();
                let _ = tracing_subscriber::fmt::time::SystemTime
                    .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut text));
                self.line.extend_from_slice(text.as_bytes());
            }
        }
    }
}

/// The last second whose date has a four-digit year.
const LAST_SECOND_OF_9999: u64 = 253_402_300_799;

/// `YYYY-MM-DDTHH:MM:SS.` for the Unix second `second` (at most
/// [`LAST_SECOND_OF_9999`]).
fn second_prefix(second: u64) -> [u8; 20] {
    let time = UNIX_EPOCH + Duration::from_secs(second);
    // `YYYY-MM-DDTHH:MM:SSZ`: always 20 bytes up to year 9999.
    let text = humantime::format_rfc3339_seconds(time).to_string();
    let mut prefix = [b'.'; 20];
    prefix[..19].copy_from_slice(&text.as_bytes()[..19]);
    prefix
}

/// The level as the text format pads it.
fn text_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => " INFO",
        Level::WARN => " WARN",
        Level::ERROR => "ERROR",
    }
}

fn json_level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "TRACE",
        Level::DEBUG => "DEBUG",
        Level::INFO => "INFO",
        Level::WARN => "WARN",
        Level::ERROR => "ERROR",
    }
}

/// Appends an event's fields as the `fmt` layer's field formatters do:
/// text as `DefaultFields` (`name=value`, strings and `?` values through
/// `Debug`, `%` values through `Display`, separated by spaces), JSON as
/// `tracing_serde`'s map visitor (`,"name":value`, numbers and booleans
/// bare, everything else a string).
struct Fields<'a> {
    line: &'a mut Vec<u8>,
    format: LogFormat,
    /// No field written yet (the text format separates them with spaces).
    first: bool,
    /// Every field so far was one whose formatting this reproduces.
    exact: bool,
}

impl<'a> Fields<'a> {
    fn new(line: &'a mut Vec<u8>, format: LogFormat) -> Self {
        Self {
            line,
            format,
            first: true,
            exact: true,
        }
    }

    /// Writes the field's name and separator, or gives up on the line for a
    /// name `fmt` treats specially (`message` is written bare and sanitized,
    /// `log.` fields are skipped, `r#` is stripped).
    fn name(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name == "message" || name.starts_with("log.") || name.starts_with("r#") {
            self.exact = false;
        }
        if !self.exact {
            return false;
        }
        match self.format {
            LogFormat::Text => {
                if !self.first {
                    self.line.push(b' ');
                }
                self.line.extend_from_slice(name.as_bytes());
                self.line.push(b'=');
            }
            LogFormat::Json => {
                self.line.push(b',');
                json_string(self.line, name);
                self.line.push(b':');
            }
        }
        self.first = false;
        true
    }

    fn bare(&mut self, field: &Field, value: &[u8]) {
        if self.name(field) {
            self.line.extend_from_slice(value);
        }
    }
}

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.name(field) {
            return;
        }
        match self.format {
            LogFormat::Text => debug_string(self.line, value),
            LogFormat::Json => json_string(self.line, value),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        let mut digits = [0; 20];
        self.bare(field, decimal(value, &mut digits));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let mut digits = [0; 20];
        let magnitude = decimal(value.unsigned_abs(), &mut digits);
        if self.name(field) {
            if value < 0 {
                self.line.push(b'-');
            }
            self.line.extend_from_slice(magnitude);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.bare(field, if value { b"true" } else { b"false" });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if !self.name(field) {
            return;
        }
        let written = match self.format {
            LogFormat::Text => write!(Raw(self.line), "{value:?}"),
            LogFormat::Json => {
                self.line.push(b'"');
                let written = write!(JsonEscaped(self.line), "{value:?}");
                self.line.push(b'"');
                written
            }
        };
        // `fmt` gives up on the whole line then, and says so.
        self.exact &= written.is_ok();
    }

    // Formatted differently by the two formats (floats) or with extras in
    // text (errors' sources); the access line has none of them.
    fn record_f64(&mut self, _: &Field, _: f64) {
        self.exact = false;
    }

    fn record_i128(&mut self, _: &Field, _: i128) {
        self.exact = false;
    }

    fn record_u128(&mut self, _: &Field, _: u128) {
        self.exact = false;
    }

    fn record_bytes(&mut self, _: &Field, _: &[u8]) {
        self.exact = false;
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.exact = false;
    }
}

/// `value` in decimal, in the tail of `digits`.
fn decimal(mut value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &digits[start..];
        }
    }
}

/// `value` quoted as `str`'s `Debug` quotes it.
fn debug_string(line: &mut Vec<u8>, value: &str) {
    let plain = value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if plain {
        line.push(b'"');
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    } else {
        // Escapes, control characters, and Unicode's notion of printable:
        // std's own `Debug`. Writing to a `Vec` cannot fail.
        let _ = write!(Raw(line), "{value:?}");
    }
}

/// `value` as a JSON string, escaped as serde_json escapes it.
fn json_string(line: &mut Vec<u8>, value: &str) {
    line.push(b'"');
    json_escape(line, value);
    line.push(b'"');
}

/// serde_json's escaping: `"`, `\` and the C0 controls; everything else,
/// DEL and non-ASCII included, as it is.
fn json_escape(line: &mut Vec<u8>, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = value.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            0x0c => b"\\f",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        line.extend_from_slice(&bytes[start..i]);
        if short.is_empty() {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            line.extend_from_slice(b"\\u00");
            line.extend_from_slice(&hex);
        } else {
            line.extend_from_slice(short);
        }
        start = i + 1;
    }
    line.extend_from_slice(&bytes[start..]);
}

/// `fmt::Write` into the line as it comes.
struct Raw<'a>(&'a mut Vec<u8>);

impl fmt::Write for Raw<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `fmt::Write` into the line as the inside of a JSON string.
struct JsonEscaped<'a>(&'a mut Vec<u8>);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        json_escape(self.0, s);
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::accesslog::{Entry, Outcome};
    use http::{Method, StatusCode};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Paths and usernames come from clients: quotes, backslashes, every
    /// kind of control character, DEL, and non-ASCII that `Debug` prints
    /// as it is or escapes (zero-width space, combining accent, BOM, NEL).
    const PATH: &str = "/a b/\"q\"/back\\slash/'tick'/tab\t/nl\n/cr\r/nul\0/esc\u{1b}[31m/\
        del\u{7f}/bell\u{7}/\u{8}\u{c}\u{1f}/é/日本/\u{200b}/e\u{301}/😀/\u{feff}/\u{85}";
    const USER: &str = "ann\"\\\u{8}\u{c}\u{1f}ü\u{2028}";

    /// A `MakeWriter` that keeps everything written to it (the access
    /// log's own tests use it too).
    #[derive(Clone, Default)]
    pub(in crate::accesslog) struct Sink(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Sink {
        type Writer = Sink;
        fn make_writer(&'a self) -> Sink {
            self.clone()
        }
    }

    impl Sink {
        pub(in crate::accesslog) fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    fn entry(method: Method, client: &str, path: Option<&str>, user: Option<&str>) -> Entry {
        Entry {
            method,
            client: Arc::from(client),
            start: Instant::now(),
            outcome: Outcome {
                path: path.map(str::to_owned),
                user: user.map(Arc::from),
                upstream_us: Some(1234),
            },
        }
    }

    /// Every shape of access line, one other event, and an access line
    /// inside a span (which the `fmt` layer writes).
    fn log_some_lines() {
        entry(Method::GET, "192.0.2.7", Some("/p"), Some("ann")).write(
            Some((StatusCode::OK, 55)),
            5,
            true,
        );
        entry(Method::POST, "192.0.2.7", Some(PATH), Some(USER)).write(
            Some((StatusCode::FORBIDDEN, 7)),
            u64::MAX,
            true,
        );
        let mut abandoned = entry(
            Method::from_bytes(b"PROPFIND").unwrap(),
            "2001:db8::7",
            None,
            None,
        );
        abandoned.outcome.upstream_us = None;
        abandoned.write(None, 0, false);
        // Each alone in an otherwise plain value.
        entry(
            Method::GET,
            "192.0.2.7",
            Some("/q\"uote/'/back\\slash"),
            Some("del\u{7f}"),
        )
        .write(Some((StatusCode::OK, 55)), 5, true);
        tracing::info!(listen = %"127.0.0.1:8080", store = "st\"ore", "tokengate listening");
        tracing::info_span!("conn", peer = "x\"y").in_scope(|| {
            entry(Method::GET, "192.0.2.8", Some(PATH), None).write(
                Some((StatusCode::OK, 1)),
                2,
                false,
            );
        });
    }

    /// The lines `fmt` writes configured as `format`, and the lines
    /// [`layer`] writes, for the same events, with how many access lines
    /// the latter formatted itself.
    fn both(format: LogFormat) -> (Vec<String>, Vec<String>, usize) {
        let (reference, ours) = (Sink::default(), Sink::default());
        let fmt = tracing_subscriber::fmt::layer().with_writer(reference.clone());
        let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
            LogFormat::Json => Box::new(fmt.json().flatten_event(true)),
            LogFormat::Text => Box::new(fmt),
        };
        let subscriber = tracing_subscriber::registry()
            .with(fmt)
            .with(layer(format, ours.clone()));
        let before = FAST_LINES.get();
        tracing::subscriber::with_default(subscriber, log_some_lines);
        (reference.lines(), ours.lines(), FAST_LINES.get() - before)
    }

    /// The line with its timestamp replaced by `<ts>`, and the timestamp.
    fn mask(line: &str) -> (String, String) {
        if let Some(rest) = line.strip_prefix("{\"timestamp\":\"") {
            let (ts, rest) = rest.split_once('"').unwrap();
            (format!("{{\"timestamp\":\"<ts>\"{rest}"), ts.to_owned())
        } else {
            let (ts, rest) = line.split_once(' ').unwrap();
            (format!("<ts> {rest}"), ts.to_owned())
        }
    }

    fn assert_same_lines(format: LogFormat) {
        let (reference, ours, fast) = both(format);
        assert_eq!(fast, 4, "the four access lines outside a span");
        assert_eq!(reference.len(), 6, "{reference:#?}");
        assert_eq!(ours.len(), 6, "{ours:#?}");
        for (theirs, ours) in reference.iter().zip(&ours) {
            assert_eq!(mask(ours).0, mask(theirs).0);
            assert_timestamp_shape(&mask(ours).1);
        }
    }

    #[test]
    fn text_access_lines_are_what_fmt_writes() {
        assert_same_lines(LogFormat::Text);
    }

    #[test]
    fn json_access_lines_are_what_fmt_writes() {
        assert_same_lines(LogFormat::Json);
    }

    #[test]
    fn hostile_values_survive_json() {
        let (_, ours, _) = both(LogFormat::Json);
        let line: serde_json::Value = serde_json::from_str(&ours[1]).unwrap();
        assert_eq!(line["path"], PATH);
        assert_eq!(line["user"], USER);
        assert_eq!(line["bytes"], u64::MAX);
        assert_eq!(line["method"], "POST");
        let abandoned: serde_json::Value = serde_json::from_str(&ours[2]).unwrap();
        assert_eq!(abandoned["method"], "PROPFIND");
        assert_eq!(abandoned["client"], "2001:db8::7");
        assert_eq!(abandoned["path"], "-");
        assert!(abandoned.get("ttfb_us").is_none());
        assert!(abandoned.get("upstream_us").is_none());
    }

    #[test]
    fn hostile_values_stay_on_one_text_line() {
        let (_, ours, _) = both(LogFormat::Text);
        assert!(ours[1].contains(r#" path="/a b/\"q\"/back\\slash/'tick'/tab\t/nl\n/"#));
        assert!(ours[1].contains(r#" user="ann\"\\\u{8}\u{c}\u{1f}ü"#));
    }

    fn assert_timestamp_shape(ts: &str) {
        assert_eq!(ts.len(), 27, "{ts}");
        for (i, c) in ts.chars().enumerate() {
            let expected = match i {
                4 | 7 => '-',
                10 => 'T',
                13 | 16 => ':',
                19 => '.',
                26 => 'Z',
                _ => {
                    assert!(c.is_ascii_digit(), "{ts}");
                    continue;
                }
            };
            assert_eq!(c, expected, "{ts}");
        }
    }

    /// Now, as tracing-subscriber's timer prints it.
    fn timer_now() -> String {
        use tracing_subscriber::fmt::time::FormatTime;
        let mut text = String::new();
        tracing_subscriber::fmt::time::SystemTime
            .format_time(&mut tracing_subscriber::fmt::format::Writer::new(&mut text))
            .unwrap();
        text
    }

    #[test]
    fn timestamps_are_the_timers_to_the_microsecond() {
        for format in [LogFormat::Text, LogFormat::Json] {
            let sink = Sink::default();
            let subscriber = subscriber(EnvFilter::new("info"), format, sink.clone());
            let before = timer_now();
            tracing::subscriber::with_default(subscriber, || {
                entry(Method::GET, "192.0.2.7", Some("/t"), None).write(None, 0, false);
            });
            let after = timer_now();
            let lines = sink.lines();
            assert_eq!(lines.len(), 1, "{lines:?}");
            let (_, ts) = mask(&lines[0]);
            assert_timestamp_shape(&ts);
            // Same format, so text order is time order.
            assert!(before <= ts && ts <= after, "{before} <= {ts} <= {after}");
        }
    }

    #[test]
    fn the_cached_second_is_the_utc_date_and_time() {
        let prefix = |s| String::from_utf8(second_prefix(s).to_vec()).unwrap();
        assert_eq!(prefix(0), "1970-01-01T00:00:00.");
        assert_eq!(prefix(951_868_799), "2000-02-29T23:59:59.");
        assert_eq!(prefix(1_795_730_235), "2026-11-26T21:57:15.");
        assert_eq!(prefix(LAST_SECOND_OF_9999), "9999-12-31T23:59:59.");
    }

    #[test]
    fn the_filter_still_silences_the_access_line() {
        let logged = |filter: &str| {
            let sink = Sink::default();
            let subscriber = subscriber(EnvFilter::new(filter), LogFormat::Text, sink.clone());
            tracing::subscriber::with_default(subscriber, || {
                entry(Method::GET, "192.0.2.7", Some("/f"), None).write(None, 0, false);
                // Not in this module: `tokengate::access` is a prefix of
                // `tokengate::accesslog`, and EnvFilter matches prefixes.
                tracing::info!(target: "tokengate::server", "other");
            });
            sink.lines().iter().map(|l| mask(l).0).collect::<Vec<_>>()
        };
        let both = logged("info");
        assert_eq!(both.len(), 2, "{both:?}");
        assert!(both[0].starts_with("<ts>  INFO tokengate::access: method=GET path=\"/f\" status=499 user=\"-\" client=192.0.2.7 latency_us="));
        assert!(both[0].ends_with(" bytes=0 complete=false"), "{both:?}");
        assert_eq!(
            logged("info,tokengate::access=off"),
            ["<ts>  INFO tokengate::server: other"]
        );
        assert!(logged("warn").is_empty());
    }
}
