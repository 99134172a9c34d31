//! Which worker a new connection goes to. Each worker has its own socket on a listener
//! (`SO_REUSEPORT`), and the kernel on its own hashes the 4-tuple onto one of them, blind to
//! the workers' load: one worker may be handed more long-lived connections than the other, and
//! their requests wait behind each other while the other core has time. The worker picker
//! (`slb-workers`, attached to each listener's group) sends a new connection to the worker with
//! the fewest open connections, and among those to one that is waiting for work, as nginx's
//! workers sharing one socket with `EPOLLEXCLUSIVE` let an idle one take it. Each worker
//! writes its state into a shared mapping of the program's map: plain stores to a cache line
//! of its own, no system call.
use std::{
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
};

use aya::{
    maps::Map,
    programs::{ProgramError, ReusePortSocketFilter},
    Ebpf, EbpfError, EbpfLoader,
};
use slb_common::{
    ProxyWorker, GLOBAL_PROXY_WORKERS, MAP_PROXY_WORKERS, MAX_PROXY_WORKERS, PROGRAM_PICK_WORKER,
};

#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    #[error("{workers} workers: the worker picker chooses between at most {MAX_PROXY_WORKERS}")]
    TooManyWorkers { workers: usize },
    #[error("loading the worker picker: {source}")]
    Load { source: EbpfError },
    #[error("the worker picker's object has no {what}")]
    Missing { what: &'static str },
    #[error("the worker picker: {source}")]
    Program { source: ProgramError },
    #[error("mapping {MAP_PROXY_WORKERS}: {source}")]
    Mmap { source: io::Error },
}

/// The loaded worker picker.
pub struct Steering {
    ebpf: Ebpf,
    states: Arc<States>,
}

/// `PROXY_WORKERS` mapped into the agent.
struct States {
    first: NonNull<ProxyWorker>,
    workers: usize,
}

// SAFETY: the mapping lives as long as `States`; its words are only written through atomics.
unsafe impl Send for States {}
// SAFETY: as above.
unsafe impl Sync for States {}

const MAPPED_BYTES: usize = MAX_PROXY_WORKERS as usize * size_of::<ProxyWorker>();

impl Drop for States {
    fn drop(&mut self) {
        // SAFETY: the mapping `Steering::load` made, unmapped once.
        unsafe { libc::munmap(self.first.as_ptr().cast(), MAPPED_BYTES) };
    }
}

/// One worker's state as the picker reads it.
pub struct Load {
    states: Arc<States>,
    worker: usize,
}

impl Load {
    fn entry(&self) -> *mut ProxyWorker {
        // SAFETY: `worker` is below the workers the map holds (`Steering::load_of`).
        unsafe { self.states.first.as_ptr().add(self.worker) }
    }

    fn connections(&self) -> &AtomicU32 {
        // SAFETY: a word of the worker's entry, mapped while `self` holds `states`; the kernel
        // only reads it.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.entry()).connections) }
    }

    fn parked(&self) -> &AtomicU32 {
        // SAFETY: as in `connections`.
        unsafe { AtomicU32::from_ptr(&raw mut (*self.entry()).parked) }
    }

    /// Client connections the worker has open (`GET /metrics`).
    pub fn open_connections(&self) -> u32 {
        self.connections().load(Ordering::Relaxed)
    }

    #[cfg(test)]
    pub fn is_parked(&self) -> bool {
        self.parked().load(Ordering::Relaxed) != 0
    }

    /// The worker is about to wait for events with nothing to run, or has woken up.
    pub fn set_parked(&self, parked: bool) {
        self.parked().store(u32::from(parked), Ordering::Relaxed);
    }

    /// Counts a client connection of this worker's, uncounted when the guard drops. Only the
    /// worker's own thread writes the count: a load and a store, no locked instruction. The
    /// worker's own `Arc`, not the mapping's that all workers share, keeps it alive.
    pub fn open(self: &Arc<Self>) -> Open {
        let n = self.connections();
        n.store(n.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Open(self.clone())
    }
}

/// A client connection counted in its worker's load.
pub struct Open(Arc<Load>);

impl Drop for Open {
    fn drop(&mut self) {
        let n = self.0.connections();
        n.store(
            n.load(Ordering::Relaxed).saturating_sub(1),
            Ordering::Relaxed,
        );
    }
}

impl Steering {
    /// Loads the picker for `workers` workers.
    pub fn load(workers: usize) -> Result<Steering, SteerError> {
        let count = u32::try_from(workers)
            .ok()
            .filter(|&n| n <= MAX_PROXY_WORKERS)
            .ok_or(SteerError::TooManyWorkers { workers })?;
        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_PROXY_WORKERS, &count, true)
            .load(crate::WORKERS_OBJECT)
            .map_err(|source| SteerError::Load { source })?;
        picker(&mut ebpf)?
            .load()
            .map_err(|source| SteerError::Program { source })?;
        let Some(Map::Array(map)) = ebpf.map(MAP_PROXY_WORKERS) else {
            return Err(SteerError::Missing {
                what: MAP_PROXY_WORKERS,
            });
        };
        // SAFETY: a new shared mapping of the map's memory (created `BPF_F_MMAPABLE`, exactly
        // `MAPPED_BYTES` long), owned by `States` from here on.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAPPED_BYTES,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(SteerError::Mmap {
                source: io::Error::last_os_error(),
            });
        }
        let first = NonNull::new(addr.cast()).ok_or_else(|| SteerError::Mmap {
            source: io::Error::other("mapped at address 0"),
        })?;
        Ok(Steering {
            ebpf,
            states: Arc::new(States { first, workers }),
        })
    }

    /// The state of `worker`, below the count the picker was loaded for.
    pub fn load_of(&self, worker: usize) -> Load {
        assert!(worker < self.states.workers, "worker {worker} has no entry");
        Load {
            states: self.states.clone(),
            worker,
        }
    }

    /// Picks the worker for every new connection of `socket`'s group, whose sockets joined it
    /// in worker order.
    pub fn attach(&mut self, socket: impl AsFd) -> Result<(), SteerError> {
        picker(&mut self.ebpf)?
            .attach(socket)
            .map_err(|source| SteerError::Program { source })
    }
}

fn picker(ebpf: &mut Ebpf) -> Result<&mut ReusePortSocketFilter, SteerError> {
    ebpf.program_mut(PROGRAM_PICK_WORKER)
        .ok_or(SteerError::Missing {
            what: PROGRAM_PICK_WORKER,
        })?
        .try_into()
        .map_err(|source| SteerError::Program { source })
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use super::*;

    /// Makes `n` connections to `addr`, then counts what each listener accepts of them.
    fn spread(addr: std::net::SocketAddr, listeners: &[&TcpListener], n: usize) -> Vec<usize> {
        let clients: Vec<TcpStream> = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let mut counts = vec![0; listeners.len()];
        // The last handshakes may still be in the kernel's backlog when connect returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while counts.iter().sum::<usize>() < n && std::time::Instant::now() < deadline {
            for (count, l) in counts.iter_mut().zip(listeners) {
                *count += std::iter::from_fn(|| l.accept().ok()).count();
            }
        }
        drop(clients);
        counts
    }

    /// A new connection goes to the worker with fewer open connections; between equals, to
    /// the one that waits; between equals that wait, to either.
    #[tokio::test]
    async fn new_connections_go_to_the_least_loaded_worker() {
        let mut steering = Steering::load(2).unwrap();
        let first = super::super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let second = super::super::listen(addr).unwrap();
        steering.attach(&first).unwrap();
        let (a, b) = (Arc::new(steering.load_of(0)), Arc::new(steering.load_of(1)));
        let both = [&first, &second];

        a.set_parked(false);
        b.set_parked(true);
        assert_eq!(spread(addr, &both, 32), [0, 32]);
        a.set_parked(true);
        b.set_parked(false);
        assert_eq!(spread(addr, &both, 32), [32, 0]);
        let open = a.open();
        assert_eq!(spread(addr, &both, 32), [0, 32], "fewer connections first");
        drop(open);
        b.set_parked(true);
        let counts = spread(addr, &both, 64);
        assert_eq!(counts.iter().sum::<usize>(), 64);
        assert!(counts.iter().all(|&c| c > 0), "{counts:?}");
    }

    #[test]
    fn more_workers_than_the_map_holds_are_refused() {
        let err = Steering::load(MAX_PROXY_WORKERS as usize + 1)
            .err()
            .unwrap();
        assert!(matches!(err, SteerError::TooManyWorkers { workers: 257 }));
    }
}
