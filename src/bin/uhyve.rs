//! The `uhyve` executable: `uhyve [OPTIONS] <KERNEL> [KERNEL_ARGS]...`.

fn main() {
    std::process::exit(uhyve::cli::main_with_args(std::env::args_os()));
}
