//! The demo a new user would try first: prints its arguments and environment, writes and reads
//! back a file under `/tmp` (the kernel's own in-memory file system), does the same in a host
//! directory the test maps into the guest (`DEMO_MAPPED_DIR`, optional), spawns and joins
//! threads, and exits 0 when every check passed.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex};

#[path = "../common.rs"]
mod common;

use common::{check, finish};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    println!("demo: args = {args:?}");
    check(
        "argv[0] is set",
        args.first().is_some_and(|a| !a.is_empty()),
        "empty argv",
    );
    if let Ok(expected) = std::env::var("DEMO_EXPECT_ARGS") {
        let given = args.get(1..).unwrap_or_default().join("|");
        check(
            "arguments arrive in order",
            given == expected,
            format!("{given:?} != {expected:?}"),
        );
    }
    let mut env: Vec<(String, String)> = std::env::vars().collect();
    env.sort();
    for (key, value) in env.iter().filter(|(key, _)| key.starts_with("DEMO_")) {
        println!("demo: env {key}={value}");
    }
    if let Ok(greeting) = std::env::var("DEMO_GREETING") {
        check(
            "environment arrives",
            !greeting.is_empty(),
            "DEMO_GREETING is empty",
        );
    }

    tmp_round_trip();
    if let Ok(dir) = std::env::var("DEMO_MAPPED_DIR") {
        mapped_round_trip(&dir);
    }
    threads();
    finish("demo");
}

/// Write, read back, seek and remove a file in the kernel's `/tmp` (the kernel's own in-memory
/// file system: nothing reaches the host).
fn tmp_round_trip() {
    let path = "/tmp/uhyve-demo.txt";
    let text = "first line\nsecond line\n";
    let written = fs::write(path, text);
    check("write /tmp file", written.is_ok(), format!("{written:?}"));
    let read = fs::read_to_string(path).unwrap_or_default();
    check("read back /tmp file", read == text, format!("{read:?}"));
    let mut second = String::new();
    let seeked = fs::File::open(path).and_then(|mut file| {
        file.seek(SeekFrom::Start("first line\n".len() as u64))?;
        file.read_to_string(&mut second)
    });
    check(
        "seek and read /tmp file",
        seeked.is_ok() && second == "second line\n",
        format!("{seeked:?} {second:?}"),
    );
    let removed = fs::remove_file(path);
    check(
        "remove /tmp file",
        removed.is_ok() && fs::metadata(path).is_err(),
        format!("{removed:?}"),
    );
}

/// Read a file the host put into the mapped directory and write one back.
fn mapped_round_trip(dir: &str) {
    let from_host = format!("{dir}/from-host.txt");
    let host_text = fs::read_to_string(&from_host);
    check(
        "read host file in mapped directory",
        host_text.is_ok(),
        format!("{from_host}: {host_text:?}"),
    );
    let host_text = host_text.unwrap_or_default();
    println!("demo: {from_host} says {:?}", host_text.trim_end());

    let from_guest = format!("{dir}/from-guest.txt");
    let reply = format!(
        "written by the Hermit demo; the host said {:?}\n",
        host_text.trim_end()
    );
    let written = fs::write(&from_guest, &reply);
    check(
        "write file in mapped directory",
        written.is_ok(),
        format!("{from_guest}: {written:?}"),
    );
    let read = fs::read_to_string(&from_guest).unwrap_or_default();
    check(
        "read back file in mapped directory",
        read == reply,
        format!("{read:?}"),
    );

    let appended = fs::OpenOptions::new()
        .append(true)
        .open(&from_guest)
        .and_then(|mut file| file.write_all(b"appended line\n"));
    let read = fs::read_to_string(&from_guest).unwrap_or_default();
    check(
        "append to file in mapped directory",
        appended.is_ok() && read == format!("{reply}appended line\n"),
        format!("{appended:?} {read:?}"),
    );
    let mut tail = String::new();
    let seeked = fs::File::open(&from_guest).and_then(|mut file| {
        file.seek(SeekFrom::Start(reply.len() as u64))?;
        file.read_to_string(&mut tail)
    });
    check(
        "seek and read file in mapped directory",
        seeked.is_ok() && tail == "appended line\n",
        format!("{seeked:?} {tail:?}"),
    );

    let scratch = format!("{dir}/scratch.txt");
    let made = fs::write(&scratch, "temporary").and_then(|()| fs::remove_file(&scratch));
    check(
        "create and remove file in mapped directory",
        made.is_ok() && fs::metadata(&scratch).is_err(),
        format!("{scratch}: {made:?}"),
    );
}

/// Spawn, share and join.
fn threads() {
    let answer = std::thread::spawn(|| 6 * 7).join();
    check(
        "spawn and join a thread",
        matches!(answer, Ok(42)),
        format!("{answer:?}"),
    );
    let total = Arc::new(Mutex::new(0u64));
    let workers: Vec<_> = (1..=4u64)
        .map(|n| {
            let total = Arc::clone(&total);
            std::thread::spawn(move || {
                let sum: u64 = (1..=1000 * n).sum();
                *total.lock().unwrap() += sum;
            })
        })
        .collect();
    let joined = workers.into_iter().all(|worker| worker.join().is_ok());
    let total = *total.lock().unwrap();
    let expected: u64 = (1..=4u64).map(|n| (1000 * n) * (1000 * n + 1) / 2).sum();
    check(
        "four threads share a mutex",
        joined && total == expected,
        format!("{total} != {expected}"),
    );
}
