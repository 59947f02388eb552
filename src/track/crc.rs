//! CRC-32C (Castagnoli), the checksum TFRecord frames carry, and TFRecord's masking of it.
//! Written here (a 256-entry table) rather than taken from a crate: it is a dozen lines.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// One table entry per byte value: the CRC of that byte alone, folded eight bits at a time.
const TABLE: [u32; 256] = table();

const fn table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

/// CRC-32C of `bytes` (initial value and final xor all ones, as every CRC-32C user does).
pub fn crc32c(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// TFRecord's masked CRC: rotated and offset so that a CRC stored inside checksummed data does
/// not make the outer checksum degenerate (TensorFlow's `crc32c::Mask`).
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c(bytes);
    // `((crc >> 15) | (crc << 17)) + 0xa282ead8` in TensorFlow's spelling.
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The check values of the CRC catalogue and RFC 3720 (iSCSI), appendix B.4.
    #[test]
    fn crc32c_matches_the_published_vectors() {
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    /// The values `tensorboard.compat.tensorflow_stub.pywrap_tensorflow.masked_crc32c` gives
    /// (tensorboard 2.20.0): of "123456789", and of the 8 length bytes of a 24-byte record.
    #[test]
    fn the_mask_is_tensorflows() {
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224B_7FA3);
    }
}
