//! The allocator of svidcar's binaries (`svidcar` and `svidcar-proxy`): jemalloc, with the
//! options below baked in. A binary opts in with `use svidcar_alloc as _;` (a dependency no
//! code names is not linked); libraries and tests never depend on this crate, so they keep the
//! system allocator.
//!
//! Left to others: everything else. This crate holds one static and one string.

// The allocator: jemalloc, serving the C code (aws-lc) as well as Rust (the crate's
// `override_allocator_on_supported_platforms` feature makes it the process's `malloc`). Chosen
// by measurement (docs/memory.md; release binary, a pair holding 9 900 idle connections, then
// closing them): glibc malloc kept every byte (+434 MiB per proxy after the close) and a second
// flood ratcheted it to +1.5 GiB, since reused chunks are zeroed and so touched; glibc with
// MALLOC_ARENA_MAX=2 and lower trim/mmap thresholds still kept +342 MiB, and only a manual
// malloc_trim (an unsafe call, a walk of every arena under its lock) brought it to +33 MiB.
// mimalloc with its defaults started at 9 MiB of heap instead of 1 and kept +790 MiB. jemalloc,
// with the options below, is back within +21 MiB of baseline a second after the close (that
// rest is the proxy's own high-water tables, not the allocator) and does not ratchet. Its idle
// heap is 0.5 MiB above glibc's; handshakes were 5-10 % faster, bulk copying up to 15 % slower
// on a noisy machine (`MALLOC_CONF=dirty_decay_ms:10000` closes most of that gap).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it initializes (at the first allocation, before `main`);
/// `MALLOC_CONF` in the environment overrides any of them (e.g. `narenas:4` for a proxy with
/// many worker threads). `background_thread`: a thread of jemalloc's own returns freed pages to
/// the kernel while the proxy is idle (without it, purging happens only inside allocator calls,
/// so an idle proxy would keep the memory of its last load). `dirty_decay_ms:1000`: freed pages
/// go back within about a second (default 10 s). `muzzy_decay_ms:0`: with `MADV_DONTNEED`
/// directly, not `MADV_FREE` first, whose pages stay in RSS until the kernel is short of memory.
/// `narenas:1`: one arena (default: four per CPU) for a sidecar's two or so threads, each with
/// its own thread cache, so no arena holds half-empty pages another could use.
///
/// It sits beside [`GLOBAL`] on purpose: the linker takes this crate's code into a binary for
/// the allocator's sake, and this symbol comes along with it (`nm svidcar-proxy | grep
/// malloc_conf` shows it defined, `D`, not jemalloc's weak default).
// SAFETY: jemalloc declares `const char *malloc_conf` (weak, so this strong definition wins)
// and only reads it, once; this is a thin pointer to a NUL-terminated string that lives as
// long as the program and is never written.
#[allow(unsafe_code)]
#[unsafe(export_name = "malloc_conf")]
static MALLOC_CONF: &[u8; 70] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:1\0";

#[cfg(test)]
mod tests {
    /// jemalloc reads a C string: one NUL, at the end.
    #[test]
    fn the_options_are_one_c_string() {
        let conf = super::MALLOC_CONF;
        assert_eq!(conf.iter().position(|&b| b == 0), Some(conf.len() - 1));
    }
}
