//! Exits with status 3 through `std::process::exit`, after one line of output.

fn main() {
    println!("exit3: exiting with status 3");
    std::process::exit(3);
}
