//! Hermit image archives end to end: archives are built here (tar + gzip, in memory) around the
//! tiny test guests and, when `UHYVE_HERMIT_APPS` names them, the real Hermit demo, and run by the
//! `uhyve` binary. `hermit.toml` gives arguments, environment and requirements; the external mode
//! serves the archive's files to the guest (found through the device tree's mount points or the
//! 0.10/0.11 `-mount`), the internal mode hands the whole tar to the kernel in guest RAM. Hostile
//! and broken archives must each give one clear error line and a non-zero status, never a panic.
//! The runs need KVM; the error cases stop before the VM runs and need none.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Run, Uhyve, guest, hermit_app, kvm_or_skip};
use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{Builder, EntryType, Header};

/// One entry of an archive under construction.
enum Item {
    /// A regular file.
    File(&'static str, Vec<u8>),
    /// A directory.
    Dir(&'static str),
    /// An entry of another type (link, device), with a link target for links.
    Special(&'static str, EntryType),
    /// A regular file whose name is written into the header verbatim (`..`, absolute paths:
    /// the tar builder refuses those).
    RawName(&'static str, Vec<u8>),
}

fn file(path: &'static str, data: impl Into<Vec<u8>>) -> Item {
    Item::File(path, data.into())
}

/// The bytes of a gzip-compressed tar holding `items` in order.
fn archive_bytes(items: &[Item]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for item in items {
        let mut header = Header::new_gnu();
        header.set_mode(0o644);
        match item {
            Item::File(path, data) => {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, &data[..]).unwrap();
            }
            Item::Dir(path) => {
                header.set_entry_type(EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Item::Special(path, kind) => {
                header.set_entry_type(*kind);
                header.set_size(0);
                if matches!(kind, EntryType::Symlink | EntryType::Link) {
                    header.set_link_name("/etc/passwd").unwrap();
                }
                builder.append_data(&mut header, path, &[][..]).unwrap();
            }
            Item::RawName(path, data) => {
                let name = &mut header.as_old_mut().name;
                name[..path.len()].copy_from_slice(path.as_bytes());
                header.set_size(data.len() as u64);
                header.set_cksum();
                builder.append(&header, &data[..]).unwrap();
            }
        }
    }
    gzip(&builder.into_inner().unwrap())
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A `hermit.toml` with the given kernel, `[input]` lists and extra text.
fn config(kernel: &str, app_args: &[&str], env_vars: &[&str], extra: &str) -> Vec<u8> {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "version = \"1\"\nkernel = \"{kernel}\"\n\n[input]\nkernel_args = []\napp_args = [{}]\n\
         env_vars = [{}]\n{extra}",
        list(app_args),
        list(env_vars)
    )
    .into_bytes()
}

/// The test guest `name` as archive content.
fn guest_bytes(name: &str) -> Vec<u8> {
    std::fs::read(guest(name)).unwrap()
}

/// Writes `bytes` as `name` (the extension is deliberately not `.tar.gz`: detection goes by
/// content) into `dir` and returns the path.
fn write_archive(dir: &tempfile::TempDir, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn run_archive(path: &Path, options: &[&str], args: &[&str]) -> Run {
    Uhyve::kernel(path)
        .opts(options.iter().copied())
        .args(args.iter().copied())
        .run()
}

// ---- Runs on KVM ----

#[test]
fn arguments_and_environment_come_from_hermit_toml() {
    if !kvm_or_skip("arguments_and_environment_come_from_hermit_toml") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_archive(
        &dir,
        "args.hermit",
        &archive_bytes(&[
            file(
                "hermit.toml",
                config(
                    "bin/args_env",
                    &["from toml", "second"],
                    &["FROM_TOML=yes", "OVERRIDDEN=toml", "host"],
                    "",
                ),
            ),
            Item::Dir("bin"),
            file("bin/args_env", guest_bytes("args_env")),
        ]),
    );
    let run = run_archive(&path, &["-e", "OVERRIDDEN=cli"], &[]);
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("argc=3\n")
        .assert_stdout_contains("arg=from toml\narg=second\n")
        .assert_stdout_contains("env=FROM_TOML=yes\n")
        .assert_stdout_contains("env=OVERRIDDEN=cli\n")
        .assert_stdout_lacks("env=OVERRIDDEN=toml")
        .assert_stdout_contains("envc=2\n");
    // `host` in hermit.toml cannot pull in the host's environment.
    assert!(
        run.stderr.contains("ignoring env_vars entry \"host\""),
        "{}",
        run.report()
    );

    // Arguments on the command line replace app_args.
    let run = run_archive(&path, &[], &["from the cli"]);
    run.assert_success()
        .assert_stdout_contains("argc=2\n")
        .assert_stdout_contains("arg=from the cli\n")
        .assert_stdout_lacks("from toml");
}

#[test]
fn requirements_raise_the_defaults() {
    if !kvm_or_skip("requirements_raise_the_defaults") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_archive(
        &dir,
        "needs-more",
        &archive_bytes(&[
            file(
                "hermit.toml",
                config(
                    "boot_info",
                    &[],
                    &[],
                    "\n[requirements]\nmemory = \"100MB\"\ncpus = 2\n",
                ),
            ),
            file("boot_info", guest_bytes("boot_info")),
        ]),
    );
    // 100 MB = 95.4 MiB, rounded up to whole 2 MiB: 96 MiB.
    run_archive(&path, &[], &[])
        .assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("phys_addr_end=0x6000000\n")
        .assert_stdout_contains("num_cpus=0x2\n");
    // What the user gives above the requirements stays.
    run_archive(&path, &["-m", "128M", "-c", "3"], &[])
        .assert_success()
        .assert_stdout_contains("phys_addr_end=0x8000000\n")
        .assert_stdout_contains("num_cpus=0x3\n");
}

/// An archive around the `fdt_mounts` guest (a 0.13.2 kernel that reads `<mount>/from-host.txt`
/// at every mount point of the device tree) with data in `/data` and `/srv/www`.
fn mounts_archive(dir: &tempfile::TempDir) -> PathBuf {
    write_archive(
        dir,
        "mounts.img",
        &archive_bytes(&[
            file(
                "hermit.toml",
                br#"version = "1"
kernel = "./fdt_mounts"

[input]
kernel_args = ["-freq", "2000"]
app_args = []
"#
                .to_vec(),
            ),
            file("fdt_mounts", guest_bytes("fdt_mounts")),
            Item::Dir("data"),
            file("data/from-host.txt", "data from the archive\n"),
            file("srv/from-host.txt", "srv from the archive\n"),
            file("srv/www/index.html", "<p>hi</p>\n"),
        ]),
    )
}

#[test]
fn external_mode_serves_the_archive_files_where_the_kernel_mounts() {
    if !kvm_or_skip("external_mode_serves_the_archive_files_where_the_kernel_mounts") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = mounts_archive(&dir);
    let run = run_archive(&path, &["--hermit-image-mode", "external"], &[]);
    run.assert_no_host_crash()
        .assert_success()
        // The kernel options come first (no environment or arguments follow here).
        .assert_stdout_contains("bootargs: -freq 2000\n")
        .assert_stdout_contains("mount /data: data from the archive\n")
        .assert_stdout_contains("mount /srv: srv from the archive\n")
        .assert_stdout_lacks("mount /srv/www")
        .assert_stdout_lacks("cannot read");
    // hermit.toml and the kernel sit at the root, where no mount reaches: expected, no warning.
    assert!(!run.stderr.contains("cannot reach"), "{}", run.report());
    // External is the default.
    run_archive(&path, &[], &[])
        .assert_success()
        .assert_stdout_contains("mount /data: data from the archive\n");
}

#[test]
fn a_file_mapping_wins_over_archive_files() {
    if !kvm_or_skip("a_file_mapping_wins_over_archive_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = mounts_archive(&dir);
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("from-host.txt"), "data from the host\n").unwrap();
    let mapping = format!("{}:/data", host.path().display());
    let run = run_archive(&path, &["--file-mapping", &mapping], &[]);
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("mount /data: data from the host\n")
        .assert_stdout_contains("mount /srv: srv from the archive\n");
    assert!(
        run.stderr.contains("hides these files") && run.stderr.contains("/data/from-host.txt"),
        "{}",
        run.report()
    );
}

/// An archive around the `initrd` guest with a message and a 3 MiB file whose last byte is 0x5a.
fn initrd_archive(dir: &tempfile::TempDir, big: usize) -> PathBuf {
    let mut big_file = vec![0u8; big];
    if let Some(last) = big_file.last_mut() {
        *last = 0x5a;
    }
    write_archive(
        dir,
        "initrd.hermit",
        &archive_bytes(&[
            file("hermit.toml", config("kernel", &[], &[], "")),
            file("kernel", guest_bytes("initrd")),
            file("data/message.txt", "hello from the archive\n"),
            file("data/big.bin", big_file),
        ]),
    )
}

#[test]
fn internal_mode_hands_the_archive_to_the_kernel() {
    if !kvm_or_skip("internal_mode_hands_the_archive_to_the_kernel") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = initrd_archive(&dir, 3 << 20);
    let run = run_archive(&path, &["--hermit-image-mode", "internal"], &[]);
    run.assert_no_host_crash()
        .assert_success()
        .assert_all_ok()
        .assert_stdout_contains("entry hermit.toml ")
        .assert_stdout_contains("message: hello from the archive\n")
        .assert_stdout_contains("big last byte: 0x5a\n");
    // In the external mode the kernel gets no initrd.
    run_archive(&path, &[], &[])
        .assert_stdout_contains("no initrd\n")
        .assert_code(2);
}

#[test]
fn the_demo_runs_from_an_image_archive() {
    let test = "the_demo_runs_from_an_image_archive";
    if !kvm_or_skip(test) {
        return;
    }
    let Some(demo) = hermit_app(test, "x86_64", "demo") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = write_archive(
        &dir,
        "demo.hermit",
        &archive_bytes(&[
            file(
                "hermit.toml",
                config(
                    "demo",
                    &["first", "second arg", ""],
                    &[
                        "DEMO_GREETING=hello from hermit.toml",
                        "DEMO_EXPECT_ARGS=first|second arg|",
                        "DEMO_MAPPED_DIR=/data",
                    ],
                    "\n[requirements]\nmemory = \"64MiB\"\n",
                ),
            ),
            file("demo", std::fs::read(&demo).unwrap()),
            file("data/from-host.txt", "greetings from the archive\n"),
        ]),
    );
    // Kernel 0.11 reads bootargs and mounts one directory: uhyve passes `-mount /data`. The
    // demo also writes files there, which land in uhyve's private temp directory.
    let run = Uhyve::kernel(&path).timeout(Duration::from_secs(300)).run();
    run.assert_no_host_crash()
        .assert_success()
        .assert_stdout_contains("Welcome to Hermit 0.11.0")
        .assert_stdout_contains("ok: arguments arrive in order")
        .assert_stdout_contains("demo: env DEMO_GREETING=hello from hermit.toml")
        .assert_stdout_contains("demo: /data/from-host.txt says \"greetings from the archive\"")
        .assert_stdout_contains("ok: read host file in mapped directory")
        .assert_stdout_contains("ok: append to file in mapped directory")
        .assert_stdout_contains("demo: all checks passed")
        .assert_stdout_lacks("CHECK FAILED");
}

// ---- Bad archives: one line on stderr, non-zero status, no panic ----

/// Asserts the run failed with exactly one stderr line that starts like a uhyve error and
/// contains every needle.
fn assert_one_line_error(run: &Run, needles: &[&str]) {
    assert_ne!(run.code(), 0, "{}", run.report());
    run.assert_no_host_crash();
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr\n{}",
        run.report()
    );
    assert!(lines[0].starts_with("uhyve: error: "), "{}", run.report());
    for needle in needles {
        assert!(
            lines[0].contains(needle),
            "stderr lacks {needle:?}\n{}",
            run.report()
        );
    }
}

/// A well-formed archive around `hello`, plus `extra` entries.
fn hello_archive_with(extra: Vec<Item>) -> Vec<u8> {
    let mut items = vec![
        file("hermit.toml", config("hello", &[], &[], "")),
        file("hello", guest_bytes("hello")),
    ];
    items.extend(extra);
    archive_bytes(&items)
}

fn bad_archive(bytes: &[u8], options: &[&str], needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let path = write_archive(&dir, "bad.hermit", bytes);
    let run = run_archive(&path, options, &[]);
    assert_one_line_error(&run, &[&["bad.hermit"], needles].concat());
}

#[test]
fn hostile_paths_are_refused() {
    bad_archive(
        &hello_archive_with(vec![Item::RawName("../../escape.txt", b"x".to_vec())]),
        &[],
        &["\"../../escape.txt\"", "contains `..`"],
    );
    bad_archive(
        &hello_archive_with(vec![Item::RawName("/etc/cron.d/evil", b"x".to_vec())]),
        &[],
        &["\"/etc/cron.d/evil\"", "absolute path"],
    );
    let long = format!("{}/x", "d".repeat(1100));
    bad_archive(
        &hello_archive_with(vec![Item::File(
            Box::leak(long.into_boxed_str()),
            b"x".to_vec(),
        )]),
        &[],
        &["has a path of 1102 bytes", "at most 1024"],
    );
}

#[test]
fn links_and_devices_are_refused() {
    for (kind, name) in [
        (EntryType::Symlink, "symbolic link"),
        (EntryType::Link, "hard link"),
        (EntryType::Char, "character device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        bad_archive(
            &hello_archive_with(vec![Item::Special("data/link", kind)]),
            &[],
            &["\"data/link\"", name],
        );
    }
}

#[test]
fn duplicate_names_are_refused() {
    bad_archive(
        &hello_archive_with(vec![file("./hello", "again")]),
        &[],
        &["\"hello\" appears more than once"],
    );
}

#[test]
fn too_many_entries_are_refused() {
    let names: Vec<&'static str> = (0..16 * 1024)
        .map(|i| &*Box::leak(format!("many/{i}").into_boxed_str()))
        .collect();
    bad_archive(
        &hello_archive_with(names.into_iter().map(|name| file(name, "")).collect()),
        &[],
        &["more than 16384 entries"],
    );
}

#[test]
fn a_gzip_bomb_is_refused() {
    // gzip members of 1 MiB of zeros each, joined: readers take them as one stream of just over
    // 1 GiB, from about 1 MiB of file.
    let member = gzip(&vec![0u8; 1 << 20]);
    let bytes: Vec<u8> = std::iter::repeat_n(&member[..], 1025)
        .flatten()
        .copied()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = write_archive(&dir, "bad.hermit", &bytes);
    let run = Uhyve::kernel(&path).timeout(Duration::from_secs(300)).run();
    assert_one_line_error(
        &run,
        &["bad.hermit", "unpacks to more than 1073741824 bytes"],
    );
}

#[test]
fn broken_compression_and_tar_are_refused() {
    let whole = hello_archive_with(Vec::new());
    bad_archive(
        &whole[..whole.len() / 2],
        &[],
        &["gzip stream is corrupt or truncated"],
    );
    bad_archive(
        &gzip(&[0x41; 2048]),
        &[],
        &["tar inside the gzip stream is malformed"],
    );
}

#[test]
fn a_missing_or_invalid_configuration_is_refused() {
    bad_archive(
        &archive_bytes(&[file("hello", guest_bytes("hello"))]),
        &[],
        &["no hermit.toml"],
    );
    bad_archive(
        &archive_bytes(&[file("hermit.toml", "version = \"1\"\nkernel = \n")]),
        &[],
        &["hermit.toml line 2"],
    );
    bad_archive(
        &archive_bytes(&[file("hermit.toml", "version = \"2\"\nkernel = \"hello\"\n")]),
        &[],
        &["unsupported version \"2\""],
    );
    bad_archive(
        &archive_bytes(&[file("hermit.toml", "version = \"1\"\n[input]\n")]),
        &[],
        &["hermit.toml", "kernel"],
    );
}

#[test]
fn the_kernel_must_be_in_the_archive_and_a_hermit_kernel() {
    bad_archive(
        &archive_bytes(&[file("hermit.toml", config("bin/app", &[], &[], ""))]),
        &[],
        &["kernel \"bin/app\"", "not in the archive"],
    );
    bad_archive(
        &archive_bytes(&[
            file("hermit.toml", config("app", &[], &[], "")),
            file("app", "#!/bin/sh\necho not a kernel\n"),
        ]),
        &[],
        &["kernel \"app\"", "not an ELF"],
    );
}

#[test]
fn settings_below_the_requirements_are_refused() {
    let bytes = archive_bytes(&[
        file(
            "hermit.toml",
            config(
                "hello",
                &[],
                &[],
                "\n[requirements]\nmemory = \"256MiB\"\ncpus = 4\n",
            ),
        ),
        file("hello", guest_bytes("hello")),
    ]);
    bad_archive(
        &bytes,
        &["-m", "128M"],
        &["at least 256 MiB", "raise --memory-size"],
    );
    bad_archive(
        &bytes,
        &["-m", "1G", "-c", "2"],
        &["at least 4 vCPUs", "raise --cpu-count"],
    );
}

#[test]
fn internal_mode_needs_room_after_the_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let path = initrd_archive(&dir, 14 << 20);
    let run = run_archive(
        &path,
        &["--hermit-image-mode", "internal", "-m", "16M"],
        &[],
    );
    assert_one_line_error(
        &run,
        &[
            "initrd.hermit",
            "does not fit",
            "at least 22 MiB",
            "increase the memory size",
        ],
    );
}
