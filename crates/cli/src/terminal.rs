//! What the CLI needs of a terminal: whether stdout is one and how wide it is, text from the
//! server made safe to show on one (task output and reasons are untrusted: an escape sequence
//! in them must never reach the terminal as one), and a block of lines redrawn in place for
//! live progress.

use std::io::{IsTerminal, Write};

/// Columns assumed when stdout is a terminal whose width cannot be read.
pub const DEFAULT_TERMINAL_COLUMNS: usize = 100;
/// Fewest columns a live line or a truncated column is given, however narrow the terminal.
pub const MIN_TERMINAL_COLUMNS: usize = 40;

/// The width to fit output to: the terminal's when stdout is one, `None` when it is a pipe or
/// a file (which get everything, unshortened).
pub fn stdout_columns() -> Option<usize> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    Some(
        query_columns()
            .or_else(|| {
                std::env::var("COLUMNS")
                    .ok()
                    .and_then(|c| c.trim().parse().ok())
            })
            .filter(|&c| c > 0)
            .unwrap_or(DEFAULT_TERMINAL_COLUMNS)
            .max(MIN_TERMINAL_COLUMNS),
    )
}

#[cfg(unix)]
fn query_columns() -> Option<usize> {
    // SAFETY: TIOCGWINSZ only writes a `winsize` into the struct it is given, which lives for
    // the whole call; a failure leaves it untouched and is reported by the return value.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    let answer = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (answer == 0 && size.ws_col > 0).then_some(usize::from(size.ws_col))
}

#[cfg(not(unix))]
fn query_columns() -> Option<usize> {
    None
}

/// Whether a character must not reach a terminal as it is: C0 and C1 controls, DEL, and the
/// Unicode bidirectional overrides and isolates (which can make text read other than it is).
fn is_unsafe(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '\r' => out.push_str("\\r"),
        '\n' => out.push_str("\\n"),
        '\t' => out.push_str("\\t"),
        c if u32::from(c) < 0x100 => out.push_str(&format!("\\x{:02x}", u32::from(c))),
        c => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
    }
}

/// Untrusted text for a terminal, keeping its lines: newlines and tabs stay, every other
/// control character is shown escaped (`\x1b`, `\r`, `\u{202e}`), never interpreted.
pub fn escape_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '\n' || c == '\t' || !is_unsafe(c) {
            out.push(c);
        } else {
            escape_char(c, &mut out);
        }
    }
    out
}

/// Untrusted text for one line (a table cell, a progress line): newlines and tabs are
/// escaped too.
pub fn escape_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if is_unsafe(c) {
            escape_char(c, &mut out);
        } else {
            out.push(c);
        }
    }
    out
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A block of lines at the bottom of the terminal, redrawn in place: each redraw moves the
/// cursor back over the block, clears it and writes the new lines. Lines are cut to the width
/// so none wraps (a wrapped line would throw the count of lines to move back over off).
pub struct LiveBlock {
    columns: usize,
    /// The lines on screen now.
    shown: Vec<String>,
}

impl LiveBlock {
    pub fn new(columns: usize) -> LiveBlock {
        LiveBlock {
            columns,
            shown: Vec::new(),
        }
    }

    fn erase(&self, out: &mut String) {
        if !self.shown.is_empty() {
            out.push_str(&format!("\x1b[{}A\r\x1b[J", self.shown.len()));
        }
    }

    fn lines(&mut self, lines: &[String], out: &mut String) {
        for line in lines {
            // One column short of the width: some terminals wrap on the last column.
            out.push_str(&truncate(line, self.columns.saturating_sub(1)));
            out.push('\n');
        }
        self.shown = lines.to_vec();
    }

    /// Replaces the block with `lines` (unless they are the lines shown already).
    pub fn draw(&mut self, lines: &[String]) {
        if self.shown == lines {
            return;
        }
        let mut out = String::new();
        self.erase(&mut out);
        self.lines(lines, &mut out);
        write_stdout(&out);
    }

    /// Prints `line` above the block, where it stays, and draws the block again below it.
    pub fn log(&mut self, line: &str, block: &[String]) {
        let mut out = String::new();
        self.erase(&mut out);
        out.push_str(line);
        out.push('\n');
        self.lines(block, &mut out);
        write_stdout(&out);
    }

    /// Removes the block, leaving the cursor where it began.
    pub fn clear(&mut self) {
        let mut out = String::new();
        self.erase(&mut out);
        self.shown.clear();
        write_stdout(&out);
    }
}

fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_in_untrusted_text_are_shown_not_interpreted() {
        let output = "ok\tdone\n\x1b[2J\x1b]0;pwned\x07\rover\u{9b}31m \u{202e}txt.exe\u{7f}é✓";
        assert_eq!(
            escape_text(output),
            "ok\tdone\n\\x1b[2J\\x1b]0;pwned\\x07\\rover\\x9b31m \\u{202e}txt.exe\\x7fé✓"
        );
        assert_eq!(
            escape_line("two\nlines\tand \x1b[1mbold"),
            "two\\nlines\\tand \\x1b[1mbold"
        );
        assert!(
            !escape_text(output)
                .chars()
                .any(|c| c != '\n' && c != '\t' && is_unsafe(c))
        );
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("exactly-10", 10), "exactly-10");
        assert_eq!(truncate("much too long", 8), "much to…");
        assert_eq!(truncate("ééééé", 3), "éé…");
    }
}
