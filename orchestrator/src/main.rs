//! The `pumphouse` binary: the server (`serve`) and the CLI that talks to it.

fn main() -> std::process::ExitCode {
    pumphouse::cli::main()
}
