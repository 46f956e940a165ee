//! `loadgen`: an open-loop SLO load generator for any NIP-01 relay; see `loadgen --help`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(loadgen::main_with_args(std::env::args_os()))
}
