//! Pinning the calling thread to one CPU (data-plane workers with `--cpus`, the kick thread).

use std::io;

/// The CPU the calling thread runs on now, if the kernel says.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: sched_getcpu has no arguments; it only reads the calling thread's CPU.
    usize::try_from(unsafe { libc::sched_getcpu() }).ok()
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set; CPU_SET and
    // sched_setaffinity(0 = this thread) only read and write that set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
