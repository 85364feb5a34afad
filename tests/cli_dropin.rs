//! Upstream uhyve's command-line habits, end to end on KVM: the configuration file (found through
//! `--config`, `HERMIT_CONFIG`, `./uhyve.toml` and `$XDG_CONFIG_HOME`, and its precedence under
//! the environment and the command line), a bad configuration file, a `--` after the kernel, the
//! warning for a missing mapped host path, and an accepted option that has no effect here.

mod common;

use std::path::Path;

use common::{Uhyve, kvm_or_skip};

/// The guest RAM size the boot_info guest reports (`phys_addr_end`, RAM starting at 0).
fn reported_memory(run: &common::Run) -> Option<u64> {
    let field = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("phys_addr_end="))?;
    u64::from_str_radix(field.strip_prefix("0x")?, 16).ok()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const MIB: u64 = 1 << 20;

/// A boot_info run in `dir` with nothing from the test's own environment that uhyve reads.
fn boot_info_in(dir: &Path) -> Uhyve {
    Uhyve::guest("boot_info")
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(dir)
}

#[test]
fn the_config_file_sits_under_the_environment_and_the_command_line() {
    if !kvm_or_skip("the_config_file_sits_under_the_environment_and_the_command_line") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cwd, home) = (dir.path().join("cwd"), dir.path().join("config-home"));
    std::fs::create_dir_all(&cwd).unwrap();
    let memory = |run: common::Run| {
        run.assert_all_ok();
        reported_memory(&run).unwrap_or_else(|| panic!("no phys_addr_end\n{}", run.report()))
    };
    // No file anywhere: the default.
    let run = boot_info_in(&cwd).env("XDG_CONFIG_HOME", home.to_str().unwrap());
    assert_eq!(memory(run.run()), 64 * MIB);
    // $XDG_CONFIG_HOME/uhyve/uhyve.toml.
    write(
        &home.join("uhyve/uhyve.toml"),
        "[memory]\nmemory_size = \"34MiB\"\n",
    );
    let run = boot_info_in(&cwd).env("XDG_CONFIG_HOME", home.to_str().unwrap());
    assert_eq!(memory(run.run()), 34 * MIB);
    // ./uhyve.toml comes first.
    write(
        &cwd.join("uhyve.toml"),
        "[memory]\nmemory_size = \"32MiB\"\n",
    );
    let run = boot_info_in(&cwd).env("XDG_CONFIG_HOME", home.to_str().unwrap());
    assert_eq!(memory(run.run()), 32 * MIB);
    // HERMIT_CONFIG and --config name another file instead.
    let other = dir.path().join("other.toml");
    write(&other, "[memory]\nmemory_size = 37748736\n");
    let run = boot_info_in(&cwd).env("HERMIT_CONFIG", other.to_str().unwrap());
    assert_eq!(memory(run.run()), 36 * MIB);
    let run = boot_info_in(&cwd).opts(["--config", other.to_str().unwrap()]);
    assert_eq!(memory(run.run()), 36 * MIB);
    // The environment wins over the file, the command line over both.
    let run = boot_info_in(&cwd).env("HERMIT_MEMORY_SIZE", "48M");
    assert_eq!(memory(run.run()), 48 * MIB);
    let run = boot_info_in(&cwd)
        .env("HERMIT_MEMORY_SIZE", "48M")
        .opts(["-m", "40MiB"]);
    assert_eq!(memory(run.run()), 40 * MIB);
}

#[test]
fn a_bad_config_file_is_one_line_and_no_run() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("uhyve.toml");
    write(&config, "[uhyve]\nstats = true\n\n[cpu]\ncpus = 2\n");
    // No KVM needed: uhyve stops before creating the VM.
    let run = Uhyve::guest("boot_info").current_dir(dir.path()).run();
    assert_eq!(run.code(), 1, "{}", run.report());
    assert!(run.stdout.is_empty(), "{}", run.report());
    let message = run.stderr.trim_end();
    assert!(!message.contains('\n'), "{}", run.report());
    assert!(
        message.starts_with("uhyve: error: config file "),
        "{message}"
    );
    assert!(
        message.contains("uhyve.toml, line 5, cpu.cpus:"),
        "{message}"
    );
    assert!(message.contains("unknown field `cpus`"), "{message}");
    // A file named with --config must exist.
    let run = Uhyve::guest("boot_info")
        .opts(["--config", "/nonexistent/uhyve.toml"])
        .run();
    assert_eq!(run.code(), 1, "{}", run.report());
    run.assert_stderr_mentions("/nonexistent/uhyve.toml");
}

#[test]
fn the_config_files_environment_comes_under_the_command_lines() {
    if !kvm_or_skip("the_config_files_environment_comes_under_the_command_lines") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("uhyve.toml");
    write(
        &config,
        "[guest]\nenv_vars = [\"FROM_FILE=1\", \"BOTH=file\"]\n",
    );
    let run = Uhyve::guest("args_env")
        .opts(["--config", config.to_str().unwrap(), "-e", "BOTH=cli"])
        .run();
    run.assert_all_ok()
        .assert_stdout_contains("envc=2\nenv=FROM_FILE=1\nenv=BOTH=cli\n");
}

#[test]
fn a_double_dash_after_the_kernel_is_not_the_guests() {
    if !kvm_or_skip("a_double_dash_after_the_kernel_is_not_the_guests") {
        return;
    }
    let uhyve = Uhyve::guest("args_env").args(["--", "-v", "--"]);
    let kernel = uhyve.kernel_path().display().to_string();
    let run = uhyve.run();
    run.assert_all_ok()
        .assert_stdout_contains(&format!("argc=3\narg={kernel}\narg=-v\narg=--\n"));
}

#[test]
fn a_missing_mapped_host_path_is_warned_about() {
    if !kvm_or_skip("a_missing_mapped_host_path_is_warned_about") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-there");
    let mapping = format!("{}:/root/data", missing.display());
    let run = Uhyve::guest("hello")
        .opts(["--file-mapping", &mapping])
        .run();
    run.assert_success();
    let warnings: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.contains("does not exist"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", run.report());
    assert!(
        warnings[0].contains(&missing.display().to_string()),
        "{}",
        run.report()
    );
}

#[test]
fn a_gdb_port_waits_for_gdb_on_localhost() {
    use std::io::{BufRead, BufReader, Read};
    use std::process::{Command, Stdio};
    if !kvm_or_skip("a_gdb_port_waits_for_gdb_on_localhost") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // Upstream's form: a bare port number, on 127.0.0.1 (tests/gdb.rs drives a real GDB).
    let mut child = Command::new(common::UHYVE_BIN)
        .args(["-s", &port.to_string()])
        .arg(common::guest("hello"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start uhyve");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).expect("uhyve's first line");
    assert!(
        line.contains(&format!("waiting for GDB on 127.0.0.1:{port}")),
        "first line: {line:?}"
    );
    // A client that goes away at once: the guest runs on as without one.
    drop(std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect"));
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .expect("read stdout");
    let status = child.wait().expect("wait for uhyve");
    assert!(stdout.contains("Hello"), "stdout: {stdout}");
    assert_eq!(status.code(), Some(0));
}
