//! The network card end to end over TAP (`-n tap:NAME`): a network namespace of its own holds a
//! TAP interface (10.0.5.1/24) and a DHCP server (dnsmasq) that gives the guest 10.0.5.3; uhyve
//! runs real Hermit applications (built by tests/hermit/build.sh) on that interface: `netecho`,
//! a `std::net` TCP echo server, which a client thread in the same namespace has send data back,
//! and `httpget`, an HTTP client, which fetches a page from a server thread on 10.0.5.1.
//!
//! Needs KVM, root (namespaces, TAP), `ip` and `dnsmasq`: without them the test is skipped with
//! a message; under `UHYVE_REQUIRE_KVM` (CI, which runs as root and installs dnsmasq-base) it
//! fails instead.
#![cfg(kvm)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;

use common::network::{check_echo, check_http_fetch, echo, refused_net_option};
use common::{UHYVE_BIN, hermit_app, kvm_or_skip};

/// The guest's address (the one the DHCP server offers) and the echo port.
const GUEST: &str = "10.0.5.3:7777";
/// The host's address on the TAP interface.
const HOST: &str = "10.0.5.1";

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
        // The tests of this file run in parallel, each in a namespace of its own.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let number = NEXT.fetch_add(1, Ordering::SeqCst);
        let namespace = format!("uhyve-net-{}-{number}", std::process::id());
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

fn run_uhyve(network: &Network, app: &Path, args: &[&str]) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &network.namespace, UHYVE_BIN])
        .arg("--net")
        .arg(format!("tap:{}", network.tap))
        .arg(app)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start uhyve")
}

fn network_app(test: &str, name: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) || !tools_or_skip(test) {
        return None;
    }
    hermit_app(test, "x86_64", name)
}

#[test]
fn a_hermit_tcp_server_answers_over_tap() {
    let Some(app) = network_app("a_hermit_tcp_server_answers_over_tap", "netecho") else {
        return;
    };
    let network = Network::new();
    let uhyve = run_uhyve(&network, &app, &[]);
    let guest: SocketAddr = GUEST.parse().unwrap();
    check_echo(uhyve, |data, ended| {
        network.inside(|| echo(guest, data, ended))
    });
}

#[test]
fn a_hermit_http_client_fetches_a_page_over_tap() {
    let Some(app) = network_app("a_hermit_http_client_fetches_a_page_over_tap", "httpget") else {
        return;
    };
    let network = Network::new();
    let listener = network.inside(|| TcpListener::bind((HOST, 0)).expect("bind the server"));
    check_http_fetch(listener, "/tap/page.txt", |server| {
        run_uhyve(&network, &app, &[&server.to_string(), "/tap/page.txt"])
    });
}

#[test]
fn a_second_run_on_the_same_tap_gets_the_address_again() {
    // dnsmasq offers one address for an hour: a card with a new MAC address would not get it
    // while the first run's lease lasts.
    let test = "a_second_run_on_the_same_tap_gets_the_address_again";
    let Some(app) = network_app(test, "httpget") else {
        return;
    };
    let network = Network::new();
    for run in ["/first", "/second"] {
        let listener = network.inside(|| TcpListener::bind((HOST, 0)).expect("bind the server"));
        check_http_fetch(listener, run, |server| {
            run_uhyve(&network, &app, &[&server.to_string(), run])
        });
    }
}

#[test]
fn an_unknown_backend_is_a_clear_error() {
    let stderr = refused_net_option("vde:switch");
    assert!(
        stderr.contains("invalid network backend 'vde:switch'"),
        "{stderr}"
    );
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
