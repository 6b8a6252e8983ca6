//! Decodes the Kubernetes protobuf wire format (`application/vnd.kubernetes.protobuf`)
//! into the JSON object the API server already understands, so protobuf
//! clients such as kubectl can create objects without a second code path.
//!
//! Only the kinds listed in [`schema`] are understood; anything else is
//! rejected by name so the client can fall back to JSON. The input is
//! untrusted: every length is checked against the bytes that remain, and
//! nesting is bounded by the (acyclic) schema tables, not by the input.

mod schema;

use schema::{Field, Kind, Schema};
use serde_json::{Map, Value};

const MAGIC: &[u8] = b"k8s\0";

/// Longest apiVersion/kind echoed back in an error, so a hostile body cannot
/// make the error response arbitrarily large.
const MAX_ECHO: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a Kubernetes protobuf body: missing k8s\\0 prefix")]
    MissingPrefix,
    #[error("truncated varint at byte {0}")]
    TruncatedVarint(usize),
    #[error("varint longer than 10 bytes at byte {0}")]
    VarintTooLong(usize),
    #[error("truncated {what} at byte {at}: needs {needed} bytes, only {left} left")]
    Truncated {
        what: &'static str,
        at: usize,
        needed: u64,
        left: usize,
    },
    #[error("invalid protobuf field number {number} at byte {at}")]
    InvalidFieldNumber { number: u64, at: usize },
    #[error("unsupported protobuf wire type {wire} at byte {at}")]
    UnsupportedWireType { wire: u8, at: usize },
    #[error("field {field} at byte {at} has wire type {found}, expected {expected}")]
    WrongWireType {
        field: &'static str,
        at: usize,
        found: u8,
        expected: u8,
    },
    #[error("field {field} at byte {at} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str, at: usize },
    #[error(
        "field {field} at byte {at} has IntOrString type {found}, expected 0 (int) or 1 (string)"
    )]
    InvalidIntOrString {
        field: &'static str,
        at: usize,
        found: i64,
    },
    #[error("field {field} at byte {at} holds a time outside the years 0000-9999")]
    TimeOutOfRange { field: &'static str, at: usize },
    #[error("protobuf body has no apiVersion and kind in its typeMeta")]
    MissingTypeMeta,
    #[error("unsupported kind {api_version} {kind} in protobuf; send JSON or YAML")]
    UnsupportedKind { api_version: String, kind: String },
    #[error("unsupported protobuf content encoding {0:?}; send the object unencoded")]
    UnsupportedEncoding(String),
}

/// Decodes a `k8s\0`-prefixed `runtime.Unknown` envelope into the JSON object
/// for the kind named in its typeMeta, with `apiVersion` and `kind` set.
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body.strip_prefix(MAGIC).ok_or(DecodeError::MissingPrefix)?;
    let envelope = Envelope::read(Reader {
        buf: rest,
        pos: 0,
        base: MAGIC.len(),
    })?;
    if envelope.api_version.is_empty() || envelope.kind.is_empty() {
        return Err(DecodeError::MissingTypeMeta);
    }
    let Some(schema) = schema::for_kind(envelope.api_version, envelope.kind) else {
        return Err(DecodeError::UnsupportedKind {
            api_version: envelope.api_version.chars().take(MAX_ECHO).collect(),
            kind: envelope.kind.chars().take(MAX_ECHO).collect(),
        });
    };
    // The upstream server ignores contentType, but a compressed raw would only
    // surface as a confusing parse error further down.
    if !envelope.content_encoding.is_empty() {
        let encoding = envelope.content_encoding.chars().take(MAX_ECHO).collect();
        return Err(DecodeError::UnsupportedEncoding(encoding));
    }
    let mut object = Map::new();
    object.insert("apiVersion".into(), envelope.api_version.into());
    object.insert("kind".into(), envelope.kind.into());
    if let Some(raw) = envelope.raw {
        decode_message(raw, schema, &mut object)?;
    }
    Ok(Value::Object(object))
}

#[derive(Default)]
struct Envelope<'a> {
    api_version: &'a str,
    kind: &'a str,
    raw: Option<Reader<'a>>,
    content_encoding: &'a str,
}

impl<'a> Envelope<'a> {
    fn read(mut r: Reader<'a>) -> Result<Self, DecodeError> {
        let mut env = Envelope::default();
        while let Some((number, wire, at)) = r.next_field()? {
            match number {
                1 => {
                    let mut type_meta = expect_len("typeMeta", wire, at)?;
                    while let Some((number, wire, at)) = type_meta.next_field()? {
                        match number {
                            1 => env.api_version = read_str("apiVersion", wire, at)?,
                            2 => env.kind = read_str("kind", wire, at)?,
                            _ => {}
                        }
                    }
                }
                2 => env.raw = Some(expect_len("raw", wire, at)?),
                3 => env.content_encoding = read_str("contentEncoding", wire, at)?,
                4 => {
                    read_str("contentType", wire, at)?;
                }
                _ => {}
            }
        }
        Ok(env)
    }
}

/// A cursor over one message; `base` is where `buf` starts in the whole body,
/// so errors can point at absolute byte offsets.
#[derive(Clone, Copy)]
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Len(Reader<'a>),
    Fixed32,
}

impl Wire<'_> {
    fn number(&self) -> u8 {
        match self {
            Wire::Varint(_) => 0,
            Wire::Fixed64 => 1,
            Wire::Len(_) => 2,
            Wire::Fixed32 => 5,
        }
    }
}

impl<'a> Reader<'a> {
    fn offset(&self) -> usize {
        self.base + self.pos
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let start = self.offset();
        let mut value = 0u64;
        for i in 0..10 {
            let Some(&byte) = self.buf.get(self.pos) else {
                return Err(DecodeError::TruncatedVarint(start));
            };
            self.pos += 1;
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::VarintTooLong(start))
    }

    fn take(&mut self, what: &'static str, needed: u64) -> Result<Reader<'a>, DecodeError> {
        let left = self.buf.len() - self.pos;
        let at = self.offset();
        match usize::try_from(needed) {
            Ok(n) if n <= left => {
                let sub = Reader {
                    buf: &self.buf[self.pos..self.pos + n],
                    pos: 0,
                    base: at,
                };
                self.pos += n;
                Ok(sub)
            }
            _ => Err(DecodeError::Truncated {
                what,
                at,
                needed,
                left,
            }),
        }
    }

    /// The next field's number, payload and the offset of its tag, or `None`
    /// at the end of the message.
    fn next_field(&mut self) -> Result<Option<(u32, Wire<'a>, usize)>, DecodeError> {
        if self.is_empty() {
            return Ok(None);
        }
        let at = self.offset();
        let tag = self.varint()?;
        let number = tag >> 3;
        if number == 0 || number > (1 << 29) - 1 {
            return Err(DecodeError::InvalidFieldNumber { number, at });
        }
        let wire = match tag & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take("64-bit value", 8)?;
                Wire::Fixed64
            }
            2 => {
                let len = self.varint()?;
                Wire::Len(self.take("length-delimited field", len)?)
            }
            5 => {
                self.take("32-bit value", 4)?;
                Wire::Fixed32
            }
            // Groups (3, 4) are long deprecated and never produced by Kubernetes.
            other => {
                return Err(DecodeError::UnsupportedWireType {
                    wire: other as u8,
                    at,
                })
            }
        };
        Ok(Some((number as u32, wire, at)))
    }
}

fn expect_len<'a>(
    field: &'static str,
    wire: Wire<'a>,
    at: usize,
) -> Result<Reader<'a>, DecodeError> {
    match wire {
        Wire::Len(r) => Ok(r),
        other => Err(DecodeError::WrongWireType {
            field,
            at,
            found: other.number(),
            expected: 2,
        }),
    }
}

fn expect_varint(field: &'static str, wire: &Wire<'_>, at: usize) -> Result<u64, DecodeError> {
    match wire {
        Wire::Varint(v) => Ok(*v),
        other => Err(DecodeError::WrongWireType {
            field,
            at,
            found: other.number(),
            expected: 0,
        }),
    }
}

fn read_str<'a>(field: &'static str, wire: Wire<'a>, at: usize) -> Result<&'a str, DecodeError> {
    let r = expect_len(field, wire, at)?;
    std::str::from_utf8(r.buf).map_err(|_| DecodeError::InvalidUtf8 { field, at })
}

fn decode_message(
    mut r: Reader<'_>,
    schema: &Schema,
    out: &mut Map<String, Value>,
) -> Result<(), DecodeError> {
    while let Some((number, wire, at)) = r.next_field()? {
        let Some(field) = schema.field(number) else {
            continue;
        };
        let name = field.name;
        let value = match field.kind {
            Kind::Message(inner) => {
                let sub = expect_len(name, wire, at)?;
                if field.repeated {
                    let mut object = Map::new();
                    decode_message(sub, inner, &mut object)?;
                    push(out, name, Value::Object(object));
                } else {
                    // Repeated occurrences of a singular message merge, as in protobuf.
                    let slot = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(object) = slot {
                        decode_message(sub, inner, object)?;
                    }
                }
                continue;
            }
            Kind::Inline(inner) => {
                decode_message(expect_len(name, wire, at)?, inner, out)?;
                continue;
            }
            Kind::StringMap | Kind::BytesMap | Kind::QuantityMap => {
                let (key, value) = map_entry(field, expect_len(name, wire, at)?)?;
                if let Value::Object(map) =
                    out.entry(name).or_insert_with(|| Value::Object(Map::new()))
                {
                    map.insert(key, value);
                }
                continue;
            }
            // Accept packed encoding too; proto2 writers may emit either form.
            Kind::Int32 | Kind::Int64 | Kind::Bool
                if field.repeated && matches!(wire, Wire::Len(_)) =>
            {
                let mut packed = expect_len(name, wire, at)?;
                while !packed.is_empty() {
                    push(out, name, scalar(field.kind, packed.varint()?));
                }
                continue;
            }
            Kind::Int32 | Kind::Int64 | Kind::Bool => {
                Some(scalar(field.kind, expect_varint(name, &wire, at)?))
            }
            Kind::Str => Some(read_str(name, wire, at)?.into()),
            Kind::Quantity => Some(quantity(field, expect_len(name, wire, at)?)?.into()),
            Kind::IntOrString => Some(int_or_string(field, expect_len(name, wire, at)?)?),
            Kind::Time => time(field, expect_len(name, wire, at)?, at)?,
        };
        match value {
            Some(v) if field.repeated => push(out, name, v),
            None if field.repeated => {}
            Some(v) if field.keep_zero || !is_zero(&v) => {
                out.insert(name.into(), v);
            }
            // A later zero overrides an earlier value, as protobuf's last-wins does.
            _ => {
                out.remove(name);
            }
        }
    }
    Ok(())
}

fn push(out: &mut Map<String, Value>, name: &str, value: Value) {
    if let Value::Array(items) = out.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
        items.push(value);
    }
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_i64() == Some(0),
        Value::Bool(b) => !b,
        _ => false,
    }
}

/// Protobuf sign-extends negative int32s to 64 bits, so truncation recovers them.
fn scalar(kind: Kind, v: u64) -> Value {
    match kind {
        Kind::Int32 => Value::from(v as i32),
        Kind::Bool => Value::Bool(v != 0),
        _ => Value::from(v as i64),
    }
}

/// Map entries are messages with key = 1 and value = 2; either may be absent
/// when it is the zero value.
fn map_entry(field: &Field, mut r: Reader<'_>) -> Result<(String, Value), DecodeError> {
    let mut key = "";
    let mut value = match field.kind {
        Kind::QuantityMap => Value::from("0"),
        _ => Value::from(""),
    };
    while let Some((number, wire, at)) = r.next_field()? {
        match number {
            1 => key = read_str(field.name, wire, at)?,
            2 => {
                value = match field.kind {
                    Kind::BytesMap => base64(expect_len(field.name, wire, at)?.buf).into(),
                    Kind::QuantityMap => quantity(field, expect_len(field.name, wire, at)?)?.into(),
                    _ => read_str(field.name, wire, at)?.into(),
                }
            }
            _ => {}
        }
    }
    Ok((key.to_owned(), value))
}

fn quantity<'a>(field: &Field, mut r: Reader<'a>) -> Result<&'a str, DecodeError> {
    let mut text = "0";
    while let Some((number, wire, at)) = r.next_field()? {
        if number == 1 {
            text = read_str(field.name, wire, at)?;
        }
    }
    Ok(text)
}

fn int_or_string(field: &Field, mut r: Reader<'_>) -> Result<Value, DecodeError> {
    let (mut kind, mut int_val, mut str_val, mut kind_at) = (0i64, 0i32, "", r.base);
    while let Some((number, wire, at)) = r.next_field()? {
        match number {
            1 => (kind, kind_at) = (expect_varint(field.name, &wire, at)? as i64, at),
            2 => int_val = expect_varint(field.name, &wire, at)? as i32,
            3 => str_val = read_str(field.name, wire, at)?,
            _ => {}
        }
    }
    match kind {
        0 => Ok(int_val.into()),
        1 => Ok(str_val.into()),
        found => Err(DecodeError::InvalidIntOrString {
            field: field.name,
            at: kind_at,
            found,
        }),
    }
}

/// Kubernetes keeps only whole seconds in JSON, so nanos are dropped here too.
fn time(field: &Field, mut r: Reader<'_>, field_at: usize) -> Result<Option<Value>, DecodeError> {
    if r.is_empty() {
        return Ok(None);
    }
    let mut seconds = 0i64;
    while let Some((number, wire, at)) = r.next_field()? {
        if number == 1 {
            seconds = expect_varint(field.name, &wire, at)? as i64;
        }
    }
    let out_of_range = DecodeError::TimeOutOfRange {
        field: field.name,
        at: field_at,
    };
    // 0000-01-01T00:00:00Z ..= 9999-12-31T23:59:59Z, the range RFC 3339 can spell.
    if !(-62_167_219_200..=253_402_300_799).contains(&seconds) {
        return Err(out_of_range);
    }
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    Ok(Some(Value::from(format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// algorithm, which works in 400-year eras to avoid leap-year tables).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Standard-alphabet, padded base64: what Go's encoding/json uses for []byte.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
