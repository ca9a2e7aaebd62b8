//! How `tern consume` prints a record: kcat-style `--format` strings
//! (`%t %p %o %T %k %s %h`, backslash escapes), and the JSON object of
//! `--output json`. Also the backslash escapes `tern produce --delimiter`
//! understands, so both ends of a pipe spell bytes the same way.

use std::io::{self, Write};

use base64::Engine;
use serde_json::{json, Map, Value};
use tern_client::ConsumerRecord;

/// The tokens `--format` knows, as a literal for `concat!` in help texts.
macro_rules! format_tokens {
    () => {
        "%t topic, %p partition, %o offset, %T timestamp (ms since the epoch), %k key, \
         %s value, %h headers (name=value,...), %K / %S key / value length (-1 when \
         absent), %% a percent sign; escapes \\n \\t \\r \\0 \\\\ \\xHH. Nothing is \
         added: end the format with \\n for one record per line."
    };
}
pub(crate) use format_tokens;

/// The tokens `--format` knows, for error messages.
const FORMAT_TOKENS: &str = format_tokens!();

/// Decodes backslash escapes (`\n`, `\t`, `\r`, `\0`, `\\`, `\xHH`) into
/// bytes; any other character stands for itself.
pub(crate) fn unescape(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut buf = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        match chars.next() {
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('r') => out.push(b'\r'),
            Some('0') => out.push(0),
            Some('\\') => out.push(b'\\'),
            Some('x') => {
                let hex: String = chars.by_ref().take(2).collect();
                let byte = u8::from_str_radix(&hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 2)
                    .ok_or_else(|| format!("\\x needs two hex digits, got {hex:?}"))?;
                out.push(byte);
            }
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("a lone \\ at the end".to_owned()),
        }
    }
    Ok(out)
}

/// One piece of a parsed format string.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Topic,
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
    KeyLength,
    ValueLength,
}

/// A parsed `--format` string. As in kcat, nothing is added: end it with
/// `\n` to get one record per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Format {
    pieces: Vec<Piece>,
}

impl Format {
    /// Parses `%`-tokens and backslash escapes; an unknown token is an
    /// error that lists the known ones.
    pub(crate) fn parse(s: &str) -> Result<Format, String> {
        let bytes = unescape(s)?;
        let mut pieces = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                literal.push(bytes[i]);
                i += 1;
                continue;
            }
            let token = match bytes.get(i + 1) {
                Some(b'%') => {
                    literal.push(b'%');
                    i += 2;
                    continue;
                }
                Some(b't') => Piece::Topic,
                Some(b'p') => Piece::Partition,
                Some(b'o') => Piece::Offset,
                Some(b'T') => Piece::Timestamp,
                Some(b'k') => Piece::Key,
                Some(b's') => Piece::Value,
                Some(b'h') => Piece::Headers,
                Some(b'K') => Piece::KeyLength,
                Some(b'S') => Piece::ValueLength,
                Some(&other) => {
                    return Err(format!(
                        "unknown token %{} (known: {FORMAT_TOKENS})",
                        char::from(other)
                    ))
                }
                None => return Err("a lone % at the end (write %% for a percent sign)".into()),
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(token);
            i += 2;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Format { pieces })
    }

    /// Writes one record.
    pub(crate) fn write(&self, out: &mut impl Write, r: &ConsumerRecord) -> io::Result<()> {
        let length = |b: &Option<bytes::Bytes>| b.as_ref().map_or(-1, |b| b.len() as i64);
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.write_all(l)?,
                Piece::Topic => out.write_all(r.topic.as_bytes())?,
                Piece::Partition => write!(out, "{}", r.partition)?,
                Piece::Offset => write!(out, "{}", r.offset)?,
                Piece::Timestamp => write!(out, "{}", r.timestamp_ms)?,
                Piece::Key => out.write_all(r.key.as_deref().unwrap_or_default())?,
                Piece::Value => out.write_all(r.value.as_deref().unwrap_or_default())?,
                Piece::Headers => {
                    for (i, (name, value)) in r.headers.iter().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(name.as_bytes())?;
                        out.write_all(b"=")?;
                        out.write_all(value)?;
                    }
                }
                Piece::KeyLength => write!(out, "{}", length(&r.key))?,
                Piece::ValueLength => write!(out, "{}", length(&r.value))?,
            }
        }
        Ok(())
    }
}

/// Puts `bytes` into `object` under `name` as a string when it is UTF-8,
/// else under `<name>_base64` (JSON strings cannot carry arbitrary bytes);
/// an absent value is `null` under `name`.
fn put_bytes(object: &mut Map<String, Value>, name: &str, bytes: Option<&[u8]>) {
    match bytes.map(std::str::from_utf8) {
        None => {
            object.insert(name.to_owned(), Value::Null);
        }
        Some(Ok(s)) => {
            object.insert(name.to_owned(), Value::from(s));
        }
        Some(Err(_)) => {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(bytes.unwrap_or_default());
            object.insert(format!("{name}_base64"), Value::from(encoded));
        }
    }
}

/// A consumed record as one JSON object: `topic`, `partition`, `offset`,
/// `timestamp_ms`, `key`, `value` (strings, `null` when absent, or
/// `key_base64`/`value_base64` when not UTF-8) and `headers` (a list of
/// `{"name", "value"}` objects, same rule for the value).
pub(crate) fn record_json(r: &ConsumerRecord) -> Value {
    let mut object = Map::new();
    object.insert("topic".into(), json!(r.topic));
    object.insert("partition".into(), json!(r.partition));
    object.insert("offset".into(), json!(r.offset));
    object.insert("timestamp_ms".into(), json!(r.timestamp_ms));
    put_bytes(&mut object, "key", r.key.as_deref());
    put_bytes(&mut object, "value", r.value.as_deref());
    let headers: Vec<Value> = r
        .headers
        .iter()
        .map(|(name, value)| {
            let mut h = Map::new();
            h.insert("name".into(), json!(name));
            put_bytes(&mut h, "value", Some(value));
            Value::Object(h)
        })
        .collect();
    object.insert("headers".into(), Value::Array(headers));
    Value::Object(object)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record() -> ConsumerRecord {
        ConsumerRecord {
            topic: "orders".into(),
            partition: 3,
            offset: 42,
            timestamp_ms: 1_700_000_000_123,
            key: Some(Bytes::from_static(b"alice")),
            value: Some(Bytes::from_static(b"first order")),
            headers: vec![
                ("trace".into(), Bytes::from_static(b"abc")),
                ("src".into(), Bytes::from_static(b"web")),
            ],
        }
    }

    fn render(format: &str, r: &ConsumerRecord) -> String {
        let mut out = Vec::new();
        Format::parse(format).unwrap().write(&mut out, r).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn every_token_renders_its_field() {
        assert_eq!(
            render("%t %p %o %T %k %s %h %K %S\\n", &record()),
            "orders 3 42 1700000000123 alice first order trace=abc,src=web 5 11\n"
        );
    }

    #[test]
    fn literals_escapes_and_percent_pass_through() {
        assert_eq!(
            render("100%% [%k]\\t%s", &record()),
            "100% [alice]\tfirst order"
        );
        assert_eq!(render("%s\\0", &record()), "first order\0");
        assert_eq!(render("\\x41%o", &record()), "A42");
        assert_eq!(render("ünïcode %p", &record()), "ünïcode 3");
    }

    #[test]
    fn absent_key_and_value_print_empty_with_length_minus_one() {
        let mut r = record();
        r.key = None;
        r.value = None;
        r.headers.clear();
        assert_eq!(render("[%k][%s][%h] %K %S", &r), "[][][] -1 -1");
    }

    #[test]
    fn unknown_tokens_and_dangling_escapes_are_refused() {
        let err = Format::parse("%x").unwrap_err();
        assert!(
            err.contains("unknown token %x") && err.contains("%t topic"),
            "{err}"
        );
        assert!(Format::parse("value %").unwrap_err().contains("lone %"));
        assert!(Format::parse("\\q").unwrap_err().contains("unknown escape"));
        assert!(Format::parse("tail \\").unwrap_err().contains("lone \\"));
        assert!(Format::parse("\\x4")
            .unwrap_err()
            .contains("two hex digits"));
    }

    #[test]
    fn json_carries_text_as_strings_and_binary_as_base64() {
        let v = record_json(&record());
        assert_eq!(v["topic"], "orders");
        assert_eq!(v["partition"], 3);
        assert_eq!(v["offset"], 42);
        assert_eq!(v["timestamp_ms"], 1_700_000_000_123i64);
        assert_eq!(v["key"], "alice");
        assert_eq!(v["value"], "first order");
        assert_eq!(v["headers"][0]["name"], "trace");
        assert_eq!(v["headers"][0]["value"], "abc");
        let mut r = record();
        r.key = None;
        r.value = Some(Bytes::from_static(&[0xff, 0x00, 0x80]));
        let v = record_json(&r);
        assert!(v["key"].is_null());
        assert!(v.get("value").is_none());
        assert_eq!(v["value_base64"], "/wCA");
    }
}
