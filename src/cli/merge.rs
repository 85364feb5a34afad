//! How a configuration file fills in what the command line and the environment left unset
//! (precedence: command line > environment > file > defaults), and where the file is found.

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::Args;
use crate::config_file::{
    self, ConfigFile, ConfigFileError, ConfigSource, CpuSection, MemorySection, UhyveSection,
};
use crate::params::GdbAddress;

/// Finds and reads the configuration file for these options, if there is one, and fills in
/// from it what `matches` did not set.
pub(super) fn apply_config_file(
    args: &mut Args,
    matches: &ArgMatches,
) -> Result<(), ConfigFileError> {
    let working_dir = std::env::current_dir().ok();
    let config_home = std::env::var_os("XDG_CONFIG_HOME").map(std::path::PathBuf::from);
    let Some(source) = config_file::locate(
        args.config.as_deref(),
        working_dir.as_deref(),
        config_home.as_deref(),
    ) else {
        return Ok(());
    };
    if let ConfigSource::Default(path) = &source {
        log::info!("using the configuration file {}", path.display());
    }
    let file = config_file::load(source.path())?;
    fill_unset(args, matches, file);
    Ok(())
}

/// Whether the option with this id was given on the command line or through its environment
/// variable (rather than left at its default).
fn given(matches: &ArgMatches, id: &str) -> bool {
    matches!(
        matches.value_source(id),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// Sets `target` to the file's `value` unless the option `id` was given.
fn fill<T>(matches: &ArgMatches, id: &str, target: &mut T, value: Option<T>) {
    if let Some(value) = value
        && !given(matches, id)
    {
        *target = value;
    }
}

/// Fills every option the file sets and `matches` left unset. The file's `env_vars` come
/// before the command line's `-e` entries, so that those override them.
pub(super) fn fill_unset(args: &mut Args, matches: &ArgMatches, file: ConfigFile) {
    let ConfigFile {
        uhyve,
        memory,
        cpu,
        guest,
    } = file;
    fill_uhyve(args, matches, uhyve);
    fill_memory(args, matches, memory);
    fill_cpu(args, matches, cpu);
    if !guest.env_vars.is_empty() {
        let from_command_line = std::mem::take(&mut args.env);
        args.env = guest.env_vars;
        args.env.extend(from_command_line);
    }
}

fn fill_uhyve(args: &mut Args, matches: &ArgMatches, section: UhyveSection) {
    fill(
        matches,
        "output",
        &mut args.output,
        section.output.map(|o| Some(o.into())),
    );
    fill(matches, "stats", &mut args.stats, section.stats);
    fill(
        matches,
        "tempdir",
        &mut args.tempdir,
        section.tempdir.map(Some),
    );
    let mode = section.hermit_image_mode;
    fill(
        matches,
        "hermit_image_mode",
        &mut args.hermit_image_mode,
        mode,
    );
    let isolation = section.file_isolation;
    fill(
        matches,
        "file_isolation",
        &mut args.file_isolation,
        isolation,
    );
    fill(
        matches,
        "io_mode",
        &mut args.io_mode,
        section.io_mode.map(Some),
    );
    let gdb = section
        .gdb_port
        .map(|port| Some(GdbAddress::on_loopback(port)));
    fill(matches, "gdb_port", &mut args.gdb_port, gdb);
    fill(
        matches,
        "seccomp",
        &mut args.seccomp,
        section.seccomp.map(Some),
    );
    fill(matches, "net", &mut args.net, section.net.map(Some));
}

fn fill_memory(args: &mut Args, matches: &ArgMatches, section: MemorySection) {
    let size = section.memory_size.map(Some);
    fill(matches, "memory_size", &mut args.memory_size, size);
    fill(matches, "no_aslr", &mut args.no_aslr, section.no_aslr);
    fill(matches, "thp", &mut args.thp, section.thp);
    fill(matches, "ksm", &mut args.ksm, section.ksm);
}

fn fill_cpu(args: &mut Args, matches: &ArgMatches, section: CpuSection) {
    let count = section.cpu_count.map(|count| Some(count.get()));
    fill(matches, "cpu_count", &mut args.cpu_count, count);
    fill(matches, "cpu_pm", &mut args.cpu_pm, section.cpu_pm);
    fill(matches, "pit", &mut args.pit, section.pit);
    fill(
        matches,
        "affinity",
        &mut args.affinity,
        section.affinity.map(Some),
    );
}
