//! The command line: options, defaults, the guest command, values that are not UTF-8.
use super::*;
use crate::params::{GdbAddress, VmTuning};

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("uhyve").chain(args.iter().copied()))
}

/// Where no backend exists (e.g. Linux on aarch64, whose tests run under qemu-user in
/// `.ci/aarch64-tests`), running a guest is one error line and a failure status.
#[cfg(not(host_backend))]
#[test]
fn an_unsupported_platform_fails_with_a_status() {
    let config = parse(&["/nonexistent/kernel"]).unwrap().into_config();
    assert_eq!(run_guest(&config), FAILURE_STATUS);
}

#[test]
fn kernel_and_trailing_arguments() {
    let config = parse(&["-m", "128M", "app", "-v", "--x", "-m", "1G"])
        .unwrap()
        .into_config();
    assert_eq!(config.memory_size, MemorySize(128 << 20));
    assert_eq!(config.kernel, PathBuf::from("app"));
    assert_eq!(
        config.kernel_args,
        vec![OsString::from("-v"), "--x".into(), "-m".into(), "1G".into()]
    );
    // A `--` right after the kernel separates uhyve's part from the guest's and is dropped;
    // a second one reaches the guest.
    let config = parse(&["-v", "app", "--", "-v", "x"])
        .unwrap()
        .into_config();
    assert_eq!(config.kernel_args, vec![OsString::from("-v"), "x".into()]);
    let config = parse(&["app", "--", "--", "x"]).unwrap().into_config();
    assert_eq!(config.kernel_args, vec![OsString::from("--"), "x".into()]);
    let config = parse(&["--", "app", "--", "x"]).unwrap().into_config();
    assert_eq!(config.kernel_args, vec![OsString::from("x")]);
    let config = parse(&["app", "x", "--"]).unwrap().into_config();
    assert_eq!(config.kernel_args, vec![OsString::from("x"), "--".into()]);
    assert!(parse(&["--bogus", "app"]).is_err());
}

#[test]
fn options_and_defaults() {
    let config = parse(&["app"]).unwrap().into_config();
    assert_eq!(config.memory_size, MemorySize::DEFAULT);
    assert_eq!(config.cpu_count, 1);
    assert_eq!(config.hermit_image_mode, HermitImageMode::External);
    assert_eq!(config.explicit, ExplicitSettings::default());
    let args = parse(&["-e", "A=1", "--env", "host", "--env-vars", "B=2", "app"]).unwrap();
    assert_eq!(args.env.len(), 3);
    // No host environment unless `-e host`.
    assert!(config.env.is_empty(), "{:?}", config.env);
    let config = parse(&["-e", "A=1", "app"]).unwrap().into_config();
    assert_eq!(config.env, vec![("A".into(), "1".into())]);
    let config = parse(&["-e", "host", "app"]).unwrap().into_config();
    assert_eq!(config.env.len(), std::env::vars_os().count().min(128));
    assert!(parse(&["-e", "novalue", "app"]).is_err());
    assert!(parse(&["-m", "lots", "app"]).is_err());
    assert!(parse(&["-c", "0", "app"]).is_err());
    assert!(parse(&[]).is_err());
}

#[test]
fn explicit_settings_and_image_mode() {
    let config = parse(&[
        "-m",
        "64M",
        "-c",
        "1",
        "-e",
        "A=1",
        "-e",
        "host",
        "--hermit-image-mode",
        "internal",
        "app",
    ])
    .unwrap()
    .into_config();
    assert_eq!(
        config.explicit,
        ExplicitSettings {
            memory_size: true,
            cpu_count: true,
            env_keys: vec!["A".into()],
        }
    );
    assert_eq!(config.hermit_image_mode, HermitImageMode::Internal);
    let error = parse(&["--hermit-image-mode", "inline", "app"]).unwrap_err();
    assert!(error.to_string().contains("external"), "{error}");
}

#[test]
fn confinement_options() {
    let config = parse(&["app"]).unwrap().into_config();
    assert_eq!(config.confinement, Confinement::default());
    let config = parse(&["--file-isolation", "strict", "--seccomp", "none", "app"])
        .unwrap()
        .into_config();
    assert_eq!(
        config.confinement,
        Confinement {
            file_isolation: FileIsolation::Strict,
            seccomp: SeccompMode::None,
        }
    );
    assert!(parse(&["--file-isolation", "paranoid", "app"]).is_err());
    assert!(parse(&["--seccomp", "normal", "app"]).is_err());
}

#[test]
fn output_targets() {
    let config = |o: &str| parse(&["-o", o, "app"]).unwrap().into_config().output;
    assert_eq!(config("none"), OutputTarget::None);
    assert_eq!(config("log.txt"), OutputTarget::File("log.txt".into()));
    assert_eq!(
        parse(&["app"]).unwrap().into_config().output,
        OutputTarget::Stdout
    );
}

#[test]
fn values_that_are_not_utf8_name_their_option() {
    use std::os::unix::ffi::OsStringExt;
    let bad = || OsString::from_vec(b"x\xffy".to_vec());
    for (option, value) in [
        ("-m", bad()),
        ("-c", bad()),
        ("-a", bad()),
        ("-e", bad()),
        ("--file-mapping", bad()),
    ] {
        let args = ["uhyve".into(), option.into(), value, "app".into()];
        let error = Args::try_parse_from(args).unwrap_err().to_string();
        let long = match option {
            "-m" => "--memory-size",
            "-c" => "--cpu-count",
            "-a" => "--affinity",
            "-e" => "--env",
            other => other,
        };
        assert!(error.contains(long), "{option}: {error}");
        assert!(error.contains("not valid UTF-8"), "{option}: {error}");
    }
    // An output file is a host path: any bytes are fine.
    let args = ["uhyve".into(), "-o".into(), bad(), "app".into()];
    let config = Args::try_parse_from(args).unwrap().into_config();
    assert_eq!(config.output, OutputTarget::File(PathBuf::from(bad())));
}

/// Every option of upstream uhyve's `--help` (0.9.1-60) parses, with upstream's value forms.
#[test]
fn upstream_options_parse() {
    let config = parse(&[
        "-o",
        "out.txt",
        "--stats",
        "--file-mapping",
        "a:/b",
        "--tempdir",
        "/tmp",
        "--file-isolation",
        "Strict",
        "--io-mode",
        "host=direct,sync",
        "-s",
        "1234",
        "--config",
        "/nonexistent.toml",
        "-m",
        "1.5GiB",
        "--no-aslr",
        "--thp",
        "--ksm",
        "-c",
        "2",
        "--cpu-pm",
        "--pit",
        "-a",
        "0 1",
        "-e",
        "A=1",
        "app",
        "arg",
    ])
    .unwrap()
    .into_config();
    assert_eq!(config.output, OutputTarget::File("out.txt".into()));
    assert!(config.stats);
    assert_eq!(config.file_mappings, ["a:/b"]);
    assert_eq!(config.confinement.file_isolation, FileIsolation::Strict);
    assert_eq!(
        config.tuning,
        VmTuning {
            aslr: false,
            transparent_huge_pages: true,
            same_page_merging: true,
            pit: true,
            cpu_power_management: true,
            io_mode: IoMode {
                direct: true,
                sync: true
            },
        }
    );
    assert_eq!(config.gdb, Some(GdbAddress::on_loopback(1234)));
    assert_eq!(config.memory_size, MemorySize(1536 << 20));
    assert_eq!(config.cpu_count, 2);
    assert_eq!(config.affinity, Some(vec![0, 1]));
    assert_eq!(config.kernel_args, [OsString::from("arg")]);
    let defaults = parse(&["app"]).unwrap().into_config();
    assert_eq!(defaults.tuning, VmTuning::default());
    assert!(defaults.tuning.aslr);
    assert_eq!(defaults.gdb, None);
    let output = parse(&["-o", "None", "app"]).unwrap().into_config().output;
    assert_eq!(output, OutputTarget::None);
}

#[test]
fn gdb_port_forms() {
    let gdb = |args: &[&str]| parse(args).map(|a| a.into_config().gdb);
    let loopback = |port| Some(GdbAddress::on_loopback(port));
    assert_eq!(gdb(&["-s", "--", "app"]).unwrap(), loopback(6677));
    assert_eq!(gdb(&["--gdb-port", "-v", "app"]).unwrap(), loopback(6677));
    assert_eq!(gdb(&["--gdb-port=7000", "app"]).unwrap(), loopback(7000));
    assert_eq!(
        gdb(&["-s", "0.0.0.0:6677", "app"]).unwrap(),
        Some(GdbAddress("0.0.0.0:6677".parse().unwrap()))
    );
    assert_eq!(
        gdb(&["-s", "[::1]:9", "app"]).unwrap(),
        Some(GdbAddress("[::1]:9".parse().unwrap()))
    );
    for bad in ["70000", "localhost", "1.2.3.4"] {
        assert!(gdb(&["-s", bad, "app"]).is_err(), "{bad}");
    }
}

#[test]
fn io_modes_parse() {
    let mode =
        |text: &str| parse(&["--io-mode", text, "app"]).map(|a| a.into_config().tuning.io_mode);
    let io = |direct, sync| IoMode { direct, sync };
    assert_eq!(mode("default").unwrap(), IoMode::default());
    assert_eq!(mode("host=direct").unwrap(), io(true, false));
    assert_eq!(mode("host=sync").unwrap(), io(false, true));
    assert_eq!(mode("host=sync,direct").unwrap(), io(true, true));
    for bad in ["", "direct", "host=", "host=direct,direct", "host=fast"] {
        assert!(mode(bad).is_err(), "{bad:?}");
    }
}

/// Parses with a configuration file holding `toml` (through `--config`).
fn parse_with_file(toml: &str, args: &[&str]) -> Result<VmConfig, CommandLineError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let path = path.to_str().unwrap();
    let line = ["uhyve", "--config", path]
        .into_iter()
        .chain(args.iter().copied());
    Args::parse_with_config_file(line.map(OsString::from)).map(Args::into_config)
}

#[test]
fn the_config_file_fills_what_the_command_line_leaves_unset() {
    let sample = include_str!("../../examples/uhyve.toml");
    let config = parse_with_file(sample, &["app"]).unwrap();
    assert!(config.stats);
    assert_eq!(config.confinement.file_isolation, FileIsolation::Strict);
    assert_eq!(config.memory_size, MemorySize(100 << 20));
    assert!(!config.tuning.aslr && config.tuning.transparent_huge_pages);
    assert!(config.tuning.same_page_merging && config.tuning.pit);
    assert_eq!(config.cpu_count, 4);
    assert_eq!(config.affinity, Some(vec![1, 2, 3, 4]));
    assert_eq!(config.env, vec![("foo".into(), "bar".into())]);
    // The file's values count as the user's own (a Hermit image's hermit.toml cannot overrule
    // them).
    assert!(config.explicit.memory_size && config.explicit.cpu_count);
    // The command line wins.
    let cli = [
        "-m",
        "32M",
        "-c",
        "1",
        "-a",
        "0",
        "--file-isolation",
        "none",
        "-e",
        "foo=cli",
    ];
    let config = parse_with_file(sample, &[&cli[..], &["app"]].concat()).unwrap();
    assert_eq!(config.memory_size, MemorySize(32 << 20));
    assert_eq!(config.cpu_count, 1);
    assert_eq!(config.affinity, Some(vec![0]));
    assert_eq!(config.confinement.file_isolation, FileIsolation::None);
    assert_eq!(config.env, vec![("foo".into(), "cli".into())]);
    // A partial file leaves the defaults.
    let config = parse_with_file("[cpu]\ncpu_count = 2\n", &["app"]).unwrap();
    assert_eq!(config.cpu_count, 2);
    assert_eq!(config.memory_size, MemorySize::DEFAULT);
    assert!(config.tuning.aslr && !config.stats);
    assert_eq!(config.confinement.file_isolation, FileIsolation::Normal);
    let file = "[uhyve]\ngdb_port = 7000\noutput = \"none\"\nnet = \"tap:tap0\"\n";
    let config = parse_with_file(file, &["app"]).unwrap();
    assert_eq!(config.gdb, Some(GdbAddress::on_loopback(7000)));
    assert_eq!(config.output, OutputTarget::None);
    assert_eq!(config.net, Some(NetBackend::Tap("tap0".into())));
    let config = parse_with_file(file, &["--net", "user", "app"]).unwrap();
    assert_eq!(config.net, Some(NetBackend::User(Vec::new())));
    let error = parse_with_file("[uhyve]\nnet = \"vde:x\"\n", &["app"]).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("invalid network backend 'vde:x'"),
        "{error}"
    );
}

#[test]
fn a_bad_or_missing_config_file_is_an_error() {
    let error = parse_with_file("[memory]\nthp = \"yes\"\n", &["app"]).unwrap_err();
    let message = error.to_string();
    assert!(
        matches!(error, CommandLineError::ConfigFile(_)),
        "{message}"
    );
    assert!(message.contains("line 2, memory.thp"), "{message}");
    let line = ["uhyve", "--config", "/nonexistent/uhyve.toml", "app"].map(OsString::from);
    let message = Args::parse_with_config_file(line).unwrap_err().to_string();
    assert!(message.contains("/nonexistent/uhyve.toml"), "{message}");
}
