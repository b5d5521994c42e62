//! The `ch-launcher` binary; everything lives in the library (`cli::main`).

fn main() -> std::process::ExitCode {
    ch_launcher::cli::main()
}
