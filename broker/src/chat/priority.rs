//! The chat engine thread's scheduling priority.
//!
//! Every write passes through the one engine thread, so on a busy box it is
//! the stage that decides throughput and latency: measured on 2 cores with
//! the load generator beside the broker, at its default priority the
//! engine got about half a core while the connections' workers and the
//! load generator took the rest, its group commits grew to hundreds of
//! jobs that waited for it, and `dm` accepted 33-34k of 40k msg/s offered;
//! asking for 10 nice steps more let it take all 40k, with a p99 3-4x
//! lower (bench/FINDINGS.md, item 10). Only this thread changes: on Linux a nice
//! value is per thread, and the workers, RocksDB's threads and the auth
//! pool keep the process's own.
//!
//! Must not: fail the broker. Raising a priority needs CAP_SYS_NICE (root
//! has it, except in containers that drop it) or an RLIMIT_NICE (`ulimit
//! -e`) that allows the value; without either the engine runs at the
//! normal priority and a warning says so.

/// Asks for `boost` nice steps above the process's priority for the calling
/// thread (0: nothing is changed); logs what came of it.
pub(super) fn raise_this_thread(boost: u32) {
    if boost == 0 {
        return;
    }
    match raise(boost) {
        Ok((before, after)) => {
            tracing::info!(before, after, "chat engine thread's nice value raised")
        }
        Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {
            tracing::debug!(%error, "the chat engine thread keeps the normal priority")
        }
        Err(error) => tracing::warn!(
            %error,
            boost,
            "cannot raise the chat engine thread's priority (needs CAP_SYS_NICE or a high \
             enough RLIMIT_NICE); it runs at the normal priority"
        ),
    }
}

/// The highest priority a nice value can name.
const MIN_NICE: i32 = -20;

/// The nice value `boost` steps above `before`, never below [`MIN_NICE`].
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn raised(before: i32, boost: u32) -> i32 {
    before
        .saturating_sub(i32::try_from(boost).unwrap_or(i32::MAX))
        .max(MIN_NICE)
}

/// The calling thread's nice value before and after asking for `boost`
/// steps more (see [`raised`]).
#[cfg(target_os = "linux")]
fn raise(boost: u32) -> std::io::Result<(i32, i32)> {
    use rustix::process::{getpriority_process, setpriority_process};
    let thread = Some(rustix::thread::gettid());
    let before = getpriority_process(thread)?;
    setpriority_process(thread, raised(before, boost))?;
    Ok((before, getpriority_process(thread)?))
}

#[cfg(not(target_os = "linux"))]
fn raise(_boost: u32) -> std::io::Result<(i32, i32)> {
    Err(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "per-thread priorities are set on Linux only",
    ))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use rustix::process::getpriority_process;

    use super::*;

    fn own_nice() -> i32 {
        getpriority_process(Some(rustix::thread::gettid())).unwrap()
    }

    #[test]
    fn only_the_calling_thread_is_raised_by_the_boost_or_nothing_changes() {
        let caller = own_nice();
        std::thread::spawn(|| {
            let before = own_nice();
            let expected = match raise(3) {
                Ok(reported) => {
                    assert_eq!(reported, (before, raised(before, 3)));
                    raised(before, 3)
                }
                // not permitted here (no CAP_SYS_NICE): refused, unchanged
                Err(error) => {
                    assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
                    before
                }
            };
            assert_eq!(own_nice(), expected);
        })
        .join()
        .unwrap();
        assert_eq!(own_nice(), caller, "another thread's nice value changed");
    }

    #[test]
    fn the_raised_value_is_boost_steps_lower_and_never_below_minus_20() {
        assert_eq!(raised(0, 10), -10);
        assert_eq!(raised(5, 10), -5);
        assert_eq!(raised(-15, 10), -20);
        assert_eq!(raised(0, 0), 0);
    }

    #[test]
    fn a_boost_of_zero_changes_nothing() {
        std::thread::spawn(|| {
            let before = own_nice();
            raise_this_thread(0);
            assert_eq!(own_nice(), before);
        })
        .join()
        .unwrap();
    }
}
