//! The proxy's worker picker: a reuseport program (`SO_ATTACH_REUSEPORT_EBPF`) on each HTTP
//! and HTTPS listener's group of per-worker sockets. It runs on each SYN and returns the index
//! of a socket, which is the worker's: a new connection goes to the worker with the fewest open
//! connections, and among those to one that is waiting for work, where the kernel on its own
//! would hash the 4-tuple blind to the workers' load.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE, helpers::bpf_get_prandom_u32, macros::map, macros::socket_filter,
    maps::Array, programs::SkBuffContext,
};
use slb_common::{ProxyWorker, MAX_PROXY_WORKERS};

/// Worker → its state, written by the agent through a shared mapping.
#[map]
static PROXY_WORKERS: Array<ProxyWorker> =
    Array::with_max_entries(MAX_PROXY_WORKERS, BPF_F_MMAPABLE);

/// Workers serving the listeners; set at load time.
#[no_mangle]
static PROXY_WORKER_COUNT: u32 = 0;

/// Outside any group: the kernel's own hash picks.
const KERNEL_PICKS: i64 = u32::MAX as i64;

#[socket_filter]
pub fn slb_pick_worker(_ctx: SkBuffContext) -> i64 {
    // SAFETY: a read of a global the loader sets; volatile so that it is not folded to 0.
    let n = unsafe { core::ptr::read_volatile(&PROXY_WORKER_COUNT) };
    if n == 0 || n > MAX_PROXY_WORKERS {
        return KERNEL_PICKS;
    }
    // Ties go to the first candidate met, from a random one on: they spread evenly.
    // SAFETY: plain helper call.
    let first = unsafe { bpf_get_prandom_u32() } % n;
    let (mut best, mut best_load) = (KERNEL_PICKS, u64::MAX);
    for k in 0..MAX_PROXY_WORKERS {
        if k >= n {
            break;
        }
        let i = if first + k >= n {
            first + k - n
        } else {
            first + k
        };
        let Some(w) = PROXY_WORKERS.get(i) else {
            continue;
        };
        // SAFETY: the value is in the map; volatile because the agent writes it meanwhile.
        let (connections, parked) = unsafe {
            (
                core::ptr::read_volatile(&w.connections),
                core::ptr::read_volatile(&w.parked),
            )
        };
        let load = (u64::from(connections) << 1) | u64::from(parked == 0);
        if load < best_load {
            (best, best_load) = (i64::from(i), load);
        }
    }
    best
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
