//! The few protobuf wire-format pieces TensorBoard's messages need: varints, length-delimited
//! fields (strings, bytes, nested messages), fixed64 doubles and fixed32 floats. Encoding is a
//! builder over field numbers; decoding walks a message's fields one by one (enough to read back
//! the event files lmtrain itself wrote). No schema compiler, no generated code: each message
//! is spelled out where it is built, next to the `.proto` field numbers it uses.

use anyhow::{bail, Result};

/// Wire types (protobuf encoding, "Message Structure").
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// A message being encoded: fields appended in the order the builder is called.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message(Vec<u8>);

impl Message {
    pub fn new() -> Self {
        Self::default()
    }

    /// An `int32`/`int64`/`uint64`/`bool`/enum field. A negative `int64` would be cast to its
    /// 10-byte two's-complement varint by the caller; lmtrain writes none.
    pub fn varint(mut self, field: u32, v: u64) -> Self {
        self.key(field, VARINT);
        put_varint(&mut self.0, v);
        self
    }

    /// A `double` field.
    pub fn double(mut self, field: u32, v: f64) -> Self {
        self.key(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `float` field.
    pub fn float(mut self, field: u32, v: f32) -> Self {
        self.key(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A `bytes` field.
    pub fn bytes(mut self, field: u32, v: &[u8]) -> Self {
        self.key(field, LEN);
        put_varint(&mut self.0, v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    /// A `string` field.
    pub fn string(self, field: u32, v: &str) -> Self {
        self.bytes(field, v.as_bytes())
    }

    /// A nested message field (one element of a `repeated` field: call once per element).
    pub fn message(self, field: u32, m: &Message) -> Self {
        self.bytes(field, &m.0)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
}

/// Appends `v` as a base-128 varint, least significant group first.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A varint at the start of `bytes`, and the bytes it took.
pub fn get_varint(bytes: &[u8]) -> Result<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((v, i + 1));
        }
    }
    bail!("truncated or overlong varint")
}

/// One decoded field's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Varint(u64),
    Fixed64(u64),
    Len(&'a [u8]),
    Fixed32(u32),
}

/// Every `(field number, value)` of an encoded message, in order; an error for bytes that are
/// not a message (a wire type this reader does not know, a field running past the end).
pub fn fields(mut bytes: &[u8]) -> Result<Vec<(u32, Value<'_>)>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (key, n) = get_varint(bytes)?;
        bytes = &bytes[n..];
        let field = (key >> 3) as u32;
        let (value, used) = match (key & 7) as u8 {
            VARINT => get_varint(bytes).map(|(v, n)| (Value::Varint(v), n))?,
            FIXED64 => (Value::Fixed64(u64::from_le_bytes(take(bytes)?)), 8),
            FIXED32 => (Value::Fixed32(u32::from_le_bytes(take(bytes)?)), 4),
            LEN => {
                let (len, n) = get_varint(bytes)?;
                let end = usize::try_from(len).ok().and_then(|l| l.checked_add(n));
                match end {
                    Some(end) if end <= bytes.len() => (Value::Len(&bytes[n..end]), end),
                    _ => bail!("field {field} runs past the end of its message"),
                }
            }
            w => bail!("field {field}: wire type {w} is not read here"),
        };
        out.push((field, value));
        bytes = &bytes[used..];
    }
    Ok(out)
}

fn take<const N: usize>(bytes: &[u8]) -> Result<[u8; N]> {
    match bytes.get(..N) {
        Some(b) => Ok(b.try_into()?),
        None => bail!("a fixed-width field runs past the end of its message"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protobuf documentation's examples: 1 is one byte, 150 is `96 01`; the largest u64
    /// takes ten bytes; each reads back.
    #[test]
    fn varints_encode_as_documented_and_read_back() {
        let cases: [(u64, &[u8]); 4] = [
            (0, &[0x00]),
            (1, &[0x01]),
            (150, &[0x96, 0x01]),
            (300, &[0xAC, 0x02]),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out, want, "{v}");
            assert_eq!(get_varint(&out).unwrap(), (v, want.len()));
        }
        let mut max = Vec::new();
        put_varint(&mut max, u64::MAX);
        assert_eq!(max.len(), 10);
        assert_eq!(get_varint(&max).unwrap(), (u64::MAX, 10));
        assert!(get_varint(&[0x80, 0x80]).is_err(), "truncated");
    }

    /// `Test1 { a: 150 }` is `08 96 01`, `Test2 { b: "testing" }` is `12 07 74 65 73 74 69 6e
    /// 67` (the documentation's examples); doubles and floats are little-endian; every field
    /// reads back with its number.
    #[test]
    fn messages_encode_as_documented_and_read_back() {
        assert_eq!(
            Message::new().varint(1, 150).into_bytes(),
            [0x08, 0x96, 0x01]
        );
        let s = Message::new().string(2, "testing").into_bytes();
        assert_eq!(s, b"\x12\x07testing");
        let inner = Message::new().float(2, 1.5);
        let m = Message::new()
            .double(1, 0.25)
            .message(5, &inner)
            .varint(2, 7);
        let bytes = m.as_bytes();
        assert_eq!(
            &bytes[..9],
            &[&[0x09u8][..], &0.25f64.to_le_bytes()].concat()[..]
        );
        let f = fields(bytes).unwrap();
        assert_eq!(f[0], (1, Value::Fixed64(0.25f64.to_bits())));
        assert_eq!(f[1], (5, Value::Len(inner.as_bytes())));
        assert_eq!(f[2], (2, Value::Varint(7)));
        let nested = fields(inner.as_bytes()).unwrap();
        assert_eq!(nested, [(2, Value::Fixed32(1.5f32.to_bits()))]);
        assert!(
            fields(&[0x12, 0x05, b'a']).is_err(),
            "a length past the end"
        );
    }
}
