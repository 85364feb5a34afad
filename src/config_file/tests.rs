//! The configuration file: the sample file, partial files, every kind of bad file (with the
//! line and key they name), and where the file is looked for.

use super::*;

const SAMPLE: &str = include_str!("../../examples/uhyve.toml");

#[test]
fn the_sample_file_reads_completely() {
    let file = parse(SAMPLE).unwrap();
    assert_eq!(file.uhyve.stats, Some(true));
    assert_eq!(file.uhyve.file_isolation, Some(FileIsolation::Strict));
    assert_eq!(file.memory.memory_size, Some(MemorySize(100 << 20)));
    assert_eq!(file.memory.no_aslr, Some(true));
    assert_eq!(file.memory.thp, Some(true));
    assert_eq!(file.memory.ksm, Some(true));
    assert_eq!(file.cpu.cpu_count, NonZeroU32::new(4));
    assert_eq!(file.cpu.affinity, Some(CpuList(vec![1, 2, 3, 4])));
    assert_eq!(file.cpu.pit, Some(true));
    assert_eq!(
        file.guest.env_vars,
        vec![EnvOption::Set("foo".into(), "bar".into())]
    );
    assert_eq!(file.uhyve.output, None);
    assert_eq!(file.cpu.cpu_pm, None);
}

#[test]
fn every_key_reads() {
    let file = parse(
        r#"
        [uhyve]
        output = "none"
        stats = false
        tempdir = "/var/tmp"
        hermit_image_mode = "internal"
        file_isolation = "none"
        io_mode = "host=direct,sync"
        gdb_port = 1234
        seccomp = "none"
        net = "user,hostfwd=tcp::8080-:80"
        [memory]
        memory_size = 134217728
        [cpu]
        cpu_pm = true
        affinity = "0-1,3"
        [guest]
        env_vars = ["host", "A=1=2"]
        "#,
    )
    .unwrap();
    assert_eq!(file.uhyve.output.as_deref(), Some("none"));
    assert_eq!(file.uhyve.stats, Some(false));
    assert_eq!(file.uhyve.tempdir, Some(PathBuf::from("/var/tmp")));
    assert_eq!(
        file.uhyve.hermit_image_mode,
        Some(HermitImageMode::Internal)
    );
    assert_eq!(file.uhyve.file_isolation, Some(FileIsolation::None));
    assert_eq!(
        file.uhyve.io_mode,
        Some(IoMode {
            direct: true,
            sync: true
        })
    );
    assert_eq!(file.uhyve.gdb_port, Some(1234));
    assert_eq!(file.uhyve.seccomp, Some(SeccompMode::None));
    assert_eq!(
        file.uhyve.net,
        Some("user,hostfwd=tcp::8080-:80".parse().unwrap())
    );
    assert_eq!(file.memory.memory_size, Some(MemorySize(128 << 20)));
    assert_eq!(file.cpu.cpu_pm, Some(true));
    assert_eq!(file.cpu.affinity, Some(CpuList(vec![0, 1, 3])));
    assert_eq!(
        file.guest.env_vars,
        vec![EnvOption::Host, EnvOption::Set("A".into(), "1=2".into())]
    );
}

#[test]
fn partial_and_empty_files_leave_the_rest_unset() {
    assert_eq!(parse("").unwrap(), ConfigFile::default());
    assert_eq!(parse("[memory]\n").unwrap(), ConfigFile::default());
    let file = parse("[cpu]\ncpu_count = 2\n").unwrap();
    assert_eq!(file.cpu.cpu_count, NonZeroU32::new(2));
    assert_eq!(file.memory, MemorySection::default());
    assert_eq!(file.uhyve, UhyveSection::default());
}

/// The line, the key and a message with the words that say what is wrong.
fn problem(text: &str) -> TextProblem {
    parse(text).unwrap_err()
}

#[test]
fn unknown_sections_and_keys_name_themselves() {
    let p = problem("[uhyve]\nstats = true\n\n[memory]\nmemory_sise = \"64M\"\n");
    assert_eq!(p.line, 5);
    assert_eq!(p.key.as_deref(), Some("memory.memory_sise"));
    assert!(p.message.contains("unknown field `memory_sise`"), "{p:?}");
    let p = problem("[network]\ntap = \"tap0\"\n");
    assert_eq!(p.line, 1);
    assert_eq!(p.key.as_deref(), Some("[network]"));
    assert!(p.message.contains("network"), "{p:?}");
    // A key outside any section.
    let p = problem("stats = true\n");
    assert_eq!((p.line, p.key.as_deref()), (1, Some("stats")));
}

#[test]
fn wrong_types_and_bad_values_name_the_key_and_line() {
    for (text, line, key, words) in [
        ("[uhyve]\nstats = \"yes\"\n", 2, "uhyve.stats", "boolean"),
        ("[cpu]\n\ncpu_count = 0\n", 3, "cpu.cpu_count", "nonzero"),
        ("[cpu]\ncpu_count = -2\n", 2, "cpu.cpu_count", "-2"),
        ("[cpu]\naffinity = \"1-\"\n", 2, "cpu.affinity", "affinity"),
        ("[cpu]\naffinity = []\n", 2, "cpu.affinity", "empty"),
        (
            "[memory]\nmemory_size = \"lots\"\n",
            2,
            "memory.memory_size",
            "lots",
        ),
        (
            "[memory]\nmemory_size = -1\n",
            2,
            "memory.memory_size",
            "negative",
        ),
        (
            "[memory]\nmemory_size = 1.5\n",
            2,
            "memory.memory_size",
            "size",
        ),
        (
            "[uhyve]\nfile_isolation = \"paranoid\"\n",
            2,
            "uhyve.file_isolation",
            "paranoid",
        ),
        ("[uhyve]\nio_mode = \"fast\"\n", 2, "uhyve.io_mode", "fast"),
        ("[uhyve]\ngdb_port = 70000\n", 2, "uhyve.gdb_port", "70000"),
        (
            "[guest]\nenv_vars = [\"NOVALUE\"]\n",
            2,
            "guest.env_vars",
            "NOVALUE",
        ),
        (
            "[guest]\nenv_vars = \"A=1\"\n",
            2,
            "guest.env_vars",
            "sequence",
        ),
    ] {
        let p = problem(text);
        assert_eq!(p.line, line, "{text:?}: {p:?}");
        assert_eq!(p.key.as_deref(), Some(key), "{text:?}: {p:?}");
        assert!(
            p.message.to_lowercase().contains(&words.to_lowercase()),
            "{text:?}: {p:?} lacks {words:?}"
        );
        assert!(!p.message.contains('\n'), "{p:?}");
    }
}

#[test]
fn toml_syntax_errors_give_the_line() {
    let p = problem("[uhyve]\nstats = true\nstats = false\n");
    assert_eq!(p.line, 3, "{p:?}");
    let p = problem("[memory\n");
    assert_eq!(p.line, 1, "{p:?}");
}

#[test]
fn a_bad_file_is_one_line_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("uhyve.toml");
    std::fs::write(&path, "[cpu]\npit = 1\n").unwrap();
    let message = load(&path).unwrap_err().to_string();
    assert!(message.starts_with("config file "), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("line 2, cpu.pit:"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    let missing = dir.path().join("missing.toml");
    let message = load(&missing).unwrap_err().to_string();
    assert!(message.contains("missing.toml"), "{message}");
}

#[test]
fn the_file_is_found_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path().join("cwd");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(home.join("uhyve")).unwrap();
    let given = dir.path().join("given.toml");
    // Nothing exists yet, but a given file is used (and must then exist).
    assert_eq!(
        locate(Some(&given), Some(&cwd), Some(&home)),
        Some(ConfigSource::Given(given.clone()))
    );
    assert_eq!(locate(None, Some(&cwd), Some(&home)), None);
    std::fs::write(home.join("uhyve/uhyve.toml"), "").unwrap();
    assert_eq!(
        locate(None, Some(&cwd), Some(&home)),
        Some(ConfigSource::Default(home.join("uhyve/uhyve.toml")))
    );
    // An empty XDG_CONFIG_HOME is ignored.
    assert_eq!(locate(None, Some(&cwd), Some(Path::new(""))), None);
    std::fs::write(cwd.join("uhyve.toml"), "").unwrap();
    assert_eq!(
        locate(None, Some(&cwd), Some(&home)),
        Some(ConfigSource::Default(cwd.join("uhyve.toml")))
    );
    assert_eq!(
        locate(Some(&given), Some(&cwd), Some(&home))
            .unwrap()
            .path(),
        given
    );
}
