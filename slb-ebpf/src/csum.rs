//! Incremental Internet checksum updates (RFC 1624). Values are read from the packet in memory
//! order; the one's-complement sum is byte-order independent as long as all operands agree.

#[inline(always)]
fn fold(mut s: u64) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Checksum after one 32-bit word of the covered data changed from `from` to `to`.
#[inline(always)]
pub fn replace4(check: u16, from: u32, to: u32) -> u16 {
    let nf = !from;
    let s = (!check) as u64
        + (nf >> 16) as u64
        + (nf & 0xffff) as u64
        + (to >> 16) as u64
        + (to & 0xffff) as u64;
    !fold(s)
}

/// Checksum after one 16-bit word changed from `from` to `to`.
#[inline(always)]
pub fn replace2(check: u16, from: u16, to: u16) -> u16 {
    let s = (!check) as u64 + (!from) as u64 + to as u64;
    !fold(s)
}

/// Checksum after an address (`words` of 32 bits) changed.
#[inline(always)]
pub fn replace_addr(mut check: u16, from: &[u32; 4], to: &[u32; 4], words: usize) -> u16 {
    let mut i = 0;
    while i < 4 {
        if i < words {
            check = replace4(check, from[i], to[i]);
        }
        i += 1;
    }
    check
}
