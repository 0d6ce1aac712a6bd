//! Cached values: small `Copy` types that encode themselves into a few 64-bit words, so a cache
//! entry can store them in atomics and lookups stay lock-free without `unsafe`.

/// The most words a cached value may occupy.
pub const MAX_VALUE_WORDS: usize = 8;

/// A value a [`Cache`](crate::Cache) can hold.
///
/// `encode` and `decode` must round-trip: `decode(&encode(v)) == v`. `decode` is only ever given
/// words `encode` produced (a lookup never returns a torn entry), so it need not validate.
pub trait Value: Copy + Send + Sync + 'static {
    /// How many words the value occupies (1..=[`MAX_VALUE_WORDS`]).
    const WORDS: usize;
    /// Writes the value into `out` (exactly `WORDS` long).
    fn encode(&self, out: &mut [u64]);
    /// Reads a value back from `words` (exactly `WORDS` long).
    fn decode(words: &[u64]) -> Self;
}

impl Value for u64 {
    const WORDS: usize = 1;
    fn encode(&self, out: &mut [u64]) {
        out[0] = *self;
    }
    fn decode(words: &[u64]) -> Self {
        words[0]
    }
}

/// Raw entry words: a context entry (VT-d spec rev 4.1, §9.4: 128 bits, `[u64; 2]`), a
/// scalable-mode PASID entry (§9.6: 512 bits, `[u64; 8]`) or an AMD-Vi DTE (AMD IOMMU spec rev
/// 3.08, §2.2.2.1: 256 bits, `[u64; 4]`), cached as read from memory.
impl<const N: usize> Value for [u64; N] {
    const WORDS: usize = N;
    fn encode(&self, out: &mut [u64]) {
        out.copy_from_slice(self);
    }
    fn decode(words: &[u64]) -> Self {
        let mut v = [0u64; N];
        v.copy_from_slice(words);
        v
    }
}

/// Access permissions of a cached translation: the walkers' permission set.
pub use pagewalk::Perms;

/// A cached leaf translation (an IOTLB entry's data).
///
/// Encoded in two words: word 0 the output address; word 1 bits 7:0 the page shift, bits 11:8
/// the permissions (R, W, X, U), bits 63:32 the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Translation {
    /// Output (host physical or guest physical, per stage) base address of the page.
    pub output: u64,
    /// log2 of the page size in bytes (12, 21, 30, ...).
    pub page_shift: u8,
    /// Permissions the walk granted.
    pub perms: Perms,
    /// Model-defined flags (snoop, memory type, global, dirty-tracking...), 32 bits.
    pub flags: u32,
}

impl Value for Translation {
    const WORDS: usize = 2;
    fn encode(&self, out: &mut [u64]) {
        out[0] = self.output;
        out[1] = u64::from(self.page_shift)
            | (u64::from(self.perms.bits()) << 8)
            | (u64::from(self.flags) << 32);
    }
    fn decode(words: &[u64]) -> Self {
        Translation {
            output: words[0],
            page_shift: (words[1] & 0xff) as u8,
            perms: Perms::from_bits_truncate(((words[1] >> 8) & 0xf) as u8),
            flags: (words[1] >> 32) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_encodes_to_hand_built_words() {
        let t = Translation {
            output: 0x1_2340_0000,
            page_shift: 21,
            perms: Perms::R | Perms::W | Perms::U,
            flags: 0xdead_beef,
        };
        let mut w = [0u64; 2];
        t.encode(&mut w);
        assert_eq!(
            w,
            [0x1_2340_0000, 21 | (0b01011 << 8) | (0xdead_beef << 32)]
        );
        assert_eq!(Translation::decode(&w), t);
    }

    #[test]
    fn arrays_round_trip() {
        let v = [1u64, 2, 3, 4];
        let mut w = [0u64; 4];
        v.encode(&mut w);
        assert_eq!(<[u64; 4]>::decode(&w), v);
        let mut one = [0u64; 1];
        7u64.encode(&mut one);
        assert_eq!(u64::decode(&one), 7);
    }

    #[test]
    fn perms_contain() {
        let rw = Perms::R | Perms::W;
        assert!(rw.contains(Perms::R));
        assert!(!rw.contains(Perms::X));
        assert_eq!(Perms::from_bits_truncate(0xff).bits(), 0xf);
    }
}
