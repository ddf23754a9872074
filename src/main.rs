#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    malloc::return_large_blocks();
    match tokengate::cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The allocator policy is the binary's to choose, like a global allocator.
mod malloc {
    /// Blocks from this size up are mapped on their own and unmapped when
    /// freed: glibc's own starting threshold, held fixed. Every password
    /// check allocates argon2's whole memory cost (19 MiB by default) at
    /// once; left dynamic, the threshold rises to the size of the first such
    /// block freed, and each later one came from an arena that was never
    /// trimmed: resident memory grew by the memory cost on every login, so
    /// a login flood could exhaust memory (docs/benchmarks.md).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    const MMAP_THRESHOLD: libc::c_int = 1 << 17;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    pub fn return_large_blocks() {
        // SAFETY: mallopt only sets allocator parameters; it is called
        // before any other thread exists, and a refusal (return 0) leaves
        // glibc's defaults, which are correct, only hungrier.
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        debug_assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) refused");
    }

    /// Other allocators (musl's, the BSDs') return large blocks already.
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    pub fn return_large_blocks() {}
}
