//! Unit tests of archive unpacking and `hermit.toml` handling, with archives (well-formed and
//! hostile) built in memory by flate2 and tar.

use std::ffi::OsString;
use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;
use tar::{Builder, EntryType, Header};

use super::*;
use crate::params::{ExplicitSettings, HermitImageMode, MemorySize, VmConfig};

const CONFIG: &str = r#"
version = "1"
kernel = "hermit-app"

[input]
kernel_args = ["-freq", "2000"]
app_args = ["one", "two words"]
env_vars = ["GREETING=hello", "host", "=x", "EMPTY="]

[requirements]
memory = "128MiB"
cpus = 2
"#;

/// A raw tar entry: path written straight into the header (no checks by the builder).
struct Raw<'a> {
    path: &'a [u8],
    kind: EntryType,
    data: &'a [u8],
}

fn raw(path: &str, data: &'static [u8]) -> Raw<'static> {
    Raw {
        path: Box::leak(path.as_bytes().to_vec().into_boxed_slice()),
        kind: EntryType::Regular,
        data,
    }
}

/// A ustar header for `entry`, path bytes copied verbatim (the builder would refuse `..`).
fn header_for(entry: &Raw<'_>) -> Header {
    let mut header = Header::new_ustar();
    {
        let name = &mut header.as_old_mut().name;
        assert!(
            entry.path.len() <= name.len(),
            "test paths fit the name field"
        );
        name[..entry.path.len()].copy_from_slice(entry.path);
    }
    header.set_entry_type(entry.kind);
    header.set_size(entry.data.len() as u64);
    header.set_mode(0o644);
    if entry.kind == EntryType::Symlink || entry.kind == EntryType::Link {
        header.set_link_name("target").unwrap();
    }
    header.set_cksum();
    header
}

fn tar_of(entries: &[Raw<'_>]) -> Vec<u8> {
    let mut builder = Builder::new(Vec::new());
    for entry in entries {
        builder.append(&header_for(entry), entry.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn archive_of(entries: &[Raw<'_>]) -> Vec<u8> {
    gzip(&tar_of(entries))
}

fn good_entries() -> Vec<Raw<'static>> {
    vec![
        raw("hermit.toml", CONFIG.as_bytes()),
        raw("hermit-app", b"\x7fELF kernel bytes"),
        Raw {
            path: b"data/",
            kind: EntryType::Directory,
            data: b"",
        },
        raw("./data/input.txt", b"input\n"),
        raw("data/deeper/more.txt", b"more\n"),
    ]
}

fn unpack(bytes: &[u8]) -> Result<HermitArchive, ArchiveError> {
    HermitArchive::unpack(bytes, &ArchiveLimits::DEFAULT)
}

#[test]
fn magic_detects_gzip_only() {
    assert!(is_archive(&archive_of(&good_entries())));
    assert!(!is_archive(b"\x7fELF"));
    assert!(!is_archive(&[0x1f, 0x8b]));
    assert!(!is_archive(&[0x1f, 0x8b, 0x07, 0]));
}

#[test]
fn a_good_archive_unpacks() {
    let archive = unpack(&archive_of(&good_entries())).unwrap();
    assert_eq!(archive.kernel(), b"\x7fELF kernel bytes");
    let files: Vec<(String, Vec<u8>)> = archive
        .files()
        .into_iter()
        .map(|(path, data)| (path, data.to_vec()))
        .collect();
    assert_eq!(
        files,
        vec![
            ("data/deeper/more.txt".to_owned(), b"more\n".to_vec()),
            ("data/input.txt".to_owned(), b"input\n".to_vec()),
            ("hermit-app".to_owned(), b"\x7fELF kernel bytes".to_vec()),
            ("hermit.toml".to_owned(), CONFIG.as_bytes().to_vec()),
        ]
    );
    assert_eq!(archive.file_count(), 4);
    assert_eq!(&archive.tar()[..], &tar_of(&good_entries())[..]);
    let config = archive.config();
    assert_eq!(config.kernel, "hermit-app");
    assert_eq!(config.kernel_args, ["-freq", "2000"]);
    assert_eq!(config.app_args, ["one", "two words"]);
    assert_eq!(
        config.env_vars,
        [
            ("GREETING".to_owned(), "hello".to_owned()),
            ("EMPTY".to_owned(), String::new())
        ]
    );
    assert_eq!(config.min_memory, Some(128 << 20));
    assert_eq!(config.min_cpus, 2);
}

#[test]
fn long_names_pax_headers_and_several_gzip_members_work() {
    // The tar builder writes a GNU long-name entry for a path over 100 bytes.
    let long = format!("{}/file.txt", "d".repeat(150));
    let mut builder = Builder::new(Vec::new());
    let mut header = Header::new_gnu();
    header.set_size(CONFIG.len() as u64);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, "hermit.toml", CONFIG.as_bytes())
        .unwrap();
    let mut header = Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    builder
        .append_data(&mut header, &long, &b"abc"[..])
        .unwrap();
    builder
        .append_pax_extensions([("comment", &b"a global-looking note"[..])])
        .unwrap();
    let mut header = Header::new_gnu();
    header.set_size(4);
    header.set_mode(0o755);
    builder
        .append_data(&mut header, "hermit-app", &b"\x7fELF"[..])
        .unwrap();
    let tar = builder.into_inner().unwrap();
    // Two gzip members, split inside the tar: readers must join them.
    let (first, second) = tar.split_at(700);
    let mut bytes = gzip(first);
    bytes.extend(gzip(second));
    let archive = unpack(&bytes).unwrap();
    let paths: Vec<String> = archive.files().into_iter().map(|(path, _)| path).collect();
    assert_eq!(paths, vec![long, "hermit-app".into(), "hermit.toml".into()]);
}

fn error_of(entries: &[Raw<'_>]) -> String {
    let error = unpack(&archive_of(entries)).unwrap_err();
    let text = error.to_string();
    assert!(!text.contains('\n'), "one line: {text}");
    text
}

fn with(extra: Raw<'static>) -> Vec<Raw<'static>> {
    let mut entries = good_entries();
    entries.push(extra);
    entries
}

#[test]
fn hostile_paths_are_refused() {
    for path in ["../escape.txt", "data/../../escape.txt", "data/../x"] {
        let text = error_of(&with(raw(path, b"x")));
        assert!(text.contains("contains `..`"), "{path}: {text}");
    }
    let text = error_of(&with(raw("/etc/passwd", b"x")));
    assert!(text.contains("absolute path"), "{text}");
    let text = error_of(&with(Raw {
        path: b"bad\xffname",
        kind: EntryType::Regular,
        data: b"",
    }));
    assert!(text.contains("not valid UTF-8"), "{text}");
    let text = error_of(&with(raw("./", b"x")));
    assert!(text.contains("empty path"), "{text}");
}

#[test]
fn links_and_special_files_are_refused() {
    for (kind, name) in [
        (EntryType::Symlink, "symbolic link"),
        (EntryType::Link, "hard link"),
        (EntryType::Char, "character device"),
        (EntryType::Block, "block device"),
        (EntryType::Fifo, "FIFO"),
    ] {
        let text = error_of(&with(Raw {
            path: b"data/special",
            kind,
            data: b"",
        }));
        assert!(text.contains(name), "{kind:?}: {text}");
        assert!(text.contains("data/special"), "{text}");
    }
}

#[test]
fn duplicates_and_files_used_as_directories_are_refused() {
    let text = error_of(&with(raw("data/input.txt", b"again")));
    assert!(text.contains("more than once"), "{text}");
    let text = error_of(&with(raw("./hermit.toml", b"again")));
    assert!(
        text.contains("\"hermit.toml\" appears more than once"),
        "{text}"
    );
    let text = error_of(&with(raw("hermit-app/inner", b"x")));
    assert!(text.contains("lies below \"hermit-app\""), "{text}");
    let text = error_of(&with(Raw {
        path: b"data/input.txt/",
        kind: EntryType::Directory,
        data: b"",
    }));
    assert!(text.contains("more than once"), "{text}");
}

#[test]
fn limits_are_enforced() {
    let bytes = archive_of(&good_entries());
    let limits = ArchiveLimits {
        max_entries: 3,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(
        matches!(error, ArchiveError::TooManyEntries { limit: 3 }),
        "{error}"
    );

    let limits = ArchiveLimits {
        max_unpacked_bytes: 4096,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(
        matches!(error, ArchiveError::TooLarge { limit: 4096 }),
        "{error}"
    );

    let limits = ArchiveLimits {
        max_path_bytes: 12,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(matches!(error, ArchiveError::PathTooLong { .. }), "{error}");
    let limits = ArchiveLimits {
        max_name_bytes: 8,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(matches!(error, ArchiveError::NameTooLong { .. }), "{error}");

    let limits = ArchiveLimits {
        max_config_bytes: 16,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(
        matches!(error, ArchiveError::ConfigTooLarge { .. }),
        "{error}"
    );
}

#[test]
fn a_gzip_bomb_stops_at_the_limit() {
    // 64 MiB of zeros compress to about 64 KiB; the limit stops decompression early.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&zeros).unwrap();
    }
    let bytes = encoder.finish().unwrap();
    let limits = ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        ..ArchiveLimits::DEFAULT
    };
    let error = HermitArchive::unpack(&bytes, &limits).unwrap_err();
    assert!(matches!(error, ArchiveError::TooLarge { .. }), "{error}");
}

#[test]
fn corrupt_gzip_and_tar_are_errors() {
    let whole = archive_of(&good_entries());
    for cut in [3, 10, whole.len() / 2, whole.len() - 4] {
        let error = unpack(&whole[..cut]).unwrap_err();
        assert!(matches!(error, ArchiveError::Gzip(_)), "cut {cut}: {error}");
        assert!(!error.to_string().contains('\n'));
    }
    let mut flipped = whole.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    assert!(unpack(&flipped).is_err());
    // Valid gzip around something that is not a tar.
    let error = unpack(&gzip(&[0x41; 1024])).unwrap_err();
    assert!(matches!(error, ArchiveError::Tar(_)), "{error}");
    // An empty gzip stream is an empty archive: no configuration.
    let error = unpack(&gzip(b"")).unwrap_err();
    assert!(matches!(error, ArchiveError::MissingConfig), "{error}");
}

#[test]
fn a_truncated_tar_is_an_error() {
    let tar = tar_of(&good_entries());
    // Cut inside the data of the last file (header intact).
    let cut = tar.len() - 1024 - 500;
    let error = unpack(&gzip(&tar[..cut])).unwrap_err();
    assert!(
        matches!(
            error,
            ArchiveError::TruncatedEntry(_) | ArchiveError::Tar(_)
        ),
        "{error}"
    );
}

#[test]
fn configuration_and_kernel_must_be_present() {
    let entries: Vec<Raw<'static>> = good_entries()
        .into_iter()
        .filter(|e| e.path != b"hermit.toml")
        .collect();
    assert!(error_of(&entries).contains("no hermit.toml"));

    let entries: Vec<Raw<'static>> = good_entries()
        .into_iter()
        .filter(|e| e.path != b"hermit-app")
        .collect();
    let text = error_of(&entries);
    assert!(text.contains("kernel \"hermit-app\""), "{text}");
    assert!(text.contains("not in the archive"), "{text}");

    let mut entries = good_entries();
    entries[0] = raw(
        "hermit.toml",
        b"version = \"1\"\nkernel = \"data\"\n[input]\nkernel_args = []\napp_args = []\n",
    );
    assert!(error_of(&entries).contains("is a directory"));

    let mut entries = good_entries();
    entries[0] = Raw {
        path: b"hermit.toml",
        kind: EntryType::Directory,
        data: b"",
    };
    assert!(error_of(&entries).contains("hermit.toml is a directory"));
}

fn config_error(text: &str) -> String {
    let error = ImageConfig::parse(text.as_bytes()).unwrap_err();
    let message = error.to_string();
    assert!(!message.contains('\n'), "one line: {message}");
    message
}

#[test]
fn invalid_configurations_name_the_problem() {
    let message = config_error("version = \"1\"\nkernel = [\n");
    assert!(message.starts_with("hermit.toml line 2"), "{message}");
    assert!(config_error("kernel = \"k\"\n").contains("no `version`"));
    let message = config_error("version = \"2\"\nkernel = \"k\"\n");
    assert!(message.contains("unsupported version \"2\""), "{message}");
    let message = config_error("version = 1\nkernel = \"k\"\n");
    assert!(message.contains("unsupported version 1"), "{message}");
    let message = config_error("version = \"1\"\n[input]\nkernel_args = []\napp_args = []\n");
    assert!(message.contains("kernel"), "{message}");
    let message = config_error("version = \"1\"\nkernel = \"k\"\n");
    assert!(message.contains("input"), "{message}");
    let message = config_error(
        "version = \"1\"\nkernel = \"k\"\n[input]\nkernel_args = []\napp_args = [1]\n",
    );
    assert!(message.contains("expected a string"), "{message}");
    let message = config_error(
        "version = \"1\"\nkernel = \"../k\"\n[input]\nkernel_args = []\napp_args = []\n",
    );
    assert!(message.contains("does not name a file"), "{message}");
    let message = config_error(
        "version = \"1\"\nkernel = \"k\"\n[input]\nkernel_args = []\napp_args = []\n\
         [requirements]\nmemory = \"lots\"\n",
    );
    assert!(message.contains("not a number"), "{message}");
    assert_eq!(ImageConfig::parse(b"\xff\xfe"), Err(ConfigError::NotUtf8));
}

#[test]
fn kernel_paths_are_cleaned() {
    let config = ImageConfig::parse(
        b"version = \"1\"\nkernel = \"/./bin//app\"\n[input]\nkernel_args = []\napp_args = []\n",
    )
    .unwrap();
    assert_eq!(config.kernel, "bin/app");
    assert_eq!(config.min_memory, None);
    assert_eq!(config.min_cpus, 0);
    assert!(config.env_vars.is_empty());
}

fn user_config() -> VmConfig {
    VmConfig {
        kernel: "app.hermit".into(),
        kernel_args: Vec::new(),
        kernel_options: Vec::new(),
        env: vec![
            ("HOME".into(), "/home/user".into()),
            ("GREETING".into(), "from the host".into()),
        ],
        memory_size: MemorySize::DEFAULT,
        cpu_count: 1,
        affinity: None,
        output: crate::output::OutputTarget::None,
        file_mappings: Vec::new(),
        tempdir: None,
        stats: false,
        emulation_fallback: true,
        hermit_image_mode: HermitImageMode::External,
        explicit: ExplicitSettings::default(),
        confinement: crate::params::Confinement::NONE,
        tuning: Default::default(),
        gdb: None,
        net: None,
    }
}

fn image_config() -> ImageConfig {
    ImageConfig::parse(CONFIG.as_bytes()).unwrap()
}

#[test]
fn the_archive_fills_what_the_user_left_open() {
    let merged = image_config().apply(&user_config()).unwrap();
    assert_eq!(
        merged.kernel_args,
        [OsString::from("one"), "two words".into()]
    );
    assert_eq!(merged.kernel_options, ["-freq", "2000"]);
    // hermit.toml overrides an inherited host variable and adds its own.
    assert_eq!(
        merged.env,
        [
            (OsString::from("HOME"), OsString::from("/home/user")),
            ("GREETING".into(), "hello".into()),
            ("EMPTY".into(), "".into()),
        ]
    );
    // Requirements raise the defaults (to whole 2 MiB).
    assert_eq!(merged.memory_size, MemorySize(128 << 20));
    assert_eq!(merged.cpu_count, 2);
}

#[test]
fn what_the_user_gives_wins() {
    let mut user = user_config();
    user.kernel_args = vec!["mine".into()];
    user.kernel_options = vec!["-freq".into(), "1000".into()];
    user.env.push(("GREETING".into(), "from -e".into()));
    user.env.remove(1);
    user.explicit.env_keys = vec!["GREETING".into()];
    user.memory_size = MemorySize(256 << 20);
    user.explicit.memory_size = true;
    user.cpu_count = 4;
    user.explicit.cpu_count = true;
    let merged = image_config().apply(&user).unwrap();
    assert_eq!(merged.kernel_args, [OsString::from("mine")]);
    assert_eq!(merged.kernel_options, ["-freq", "1000"]);
    assert!(merged.env.contains(&("GREETING".into(), "from -e".into())));
    assert!(merged.env.contains(&("EMPTY".into(), "".into())));
    assert_eq!(merged.memory_size, MemorySize(256 << 20));
    assert_eq!(merged.cpu_count, 4);
}

#[test]
fn explicit_settings_below_the_requirements_are_errors() {
    let mut user = user_config();
    user.explicit.memory_size = true;
    let error = image_config().apply(&user).unwrap_err();
    assert_eq!(
        error,
        ConfigError::NotEnoughMemory {
            required: MemorySize(128 << 20),
            given: MemorySize::DEFAULT
        }
    );
    assert!(error.to_string().contains("128 MiB"), "{error}");
    let mut user = user_config();
    user.explicit.cpu_count = true;
    let error = image_config().apply(&user).unwrap_err();
    assert_eq!(
        error,
        ConfigError::NotEnoughCpus {
            required: 2,
            given: 1
        }
    );
}

#[test]
fn memory_requirements_round_up_to_the_granule() {
    let mut config = image_config();
    config.min_memory = Some((100 << 20) + 1);
    let merged = config.apply(&user_config()).unwrap();
    assert_eq!(merged.memory_size, MemorySize(102 << 20));
    config.min_memory = Some(u64::MAX);
    assert_eq!(
        config.apply(&user_config()).unwrap_err(),
        ConfigError::MemoryRequirementTooLarge
    );
}

#[test]
fn the_environment_stays_capped() {
    let mut config = image_config();
    config.env_vars = (0..200)
        .map(|i| (format!("K{i}"), "v".to_owned()))
        .collect();
    let merged = config.apply(&user_config()).unwrap();
    assert_eq!(merged.env.len(), uhyve_interface::MAX_ARGC_ENVC);
}
