//! The one seeded generator of the tests (xorshift64*): every run makes the same choices. The
//! unit tests use it as `crate::test_support::rng`; the integration tests include this same file
//! from `tests/common`.

/// `Rng(state)` takes a state as it is (it must not be 0); `Rng::seeded` spreads any seed first.
pub struct Rng(pub u64);

#[allow(dead_code)] // each user takes only some of the ways to draw
impl Rng {
    pub fn seeded(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An index into a collection of `len` items (0 when it is empty).
    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    pub fn pick<'a, T: ?Sized>(&mut self, from: &[&'a T]) -> &'a T {
        from[self.index(from.len())]
    }
}
