//! The `timed` binary: see [`timed::cli`].

fn main() -> std::process::ExitCode {
    timed::cli::main()
}
