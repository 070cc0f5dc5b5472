//! Readable text from a page: the article body as Mozilla's Readability
//! finds it (via `dom_smoothie`), else the whole body's text without
//! scripts, styles and other non-content; plus the page title.
//!
//! Everything is bounded: the DOM walked ([`MAX_ELEMENTS`]), the text kept
//! (`max_text_bytes`, cut on a character boundary), the title ([`MAX_TITLE_BYTES`]).
//! The work is CPU-bound, so callers run it on the blocking pool.

use dom_smoothie::{Config, Readability, TextMode};

use crate::http::truncate_utf8;

/// Elements Readability scores before giving up on a page (then the fallback
/// runs). Real articles have a few thousand; the size cap keeps pages far
/// below the point where this matters for memory.
pub const MAX_ELEMENTS: usize = 30_000;
/// Longest title kept, in bytes.
pub const MAX_TITLE_BYTES: usize = 512;
/// Readability output shorter than this (in characters) is not trusted: the
/// whole-body text is used instead (it finds nothing on link lists, forms, or
/// pages with a sentence or two).
const MIN_ARTICLE_CHARS: usize = 80;

/// Title and text of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The page title (may be empty).
    pub title: String,
    /// Readable text, paragraphs separated by blank lines (may be empty).
    pub text: String,
}

/// Extracts title and readable text from an HTML document.
/// `url` (absolute) lets Readability resolve relative links; it is optional.
pub fn html(html: &str, url: Option<&str>, max_text_bytes: usize) -> Extracted {
    let cfg = Config {
        max_elements_to_parse: MAX_ELEMENTS,
        text_mode: TextMode::Formatted,
        ..Config::default()
    };
    let article = Readability::new(html, url, Some(cfg))
        .ok()
        .and_then(|mut r| r.parse().ok());
    let (mut title, text) = match article {
        Some(a) if a.text_content.trim().chars().count() >= MIN_ARTICLE_CHARS => {
            (a.title, normalise(&a.text_content))
        }
        _ => fallback(html),
    };
    title = title.split_whitespace().collect::<Vec<_>>().join(" ");
    truncate_utf8(&mut title, MAX_TITLE_BYTES);
    let mut text = text;
    truncate_utf8(&mut text, max_text_bytes);
    Extracted { title, text }
}

/// A plain-text document: its text, normalised and bounded; no title.
pub fn plain(text: &str, max_text_bytes: usize) -> Extracted {
    let mut text = normalise(text);
    truncate_utf8(&mut text, max_text_bytes);
    Extracted {
        title: String::new(),
        text,
    }
}

/// The whole body's text, without elements that never hold readable content.
fn fallback(html: &str) -> (String, String) {
    let doc = dom_query::Document::from(html);
    let title = doc.select("head title").first().text().to_string();
    doc.select("script, style, noscript, template, svg, canvas, iframe, object, head")
        .remove();
    let body = doc.select("body");
    let text = if body.exists() {
        body.formatted_text()
    } else {
        doc.formatted_text()
    };
    (title, normalise(&text))
}

/// Trims every line, drops runs of blank lines, collapses inner whitespace.
fn normalise(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(1 << 20));
    let mut blank_pending = false;
    for line in text.lines() {
        let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
        if line.is_empty() {
            blank_pending = !out.is_empty();
            continue;
        }
        if blank_pending {
            out.push_str("\n\n");
            blank_pending = false;
        } else if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARTICLE: &str = r#"<!doctype html><html><head><title>  The Title  </title>
        <style>.x{color:red}</style><script>var secret = "SCRIPT-TEXT";</script></head>
        <body><nav><a href="/">Home</a> <a href="/about">About</a></nav>
        <article><h1>The Title</h1>
        <p>First paragraph of the article, long enough to count as content for the readability scorer, with commas, and more words.</p>
        <p>Second paragraph, which also talks at length about the subject at hand, so that the page reads as an article.</p>
        <p>Third paragraph with ARTICLE-MARKER inside, and yet more prose, commas, clauses, and sentences to score well.</p>
        </article><footer>Copyright</footer></body></html>"#;

    #[test]
    fn articles_come_out_as_text_without_scripts() {
        let e = html(ARTICLE, Some("https://example.com/a"), 10_000);
        assert_eq!(e.title, "The Title");
        assert!(e.text.contains("ARTICLE-MARKER"), "{}", e.text);
        assert!(!e.text.contains("SCRIPT-TEXT"), "{}", e.text);
        assert!(!e.text.contains("color:red"), "{}", e.text);
    }

    #[test]
    fn short_pages_use_the_whole_body() {
        let page = "<html><head><title>Tiny</title><script>x='HIDDEN'</script></head>\
                    <body><div>Just one line: TINY-MARKER.</div><script>y='HIDDEN'</script></body></html>";
        let e = html(page, None, 10_000);
        assert_eq!(e.title, "Tiny");
        assert_eq!(e.text, "Just one line: TINY-MARKER.");
    }

    #[test]
    fn text_is_bounded() {
        let e = html(ARTICLE, None, 40);
        assert!(e.text.len() <= 40);
        let p = plain("  a  \n\n\n\n b ", 100);
        assert_eq!(p.text, "a\n\nb");
        let long = plain(&"é".repeat(100), 11);
        assert_eq!(long.text.len(), 10);
    }

    #[test]
    fn garbage_does_not_panic() {
        for input in [
            "",
            "<",
            "<html><body></html>",
            "\u{0}\u{1}<<<>>>",
            "<p>unclosed <b>tags",
        ] {
            let _ = html(input, Some("not a url"), 100);
        }
    }
}
