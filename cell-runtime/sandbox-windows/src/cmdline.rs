//! The command line `CreateProcessW` takes: one string that the child's C runtime (and Rust's
//! `std::env::args`) splits back into arguments. Quoting follows the rules those parsers
//! apply, so every argument arrives exactly as given. No system call: tested anywhere.
#![forbid(unsafe_code)]

use std::fmt;

/// The most UTF-16 units `CreateProcessW` takes in a command line, its final NUL included.
pub const MAX_COMMAND_LINE: usize = 32_767;

/// Why a program and its arguments cannot be one Windows command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandLineError {
    /// The program path is empty.
    EmptyProgram,
    /// The program path holds `"`, which no Windows path can and no quoting can carry.
    QuoteInProgram { program: String },
    /// The program (`None`) or the argument at `index` holds a NUL, which ends the string.
    Nul { index: Option<usize> },
    /// The line is longer than Windows takes.
    TooLong { units: usize },
}

impl fmt::Display for CommandLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandLineError::EmptyProgram => write!(f, "the program path is empty"),
            CommandLineError::QuoteInProgram { program } => {
                write!(f, "the program path `{program}` contains a double quote")
            }
            CommandLineError::Nul { index: None } => {
                write!(f, "the program path contains a NUL character")
            }
            CommandLineError::Nul { index: Some(i) } => {
                write!(f, "argument {i} contains a NUL character")
            }
            CommandLineError::TooLong { units } => write!(
                f,
                "the command line is {units} UTF-16 units long with its terminator; \
                 Windows takes at most {MAX_COMMAND_LINE}"
            ),
        }
    }
}

impl std::error::Error for CommandLineError {}

/// `program` and `args` as one command line. The program is always quoted: `argv[0]` is
/// split by a simpler rule (up to the closing quote, backslashes literal), so a path with a
/// space needs quotes and cannot be escaped any other way.
pub fn command_line<S: AsRef<str>>(program: &str, args: &[S]) -> Result<String, CommandLineError> {
    if program.is_empty() {
        return Err(CommandLineError::EmptyProgram);
    }
    if program.contains('\0') {
        return Err(CommandLineError::Nul { index: None });
    }
    if program.contains('"') {
        return Err(CommandLineError::QuoteInProgram {
            program: program.to_owned(),
        });
    }
    let mut line = String::with_capacity(program.len() + 2);
    line.push('"');
    line.push_str(program);
    line.push('"');
    for (index, arg) in args.iter().enumerate() {
        let arg = arg.as_ref();
        if arg.contains('\0') {
            return Err(CommandLineError::Nul { index: Some(index) });
        }
        line.push(' ');
        push_quoted(&mut line, arg);
    }
    let units = line.encode_utf16().count() + 1;
    if units > MAX_COMMAND_LINE {
        return Err(CommandLineError::TooLong { units });
    }
    Ok(line)
}

/// Appends `arg` so that the C runtime reads it back unchanged: bare when it has nothing
/// the parser treats specially, otherwise in quotes, where backslashes are literal except
/// in a run that ends at a `"` (the run is doubled, and the quote escaped) or at the
/// closing quote (the run is doubled).
fn push_quoted(line: &mut String, arg: &str) {
    let needs_quotes = arg.is_empty() || arg.contains([' ', '\t', '\n', '\x0b', '"']);
    if !needs_quotes {
        line.push_str(arg);
        return;
    }
    line.push('"');
    let mut backslashes = 0;
    for c in arg.chars() {
        match c {
            '\\' => backslashes += 1,
            '"' => {
                push_backslashes(line, backslashes * 2 + 1);
                line.push('"');
                backslashes = 0;
            }
            _ => {
                push_backslashes(line, backslashes);
                line.push(c);
                backslashes = 0;
            }
        }
    }
    push_backslashes(line, backslashes * 2);
    line.push('"');
}

fn push_backslashes(line: &mut String, count: usize) {
    line.extend(std::iter::repeat('\\').take(count));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// How the Microsoft C runtime since 2008 (and Rust's std on Windows) splits a command
    /// line, written from Microsoft's "Parsing C++ command-line arguments": the reference
    /// the quoting is checked against. The probe checks the real one under Wine.
    fn split(line: &str) -> Vec<String> {
        let mut chars = line.chars().peekable();
        let mut args = Vec::new();
        // argv[0]: up to the closing quote, or up to white space; no escapes.
        let mut program = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                program.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ' ' || c == '\t' {
                    break;
                }
                program.push(c);
                chars.next();
            }
        }
        args.push(program);
        loop {
            while matches!(chars.peek(), Some(' ') | Some('\t')) {
                chars.next();
            }
            if chars.peek().is_none() {
                return args;
            }
            let mut arg = String::new();
            let mut quoted = false;
            loop {
                let mut backslashes = 0;
                while chars.peek() == Some(&'\\') {
                    backslashes += 1;
                    chars.next();
                }
                match chars.peek() {
                    Some('"') => {
                        arg.extend(std::iter::repeat('\\').take(backslashes / 2));
                        chars.next();
                        if backslashes % 2 == 1 {
                            arg.push('"');
                        } else if quoted && chars.peek() == Some(&'"') {
                            // `""` inside quotes is one literal quote.
                            chars.next();
                            arg.push('"');
                        } else {
                            quoted = !quoted;
                        }
                    }
                    Some(&c) => {
                        arg.extend(std::iter::repeat('\\').take(backslashes));
                        if !quoted && (c == ' ' || c == '\t') {
                            break;
                        }
                        arg.push(c);
                        chars.next();
                    }
                    None => {
                        arg.extend(std::iter::repeat('\\').take(backslashes));
                        break;
                    }
                }
            }
            args.push(arg);
        }
    }

    #[test]
    fn the_reference_parser_agrees_with_microsofts_examples() {
        let cases: &[(&str, &[&str])] = &[
            (r#""abc" d e"#, &["abc", "d", "e"]),
            (r#"a\\b d"e f"g h"#, &["a\\\\b", "de fg", "h"]),
            (r#"a\\\"b c d"#, &["a\\\"b", "c", "d"]),
            (r#"a\\\\"b c" d e"#, &["a\\\\b c", "d", "e"]),
            (r#"a"b"" c d"#, &["ab\" c d"]),
        ];
        for (line, expected) in cases {
            // Microsoft's examples are arguments only; give them a program.
            let parsed = split(&format!("p {line}"));
            assert_eq!(&parsed[1..], *expected, "{line}");
        }
        assert_eq!(
            split(r#""C:\Program Files\x.exe" a"#),
            ["C:\\Program Files\\x.exe", "a"]
        );
        assert_eq!(split(r"C:\x\y.exe"), [r"C:\x\y.exe"]);
    }

    #[test]
    fn arguments_are_quoted_only_when_they_must_be() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", r#""""#),
            ("two words", r#""two words""#),
            ("tab\there", "\"tab\there\""),
            ("new\nline", "\"new\nline\""),
            ("vertical\x0btab", "\"vertical\x0btab\""),
            (r#"say "hi""#, r#""say \"hi\"""#),
            (r#"a"b"#, r#""a\"b""#),
            (r#"""#, r#""\"""#),
            (r"C:\dir\", r"C:\dir\"),
            (r"C:\my dir\", r#""C:\my dir\\""#),
            (r#"a\"b"#, r#""a\\\"b""#),
            (r#"a\\"b"#, r#""a\\\\\"b""#),
            (r"\\server\share", r"\\server\share"),
            (r"\\server\my share\\", r#""\\server\my share\\\\""#),
            ("ünïcödé ✓", "\"ünïcödé ✓\""),
            ("%PATH%", "%PATH%"),
            ("a&b|c<d>e^f", "a&b|c<d>e^f"),
        ];
        for (arg, quoted) in cases {
            let line = command_line("p.exe", &[arg]).unwrap();
            assert_eq!(line, format!("\"p.exe\" {quoted}"), "{arg:?}");
        }
    }

    #[test]
    fn every_argument_survives_the_round_trip() {
        let hostile = [
            "",
            " ",
            "  leading and trailing  ",
            "\"",
            "\"\"",
            "\\",
            "\\\\",
            "\\\"",
            "ends with backslash\\",
            "ends with two\\\\",
            "a\\\\\\\"b",
            "\"quoted\"",
            "--flag=\"x y\"",
            "tab\tand\nnewline",
            "ünïcödé ✓ 𝄞",
            "C:\\Program Files\\x\\",
        ];
        let program = r"C:\Program Files\cellbus\cell.exe";
        let line = command_line(program, &hostile).unwrap();
        let mut expected = vec![program.to_owned()];
        expected.extend(hostile.iter().map(|s| s.to_string()));
        assert_eq!(split(&line), expected, "{line}");
        // One at a time too, so a failure names its argument.
        for arg in hostile {
            let line = command_line(program, &[arg]).unwrap();
            assert_eq!(split(&line), [program, arg], "{arg:?} became {line}");
        }
    }

    #[test]
    fn lines_windows_cannot_take_are_refused() {
        let long = "x".repeat(MAX_COMMAND_LINE);
        let fits = "x".repeat(MAX_COMMAND_LINE - 1 - "\"p\" ".len());
        let cases: Vec<(&str, Vec<&str>, Result<(), CommandLineError>)> = vec![
            ("", vec![], Err(CommandLineError::EmptyProgram)),
            (
                "a\0b.exe",
                vec![],
                Err(CommandLineError::Nul { index: None }),
            ),
            (
                "p.exe",
                vec!["ok", "nul\0inside"],
                Err(CommandLineError::Nul { index: Some(1) }),
            ),
            (
                "C:\\x\"y.exe",
                vec![],
                Err(CommandLineError::QuoteInProgram {
                    program: "C:\\x\"y.exe".into(),
                }),
            ),
            (
                "p",
                vec![long.as_str()],
                Err(CommandLineError::TooLong {
                    units: MAX_COMMAND_LINE + 5,
                }),
            ),
            ("p", vec![fits.as_str()], Ok(())),
        ];
        for (program, args, expected) in cases {
            assert_eq!(
                command_line(program, &args).map(|_| ()),
                expected,
                "{program:?}"
            );
        }
        // Length is counted in UTF-16 units, not bytes: "𝄞" is 4 bytes, 2 units.
        let clefs = "𝄞".repeat((MAX_COMMAND_LINE - 5) / 2);
        assert!(command_line("p", &[clefs.as_str()]).is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            (CommandLineError::EmptyProgram, "the program path is empty"),
            (
                CommandLineError::Nul { index: Some(2) },
                "argument 2 contains a NUL character",
            ),
            (
                CommandLineError::TooLong { units: 40_000 },
                "the command line is 40000 UTF-16 units long with its terminator; \
                 Windows takes at most 32767",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
    }
}
