//! Reading streamed replies: Server-Sent Events (OpenAI-compatible) and
//! newline-delimited JSON (Ollama), with stall timeouts.
//!
//! Both formats are lines of text, so one bounded line splitter serves both.
//! The rule every caller follows: a stream that stalls, breaks off before its
//! end marker, or carries a malformed chunk is an error, never a shorter
//! success — otherwise a half-written plan would reach the user as if whole.

use std::time::Duration;

use tokio::time::Instant;

use crate::chat::ProviderError;
use crate::http::chain;

/// Longest line accepted in a stream. One SSE `data:` line holds one small
/// delta; even a whole answer in a single chunk fits easily.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Longest accumulated answer. Role outputs are bounded by their schemas to a
/// few KiB; this stops a runaway generation from eating memory.
pub const MAX_TEXT_BYTES: usize = 4 * 1024 * 1024;

/// Splits bytes into lines (`\n` or `\r\n`), refusing overlong lines and invalid UTF-8.
#[derive(Debug, Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

/// Lines longer than [`MAX_LINE_BYTES`] or not UTF-8 are errors.
impl Framing for LineSplitter {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.buf);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                lines.push(
                    String::from_utf8(line).map_err(|_| "stream line is not UTF-8".to_string())?,
                );
            } else {
                if self.buf.len() >= MAX_LINE_BYTES {
                    return Err(format!("stream line longer than {MAX_LINE_BYTES} bytes"));
                }
                self.buf.push(b);
            }
        }
        Ok(lines)
    }

    /// The unterminated rest, if any.
    fn finish(&mut self) -> Result<Option<String>, String> {
        if self.buf.iter().all(u8::is_ascii_whitespace) {
            self.buf.clear();
            return Ok(None);
        }
        let line = std::mem::take(&mut self.buf);
        String::from_utf8(line)
            .map(Some)
            .map_err(|_| "stream line is not UTF-8".to_string())
    }
}

/// Assembles Server-Sent Events from lines: `data:` lines accumulate until a
/// blank line dispatches the event; comments (`:`) and other fields are ignored.
#[derive(Debug, Default)]
pub struct SseDecoder {
    lines: LineSplitter,
    data: Option<String>,
}

/// Frames are the `data` of each event; a malformed line is an error.
impl Framing for SseDecoder {
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut events = Vec::new();
        for line in self.lines.push(bytes)? {
            self.line(line, &mut events);
        }
        Ok(events)
    }

    /// An event still pending (no blank line after it) is dispatched too:
    /// some servers end `data: [DONE]` with one newline only.
    fn finish(&mut self) -> Result<Option<String>, String> {
        let mut events = Vec::new();
        if let Some(line) = self.lines.finish()? {
            self.line(line, &mut events);
        }
        Ok(events.pop().or_else(|| self.data.take()))
    }
}

impl SseDecoder {
    fn line(&mut self, line: String, events: &mut Vec<String>) {
        if line.is_empty() {
            if let Some(d) = self.data.take() {
                events.push(d);
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_str(), ""),
        };
        if field == "data" {
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
    }
}

/// Deadlines for the next piece of a stream: the first one within
/// `first`, each later one within `next` of the previous. Only pieces of the
/// answer count (SSE `data:` events, NDJSON lines): a server that sends
/// nothing but keep-alive comments is not answering.
#[derive(Debug, Clone, Copy)]
pub struct StallTimer {
    first: Duration,
    next: Duration,
    deadline: Instant,
    seen_first: bool,
}

impl StallTimer {
    /// Starts the clock now (when the request is sent).
    pub fn start(first: Duration, next: Duration) -> StallTimer {
        StallTimer {
            first,
            next,
            deadline: Instant::now() + first,
            seen_first: false,
        }
    }

    /// A piece of the answer arrived: the next one is due within `next`.
    pub fn progress(&mut self) {
        self.seen_first = true;
        self.deadline = Instant::now() + self.next;
    }

    /// Waits for the next body chunk of `resp` or the stall deadline.
    ///
    /// # Errors
    /// [`ProviderError::TimedOut`] on a stall, [`ProviderError::Upstream`] when
    /// the connection breaks.
    pub async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
    ) -> Result<Option<bytes::Bytes>, ProviderError> {
        match tokio::time::timeout_at(self.deadline, resp.chunk()).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ProviderError::Upstream {
                status: None,
                message: format!("the stream broke off: {}", chain(&e)),
            }),
            Err(_) => Err(ProviderError::TimedOut(if self.seen_first {
                format!(
                    "the stream stalled: no chunk for {} ms",
                    self.next.as_millis()
                )
            } else {
                format!(
                    "the stream stalled: no first token within {} ms",
                    self.first.as_millis()
                )
            })),
        }
    }
}

/// How a streamed body splits into frames: NDJSON lines ([`LineSplitter`])
/// or SSE events ([`SseDecoder`]).
pub trait Framing: Default {
    /// Feeds bytes; returns the frames completed by them.
    ///
    /// # Errors
    /// A malformed frame.
    fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String>;
    /// At end of stream: a last frame without its terminator.
    ///
    /// # Errors
    /// A malformed last frame.
    fn finish(&mut self) -> Result<Option<String>, String>;
}

/// Reads a streamed answer frame by frame, within `timer`'s deadlines, until
/// `take` says the answer is complete (returns `true`) or the body ends. Blank
/// frames are skipped; every other frame counts as progress.
///
/// # Errors
/// A stall, a broken connection, a malformed frame, or what `take` returns.
pub async fn read_frames<F: Framing>(
    resp: &mut reqwest::Response,
    timer: &mut StallTimer,
    mut take: impl FnMut(&str) -> Result<bool, ProviderError>,
) -> Result<(), ProviderError> {
    let mut framing = F::default();
    loop {
        let (frames, ended) = match timer.next_chunk(resp).await? {
            Some(chunk) => (framing.push(&chunk).map_err(ProviderError::stream)?, false),
            None => {
                let last = framing.finish().map_err(ProviderError::stream)?;
                (last.into_iter().collect(), true)
            }
        };
        for frame in frames {
            if frame.trim().is_empty() {
                continue;
            }
            timer.progress();
            if take(&frame)? {
                return Ok(());
            }
        }
        if ended {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks() {
        let mut s = LineSplitter::default();
        assert_eq!(s.push(b"ab").unwrap(), Vec::<String>::new());
        assert_eq!(s.push(b"c\r\nde\nf").unwrap(), vec!["abc", "de"]);
        assert_eq!(s.finish().unwrap(), Some("f".into()));
        assert_eq!(s.finish().unwrap(), None);
        assert!(s.push(&[0xff, b'\n']).is_err());
        let mut s = LineSplitter::default();
        assert!(s.push(&vec![b'x'; MAX_LINE_BYTES + 1]).is_err());
    }

    #[test]
    fn sse_events_comments_and_multiline_data() {
        let mut d = SseDecoder::default();
        let ev = d
            .push(b": OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\n\ndata:[DONE]")
            .unwrap();
        assert_eq!(ev, vec!["{\"a\":1}", "one\ntwo"]);
        assert_eq!(d.finish().unwrap(), Some("[DONE]".into()));
        assert_eq!(d.finish().unwrap(), None);
    }

    #[test]
    fn sse_event_split_mid_line() {
        let mut d = SseDecoder::default();
        assert!(d.push(b"data: {\"a\"").unwrap().is_empty());
        assert!(d.push(b":2}\n").unwrap().is_empty());
        assert_eq!(d.push(b"\n").unwrap(), vec!["{\"a\":2}"]);
    }
}
