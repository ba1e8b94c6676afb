//! The client line protocol (one request per line, one reply line each,
//! replies in request order):
//!
//! ```text
//! PROP <reqid> <value>   ->  CHOSEN <index> | LOST <index> | ERR <reason>
//! GET <index>            ->  ITEM <index> <reqid> <value> | NOOP <index> | NONE <index> | ERR <reason>
//! STATUS                 ->  STATUS id=.. role=.. leader=.. chosen_through=.. max_index=.. peers=..
//! HELP                   ->  HELP ...
//! ```
//!
//! Parsing is pure so every malformed line can be tested without a server.

/// Longest line a client may send; longer lines get `ERR` and are skipped.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// A parsed request.
#[derive(Debug, PartialEq, Eq, Clone)]
pub enum Request {
    Propose { reqid: u64, value: Vec<u8> },
    Get { index: u64 },
    Status,
    Help,
}

/// Parses one line (without its `\n`; a trailing `\r` from telnet is
/// dropped). `Ok(None)` for a blank line, which gets no reply.
pub fn parse_line(line: &[u8]) -> Result<Option<Request>, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(None);
    }
    if line.len() > LINE_BYTES_MAX {
        return Err(format!("line longer than {LINE_BYTES_MAX} bytes"));
    }
    let (command, rest) = split_word(line);
    let command =
        std::str::from_utf8(command).map_err(|_| "command is not text; try HELP".to_string())?;
    match command.to_ascii_uppercase().as_str() {
        "PROP" => {
            let (reqid, value) = split_word(rest);
            if reqid.is_empty() {
                return Err("usage: PROP <reqid> <value>".into());
            }
            let reqid = parse_number(reqid, "reqid")?;
            if reqid == 0 {
                return Err("reqid must be non-zero".into());
            }
            if value.is_empty() {
                return Err("usage: PROP <reqid> <value> (value must not be empty)".into());
            }
            Ok(Some(Request::Propose {
                reqid,
                value: value.to_vec(),
            }))
        }
        "GET" => {
            let (index, extra) = split_word(rest);
            if index.is_empty() || !extra.is_empty() {
                return Err("usage: GET <index>".into());
            }
            let index = parse_number(index, "index")?;
            if index == 0 {
                return Err("index must be at least 1".into());
            }
            Ok(Some(Request::Get { index }))
        }
        "STATUS" if rest.is_empty() => Ok(Some(Request::Status)),
        "HELP" if rest.is_empty() => Ok(Some(Request::Help)),
        "STATUS" | "HELP" => Err(format!(
            "{} takes no arguments",
            command.to_ascii_uppercase()
        )),
        _ => Err(format!(
            "unknown command {:?}; try HELP",
            truncate(command, 32)
        )),
    }
}

/// The reply to `HELP`.
pub const HELP: &str = "HELP commands: PROP <reqid> <value> | GET <index> | STATUS | HELP";

/// Splits off the first space-separated word; the rest keeps inner spaces
/// (a value is the rest of the line).
fn split_word(line: &[u8]) -> (&[u8], &[u8]) {
    let start = line.iter().position(|b| *b != b' ').unwrap_or(line.len());
    let line = &line[start..];
    match line.iter().position(|b| *b == b' ') {
        Some(end) => (&line[..end], &line[end + 1..]),
        None => (line, &[]),
    }
}

fn parse_number(word: &[u8], what: &str) -> Result<u64, String> {
    std::str::from_utf8(word)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| {
            format!(
                "{what} must be a number from 1 to {}, got {:?}",
                u64::MAX,
                truncate(&String::from_utf8_lossy(word), 32)
            )
        })
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

/// Makes a value printable on one line: bytes that would break the line
/// protocol (newlines, other control bytes, invalid UTF-8) are escaped.
pub fn printable(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: &str) -> String {
        parse_line(line.as_bytes()).unwrap_err()
    }

    #[test]
    fn parses_the_seed_command() {
        assert_eq!(
            parse_line(b"PROP 42 hello world\r").unwrap(),
            Some(Request::Propose {
                reqid: 42,
                value: b"hello world".to_vec()
            })
        );
        assert!(parse_line(b"prop 1 x").unwrap().is_some());
    }

    #[test]
    fn parses_other_commands() {
        assert_eq!(
            parse_line(b"GET 7").unwrap(),
            Some(Request::Get { index: 7 })
        );
        assert_eq!(parse_line(b"status").unwrap(), Some(Request::Status));
        assert_eq!(parse_line(b"HELP").unwrap(), Some(Request::Help));
        assert_eq!(parse_line(b"   ").unwrap(), None);
        assert_eq!(parse_line(b"").unwrap(), None);
    }

    #[test]
    fn malformed_lines_get_a_reason() {
        assert!(err("PROP").contains("usage"));
        assert!(err("PROP 5").contains("must not be empty"));
        assert!(err("PROP 0 x").contains("non-zero"));
        assert!(err("PROP abc x").contains("reqid must be a number"));
        assert!(err("PROP -1 x").contains("reqid must be a number"));
        assert!(err("PROP 99999999999999999999999 x").contains("reqid must be a number"));
        assert!(err("GET").contains("usage"));
        assert!(err("GET 0").contains("at least 1"));
        assert!(err("GET x").contains("index must be a number"));
        assert!(err("GET 1 2").contains("usage"));
        assert!(err("FOO bar").contains("unknown command"));
        assert!(err("STATUS now").contains("no arguments"));
        assert!(parse_line(&[0xff, 0xfe, b' ', b'1'])
            .unwrap_err()
            .contains("not text"));
        let long = vec![b'a'; LINE_BYTES_MAX + 1];
        assert!(parse_line(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn values_are_printed_on_one_line() {
        assert_eq!(printable(b"a\nb\\c\x01"), "a\\nb\\\\c\\x01");
        assert_eq!(printable(b"plain text"), "plain text");
    }
}
