//! One busy thread per vCPU, all alive at the same time (a barrier), each printing progress
//! lines from its own thread (so the vCPU it runs on makes console hypercalls the host can
//! count); checks every thread's result.

use std::sync::{Arc, Barrier};

#[path = "../common.rs"]
mod common;

use common::{check, finish};

fn main() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {cpus} vCPU(s)");
    let threads = cpus.max(2);
    let barrier = Arc::new(Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|index| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                let mut value = index as u64 + 1;
                for round in 0..20_000u64 {
                    value = value
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(round);
                    if round % 2_000 == 0 {
                        println!("threads: worker {index} at round {round}");
                    }
                }
                println!("threads: worker {index} finished");
                (index, value)
            })
        })
        .collect();
    let mut finished = 0;
    for worker in workers {
        match worker.join() {
            Ok((index, value)) => {
                let mut expected = index as u64 + 1;
                for round in 0..20_000u64 {
                    expected = expected
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(round);
                }
                check(
                    &format!("worker {index} result"),
                    value == expected,
                    format!("{value:#x}"),
                );
                finished += 1;
            }
            Err(_) => check("join a worker", false, "a worker panicked"),
        }
    }
    check(
        "every worker joined",
        finished == threads,
        format!("{finished} of {threads}"),
    );
    println!("threads: {threads} threads on {cpus} vCPU(s) joined");
    finish("threads");
}
