//! A short floating-point workload (f64 and f32 arithmetic, libm functions, parsing and
//! formatting) checked against known values: it exercises the SSE instructions and libm paths
//! that real Rust applications execute.

use std::hint::black_box;

#[path = "../common.rs"]
mod common;

use common::{check, finish};

/// `|got - want| <= tolerance * max(1, |want|)`.
fn close(name: &str, got: f64, want: f64, tolerance: f64) {
    let ok = (got - want).abs() <= tolerance * want.abs().max(1.0);
    check(name, ok, format!("{got:e} != {want:e}"));
}

fn main() {
    let one = black_box(1.0f64);
    close("sin(1)", one.sin(), 0.841_470_984_807_896_5, 1e-15);
    close("cos(1)", one.cos(), 0.540_302_305_868_139_8, 1e-15);
    close("exp(1)", one.exp(), std::f64::consts::E, 1e-15);
    close(
        "ln(10)",
        black_box(10.0f64).ln(),
        std::f64::consts::LN_10,
        1e-15,
    );
    close(
        "2^0.5",
        black_box(2.0f64).powf(0.5),
        std::f64::consts::SQRT_2,
        1e-15,
    );
    close(
        "sqrt(2)",
        black_box(2.0f64).sqrt(),
        std::f64::consts::SQRT_2,
        0.0,
    );
    close(
        "atan2(1, 1)",
        one.atan2(one),
        std::f64::consts::FRAC_PI_4,
        1e-15,
    );
    close(
        "tanh(0.5)",
        black_box(0.5f64).tanh(),
        0.462_117_157_260_009_8,
        1e-15,
    );
    close("cbrt(27)", black_box(27.0f64).cbrt(), 3.0, 1e-15);
    close("floor(-2.5)", black_box(-2.5f64).floor(), -3.0, 0.0);
    close("round(2.5)", black_box(2.5f64).round(), 3.0, 0.0);

    // Series: the Leibniz formula for pi/4 and the sum of square roots.
    let leibniz: f64 = (0..2000)
        .map(|k| if k % 2 == 0 { 1.0 } else { -1.0 } / (2 * k + 1) as f64)
        .sum();
    close("Leibniz series", 4.0 * leibniz, std::f64::consts::PI, 1e-3);
    let roots: f64 = (1..=200).map(|n| f64::from(n).sqrt()).sum();
    close("sum of square roots", roots, 1_892.484_211_028_349, 1e-12);

    // f32 and conversions.
    let third = black_box(1.0f32) / black_box(3.0f32);
    check(
        "f32 division",
        third.to_bits() == 0x3eaa_aaab,
        format!("{:#x}", third.to_bits()),
    );
    close(
        "sinf(0.5)",
        f64::from(black_box(0.5f32).sin()),
        0.479_425_538_604_203,
        1e-7,
    );
    let truncated = black_box(-7.9f64) as i32;
    check("f64 -> i32", truncated == -7, truncated);
    let saturated = black_box(1e20f64) as i32;
    check("f64 -> i32 saturates", saturated == i32::MAX, saturated);
    check(
        "NaN -> i32 is 0",
        black_box(f64::NAN) as i32 == 0,
        "NaN conversion",
    );

    // Parsing and formatting go through core's float algorithms.
    let parsed: f64 = black_box("3.141592653589793").parse().unwrap_or(0.0);
    check("parse f64", parsed == std::f64::consts::PI, parsed);
    let text = format!("{:.6} {:e} {}", std::f64::consts::E, 1.5e-300, 0.1 + 0.2);
    check(
        "format f64",
        text == "2.718282 1.5e-300 0.30000000000000004",
        &text,
    );
    println!("float: {text}");
    finish("float");
}
