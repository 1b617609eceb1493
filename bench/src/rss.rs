//! Memory of the broker process (from `/proc/{pid}/status`) and the bench's
//! own open-file limit (from `/proc/self/limits`).

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kb: u64,
    /// `VmHWM`: the peak resident size so far.
    pub peak_kb: u64,
}

/// Reads `/proc/{pid}/status`; `None` if the process or the fields are missing.
pub fn read(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

/// Parses the `VmRSS` and `VmHWM` lines of a `/proc/{pid}/status` text.
pub fn parse_status(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
    };
    let rss_kb = field("VmRSS")?;
    Some(Memory {
        rss_kb,
        peak_kb: field("VmHWM").unwrap_or(rss_kb),
    })
}

/// The soft limit on open files of this process, if it can be read.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files(&limits)
}

/// Parses the soft "Max open files" value of a `/proc/self/limits` text.
pub fn parse_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tparley\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kb: 10240,
                peak_kb: 20480
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn parses_open_file_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files(limits), Some(1024));
        assert_eq!(parse_open_files("nothing"), None);
    }

    #[test]
    fn reads_our_own_process() {
        let me = read(std::process::id()).expect("own status");
        assert!(me.rss_kb > 0 && me.peak_kb >= me.rss_kb);
        assert!(open_files_limit().is_some());
    }
}
