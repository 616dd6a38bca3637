//! A parser of server-sent events (the `text/event-stream` format of the HTML standard, §9.2),
//! fed bytes as they arrive, in chunks split anywhere (inside a line, inside a UTF-8 sequence,
//! between the CR and the LF of a line end).
//!
//! It keeps what the standard says a client keeps across events and reconnections: the last
//! event id (the `Last-Event-ID` to send when reconnecting) and the reconnection time a
//! `retry:` field asked for.

use std::fmt;

/// The longest line (and the most data one event may gather), in bytes. A journal entry is a
/// few hundred bytes; a stream that goes past this is not one this client can follow.
pub const MAX_SSE_LINE_BYTES: usize = 1024 * 1024;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field, or `message` when the event named none.
    pub event: String,
    /// The `data:` lines joined with newlines.
    pub data: String,
    /// The last event id when this event was dispatched (ids carry over to later events).
    pub id: Option<String>,
}

/// The stream broke a bound this client keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseError(String);

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Turns the bytes of an event stream into events.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended with a CR: an LF that starts the next one belongs to it.
    after_cr: bool,
    /// Whether the stream's first bytes were looked at for a byte-order mark.
    started: bool,
    event: String,
    data: String,
    /// Whether a `data:` field was seen since the last dispatch.
    has_data: bool,
    /// The last `id:` field seen; it becomes the last event id when its event is dispatched
    /// (the blank line), so an event cut off by a dropped connection does not count.
    id_buffer: Option<String>,
    last_id: Option<String>,
    retry_ms: Option<u64>,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// A parser for a new connection of the same stream: the last event id and the retry
    /// time carry over; a half-received event of the old connection does not.
    pub fn reconnected(&self) -> SseParser {
        SseParser {
            id_buffer: self.last_id.clone(),
            last_id: self.last_id.clone(),
            retry_ms: self.retry_ms,
            ..SseParser::default()
        }
    }

    /// The id to send as `Last-Event-ID` when reconnecting.
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// The reconnection time the server asked for with `retry:`, in milliseconds.
    pub fn retry_ms(&self) -> Option<u64> {
        self.retry_ms
    }

    /// Takes the next chunk of the stream and returns the events it completed.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut events = Vec::new();
        if self.after_cr && !bytes.is_empty() {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                bytes = &bytes[1..];
            }
        }
        while let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.push(&bytes[..end])?;
            let line = std::mem::take(&mut self.line);
            if let Some(event) = self.line_ended(&line)? {
                events.push(event);
            }
            let crlf = bytes[end] == b'\r';
            bytes = &bytes[end + 1..];
            if crlf {
                match bytes.first() {
                    Some(b'\n') => bytes = &bytes[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.push(bytes)?;
        Ok(events)
    }

    fn push(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > MAX_SSE_LINE_BYTES {
            return Err(SseError(format!(
                "the event stream sent a line longer than {MAX_SSE_LINE_BYTES} bytes"
            )));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_ended(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        let mut line = String::from_utf8_lossy(line);
        if !self.started {
            self.started = true;
            if let Some(rest) = line.strip_prefix('\u{feff}') {
                line = rest.to_string().into();
            }
        }
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line.starts_with(':') {
            return Ok(None); // A comment, such as a keep-alive.
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => self.event = value.to_string(),
            "data" => {
                if self.data.len() + value.len() + 1 > MAX_SSE_LINE_BYTES {
                    return Err(SseError(format!(
                        "the event stream sent an event of more than {MAX_SSE_LINE_BYTES} bytes"
                    )));
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id_buffer = Some(value.to_string()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry_ms = value.parse().ok();
            }
            _ => {} // Unknown fields are ignored, as the standard says.
        }
        Ok(None)
    }

    /// A blank line: the gathered event, if it has data; the last event id is set, and the
    /// event type reset, either way.
    fn dispatch(&mut self) -> Option<SseEvent> {
        self.last_id.clone_from(&self.id_buffer);
        let event = std::mem::take(&mut self.event);
        let data = std::mem::take(&mut self.data);
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            event: if event.is_empty() {
                "message".to_string()
            } else {
                event
            },
            data,
            id: self.last_id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(chunks: &[&[u8]]) -> (Vec<SseEvent>, SseParser) {
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(parser.feed(chunk).expect("a valid stream"));
        }
        (events, parser)
    }

    fn event(event: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            event: event.to_string(),
            data: data.to_string(),
            id: id.map(str::to_string),
        }
    }

    /// A stream with every feature: comments, ids, multi-line data, CRLF and CR line ends,
    /// a field without a colon, `retry`, an event without data, unknown fields, UTF-8.
    const STREAM: &[u8] = b"\xef\xbb\xbf: keep-alive\n\
        event: journal\nid: 7\ndata: {\"seq\":7}\n\n\
        data: first\r\ndata:second\r\ndata\r\n\r\n\
        : comment\rretry: 2500\rid: 9\revent: journal\rdata: caf\xc3\xa9 \xe2\x9c\x93\r\r\
        event: nothing\nid: 10\n\n\
        bogus: field\ndata:  two spaces\n\n\
        data: unfinished";

    fn expected() -> Vec<SseEvent> {
        vec![
            event("journal", "{\"seq\":7}", Some("7")),
            event("message", "first\nsecond\n", Some("7")),
            event("journal", "caf\u{e9} \u{2713}", Some("9")),
            event("message", " two spaces", Some("10")),
        ]
    }

    #[test]
    fn parses_fields_comments_ids_and_multi_line_data() {
        let (events, parser) = parse_all(&[STREAM]);
        assert_eq!(events, expected());
        assert_eq!(parser.last_event_id(), Some("10"));
        assert_eq!(parser.retry_ms(), Some(2500));
    }

    #[test]
    fn chunks_split_at_any_byte_give_the_same_events() {
        for size in 1..=7 {
            let chunks: Vec<&[u8]> = STREAM.chunks(size).collect();
            let (events, _) = parse_all(&chunks);
            assert_eq!(events, expected(), "chunks of {size} bytes");
        }
        for split in 0..=STREAM.len() {
            let (events, parser) = parse_all(&[&STREAM[..split], &STREAM[split..]]);
            assert_eq!(events, expected(), "split at byte {split}");
            assert_eq!(parser.retry_ms(), Some(2500));
        }
    }

    #[test]
    fn a_crlf_split_between_chunks_ends_one_line() {
        let (events, _) = parse_all(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]);
        assert_eq!(events, vec![event("message", "a\nb", None)]);
    }

    #[test]
    fn an_empty_data_field_still_dispatches_and_a_bad_retry_is_ignored() {
        let (events, parser) = parse_all(&[b"retry: soon\ndata\n\nid: x\0y\ndata:\n\n"]);
        assert_eq!(events, vec![event("message", "", None); 2]);
        assert_eq!(parser.retry_ms(), None);
        assert_eq!(parser.last_event_id(), None, "an id with NUL is ignored");
    }

    #[test]
    fn a_reconnected_parser_keeps_the_id_and_retry_but_drops_a_partial_event() {
        let mut parser = SseParser::new();
        let events = parser
            .feed(b"retry: 100\nid: 3\ndata: one\n\nid: 4\ndata: half")
            .unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            parser.last_event_id(),
            Some("3"),
            "the id of an event not yet ended does not count"
        );
        let mut next = parser.reconnected();
        assert_eq!(next.last_event_id(), Some("3"));
        assert_eq!(next.retry_ms(), Some(100));
        let events = next.feed(b"\n\ndata: two\n\n").unwrap();
        assert_eq!(events, vec![event("message", "two", Some("3"))]);
    }

    #[test]
    fn an_endless_line_is_an_error_not_unbounded_memory() {
        let mut parser = SseParser::new();
        let chunk = vec![b'x'; MAX_SSE_LINE_BYTES / 2 + 1];
        assert!(parser.feed(&chunk).is_ok());
        assert!(parser.feed(&chunk).is_err());
    }
}
