//! Test support: deterministic mutation fuzzing for the parsers of user input (xattr values,
//! the replication config, keys). Stable Rust has no libFuzzer, so each parser's tests feed
//! it tens of thousands of mutants of valid and edge-case inputs from a fixed seed: any panic
//! is a failing test that reproduces, and the properties checked (errors, round trips) are
//! the parser's own.

/// A xorshift generator: reproducible, and no dependency for ten lines.
pub struct Mutator(u64);

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Mutator(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    pub fn pick<'a, T>(&mut self, from: &'a [T]) -> &'a T {
        &from[self.below(from.len())]
    }

    /// `n` inputs for a parser: each corpus entry as it is, then mutants of them.
    pub fn inputs<'a>(
        seed: u64,
        corpus: &'a [&'a str],
        alphabet: &'a str,
        n: usize,
    ) -> impl Iterator<Item = String> + 'a {
        let mut m = Mutator::new(seed);
        let exact = corpus.iter().map(|s| s.to_string());
        let mutants = std::iter::repeat_with(move || {
            let base = *m.pick(corpus);
            m.mutate(base, corpus, alphabet)
        });
        exact.chain(mutants).take(n)
    }

    /// `base` with up to four edits: a character replaced, inserted or removed, a splice of
    /// another corpus entry, or a cut. Characters come from `alphabet` and a few hostile ones.
    pub fn mutate(&mut self, base: &str, corpus: &[&str], alphabet: &str) -> String {
        let mut s: Vec<char> = base.chars().collect();
        let mut chars: Vec<char> = alphabet.chars().collect();
        chars.extend(['\0', '\n', '%', '"', '\\', 'é', '\u{10FFFF}', ' ', '-', ':']);
        for _ in 0..=self.below(4) {
            let at = self.below(s.len() + 1);
            match self.below(5) {
                0 if !s.is_empty() => {
                    let c = *self.pick(&chars);
                    let last = s.len() - 1;
                    s[at.min(last)] = c;
                }
                1 => s.insert(at, *self.pick(&chars)),
                2 if !s.is_empty() => {
                    s.remove(at.min(s.len() - 1));
                }
                3 => {
                    let other: Vec<char> = self.pick(corpus).chars().collect();
                    let from = self.below(other.len() + 1);
                    s.splice(at..at, other[from..].iter().copied());
                }
                _ => s.truncate(at),
            }
        }
        s.into_iter().collect()
    }
}
