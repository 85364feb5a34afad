//! The network card end to end without root (`--net user` and `--net passt:SOCKET`): uhyve
//! connects the card to passt, which gives the guest the host's address by DHCP and forwards
//! host ports to it. The real Hermit applications of tests/hermit/build.sh run on it: `netecho`
//! (a TCP echo server) is reached through a forwarded port on 127.0.0.1, and `httpget` (an HTTP
//! client) fetches a page from a server on the host's loopback through the gateway address,
//! which passt maps to the host. No interface is created, nothing needs privileges. The same
//! tests run on aarch64 KVM (inside the emulated Arm machine of .ci/aarch64-kvm, with Debian's
//! arm64 passt), where the card sits behind the device tree's PCI host bridge.
//!
//! Needs KVM and passt (`apt-get install passt`): without them the tests are skipped with a
//! message; under `UHYVE_REQUIRE_KVM` (CI) they fail instead.
#![cfg(any(kvm, kvm_arm))]

mod common;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::children::free_port;
use common::network::{
    check_echo, check_http_fetch, echo, passt_or_skip, refused_net_option, report,
};
use common::{UHYVE_BIN, hermit_app, kvm_or_skip};

fn network_app(test: &str, name: &str) -> Option<PathBuf> {
    if !kvm_or_skip(test) || !passt_or_skip(test) {
        return None;
    }
    hermit_app(test, std::env::consts::ARCH, name)
}

/// uhyve with `--net` and `options` (words after the network backend), running `app` with
/// `args`.
fn uhyve(options: &str, app: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(UHYVE_BIN);
    command
        .arg("--net")
        .args(options.split(' '))
        .arg(app)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Has the echo server behind `uhyve`, reached on 127.0.0.1:`port`, echo 20,000 bytes.
fn check_echo_on(uhyve: Child, port: u16) -> Output {
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    check_echo(uhyve, |data, ended| echo(address, data, ended))
}

#[test]
fn a_hermit_tcp_server_answers_through_a_forwarded_port() {
    let Some(app) = network_app(
        "a_hermit_tcp_server_answers_through_a_forwarded_port",
        "netecho",
    ) else {
        return;
    };
    let port = free_port();
    let net = format!("user,hostfwd=tcp:127.0.0.1:{port}-:7777");
    let child = uhyve(&format!("{net} --stats"), &app, &[])
        .spawn()
        .expect("start uhyve");
    let output = check_echo_on(child, port);
    // --stats counts the card's traffic: at least the 20,000 bytes each way, in frames.
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = |direction: &str| -> (u64, u64) {
        let prefix = format!("  {direction}: ");
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {direction} line in\n{stdout}"));
        let numbers: Vec<u64> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect();
        (numbers[0], numbers[1])
    };
    assert!(
        stdout.contains("Network card (virtio-net on passt (started by uhyve)):"),
        "{stdout}"
    );
    for direction in ["guest to host", "host to guest"] {
        let (frames, bytes) = line(direction);
        assert!(
            frames >= 15 && bytes > 20_000,
            "{direction}: {frames} frames, {bytes} bytes\n{stdout}"
        );
    }
    // On aarch64 the kernel reads the vendor id of 8192 PCI slots at boot: the 8160 on the
    // empty buses 1 to 255 read all-ones from memory, without an exit each.
    if cfg!(target_arch = "aarch64") {
        let exits: u64 = stdout
            .lines()
            .find_map(|line| line.strip_prefix("All VM exits: "))
            .and_then(|count| count.trim().parse().ok())
            .unwrap_or_else(|| panic!("no exit count in\n{stdout}"));
        assert!(exits < 2000, "{exits} VM exits\n{stdout}");
    }
}

/// The IPv4 address of the host's default gateway (which passt gives the guest as its own
/// gateway and maps to the host's loopback), from /proc/net/route.
fn default_gateway() -> Option<Ipv4Addr> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (destination, gateway) = (fields.get(1)?, fields.get(2)?);
        (*destination == "00000000")
            .then(|| u32::from_str_radix(gateway, 16).ok())
            .flatten()
            .map(|gateway| Ipv4Addr::from(gateway.to_le_bytes()))
    })
}

#[test]
fn a_hermit_http_client_reaches_the_host_through_the_gateway() {
    let test = "a_hermit_http_client_reaches_the_host_through_the_gateway";
    let Some(app) = network_app(test, "httpget") else {
        return;
    };
    let gateway = default_gateway().unwrap_or_else(|| {
        panic!("{test}: the host has no default IPv4 route, which passt needs as its template")
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the server");
    check_http_fetch(listener, "/user/page.txt", |server| {
        let target = SocketAddr::from((gateway, server.port())).to_string();
        uhyve("user", &app, &[&target, "/user/page.txt"])
            .spawn()
            .expect("start uhyve")
    });
}

/// passt started by hand in the foreground, listening on a socket in a directory of its own;
/// killed on drop.
struct RunningPasst {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningPasst {
    fn start(forward_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("a temp directory");
        // passt drops root for nobody, who must be able to create the socket.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .expect("open the directory to passt");
        let socket = dir.path().join("passt.socket");
        let child = Command::new("passt")
            .args(["--foreground", "--quiet", "--socket"])
            .arg(&socket)
            .arg("--tcp-ports")
            .arg(format!("127.0.0.1/{forward_port}:7777"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start passt");
        let started = Instant::now();
        while !socket.exists() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "passt made no socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for RunningPasst {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_running_passt_is_reached_through_its_socket() {
    let Some(app) = network_app("a_running_passt_is_reached_through_its_socket", "netecho") else {
        return;
    };
    let port = free_port();
    let passt = RunningPasst::start(port);
    let net = format!("passt:{}", passt.socket.display());
    let child = uhyve(&net, &app, &[]).spawn().expect("start uhyve");
    check_echo_on(child, port);
}

/// uhyve on the small `hello` guest with `--net NET`, its environment changed by `setup`.
fn hello_with(net: &str, setup: impl FnOnce(&mut Command)) -> Output {
    let mut command = uhyve(net, &common::guest("hello"), &[]);
    setup(&mut command);
    command.output().expect("run uhyve")
}

fn assert_one_line_error(output: &Output, expected: &str) {
    let report = report(output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(stderr.contains(expected), "{report}");
    assert_eq!(stderr.trim().lines().count(), 1, "{report}");
    assert!(output.stdout.is_empty(), "the guest ran\n{report}");
}

#[test]
fn a_missing_passt_is_one_clear_line() {
    if !kvm_or_skip("a_missing_passt_is_one_clear_line") {
        return;
    }
    let output = hello_with("user", |command| {
        command.env("PATH", "/nonexistent");
    });
    assert_one_line_error(&output, "--net user needs the program passt");
}

#[test]
fn a_forwarded_port_in_use_is_one_clear_line() {
    if !kvm_or_skip("a_forwarded_port_in_use_is_one_clear_line")
        || !passt_or_skip("a_forwarded_port_in_use_is_one_clear_line")
    {
        return;
    }
    let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a port");
    let port = taken.local_addr().unwrap().port();
    let output = hello_with(&format!("user,hostfwd=tcp:127.0.0.1:{port}-:80"), |_| {});
    assert_one_line_error(&output, "--net user: passt failed to start");
    assert_one_line_error(&output, &format!("127.0.0.1/{port}:80"));
}

#[test]
fn a_missing_passt_socket_is_one_clear_line() {
    if !kvm_or_skip("a_missing_passt_socket_is_one_clear_line") {
        return;
    }
    let output = hello_with("passt:/nonexistent/passt.socket", |_| {});
    assert_one_line_error(
        &output,
        "--net passt:/nonexistent/passt.socket: cannot connect to passt's socket",
    );
}

#[test]
fn a_malformed_port_forwarding_is_refused_by_the_command_line() {
    let stderr = refused_net_option("user,hostfwd=tcp:8080:80");
    assert!(
        stderr.contains("invalid port forwarding 'tcp:8080:80'"),
        "{stderr}"
    );
}
