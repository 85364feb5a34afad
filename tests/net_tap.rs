//! The network card end to end over TAP (`-n tap:NAME`): a network namespace of its own holds a
//! TAP interface (10.0.5.1/24) and a DHCP server (dnsmasq) that gives the guest 10.0.5.3; uhyve
//! runs the real Hermit application `netecho` (a `std::net` TCP echo server, built by
//! tests/hermit/build.sh) on that interface, and a client thread in the same namespace connects
//! to it, sends data and reads it back.
//!
//! Needs KVM, root (namespaces, TAP), `ip` and `dnsmasq`: without them the test is skipped with
//! a message; under `UHYVE_REQUIRE_KVM` (CI, which runs as root and installs dnsmasq-base) it
//! fails instead.
#![cfg(kvm)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{UHYVE_BIN, hermit_app, kvm_or_skip};

/// The guest's address (the one the DHCP server offers) and the echo port.
const GUEST: &str = "10.0.5.3:7777";
/// How long the guest may take to boot, get its address and answer (every instruction is
/// emulated by the host kernel on this project's machines).
const DEADLINE: Duration = Duration::from_secs(240);

fn tools_or_skip(name: &str) -> bool {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let why = if !root {
        "not root (network namespaces and TAP interfaces need it)"
    } else if !runs("ip", "-V") {
        "`ip` (iproute2) is missing"
    } else if !runs("dnsmasq", "--version") {
        "`dnsmasq` is missing (apt-get install dnsmasq-base)"
    } else {
        return true;
    };
    if std::env::var_os("UHYVE_REQUIRE_KVM").is_some() {
        panic!("{name}: {why}, but UHYVE_REQUIRE_KVM is set");
    }
    eprintln!("skipping {name}: {why}");
    false
}

/// A network namespace with a TAP interface and a DHCP server, removed on drop.
struct Network {
    namespace: String,
    tap: String,
    dhcp: Child,
}

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().expect("run ip");
    assert!(status.success(), "ip {}", args.join(" "));
}

impl Network {
    fn new() -> Self {
        let namespace = format!("uhyve-net-{}", std::process::id());
        let tap = "uhyvetap0".to_string();
        ip(&["netns", "add", &namespace]);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &namespace, "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        exec(&["link", "set", "lo", "up"]);
        exec(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        exec(&["addr", "add", "10.0.5.1/24", "dev", &tap]);
        exec(&["link", "set", &tap, "up"]);
        let dhcp = Command::new("ip")
            .args([
                "netns",
                "exec",
                &namespace,
                "dnsmasq",
                "--keep-in-foreground",
            ])
            .args(["--no-resolv", "--no-hosts", "--port=0", "--bind-interfaces"])
            .arg(format!("--interface={tap}"))
            .args([
                "--dhcp-range=10.0.5.3,10.0.5.3,255.255.255.0,1h",
                "--leasefile-ro",
            ])
            .arg("--pid-file")
            .stdout(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        Self {
            namespace,
            tap,
            dhcp,
        }
    }

    /// Runs `body` on a thread inside the namespace.
    fn inside<T: Send>(&self, body: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.namespace);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("open the namespace");
                    // SAFETY: setns(2) on a namespace descriptor, for this thread only.
                    let joined = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(joined, 0, "setns({path})");
                    body()
                })
                .join()
                .expect("the client thread")
        })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = self.dhcp.kill();
        let _ = self.dhcp.wait();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.namespace])
            .status();
    }
}

/// Connects to the guest (retrying while it boots and gets its address, until `ended`), sends
/// `data` and returns what came back.
fn echo(data: &[u8], ended: &AtomicBool) -> Result<Vec<u8>, String> {
    let address: SocketAddr = GUEST.parse().unwrap();
    let started = Instant::now();
    let mut stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(2)) {
            Ok(stream) => break stream,
            Err(error) if started.elapsed() > DEADLINE || ended.load(Ordering::SeqCst) => {
                return Err(format!("no connection to {GUEST}: {error}"));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    };
    stream
        .set_read_timeout(Some(DEADLINE))
        .map_err(|e| e.to_string())?;
    // All of it, then all of it back, then the end: the server echoes while the connection is
    // open in both directions.
    stream.write_all(data).map_err(|e| e.to_string())?;
    let mut back = vec![0u8; data.len()];
    stream
        .read_exact(&mut back)
        .map_err(|e| format!("reading the echo: {e}"))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).map_err(|e| e.to_string())?;
    back.extend_from_slice(&rest);
    Ok(back)
}

fn run_uhyve(network: &Network, app: &Path) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &network.namespace, UHYVE_BIN])
        .arg("--net")
        .arg(format!("tap:{}", network.tap))
        .arg(app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start uhyve")
}

fn netecho(test: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) || !tools_or_skip(test) {
        return None;
    }
    hermit_app(test, "x86_64", "netecho")
}

#[test]
fn a_hermit_tcp_server_answers_over_tap() {
    let Some(app) = netecho("a_hermit_tcp_server_answers_over_tap") else {
        return;
    };
    let network = Network::new();
    let uhyve = run_uhyve(&network, &app);
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let ended = AtomicBool::new(false);
    let (echoed, output) = std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let output = uhyve.wait_with_output().expect("wait for uhyve");
            ended.store(true, Ordering::SeqCst);
            output
        });
        let echoed = network.inside(|| echo(&data, &ended));
        (echoed, waiter.join().expect("the waiting thread"))
    });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report = format!("--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}");
    let echoed = echoed.unwrap_or_else(|error| panic!("{error}\n{report}"));
    assert!(
        echoed == data,
        "the echo differs ({} bytes)\n{report}",
        echoed.len()
    );
    assert!(stdout.contains("netecho: echoed 20000 bytes"), "{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");
}

#[test]
fn an_unknown_backend_is_a_clear_error() {
    let output = Command::new(UHYVE_BIN)
        .args(["--net", "vde:switch", "nonexistent-kernel"])
        .output()
        .expect("run uhyve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0));
    assert!(
        stderr.contains("invalid network backend 'vde:switch'"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_tap_that_cannot_be_opened_is_one_clear_line() {
    if !kvm_or_skip("a_tap_that_cannot_be_opened_is_one_clear_line") {
        return;
    }
    // A name the kernel refuses as an interface name (a space): one line, before the guest runs.
    let output = Command::new(UHYVE_BIN)
        .args(["--net", "tap:bad name"])
        .arg(common::guest("hello"))
        .output()
        .expect("run uhyve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot attach to TAP interface bad name"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(output.stdout.is_empty(), "the guest ran");
}
