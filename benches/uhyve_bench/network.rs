//! Measurement 6, the network card: TCP throughput host → guest and guest → host, and 64-byte
//! round trips, between this process and the Hermit application `netbench`
//! (tests/hermit/apps/src/bin/netbench.rs, built by tests/hermit/build.sh into
//! `$UHYVE_HERMIT_APPS`), over a TAP interface and over passt (`--net user`).
//!
//! - **TAP**: a network namespace of its own holds the TAP interface (10.0.5.1/24) and dnsmasq,
//!   which gives the guest 10.0.5.3 (as tests/net_tap.rs sets it up); uhyve runs in it through
//!   `ip netns exec`, the client on a thread that joined it (`setns`). Needs root, `ip`, `dnsmasq`.
//! - **passt**: `--net user,hostfwd=tcp:127.0.0.1:PORT-:7778` from the root namespace. Needs passt.
//!
//! The floor of each path is the same client against a server thread of this process speaking
//! the same protocol on the host's side of that path (10.0.5.1 in the namespace, 127.0.0.1 for
//! passt): the host kernel's TCP through loopback, no VM. The guest figures come from one uhyve
//! run per path, with `--stats` for the card's frames and the VM exits.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::scenarios::{BenchError, Settings, UHYVE_ENV};
use crate::stats::{Check, Table, median, ratio};

/// The environment variable naming the directory of the built Hermit applications.
const APPS_ENV: &str = "UHYVE_HERMIT_APPS";
const TAP: &str = "uhyvebench0";
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 1);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 3);
/// netbench's default port.
const GUEST_PORT: u16 = 7778;
/// The size of one round-trip message.
const MESSAGE: usize = 64;
/// Round trips before the timed ones.
const WARM_UP: usize = 3;
/// Bytes per floor transfer: loopback moves a guest-sized transfer in well under a millisecond,
/// where connection set-up would dominate.
const FLOOR_BYTES: u64 = 64 << 20;
/// How long the guest may take to boot and answer (every instruction is emulated here).
const BOOT_DEADLINE: Duration = Duration::from_secs(240);
/// Socket timeout of a measurement, and how long uhyve may take to exit after `q`.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

fn failure(what: impl Into<String>, message: impl Into<String>) -> BenchError {
    io_error(what)(io::Error::other(message.into()))
}

// --- The protocol (see netbench.rs), client and server. -------------------------------------

fn connect(address: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

fn command(byte: u8, bytes: u64) -> [u8; 9] {
    let mut head = [byte; 9];
    head[1..].copy_from_slice(&bytes.to_le_bytes());
    head
}

/// `r`: sends `bytes` bytes; the time until the server's count came back.
fn upload(address: SocketAddr, bytes: u64) -> io::Result<Duration> {
    let data = vec![0x5a_u8; 64 << 10];
    let mut stream = connect(address, IO_TIMEOUT)?;
    let start = Instant::now();
    stream.write_all(&command(b'r', bytes))?;
    let mut left = bytes;
    while left > 0 {
        let n = data.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        stream.write_all(&data[..n])?;
        left -= n as u64;
    }
    let mut count = [0u8; 8];
    stream.read_exact(&mut count)?;
    let elapsed = start.elapsed();
    match u64::from_le_bytes(count) {
        n if n == bytes => Ok(elapsed),
        n => Err(io::Error::other(format!("sent {bytes} bytes, {n} arrived"))),
    }
}

/// `s`: the time until `bytes` bytes and the end of the connection arrived.
fn download(address: SocketAddr, bytes: u64) -> io::Result<Duration> {
    let mut buffer = vec![0u8; 64 << 10];
    let mut stream = connect(address, IO_TIMEOUT)?;
    let start = Instant::now();
    stream.write_all(&command(b's', bytes))?;
    let mut got = 0u64;
    loop {
        match stream.read(&mut buffer)? {
            0 => break,
            n => got += n as u64,
        }
    }
    let elapsed = start.elapsed();
    match got {
        n if n == bytes => Ok(elapsed),
        n => Err(io::Error::other(format!(
            "asked for {bytes} bytes, got {n}"
        ))),
    }
}

/// `p`: `warm_up` untimed round trips, then the times of `count` more.
fn round_trips(
    address: SocketAddr,
    warm_up: usize,
    count: usize,
    timeout: Duration,
) -> io::Result<Vec<Duration>> {
    let mut stream = connect(address, timeout)?;
    stream.write_all(b"p")?;
    let (message, mut back) = ([0x5a_u8; MESSAGE], [0u8; MESSAGE]);
    let mut times = Vec::with_capacity(count);
    for i in 0..warm_up + count {
        let start = Instant::now();
        stream.write_all(&message)?;
        stream.read_exact(&mut back)?;
        if i >= warm_up {
            times.push(start.elapsed());
        }
    }
    stream.shutdown(Shutdown::Write)?;
    stream.read_to_end(&mut Vec::new())?;
    Ok(times)
}

fn quit(address: SocketAddr) -> io::Result<()> {
    connect(address, IO_TIMEOUT)?.write_all(b"q")
}

fn read_u64(stream: &mut TcpStream) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    stream.read_exact(&mut bytes)?;
    Ok(u64::from_le_bytes(bytes))
}

/// The floor's server: netbench's protocol on `listener`, until `q`.
fn serve(listener: TcpListener) -> JoinHandle<io::Result<()>> {
    std::thread::spawn(move || {
        let mut buffer = vec![0u8; 64 << 10];
        loop {
            let (mut stream, _) = listener.accept()?;
            stream.set_nodelay(true)?;
            let mut byte = [0u8; 1];
            if stream.read(&mut byte)? == 0 {
                continue;
            }
            match byte[0] {
                b'r' => {
                    let (wanted, mut count) = (read_u64(&mut stream)?, 0u64);
                    while count < wanted {
                        match stream.read(&mut buffer)? {
                            0 => break,
                            n => count += n as u64,
                        }
                    }
                    stream.write_all(&count.to_le_bytes())?;
                }
                b's' => {
                    let mut left = read_u64(&mut stream)?;
                    while left > 0 {
                        let n = buffer
                            .len()
                            .min(usize::try_from(left).unwrap_or(usize::MAX));
                        stream.write_all(&buffer[..n])?;
                        left -= n as u64;
                    }
                }
                b'p' => {
                    let mut message = [0u8; MESSAGE];
                    while stream.read_exact(&mut message).is_ok() {
                        stream.write_all(&message)?;
                    }
                }
                b'q' => return Ok(()),
                _ => {}
            }
        }
    })
}

/// The three figures of one server.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// Host → guest, MB/s (10^6 bytes).
    up: f64,
    /// Guest → host, MB/s.
    down: f64,
    /// Median round trip, µs.
    round_trip: f64,
    /// The timed intervals added up.
    busy: Duration,
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// `reps` uploads and downloads of `bytes` bytes (medians) and `pings` round trips (median).
fn measure(address: SocketAddr, bytes: u64, reps: usize, pings: usize) -> io::Result<Figures> {
    let (mut up, mut down, mut busy) = (Vec::new(), Vec::new(), Duration::ZERO);
    for _ in 0..reps.max(1) {
        let time = upload(address, bytes)?;
        up.push(mb_per_s(bytes, time));
        busy += time;
        let time = download(address, bytes)?;
        down.push(mb_per_s(bytes, time));
        busy += time;
    }
    let times = round_trips(address, WARM_UP, pings.max(1), IO_TIMEOUT)?;
    busy += times.iter().sum::<Duration>();
    let micros: Vec<f64> = times.iter().map(|t| t.as_secs_f64() * 1e6).collect();
    Ok(Figures {
        up: median(&up),
        down: median(&down),
        round_trip: median(&micros),
        busy,
    })
}

/// The floor: [`measure`] against [`serve`] on `listener`.
fn floor(listener: TcpListener, settings: &Settings) -> Result<Figures, BenchError> {
    let address = listener
        .local_addr()
        .map_err(io_error("the floor's address"))?;
    let server = serve(listener);
    let figures = measure(
        address,
        FLOOR_BYTES,
        settings.net_floor_reps,
        settings.net_pings,
    );
    let stopped = quit(address);
    let served = server
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the server thread panicked")));
    let what = format!("floor server on {address}");
    let figures = figures.map_err(io_error(what.clone()))?;
    stopped.and(served).map_err(io_error(what))?;
    Ok(figures)
}

// --- uhyve running netbench. ------------------------------------------------------------------

/// uhyve's `--stats` about the card, and what else it said.
#[derive(Debug, Default)]
struct RunReport {
    /// Frames and dropped frames, guest → host and host → guest.
    frames: [u64; 2],
    dropped: [u64; 2],
    exits: u64,
    /// Spawn to exit.
    wall: Duration,
    /// During the measurement: CPU time of the vCPU threads (the guest's instructions, emulated
    /// by the host kernel, and the exits) and user-space CPU time of all of uhyve's threads
    /// (uhyve's own code), each as a share of the wall time.
    vcpu_busy: f64,
    uhyve_user: f64,
    /// Lines worth a look: guest complaints, uhyve's warnings and errors, an odd exit.
    odd: Vec<String>,
}

/// A running uhyve; killed on drop if it still runs.
struct Guest {
    child: Child,
    started: Instant,
    output: Option<(JoinHandle<String>, JoinHandle<String>)>,
}

fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

impl Guest {
    fn start(mut command: Command) -> Result<Self, BenchError> {
        for name in UHYVE_ENV {
            command.env_remove(name);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = command.spawn().map_err(io_error("starting uhyve"))?;
        let output = child
            .stdout
            .take()
            .zip(child.stderr.take())
            .map(|(out, err)| (collect(out), collect(err)));
        Ok(Self {
            child,
            started,
            output,
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until netbench answers a round trip at `address`.
    fn wait_ready(&mut self, address: SocketAddr) -> Result<(), BenchError> {
        loop {
            let error = match round_trips(address, 0, 1, Duration::from_secs(20)) {
                Ok(_) => return Ok(()),
                Err(error) => error,
            };
            if !self.running() {
                let report = self.finish();
                return Err(failure(
                    "uhyve netbench",
                    format!(
                        "uhyve ended before netbench answered: {}",
                        report.odd.join("; ")
                    ),
                ));
            }
            if self.started.elapsed() > BOOT_DEADLINE {
                return Err(failure(
                    "uhyve netbench",
                    format!("no answer from {address} in {BOOT_DEADLINE:?}: {error}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits for uhyve to exit (killing it after [`IO_TIMEOUT`]) and reads its report.
    fn finish(&mut self) -> RunReport {
        let mut report = RunReport::default();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if self.started.elapsed() < BOOT_DEADLINE + IO_TIMEOUT => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                _ => {
                    report
                        .odd
                        .push("uhyve did not exit after `q`: killed".to_owned());
                    let _ = self.child.kill();
                    break self.child.wait().ok();
                }
            }
        };
        report.wall = self.started.elapsed();
        if let Some(status) = status.filter(|s| !s.success()) {
            report.odd.push(format!("uhyve: {status}"));
        }
        let (stdout, stderr) = self.output.take().map_or_else(Default::default, |(o, e)| {
            (o.join().unwrap_or_default(), e.join().unwrap_or_default())
        });
        let numbers = |text: &str| -> Vec<u64> {
            text.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix("  guest to host: ") {
                let n = numbers(rest);
                report.frames[0] = n.first().copied().unwrap_or(0);
                report.dropped[0] = n.get(2).copied().unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("  host to guest: ") {
                let n = numbers(rest);
                report.frames[1] = n.first().copied().unwrap_or(0);
                report.dropped[1] = n.get(2).copied().unwrap_or(0);
            } else if let Some(rest) = line.strip_prefix("All VM exits: ") {
                report.exits = numbers(rest).first().copied().unwrap_or(0);
            } else if line.starts_with("netbench: ") && !line.contains("listening on") {
                report.odd.push(line.to_owned());
            }
        }
        // The emulation fallback's one warning is expected for Hermit on this host.
        report.odd.extend(
            stderr
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.contains("cannot execute"))
                .map(str::to_owned),
        );
        report
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Boots `command` (uhyve on netbench), measures it at `address` and has it quit.
fn measure_guest(
    command: Command,
    address: SocketAddr,
    settings: &Settings,
) -> Result<(Figures, RunReport), BenchError> {
    let mut guest = Guest::start(command)?;
    guest.wait_ready(address)?;
    let (before, start) = (thread_times(guest.child.id()), Instant::now());
    let figures = measure(
        address,
        settings.net_bytes,
        settings.net_reps,
        settings.net_pings,
    )
    .map_err(io_error(format!("netbench at {address}")))?;
    let (after, elapsed) = (thread_times(guest.child.id()), start.elapsed());
    quit(address).map_err(io_error(format!("stopping netbench at {address}")))?;
    let mut report = guest.finish();
    let share = |pick: &dyn Fn(&ThreadTimes) -> f64| {
        let sum = |times: &[ThreadTimes]| times.iter().map(pick).sum::<f64>();
        (sum(&after) - sum(&before)) / elapsed.as_secs_f64()
    };
    report.vcpu_busy = share(&|t| {
        if t.name.starts_with("vcpu") {
            t.user + t.system
        } else {
            0.0
        }
    });
    report.uhyve_user = share(&|t| t.user);
    Ok((figures, report))
}

/// One thread's name and CPU time so far, in seconds.
struct ThreadTimes {
    name: String,
    user: f64,
    system: f64,
}

/// The threads of process `pid` (/proc/PID/task/*/stat); empty if unreadable.
fn thread_times(pid: u32) -> Vec<ThreadTimes> {
    // SAFETY: sysconf(3) has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("stat")).ok()?;
            // "TID (NAME) STATE …": utime and stime are the 12th and 13th fields after NAME.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let time = |i: usize| fields.get(i)?.parse::<f64>().ok().map(|t| t / ticks);
            Some(ThreadTimes {
                name,
                user: time(11)?,
                system: time(12)?,
            })
        })
        .collect()
}

// --- The TAP path's network namespace. ----------------------------------------------------------

fn ip(args: &[&str]) -> Result<(), BenchError> {
    let what = format!("ip {}", args.join(" "));
    let status = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .status()
        .map_err(io_error(what.clone()))?;
    if status.success() {
        Ok(())
    } else {
        Err(failure(what, status.to_string()))
    }
}

/// A network namespace with the TAP interface and dnsmasq; removed on drop.
struct Namespace {
    name: String,
    dhcp: Option<Child>,
}

impl Namespace {
    fn new() -> Result<Self, BenchError> {
        let mut namespace = Self {
            name: format!("uhyvebench-{}", std::process::id()),
            dhcp: None,
        };
        ip(&["netns", "add", &namespace.name])?;
        let host = format!("{HOST_IP}/24");
        for args in [
            &["link", "set", "lo", "up"][..],
            &["tuntap", "add", "dev", TAP, "mode", "tap"],
            &["addr", "add", &host, "dev", TAP],
            &["link", "set", TAP, "up"],
        ] {
            ip(&[&["netns", "exec", &namespace.name, "ip"], args].concat())?;
        }
        let dhcp = Command::new("ip")
            .args(["netns", "exec", &namespace.name, "dnsmasq"])
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
            ])
            .args(["--bind-interfaces", &format!("--interface={TAP}")])
            .arg(format!(
                "--dhcp-range={GUEST_IP},{GUEST_IP},255.255.255.0,1h"
            ))
            .args(["--leasefile-ro", "--pid-file"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(io_error("starting dnsmasq"))?;
        namespace.dhcp = Some(dhcp);
        Ok(namespace)
    }

    /// Runs `body` on a thread inside the namespace.
    fn inside<T: Send>(
        &self,
        body: impl FnOnce() -> Result<T, BenchError> + Send,
    ) -> Result<T, BenchError> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).map_err(io_error(path.clone()))?;
                    // SAFETY: setns(2) on an open namespace descriptor; it moves this thread only.
                    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io_error(format!("setns {path}"))(io::Error::last_os_error()));
                    }
                    body()
                })
                .join()
                .unwrap_or_else(|_| Err(failure(path.clone(), "the thread panicked")))
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        if let Some(mut dhcp) = self.dhcp.take() {
            let _ = dhcp.kill();
            let _ = dhcp.wait();
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

// --- The measurement. -------------------------------------------------------------------------

/// One path's results.
struct PathResult {
    name: &'static str,
    guest: Figures,
    floor: Figures,
    report: RunReport,
}

/// Why the TAP path cannot run here, if it cannot.
fn tap_missing() -> Option<&'static str> {
    let runs = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        Some("not root (network namespaces and TAP interfaces need it)")
    } else if !runs("ip", "-V") {
        Some("`ip` (iproute2) is missing")
    } else if !runs("dnsmasq", "--version") {
        Some("`dnsmasq` is missing (apt-get install dnsmasq-base)")
    } else {
        None
    }
}

fn tap_path(uhyve: &Path, app: &Path, settings: &Settings) -> Result<PathResult, BenchError> {
    let namespace = Namespace::new()?;
    let (guest, floor) = namespace.inside(|| {
        let listener = TcpListener::bind((HOST_IP, 0)).map_err(io_error("binding the floor"))?;
        let floor = floor(listener, settings)?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &namespace.name])
            .arg(uhyve)
            .args(["--net", &format!("tap:{TAP}"), "--stats"])
            .arg(app);
        let guest = measure_guest(command, (GUEST_IP, GUEST_PORT).into(), settings)?;
        Ok((guest, floor))
    })?;
    Ok(PathResult {
        name: "TAP",
        guest: guest.0,
        floor,
        report: guest.1,
    })
}

fn passt_path(uhyve: &Path, app: &Path, settings: &Settings) -> Result<PathResult, BenchError> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error("binding the floor"))?;
    let floor = floor(listener, settings)?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map_err(io_error("finding a free port"))?
        .port();
    let mut command = Command::new(uhyve);
    command
        .arg("--net")
        .arg(format!("user,hostfwd=tcp:127.0.0.1:{port}-:{GUEST_PORT}"))
        .arg("--stats")
        .arg(app);
    let (guest, report) = measure_guest(command, (Ipv4Addr::LOCALHOST, port).into(), settings)?;
    Ok(PathResult {
        name: "passt",
        guest,
        floor,
        report,
    })
}

/// A ratio far from 1 in a readable form.
fn show_ratio(value: f64) -> String {
    if value.is_finite() && value != 0.0 && !(0.001..10_000.0).contains(&value.abs()) {
        format!("{value:.2e}")
    } else {
        format!("{value:.4}")
    }
}

/// The measurement's tables and notes, or a reason why it cannot run here.
pub enum Outcome {
    Skipped(String),
    Done(Vec<Table>, String),
}

/// Measurement 6: runs both paths (each skipped with a reason when its tools are missing).
/// `floor_exit_us` is the floor's µs per exit (measurement 2), to estimate uhyve's share.
pub fn run(
    uhyve: &Path,
    settings: &Settings,
    floor_exit_us: f64,
    checks: &mut Vec<Check>,
) -> Result<Outcome, BenchError> {
    let Some(dir) = std::env::var_os(APPS_ENV) else {
        return Ok(Outcome::Skipped(format!(
            "{APPS_ENV} is unset (tests/hermit/build.sh builds netbench)"
        )));
    };
    let app = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(dir)
        .join("x86_64/netbench");
    if !app.is_file() {
        return Ok(Outcome::Skipped(format!(
            "{} is missing (run tests/hermit/build.sh)",
            app.display()
        )));
    }
    let mut results = Vec::new();
    let mut notes = Vec::new();
    match tap_missing() {
        Some(why) => notes.push(format!("TAP: skipped: {why}.")),
        None => {
            eprintln!("uhyve_bench:   TAP");
            results.push(tap_path(uhyve, &app, settings)?);
        }
    }
    let passt = Command::new("passt")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if passt {
        eprintln!("uhyve_bench:   passt");
        results.push(passt_path(uhyve, &app, settings)?);
    } else {
        notes.push("passt: skipped: passt is not installed (apt-get install passt).".to_owned());
    }
    if results.is_empty() {
        return Ok(Outcome::Skipped(notes.join(" ")));
    }

    let kib = settings.net_bytes >> 10;
    let mut figures = Table::new(&[
        "path",
        "measurement",
        "uhyve + netbench",
        "floor (host TCP)",
        "ratio to floor",
    ]);
    let mut frames = Table::new(&[
        "path",
        "frames guest → host",
        "frames host → guest",
        "dropped (→ host / → guest)",
        "VM exits",
        "exits / frame",
        "µs / frame",
        "exit time / wall",
        "vCPU busy / wall",
        "uhyve user CPU / wall",
    ]);
    for result in &results {
        let (guest, floor) = (result.guest, result.floor);
        let rows = [
            ("host → guest MB/s", guest.up, floor.up),
            ("guest → host MB/s", guest.down, floor.down),
            (
                "64-byte round trip µs (median)",
                guest.round_trip,
                floor.round_trip,
            ),
        ];
        for (label, guest, floor) in rows {
            let precision = if guest < 10.0 { 3 } else { 0 };
            figures.row(vec![
                result.name.to_owned(),
                label.to_owned(),
                format!("{guest:.precision$}"),
                format!("{floor:.1}"),
                show_ratio(ratio(guest, floor)),
            ]);
            if result.name == "TAP" && label.ends_with("MB/s") {
                let relative = ratio(guest, floor);
                checks.push(Check::at_least(
                    &format!(
                        "network TAP bulk {} ≥ 0.8× floor",
                        label.trim_end_matches(" MB/s")
                    ),
                    relative,
                    0.8,
                    format!("{guest:.3} / {floor:.0} MB/s = {}×", show_ratio(relative)),
                ));
            }
        }
        let report = &result.report;
        let all = report.frames[0] + report.frames[1];
        let per_frame = guest.busy.as_secs_f64() * 1e6 / all.max(1) as f64;
        let exit_share = report.exits as f64 * floor_exit_us / 1e6 / report.wall.as_secs_f64();
        frames.row(vec![
            result.name.to_owned(),
            report.frames[0].to_string(),
            report.frames[1].to_string(),
            format!("{} / {}", report.dropped[0], report.dropped[1]),
            report.exits.to_string(),
            format!("{:.2}", ratio(report.exits as f64, all as f64)),
            format!("{per_frame:.0}"),
            show_ratio(exit_share),
            format!("{:.3}", report.vcpu_busy),
            show_ratio(report.uhyve_user),
        ]);
        for line in &report.odd {
            notes.push(format!("{}: uhyve said: `{}`", result.name, line.trim()));
        }
    }
    let reps = settings.net_reps;
    let floor_mib = FLOOR_BYTES >> 20;
    let mut note = format!(
        "uhyve + netbench: one uhyve run per path (`--stats`); median of {reps} transfers of \
         {kib} KiB each way and of {} round trips (after {WARM_UP} untimed). Floor: a server \
         thread of the benchmark speaking the same protocol on the host's side of the path \
         (10.0.5.1 in the TAP's namespace, 127.0.0.1 for passt), median of {} transfers of \
         {floor_mib} MiB each way and of the same number of round trips. MB/s = 10^6 bytes/s. \
         Frames and exits are uhyve's `--stats` for the whole run (boot and DHCP included); \
         µs / frame = the timed intervals added up / all frames; exit time / wall = VM exits × \
         {floor_exit_us:.2} µs (the floor's exit, measurement 2) / uhyve's wall time. vCPU busy \
         and uhyve user CPU, from /proc/PID/task/*/stat over the measurement (after boot): the \
         vCPU thread's CPU time (the guest's instructions, emulated by the host kernel, and its \
         exits) and the user-space CPU time of all of uhyve's threads (uhyve's own code), per \
         wall second.",
        settings.net_pings, settings.net_floor_reps
    );
    for line in notes {
        note.push('\n');
        note.push('\n');
        note.push_str(&line);
    }
    Ok(Outcome::Done(vec![figures, frames], note))
}
