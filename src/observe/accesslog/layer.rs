//! The process's subscriber: tracing-subscriber's `fmt` layer for every
//! event, except that the access line is written straight from its facts,
//! byte for byte as that layer would print it, at a fraction of the cost.
//!
//! As an event, an access line went through the subscriber stack and had
//! each of its ten fields visited and formatted one by one, a large share
//! of a proxied request's work and more of a 401's (docs/benchmarks.md
//! has the counts). Here [`Facts::write`](super::Facts) asks whether the current
//! subscriber is [`Logs`]; if so, the line is formatted from typed values
//! into a reused buffer, the date and time up to the second formatted once
//! a second, and leaves in one `write_all`. An access line inside a span
//! (which `fmt` prints with the span) and any other subscriber get the
//! event as before.

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use tracing::span;
use tracing::subscriber::Interest;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, Layered, SubscriberExt};
use tracing_subscriber::{EnvFilter, Registry};

use crate::config::LogFormat;

/// The target of the access line (see [`super::Facts::write`]).
pub(super) const TARGET: &str = "tokengate::access";

type Filtered = Layered<EnvFilter, Registry>;

/// The process's subscriber: `fmt` behind an `EnvFilter`, and the access
/// line's own writer. A named type, so that the access log can find it.
pub struct Logs {
    inner: Layered<Box<dyn Layer<Filtered> + Send + Sync>, Filtered>,
    access: Access,
}

/// The access line's writer: the same format and destination as `fmt`.
struct Access {
    format: LogFormat,
    out: WriteLine,
}

/// Writes one whole line where `fmt` writes.
type WriteLine = Box<dyn Fn(&[u8]) + Send + Sync>;

/// The process's subscriber: `filter` decides what is logged, in `format`,
/// to `writer`.
pub fn subscriber<W>(filter: EnvFilter, format: LogFormat, writer: W) -> Logs
where
    W: for<'a> MakeWriter<'a> + Clone + Send + Sync + 'static,
{
    // Plain text, no colours: the `ansi` feature is off because its styling
    // cost more than a third of the work on the 401 path.
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer.clone());
    let fmt: Box<dyn Layer<Filtered> + Send + Sync> = match format {
        LogFormat::Json => Box::new(fmt.json().flatten_event(true)),
        LogFormat::Text => Box::new(fmt),
    };
    Logs {
        inner: tracing_subscriber::registry().with(filter).with(fmt),
        access: Access {
            format,
            // As unbuffered as `fmt`: one write of the whole line (for
            // stderr, under its lock). A failed write loses the line; `fmt`
            // would report it on stderr, which is what failed.
            out: Box::new(move |line| {
                let _ = writer.make_writer().write_all(line);
            }),
        },
    }
}

impl Subscriber for Logs {
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        self.inner.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.inner.max_level_hint()
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner.new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner.record(span, values);
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner.record_follows_from(span, follows);
    }

    fn event_enabled(&self, event: &Event<'_>) -> bool {
        self.inner.event_enabled(event)
    }

    fn event(&self, event: &Event<'_>) {
        self.inner.event(event);
    }

    fn enter(&self, span: &span::Id) {
        self.inner.enter(span);
    }

    fn exit(&self, span: &span::Id) {
        self.inner.exit(span);
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner.clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner.try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        self.inner.current_span()
    }
}

/// What an access line says, as [`super::Facts::write`] emits it.
pub(super) struct Line<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub status: u16,
    pub user: &'a str,
    pub client: &'a str,
    pub request_id: &'a str,
    pub latency_us: u64,
    pub ttfb_us: Option<u64>,
    pub upstream_us: Option<u64>,
    pub reason: Option<&'a str>,
    pub bytes: u64,
    pub complete: bool,
}

/// Writes `line` when the current subscriber is [`Logs`] (or drops it when
/// no subscriber wants it); `false` when it must go out as an event.
pub(super) fn write(line: &Line<'_>) -> bool {
    // Before the dispatcher is borrowed below: inside that borrow, tracing
    // answers every question with "no subscriber".
    if !tracing::enabled!(target: TARGET, Level::INFO) {
        return true;
    }
    tracing::dispatcher::get_default(|dispatch| {
        let Some(logs) = dispatch.downcast_ref::<Logs>() else {
            return false;
        };
        // Inside a span `fmt` prints the span too.
        if logs.inner.current_span().id().is_some() {
            return false;
        }
        logs.access.write(line)
    })
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

impl Access {
    /// Formats and writes `line` as the `fmt` layer would print the event;
    /// `false`, having written nothing, if this thread is already writing one.
    fn write(&self, line: &Line<'_>) -> bool {
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return false;
            };
            let scratch = &mut *scratch;
            scratch.line.clear();
            match self.format {
                LogFormat::Text => {
                    scratch.timestamp();
                    scratch.line.extend_from_slice(b"  INFO ");
                    scratch.line.extend_from_slice(TARGET.as_bytes());
                    scratch.line.extend_from_slice(b":");
                    fields(&mut scratch.line, LogFormat::Text, line);
                    scratch.line.push(b'\n');
                }
                LogFormat::Json => {
                    scratch.line.extend_from_slice(b"{\"timestamp\":\"");
                    scratch.timestamp();
                    scratch.line.extend_from_slice(b"\",\"level\":\"INFO\"");
                    fields(&mut scratch.line, LogFormat::Json, line);
                    scratch.line.extend_from_slice(b",\"target\":");
                    json_string(&mut scratch.line, TARGET);
                    scratch.line.extend_from_slice(b"}\n");
                }
            }
            (self.out)(&scratch.line);
            true
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

/// Appends the access line's fields as the `fmt` layer's field formatters
/// print the event's: text as `DefaultFields` (` name=value`, strings
/// through `Debug`, `%` values through `Display`), JSON as `tracing_serde`'s
/// map visitor (`,"name":value`, numbers and booleans bare, everything else
/// a string). An absent optional field is left out, as tracing leaves out
/// a `None`.
fn fields(out: &mut Vec<u8>, format: LogFormat, line: &Line<'_>) {
    let mut f = Fields { out, format };
    f.display(names::METHOD, line.method.as_str());
    f.string(names::PATH, line.path);
    f.number(names::STATUS, u64::from(line.status));
    f.string(names::USER, line.user);
    f.display(names::CLIENT, line.client);
    f.string(names::REQUEST_ID, line.request_id);
    f.number(names::LATENCY_US, line.latency_us);
    if let Some(ttfb) = line.ttfb_us {
        f.number(names::TTFB_US, ttfb);
    }
    if let Some(upstream) = line.upstream_us {
        f.number(names::UPSTREAM_US, upstream);
    }
    if let Some(reason) = line.reason {
        f.string(names::REASON, reason);
    }
    f.number(names::BYTES, line.bytes);
    f.bare(
        names::COMPLETE,
        if line.complete { b"true" } else { b"false" },
    );
}

/// Each field's name with what comes before its value: text, then JSON.
/// Written out whole, so that a name costs one copy.
mod names {
    pub type Name = (&'static str, &'static str);
    pub const METHOD: Name = (" method=", ",\"method\":");
    pub const PATH: Name = (" path=", ",\"path\":");
    pub const STATUS: Name = (" status=", ",\"status\":");
    pub const USER: Name = (" user=", ",\"user\":");
    pub const CLIENT: Name = (" client=", ",\"client\":");
    pub const REQUEST_ID: Name = (" request_id=", ",\"request_id\":");
    pub const LATENCY_US: Name = (" latency_us=", ",\"latency_us\":");
    pub const TTFB_US: Name = (" ttfb_us=", ",\"ttfb_us\":");
    pub const UPSTREAM_US: Name = (" upstream_us=", ",\"upstream_us\":");
    pub const REASON: Name = (" reason=", ",\"reason\":");
    pub const BYTES: Name = (" bytes=", ",\"bytes\":");
    pub const COMPLETE: Name = (" complete=", ",\"complete\":");
}

struct Fields<'a> {
    out: &'a mut Vec<u8>,
    format: LogFormat,
}

impl Fields<'_> {
    fn name(&mut self, (text, json): names::Name) {
        let name = match self.format {
            LogFormat::Text => text,
            LogFormat::Json => json,
        };
        self.out.extend_from_slice(name.as_bytes());
    }

    fn bare(&mut self, name: names::Name, value: &[u8]) {
        self.name(name);
        self.out.extend_from_slice(value);
    }

    fn number(&mut self, name: names::Name, value: u64) {
        self.bare(name, itoa::Buffer::new().format(value).as_bytes());
    }

    /// A `&str` field: `Debug`-quoted in text.
    fn string(&mut self, name: names::Name, value: &str) {
        self.name(name);
        match self.format {
            LogFormat::Text => debug_string(self.out, value),
            LogFormat::Json => json_string(self.out, value),
        }
    }

    /// A `%` field: as it is in text.
    fn display(&mut self, name: names::Name, value: &str) {
        self.name(name);
        match self.format {
            LogFormat::Text => self.out.extend_from_slice(value.as_bytes()),
            LogFormat::Json => json_string(self.out, value),
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::observe::accesslog::{Facts, Outcome};
    use http::{Method, StatusCode};
    use std::sync::atomic::{AtomicUsize, Ordering};
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
    pub(in crate::observe::accesslog) struct Sink(Arc<Mutex<Vec<u8>>>);

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
        pub(in crate::observe::accesslog) fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(str::to_owned).collect()
        }
    }

    fn entry(method: Method, client: &str, path: Option<&str>, user: Option<&str>) -> Facts {
        Facts {
            method,
            client: Arc::from(client),
            start: Instant::now(),
            outcome: Outcome {
                path: path.map(str::to_owned),
                user: user.map(Arc::from),
                upstream_us: Some(1234),
                reason: None,
                request_id: Some(http::HeaderValue::from_static(
                    "4f1c0de5a1b2c3d4e5f60718293a4b5c",
                )),
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
    /// [`subscriber`] writes, for the same events, with how many access
    /// lines the latter wrote without `fmt`.
    fn both(format: LogFormat) -> (Vec<String>, Vec<String>, usize) {
        let (reference, ours) = (Sink::default(), Sink::default());
        let fmt = tracing_subscriber::fmt::layer().with_writer(reference.clone());
        let fmt: Box<dyn Layer<_> + Send + Sync> = match format {
            LogFormat::Json => Box::new(fmt.json().flatten_event(true)),
            LogFormat::Text => Box::new(fmt),
        };
        tracing::subscriber::with_default(tracing_subscriber::registry().with(fmt), log_some_lines);
        let mut logs = subscriber(EnvFilter::new("trace"), format, ours.clone());
        // Lines written by the access layer itself, not by `fmt`.
        let fast = Arc::new(AtomicUsize::new(0));
        let write = std::mem::replace(&mut logs.access.out, Box::new(|_| {}));
        let counted = fast.clone();
        logs.access.out = Box::new(move |line| {
            counted.fetch_add(1, Ordering::Relaxed);
            write(line)
        });
        tracing::subscriber::with_default(logs, log_some_lines);
        (
            reference.lines(),
            ours.lines(),
            fast.load(Ordering::Relaxed),
        )
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

    /// The line with the digits of its `latency_us` replaced by `<us>`.
    fn mask_latency(line: &str) -> String {
        let Some(at) = line.find("latency_us") else {
            return line.to_owned();
        };
        let value = at + line[at..].find(|c: char| c.is_ascii_digit()).unwrap();
        let end = value + line[value..].find(|c: char| !c.is_ascii_digit()).unwrap();
        format!("{}<us>{}", &line[..value], &line[end..])
    }

    fn assert_same_lines(format: LogFormat) {
        let (reference, ours, fast) = both(format);
        assert_eq!(fast, 4, "the four access lines outside a span");
        assert_eq!(reference.len(), 6, "{reference:#?}");
        assert_eq!(ours.len(), 6, "{ours:#?}");
        for (theirs, ours) in reference.iter().zip(&ours) {
            // Two runs of the same events: only the clock differs.
            assert_eq!(mask_latency(&mask(ours).0), mask_latency(&mask(theirs).0));
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
        assert!(both[0].starts_with("<ts>  INFO tokengate::access: method=GET path=\"/f\" status=499 user=\"-\" client=192.0.2.7 request_id=\"4f1c0de5a1b2c3d4e5f60718293a4b5c\" latency_us="));
        assert!(both[0].ends_with(" bytes=0 complete=false"), "{both:?}");
        assert_eq!(
            logged("info,tokengate::access=off"),
            ["<ts>  INFO tokengate::server: other"]
        );
        assert!(logged("warn").is_empty());
    }
}
