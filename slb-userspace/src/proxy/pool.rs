//! Backend choice for a layer-7 listener (B5.2–B5.4): `wrr` walks a smooth weighted sequence,
//! `rr` walks the members in order, `wlc` takes the fewest requests in flight per weight. Weight 0
//! and abnormal members are skipped (B4.8, B4.15).
use std::{
    net::SocketAddr,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::{
    config::{Member, Scheduler},
    dataplane::sequence,
};

pub struct Pool {
    pub members: Vec<Member>,
    scheduler: Scheduler,
    /// Member indices in the order `wrr`/`rr` hand them out.
    sequence: Vec<usize>,
    cursor: AtomicUsize,
    /// Requests in flight per member, counted for `wlc` only.
    active: Vec<AtomicUsize>,
}

/// A request in flight to a member; dropping it ends the count.
pub struct InFlight<'a> {
    pool: &'a Pool,
    index: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.pool.active[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pool {
    pub fn new(members: Vec<Member>, scheduler: Scheduler) -> Pool {
        let live: Vec<(u32, u32)> = members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.weight > 0)
            .map(|(i, m)| (i as u32, u32::from(m.weight)))
            .collect();
        let sequence = match scheduler {
            Scheduler::Wrr => sequence::smooth_wrr(&live)
                .into_iter()
                .map(|i| i as usize)
                .collect(),
            _ => live.iter().map(|(i, _)| *i as usize).collect(),
        };
        let active = members.iter().map(|_| AtomicUsize::new(0)).collect();
        Pool {
            members,
            scheduler,
            sequence,
            cursor: AtomicUsize::new(0),
            active,
        }
    }

    pub fn addr(&self, index: usize) -> SocketAddr {
        let m = &self.members[index];
        SocketAddr::new(m.addr, m.port)
    }

    /// The usable members in the order to try them: the scheduler's pick first, then the rest
    /// for when a connection fails (B9.10); nothing when none is usable (B4.17). The rest are
    /// looked at only if asked for, so the common request checks one member.
    pub fn order<'a>(
        &'a self,
        usable: impl Fn(&Member) -> bool + 'a,
    ) -> impl Iterator<Item = usize> + 'a {
        let ok = move |i: &usize| self.members[*i].weight > 0 && usable(&self.members[*i]);
        let wlc = self.scheduler == Scheduler::Wlc;
        // wlc: fewest in flight per unit of weight; ties keep configuration order.
        let mut by_load: Vec<usize> = Vec::new();
        if wlc {
            by_load.extend((0..self.members.len()).filter(|i| self.members[*i].weight > 0));
            by_load.sort_by_key(|i| {
                let load = self.active[*i].load(Ordering::Relaxed) as u64 + 1;
                load * 1_000_000 / u64::from(self.members[*i].weight)
            });
        }
        // wrr/rr: the next usable entry of the sequence; unusable ones are passed over.
        let n = self.sequence.len();
        let first = (!wlc && n > 0)
            .then(|| {
                (0..n)
                    .map(|_| self.sequence[self.cursor.fetch_add(1, Ordering::Relaxed) % n])
                    .find(&ok)
            })
            .flatten();
        let rest = (0..self.members.len()).filter(move |_| !wlc);
        first.into_iter().chain(
            by_load
                .into_iter()
                .chain(rest)
                .filter(move |i| Some(*i) != first && ok(i)),
        )
    }

    /// Counts a request to `index` until the returned guard is dropped. Only `wlc` reads the
    /// counts; under the other schedulers they are left alone, since every worker would write
    /// them for every request.
    pub fn start(&self, index: usize) -> Option<InFlight<'_>> {
        (self.scheduler == Scheduler::Wlc).then(|| {
            self.active[index].fetch_add(1, Ordering::Relaxed);
            InFlight { pool: self, index }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MemberRole;

    fn pool(weights: &[u8], scheduler: Scheduler) -> Pool {
        let members = weights
            .iter()
            .enumerate()
            .map(|(i, w)| Member {
                server_id: format!("s{i}"),
                addr: std::net::IpAddr::from([10, 0, 0, i as u8 + 1]),
                port: 80,
                weight: *w,
                role: MemberRole::Normal,
            })
            .collect();
        Pool::new(members, scheduler)
    }

    fn firsts(p: &Pool, n: usize, usable: impl Fn(&Member) -> bool + Copy) -> Vec<usize> {
        let mut counts = vec![0; p.members.len()];
        for _ in 0..n {
            if let Some(i) = p.order(usable).next() {
                counts[i] += 1;
            }
        }
        counts
    }

    /// B4.9, B5.2: shares follow the weights; B4.8: weight 0 gets nothing.
    #[test]
    fn wrr_shares_follow_weights() {
        let p = pool(&[100, 50, 0], Scheduler::Wrr);
        assert_eq!(firsts(&p, 300, |_| true), vec![200, 100, 0]);
    }

    /// B5.4: rr hands out in order, ignores weights, skips weight 0 and abnormal members.
    #[test]
    fn rr_in_turn_skipping_unusable() {
        let p = pool(&[100, 1, 0, 50], Scheduler::Rr);
        let order: Vec<usize> = (0..6).filter_map(|_| p.order(|_| true).next()).collect();
        assert_eq!(order, vec![0, 1, 3, 0, 1, 3]);
        assert_eq!(firsts(&p, 30, |m| m.server_id != "s1"), vec![15, 0, 0, 15]);
        // The retry order lists every other usable member once.
        assert_eq!(p.order(|_| true).count(), 3);
        assert_eq!(p.order(|_| false).next(), None, "B4.17: nothing usable");
    }

    /// B5.3: with equal weights the member with fewer requests in flight is chosen.
    #[test]
    fn wlc_prefers_fewer_in_flight_per_weight() {
        let p = pool(&[100, 100, 50], Scheduler::Wlc);
        let busy = p.start(0);
        assert_eq!(p.order(|_| true).next(), Some(1));
        let busy1 = p.start(1);
        let busy1b = p.start(1);
        // 0: 2/100, 1: 3/100, 2: 1/50 → 0 and 2 tie; configuration order decides.
        assert_eq!(p.order(|_| true).next(), Some(0));
        drop((busy, busy1, busy1b));
        assert_eq!(p.order(|_| true).next(), Some(0));
    }
}
