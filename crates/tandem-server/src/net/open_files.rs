//! The open-file limit: every socket is a file descriptor, and so is every
//! database connection, WAL file and outgoing call. The soft limit many
//! systems start a process with (1,024) is far below what a chat server
//! holds; the hard limit is usually much higher, and a process may raise
//! its soft limit up to it.

/// The soft and hard limits before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft open-file limit to the hard limit.
pub fn raise() -> std::io::Result<OpenFiles> {
    let (soft_before, _) = limits()?;
    rlimit::increase_nofile_limit(u64::MAX)?;
    let (soft, hard) = limits()?;
    Ok(OpenFiles {
        soft_before,
        soft,
        hard,
    })
}

/// The soft and hard open-file limits now.
pub fn limits() -> std::io::Result<(u64, u64)> {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
}

/// Sockets to keep open at most, given the soft open-file limit: a tenth
/// of the descriptors (at least 256) stay for everything that is not a
/// client's socket.
pub fn connection_budget(soft_limit: u64) -> usize {
    let reserve = (soft_limit / 10).max(256);
    usize::try_from(soft_limit.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_descriptors_for_the_rest() {
        assert_eq!(connection_budget(1024), 768);
        assert_eq!(connection_budget(20_000), 18_000);
        assert_eq!(connection_budget(100), 16);
        // No limit at all (RLIM_INFINITY).
        assert!(connection_budget(u64::MAX) > 1_000_000_000);
    }
}
