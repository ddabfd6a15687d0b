//! The `faultline` binary: everything lives in the `faultline-node` crate; this shim exists so
//! that the end-to-end tests of the root package can find the binary (`CARGO_BIN_EXE_faultline`).
fn main() -> std::process::ExitCode {
    faultline_node::cli::main()
}
