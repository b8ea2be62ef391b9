//! Bounding glibc's malloc arenas for a long-running process with short-lived threads.
//!
//! glibc gives each new thread its own arena (up to 8 per CPU). Every control client is served
//! on its own short-lived thread, and a link flap runs on one too; memory freed in those arenas
//! stays resident as fragments (trimmed only at an arena's top), so the process grew by a few
//! MiB over a soak and then sat on a plateau that depended on how many arenas it had touched.
//! Nothing on the data path allocates per frame, so sharing two arenas costs no contention
//! there. A `MALLOC_ARENA_MAX` set in the environment wins.

/// Arenas the process may use: the main one and one for every other thread.
const ARENAS: i32 = 2;

/// Limits the process to [`ARENAS`] malloc arenas unless `MALLOC_ARENA_MAX` is set. Call it
/// before spawning threads. Returns whether the limit was applied.
pub fn limit() -> bool {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return false;
    }
    apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() -> bool {
    // SAFETY: mallopt only sets a malloc tunable; M_ARENA_MAX takes any positive count.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() -> bool {
    false
}
