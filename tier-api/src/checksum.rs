//! CRC32C helpers: a fast combine, so a worker can check a push's checksum
//! from the checksums of its runs without a second pass over the bytes.
//!
//! `combine(crc(A), crc(B), len(B)) == crc(A ++ B)`. It multiplies `crc(A)`
//! by x^(8·len(B)) modulo the CRC-32C polynomial (reflected bit order), with
//! x^(2^k) precomputed: about log2(len) carry-less multiplications of 32 bits.

/// The reflected CRC-32C (Castagnoli) polynomial.
const POLY: u32 = 0x82f6_3b78;

/// a·b modulo the polynomial (reflected: bit 31 is x^0).
fn mult_mod_poly(a: u32, mut b: u32) -> u32 {
    let mut product = 0u32;
    let mut bit = 1u32 << 31;
    while bit != 0 {
        if a & bit != 0 {
            product ^= b;
        }
        bit >>= 1;
        b = if b & 1 != 0 { (b >> 1) ^ POLY } else { b >> 1 };
    }
    product
}

/// x^(2^k) modulo the polynomial, for k in 0..64.
fn powers() -> &'static [u32; 64] {
    static POWERS: std::sync::OnceLock<[u32; 64]> = std::sync::OnceLock::new();
    POWERS.get_or_init(|| {
        let mut table = [0u32; 64];
        let mut p = 1u32 << 30; // x^1
        for entry in &mut table {
            *entry = p;
            p = mult_mod_poly(p, p);
        }
        table
    })
}

/// x^(8·len) modulo the polynomial.
fn shift_of_bytes(len: usize) -> u32 {
    let table = powers();
    let mut p = 1u32 << 31; // x^0
    let mut n = len as u64;
    let mut k = 3; // 8·len = len·2^3
    while n != 0 {
        if n & 1 != 0 {
            p = mult_mod_poly(table[k], p);
        }
        n >>= 1;
        k += 1;
    }
    p
}

/// The CRC32C of `A ++ B` from `crc(A)`, `crc(B)` and `len(B)`.
pub fn crc32c_combine(crc_a: u32, crc_b: u32, len_b: usize) -> u32 {
    mult_mod_poly(shift_of_bytes(len_b), crc_a) ^ crc_b
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn combine_matches_a_checksum_of_the_concatenation(
            a in proptest::collection::vec(any::<u8>(), 0..300),
            b in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let whole = crc32c::crc32c_append(crc32c::crc32c(&a), &b);
            prop_assert_eq!(crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()), whole);
        }
    }

    #[test]
    fn combine_handles_large_lengths() {
        let a = vec![7u8; 1000];
        let b = vec![0x5au8; 3 << 20];
        let whole = crc32c::crc32c_append(crc32c::crc32c(&a), &b);
        assert_eq!(
            crc32c_combine(crc32c::crc32c(&a), crc32c::crc32c(&b), b.len()),
            whole
        );
        assert_eq!(crc32c_combine(0, 0, 0), 0);
    }
}
