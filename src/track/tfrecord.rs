//! TFRecord framing, the container of TensorBoard's event files: each record is
//!
//! ```text
//! u64 LE   length of the data
//! u32 LE   masked CRC-32C of those 8 length bytes
//! [u8]     data (here: one serialized `Event`)
//! u32 LE   masked CRC-32C of the data
//! ```
//!
//! The length has its own checksum so that a reader can tell a damaged length from a record
//! still being written.

use super::crc::masked_crc32c;

/// One record, framed: the bytes to append to a file in a single write.
pub fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

/// What [`read`] found: the records up to the first one that is cut short or fails its
/// checksum, and why it stopped there (`None`: the bytes ended at a record boundary).
#[derive(Debug)]
pub struct Records<'a> {
    pub records: Vec<&'a [u8]>,
    pub stopped: Option<String>,
}

/// The records of a TFRecord file's bytes, every checksum verified.
pub fn read(mut bytes: &[u8]) -> Records<'_> {
    let mut records = Vec::new();
    let mut offset = 0usize;
    let stopped = loop {
        if bytes.is_empty() {
            break None;
        }
        match one(bytes) {
            Ok((data, used)) => {
                records.push(data);
                bytes = &bytes[used..];
                offset += used;
            }
            Err(why) => break Some(format!("record at byte {offset}: {why}")),
        }
    };
    Records { records, stopped }
}

/// The first record of `bytes` and the bytes it took.
fn one(bytes: &[u8]) -> Result<(&[u8], usize), &'static str> {
    let word = |at: usize| -> Option<u32> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let len_bytes = bytes.get(..8).ok_or("cut short in its length")?;
    if word(8) != Some(masked_crc32c(len_bytes)) {
        return Err("length checksum mismatch (or cut short)");
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(len_bytes);
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(|_| "length too large")?;
    let end = 12usize.checked_add(len).ok_or("length too large")?;
    let data = bytes.get(12..end).ok_or("cut short in its data")?;
    match word(end) {
        None => Err("cut short in its data checksum"),
        Some(c) if c != masked_crc32c(data) => Err("data checksum mismatch"),
        Some(_) => Ok((data, end + 4)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::crc::masked_crc32c;

    /// A frame is length, its masked CRC, the data, its masked CRC; frames read back in order
    /// and the reader stops at a cut-short or corrupted record, saying where.
    #[test]
    fn frames_read_back_and_damage_is_found() {
        let a = frame(b"hello");
        assert_eq!(a.len(), 8 + 4 + 5 + 4);
        assert_eq!(&a[..8], &5u64.to_le_bytes());
        assert_eq!(&a[8..12], &masked_crc32c(&5u64.to_le_bytes()).to_le_bytes());
        assert_eq!(&a[12..17], b"hello");
        assert_eq!(&a[17..], &masked_crc32c(b"hello").to_le_bytes());

        let mut file = [frame(b""), a.clone(), frame(&[7u8; 300])].concat();
        let r = read(&file);
        assert!(r.stopped.is_none(), "{:?}", r.stopped);
        assert_eq!(r.records, vec![&b""[..], b"hello", &[7u8; 300][..]]);

        // A record cut short (a writer killed mid-write) ends the read there.
        let cut = &file[..file.len() - 3];
        let r = read(cut);
        assert_eq!(r.records.len(), 2);
        assert!(r.stopped.unwrap().contains("byte 37"));

        // A flipped data byte fails its checksum.
        file[16 + 12 + 1] ^= 1; // the "e" of "hello"
        let r = read(&file);
        assert_eq!(r.records.len(), 1);
        assert!(r.stopped.unwrap().contains("data checksum"));
    }
}
