//! Weighted Maglev tables for the consistent-hash schedulers `sch`, `tch` and `qch` (B5.5, B5.8).
//!
//! The XDP program only indexes a table with a flow hash; everything about which backend owns
//! which entry is decided here, and the decision is frozen: for the same members the table is
//! byte-identical in every process, on every host and with every Rust version. Nothing below
//! uses randomly seeded hashing, floating point or platform-sized arithmetic.
//!
//! # Recipe (Maglev paper, §3.4)
//!
//! For a prime table size `M`, member `i` with name `n` prefers the slots
//! `perm_i[j] = (offset + j·skip) mod M` with `offset = h1(n) mod M` and
//! `skip = h2(n) mod (M − 1) + 1`. Members take turns; on its turn a member claims the next slot
//! of its preference list that is still free, until all `M` slots are filled. Members are sorted
//! by name first, so the order callers list them in does not matter.
//!
//! # Weighted variant (frozen): Sainte-Laguë turns
//!
//! Member `i`'s `k`-th turn (k = 1, 2, …) happens at the virtual time `(2k − 1) / (2·w_i)`; turns
//! are served in increasing virtual time, ties in name order. Equal weights give the classic
//! round-by-round Maglev. A member's turn times depend on nothing but its own weight, and its
//! preference list on nothing but its name, which is what keeps the table consistent: removing a
//! member just deletes its turns from the merged schedule, so everybody else keeps the order of
//! their turns and their preferences. The only moves besides the removed member's own slots are
//! the classic Maglev cascade (a member that now reaches a freed slot earlier leaves its old slot
//! to somebody else) and a few extra turns at the end, which hand the freed share out in
//! proportion to weight. (A variant whose turns are paced by the *largest* weight present would
//! change everybody's rhythm whenever the heaviest member leaves; this one cannot.)
//!
//! Each member gets exactly one slot per turn, so when the table fills at virtual time `T` member
//! `i` holds `round(T·w_i)` slots: the Sainte-Laguë apportionment of `M` seats. Hence
//! `|slots_i − M·w_i/W| ≤ 1/2 + N·w_i/(2W)` (W the sum of weights), and with equal weights every
//! member holds `⌊M/N⌋` or `⌈M/N⌉` slots. Starting at `1/(2w)` rather than `1/w` gives light
//! members their first turn while the table is still mostly free instead of after every heavy one.
//!
//! # Table size and consistency
//!
//! The kernel maps a flow to `table[hash mod M]`, so flows only stay put while `M` does.
//! [`table_size`] grows with the member count, so [`build`] alone re-deals nearly every flow when
//! the count changes; callers that need B5.8 across membership changes build with
//! [`build_for_capacity`] and a capacity that only changes rarely.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use slb_common::{MAGLEV_MIN_SIZE, MAGLEV_SLOTS_PER_BACKEND};

/// One backend as the table builder sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingMember<'a> {
    /// Stable identity, e.g. `"10.0.0.1:80"`: it alone decides the member's preference list.
    pub name: &'a str,
    /// Opaque value stored in the table entries the member owns.
    pub slot: u32,
    /// 1..=100 from the API; a member with weight 0 gets no entries (B4.8).
    pub weight: u32,
}

/// The largest prime below 2^32: the table size saturates here rather than overflow.
const LARGEST_U32_PRIME: u32 = 4_294_967_291;

/// Smallest prime >= max(`MAGLEV_MIN_SIZE`, `MAGLEV_SLOTS_PER_BACKEND` * n).
pub fn table_size(n: usize) -> u32 {
    let wanted = u64::try_from(n)
        .unwrap_or(u64::MAX)
        .saturating_mul(u64::from(MAGLEV_SLOTS_PER_BACKEND))
        .max(u64::from(MAGLEV_MIN_SIZE));
    if wanted > u64::from(LARGEST_U32_PRIME) {
        return LARGEST_U32_PRIME;
    }
    // Prime gaps below 2^32 are at most a few hundred, so this stops quickly and below the cap.
    let mut candidate = wanted;
    while !is_prime(candidate) {
        candidate += 1;
    }
    u32::try_from(candidate).unwrap_or(LARGEST_U32_PRIME)
}

/// Trial division; sizes stay below 2^32, so at most 2^15 odd divisors are tried.
fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n.is_multiple_of(2) {
        return false;
    }
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Weighted Maglev table of `table_size(members.len())` entries holding members' `slot` values;
/// empty input (or no member with a weight above 0) gives an empty table.
///
/// Independent of the order of `members`; byte-identical across processes and hosts.
pub fn build(members: &[RingMember]) -> Vec<u32> {
    build_for_capacity(members, members.len())
}

/// Like [`build`], but with `table_size(max(capacity, members.len()))` entries, so that the table
/// size (and with it every flow's index) survives members coming and going below `capacity`.
pub fn build_for_capacity(members: &[RingMember], capacity: usize) -> Vec<u32> {
    let mut ring: Vec<&RingMember> = members.iter().filter(|m| m.weight > 0).collect();
    if ring.is_empty() {
        return Vec::new();
    }
    // Names are unique in practice; slot and weight only make the order total for odd input.
    ring.sort_unstable_by(|a, b| (a.name, a.slot, a.weight).cmp(&(b.name, b.slot, b.weight)));

    let size = u64::from(table_size(capacity.max(members.len())));
    let mut walkers: Vec<Walker> = ring
        .iter()
        .map(|m| Walker {
            next: h1(m.name) % size,
            skip: h2(m.name) % (size - 1) + 1,
        })
        .collect();

    let mut table = vec![0u32; size as usize];
    let mut taken = vec![false; size as usize];
    let mut turns: BinaryHeap<Reverse<Turn>> = ring
        .iter()
        .enumerate()
        .map(|(member, m)| {
            Reverse(Turn {
                twice_k_minus_1: 1,
                weight: u64::from(m.weight),
                member,
            })
        })
        .collect();

    for _ in 0..size {
        // Every turn taken is pushed back below, so the heap never runs dry.
        let Some(Reverse(turn)) = turns.pop() else {
            break;
        };
        let walker = &mut walkers[turn.member];
        // A free slot exists (fewer than `size` were claimed) and the walk visits every slot,
        // since `skip` is in 1..size and `size` is prime.
        while taken[walker.next as usize] {
            walker.next = (walker.next + walker.skip) % size;
        }
        taken[walker.next as usize] = true;
        table[walker.next as usize] = ring[turn.member].slot;
        walker.next = (walker.next + walker.skip) % size;
        turns.push(Reverse(Turn {
            twice_k_minus_1: turn.twice_k_minus_1 + 2,
            ..turn
        }));
    }
    table
}

/// Where a member is in its preference list.
struct Walker {
    /// The next slot to try: `perm[j]` for the lowest `j` not yet visited.
    next: u64,
    skip: u64,
}

/// A member's `k`-th turn, due at virtual time `(2k − 1) / (2·weight)`.
struct Turn {
    twice_k_minus_1: u64,
    weight: u64,
    /// Index into the name-sorted members; breaks ties between turns due at the same time.
    member: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // Exact rational comparison of (2k−1)/(2w): both sides fit in 64 bits, the products in 128.
        let lhs = u128::from(self.twice_k_minus_1) * u128::from(other.weight);
        let rhs = u128::from(other.twice_k_minus_1) * u128::from(self.weight);
        lhs.cmp(&rhs).then(self.member.cmp(&other.member))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn {}

/// FNV-1a, 64-bit (offset basis 0xcbf29ce484222325, prime 0x100000001b3): fixed by its spec.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// MurmurHash3's 64-bit finalizer: FNV-1a barely changes between names that differ in one late
/// byte ("10.0.0.1:80" vs "10.0.0.2:80"), this spreads that difference over every bit.
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

/// h1 (offset): fmix64(FNV-1a 64(name)).
fn h1(name: &str) -> u64 {
    fmix64(fnv1a64(name.as_bytes()))
}

/// h2 (skip): fmix64(FNV-1a 64(name) XOR 0x9e3779b97f4a7c15); the constant (2^64/φ) makes the
/// skip look independent of the offset although both come from one digest.
fn h2(name: &str) -> u64 {
    fmix64(fnv1a64(name.as_bytes()) ^ 0x9e37_79b9_7f4a_7c15)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// Owned members for tests: (name, slot, weight).
    type Spec = Vec<(String, u32, u32)>;

    fn members(spec: &Spec) -> Vec<RingMember<'_>> {
        spec.iter()
            .map(|(name, slot, weight)| RingMember {
                name,
                slot: *slot,
                weight: *weight,
            })
            .collect()
    }

    fn counts(table: &[u32]) -> BTreeMap<u32, usize> {
        let mut counts = BTreeMap::new();
        for &slot in table {
            *counts.entry(slot).or_default() += 1;
        }
        counts
    }

    /// Distinct backends named like real ones; slot = position, weights from `weights`.
    fn spec_strategy(
        n: std::ops::RangeInclusive<usize>,
        weights: std::ops::RangeInclusive<u32>,
    ) -> impl Strategy<Value = Spec> {
        prop::collection::btree_set(any::<(u16, u16)>(), n).prop_flat_map(move |addrs| {
            let len = addrs.len();
            prop::collection::vec(weights.clone(), len).prop_map(move |ws| {
                addrs
                    .iter()
                    .zip(ws)
                    .enumerate()
                    .map(|(i, (&(host, port), w))| {
                        let [a, b] = host.to_be_bytes();
                        (format!("10.0.{a}.{b}:{port}"), i as u32, w)
                    })
                    .collect()
            })
        })
    }

    /// Fraction of entries whose owner differs, among entries not owned by `except` in `before`.
    fn moved(before: &[u32], after: &[u32], except: u32) -> usize {
        before
            .iter()
            .zip(after)
            .filter(|(b, a)| **b != except && b != a)
            .count()
    }

    // Brief: the size formula, and that every size is prime (a full-cycle permutation needs it).
    #[test]
    fn table_size_is_smallest_prime_over_the_floor() {
        assert_eq!(table_size(0), 251);
        assert_eq!(table_size(2), 251);
        assert_eq!(table_size(3), 307);
        assert_eq!(table_size(10), 1009);
        assert_eq!(table_size(100), 10007);
        assert_eq!(table_size(1000), 100_003);
        assert_eq!(table_size(usize::MAX), LARGEST_U32_PRIME);
        for n in 0..300 {
            let m = table_size(n);
            assert!(is_prime(u64::from(m)));
            let floor = (n as u32 * MAGLEV_SLOTS_PER_BACKEND).max(MAGLEV_MIN_SIZE);
            assert!(m >= floor && (floor..m).all(|c| !is_prime(u64::from(c))));
        }
    }

    // B4.17 input side: nothing to schedule gives an empty table, never a panic.
    #[test]
    fn empty_and_all_zero_weight_give_empty_table() {
        assert!(build(&[]).is_empty());
        let zero = [RingMember {
            name: "10.0.0.1:80",
            slot: 7,
            weight: 0,
        }];
        assert!(build(&zero).is_empty());
    }

    // B5.5 / B5.8: the algorithm is frozen. Any change to the hashes, the weighted variant or the
    // tie-break changes these values; if that is intended, every deployed table changes too.
    #[test]
    fn golden_table() {
        let spec: Spec = vec![
            ("10.0.0.1:80".into(), 1, 100),
            ("10.0.0.2:80".into(), 2, 50),
            ("10.0.0.3:80".into(), 3, 25),
            ("[2001:db8::1]:443".into(), 4, 1),
        ];
        let table = build(&members(&spec));
        assert_eq!(table.len(), 401);
        assert_eq!(h1("10.0.0.1:80"), GOLDEN_H1);
        assert_eq!(h2("10.0.0.1:80"), GOLDEN_H2);
        assert_eq!(&table[..16], &GOLDEN_PREFIX);
        let bytes: Vec<u8> = table.iter().flat_map(|s| s.to_le_bytes()).collect();
        assert_eq!(fnv1a64(&bytes), GOLDEN_TABLE_FNV);
    }
    const GOLDEN_H1: u64 = 0x5ed8_f827_5e47_a14a;
    const GOLDEN_H2: u64 = 0xd9eb_7e02_0dc8_b491;
    const GOLDEN_PREFIX: [u32; 16] = [1, 1, 2, 1, 1, 2, 1, 1, 1, 3, 2, 1, 3, 2, 1, 2];
    const GOLDEN_TABLE_FNV: u64 = 0x4f63_9db5_0aed_f1f6;

    // The hash is the published FNV-1a 64, checked against its reference test vectors.
    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    // B4.8: a weight-0 member takes no entries, the others still fill the table.
    #[test]
    fn weight_zero_member_gets_nothing() {
        let spec: Spec = vec![
            ("10.0.0.1:80".into(), 1, 10),
            ("10.0.0.2:80".into(), 2, 0),
            ("10.0.0.3:80".into(), 3, 10),
        ];
        let table = build(&members(&spec));
        assert_eq!(table.len(), 307);
        assert!(table.iter().all(|&s| s == 1 || s == 3));
    }

    // Capacity below the member count cannot shrink the table.
    #[test]
    fn capacity_never_below_member_count() {
        let spec: Spec = (0..5).map(|i| (format!("10.0.0.{i}:80"), i, 1)).collect();
        let ring = members(&spec);
        assert_eq!(build_for_capacity(&ring, 1), build(&ring));
        assert_eq!(build_for_capacity(&ring, 8).len(), 809);
    }

    // B5.8, typical case: 100 equal members, each removed in turn. Deterministic, so the measured
    // figures (worst 1.83%, mean 1.54% of the table) are asserted with little slack.
    #[test]
    fn removal_churn_of_each_of_100() {
        let spec: Spec = (0..100)
            .map(|i| (format!("10.0.{}.{}:80", i / 256, i % 256), i, 100))
            .collect();
        let ring = members(&spec);
        let before = build(&ring);
        let mut total = 0.0;
        for gone in &ring {
            let rest: Vec<RingMember> = ring.iter().filter(|m| m != &gone).copied().collect();
            let after = build_for_capacity(&rest, ring.len());
            let churn = moved(&before, &after, gone.slot) as f64 / before.len() as f64;
            assert!(churn < 0.02, "{}: churn {churn}", gone.name);
            total += churn;
        }
        assert!(total / 100.0 < 0.016, "mean churn {}", total / 100.0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        // B5.5: every entry is filled, only with member slots, and every member owns some.
        #[test]
        fn table_is_full(spec in spec_strategy(1..=100, 1..=100)) {
            let table = build(&members(&spec));
            prop_assert_eq!(table.len() as u32, table_size(spec.len()));
            let counts = counts(&table);
            prop_assert_eq!(counts.len(), spec.len());
            prop_assert!(counts.keys().all(|&s| (s as usize) < spec.len()));
        }

        // B5.8 (≈1/N of keys each): equal weights give every member ⌊M/N⌋ or ⌈M/N⌉ entries.
        #[test]
        fn unweighted_balance(spec in spec_strategy(1..=100, 7..=7)) {
            let table = build(&members(&spec));
            let (m, n) = (table.len(), spec.len());
            for (_, c) in counts(&table) {
                prop_assert!(c == m / n || c == m.div_ceil(n), "{} entries, M={} N={}", c, m, n);
            }
        }

        // B4.9 / B5.8 (weights set the share): Sainte-Laguë bound |c − M·w/W| ≤ 1/2 + N·w/(2W),
        // and so within ±1% relative for every member whose ideal share is ≥ 100 entries.
        #[test]
        fn weighted_shares(spec in spec_strategy(1..=100, 1..=100)) {
            let table = build(&members(&spec));
            let m = table.len() as f64;
            let n = spec.len() as f64;
            let total: f64 = spec.iter().map(|s| f64::from(s.2)).sum();
            let counts = counts(&table);
            for (_, slot, w) in &spec {
                let w = f64::from(*w);
                let ideal = m * w / total;
                let got = counts.get(slot).copied().unwrap_or(0) as f64;
                let bound = 0.5 + n * w / (2.0 * total) + 1e-9;
                prop_assert!((got - ideal).abs() <= bound, "got {} ideal {} bound {}", got, ideal, bound);
                if ideal >= 100.0 {
                    prop_assert!((got - ideal).abs() <= 0.01 * ideal);
                }
            }
        }

        // B5.5: same input in any order gives the same table (names are sorted internally).
        #[test]
        fn order_independent(
            (spec, shuffled) in spec_strategy(1..=50, 1..=100)
                .prop_flat_map(|s| (Just(s.clone()), Just(s).prop_shuffle()))
        ) {
            prop_assert_eq!(build(&members(&spec)), build(&members(&shuffled)));
        }

        // B5.8: removing one of N members (table size held by capacity) moves its own entries
        // plus at most 1/N + CHURN_OVER_ONE_NTH of the table from the others.
        #[test]
        fn removal_is_consistent(
            spec in spec_strategy(2..=100, 1..=100),
            pick in any::<prop::sample::Index>(),
        ) {
            let ring = members(&spec);
            let gone = pick.index(ring.len());
            let rest: Vec<RingMember> = ring.iter().enumerate()
                .filter(|&(i, _)| i != gone).map(|(_, m)| *m).collect();
            let before = build_for_capacity(&ring, ring.len());
            let after = build_for_capacity(&rest, ring.len());
            prop_assert_eq!(before.len(), after.len());
            let gone_slot = ring[gone].slot;
            prop_assert!(after.iter().all(|&s| s != gone_slot));
            let churn = moved(&before, &after, gone_slot) as f64 / before.len() as f64;
            prop_assert!(churn <= 1.0 / ring.len() as f64 + CHURN_OVER_ONE_NTH, "churn {}", churn);
        }

        // B5.8: adding one member takes its share plus moves at most 1/N + CHURN_OVER_ONE_NTH of
        // the table between the others.
        #[test]
        fn addition_is_consistent(
            spec in spec_strategy(2..=100, 1..=100),
            pick in any::<prop::sample::Index>(),
        ) {
            let ring = members(&spec);
            let new = pick.index(ring.len());
            let old: Vec<RingMember> = ring.iter().enumerate()
                .filter(|&(i, _)| i != new).map(|(_, m)| *m).collect();
            let before = build_for_capacity(&old, ring.len());
            let after = build_for_capacity(&ring, ring.len());
            let new_slot = ring[new].slot;
            // Entries the newcomer took are its share; count moves among the others.
            let churn = moved(&after, &before, new_slot) as f64 / before.len() as f64;
            prop_assert!(churn <= 1.0 / ring.len() as f64 + CHURN_OVER_ONE_NTH, "churn {}", churn);
        }
    }

    /// Others' entries moved by one removal or addition, as a fraction of M, beyond 1/N: 200 000
    /// random cases (N 2..=100, weights 1..=100 or equal) measured at most 0.075, 99.9% ≤ 0.021.
    const CHURN_OVER_ONE_NTH: f64 = 0.1;
}
