// The daemon allocates a few short-lived strings and paths per request; glibc's malloc/free
// were ~20 % of an unlink's instructions (bench/RESULTS.md, "Instruction counts"). Built
// without transparent huge pages (`no_thp`): with them, the arenas' first touches made
// 2 MiB pages, tripling the daemon's resident memory at mount (6 → 17 MB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bucketfs::cli::main()
}
