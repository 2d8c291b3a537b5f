// The daemon allocates a few short-lived strings and paths per request; glibc's malloc/free
// were ~20 % of an unlink's instructions (bench/RESULTS.md, "Instruction counts").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    bucketfs::cli::main()
}
