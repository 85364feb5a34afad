//! Panics in the application: uhyve must report a non-zero status, never success.

fn main() {
    println!("panic: about to panic");
    let reason = std::hint::black_box("deliberate panic in a Hermit application");
    panic!("{reason}");
}
