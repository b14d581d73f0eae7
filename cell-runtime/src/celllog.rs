//! What a cell writes to the runtime's log. A cell's text goes into one log record as its
//! message, with the service, verb and correlation id as fields of their own; control
//! characters in it are escaped, so a cell can neither start a forged line (`\n`, `\r`),
//! nor rewrite the terminal (ANSI escapes), nor reorder what a reader sees (bidi
//! overrides).

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control, line-separating and bidi-overriding character written as a
/// visible escape (`\n`, `\r`, `\t`, `\u{1b}`, …); text without any is returned as is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            '\t' => escaped.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
            }
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            // Line and paragraph separators, which some viewers break lines at.
            '\u{2028}' | '\u{2029}'
            // Bidirectional embeddings, overrides and isolates.
            | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::plain("all is well", "all is well")]
    #[case::newline("one\nINFO forged", "one\\nINFO forged")]
    #[case::carriage_return("one\rtwo", "one\\rtwo")]
    #[case::tab("a\tb", "a\\tb")]
    #[case::ansi_escape("\u{1b}[2Jcleared", "\\u{1b}[2Jcleared")]
    #[case::nul("a\0b", "a\\u{0}b")]
    #[case::delete("a\u{7f}b", "a\\u{7f}b")]
    #[case::c1_control("a\u{85}b", "a\\u{85}b")]
    #[case::line_separator("a\u{2028}b", "a\\u{2028}b")]
    #[case::bidi_override("user \u{202e}nimda", "user \\u{202e}nimda")]
    #[case::backslash_is_kept("C:\\dir\n", "C:\\dir\\n")]
    #[case::unicode_text("naïve ☃ 日本", "naïve ☃ 日本")]
    fn control_characters_are_escaped(#[case] text: &str, #[case] logged: &str) {
        assert_eq!(escape(text), logged);
    }

    #[test]
    fn text_without_control_characters_is_not_copied() {
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
    }
}
