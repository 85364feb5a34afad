//! The serial console sink shared by every vCPU.
//!
//! [`SerialOutput`] receives the guest's console bytes (SerialWriteByte, SerialWriteBuffer and
//! writes to guest fds 1 and 2) and forwards them to the host's stdout, to a file (`-o FILE`) or
//! nowhere. Output is line-buffered in memory: it is written out whenever a `'\n'` arrives or 4 KiB
//! have accumulated, on [`SerialOutput::flush`] and when the sink is dropped, so kernel log lines
//! that arrive one byte per hypercall still reach the terminal promptly without one host `write`
//! per byte. A single internal mutex serialises the vCPUs: the bytes of one call never interleave
//! with those of another. A failing sink (e.g. `EPIPE` on a closed pipe) is reported once through
//! the log and further output is dropped; the guest never notices.
//!
//! A sink that can block (a pipe, FIFO, socket or terminal whose reader has stalled) never holds
//! the VM hostage: writes wait for the sink with `poll` and go out in pieces of at most
//! `PIPE_BUF` bytes, so they can always be abandoned. While the VM runs, the guest waits for a
//! slow reader (back-pressure, as a process would); once the VM stops ([`SerialOutput::stop`],
//! another vCPU's Exit, a crash) or a stop signal arrives, a write that makes no progress for
//! [`STOPPED_SINK_GRACE`] is given up with one warning. `-o FIFO` is opened without waiting for a
//! reader: with none, the error says so at once.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

/// Buffered bytes are written out once the buffer reaches this size, even without a newline.
pub const FLUSH_THRESHOLD: usize = 4096;

/// Once the VM is stopping, how long a write to a sink that accepts nothing is waited for.
pub const STOPPED_SINK_GRACE: Duration = Duration::from_secs(1);

/// How often a write waiting for a blocked sink checks whether the VM is stopping.
const SINK_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The largest write to a pipe that does not block once `poll` says it is writable.
const ATOMIC_PIPE_WRITE: usize = libc::PIPE_BUF;

/// Where the guest's console output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputTarget {
    /// The host's standard output.
    Stdout,
    /// A file, created or truncated when the sink is created.
    File(PathBuf),
    /// Discard all output.
    None,
}

/// Failures setting up the console sink.
#[derive(Debug, Error)]
pub enum OutputError {
    /// The output file could not be created.
    #[error("cannot create the output file {path}: {source}")]
    Create {
        /// The requested output file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The output file is a FIFO that no process has open for reading.
    #[error("the output file {path} is a FIFO that no process reads: start its reader first")]
    FifoWithoutReader {
        /// The requested output file.
        path: PathBuf,
    },
}

/// An open sink: the file written to and whether a write to it can block indefinitely.
struct Sink {
    file: File,
    /// A pipe, FIFO, socket or character device (a stalled reader blocks writes); regular files
    /// never do.
    may_block: bool,
}

impl Sink {
    fn new(file: File) -> Self {
        let may_block = file
            .metadata()
            .map(|metadata| !metadata.is_file() && !metadata.file_type().is_block_device())
            .unwrap_or(true);
        Self { file, may_block }
    }

    /// Our own descriptor for the host's stdout (the same open file), or `None` if stdout is
    /// closed.
    fn stdout() -> Option<Self> {
        match io::stdout().as_fd().try_clone_to_owned() {
            Ok(fd) => Some(Self::new(File::from(fd))),
            Err(error) => {
                log::warn!(
                    "the host's stdout is unusable ({error}); the guest's console output is dropped"
                );
                None
            }
        }
    }

    /// Opens `-o FILE`: created or truncated; a FIFO only if a reader is there already (opening
    /// it never waits).
    fn create(path: PathBuf) -> Result<Self, OutputError> {
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            // Our own open file description: non-blocking writes are waited for with poll.
            .custom_flags(libc::O_NONBLOCK)
            .open(&path);
        match opened {
            Ok(file) => Ok(Self::new(file)),
            Err(error) if error.raw_os_error() == Some(libc::ENXIO) && is_fifo(&path) => {
                Err(OutputError::FifoWithoutReader { path })
            }
            Err(source) => Err(OutputError::Create { path, source }),
        }
    }

    /// Writes all of `bytes`, waiting for a sink that is not ready; gives up when `give_up` says
    /// so after a wait without progress. Returns how many bytes were written.
    fn write_patiently(&self, bytes: &[u8], stopping: &AtomicBool) -> io::Result<usize> {
        let mut written = 0;
        let mut idle_since: Option<Instant> = None;
        while let Some(rest) = bytes.get(written..).filter(|rest| !rest.is_empty()) {
            if self.may_block && !wait_writable(&self.file, SINK_POLL_INTERVAL)? {
                if must_give_up(stopping, &mut idle_since) {
                    return Ok(written);
                }
                continue;
            }
            let piece = if self.may_block {
                &rest[..rest.len().min(ATOMIC_PIPE_WRITE)]
            } else {
                rest
            };
            match (&self.file).write(piece) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(count) => {
                    written += count;
                    idle_since = None;
                }
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                    ) =>
                {
                    if must_give_up(stopping, &mut idle_since) {
                        return Ok(written);
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Ok(written)
    }
}

fn is_fifo(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|metadata| metadata.file_type().is_fifo())
}

/// Whether the VM is stopping (or a stop signal arrived) and the sink has accepted nothing for
/// [`STOPPED_SINK_GRACE`]; starts the idle clock when stopping.
fn must_give_up(stopping: &AtomicBool, idle_since: &mut Option<Instant>) -> bool {
    if !stopping.load(Ordering::SeqCst) && crate::signals::stop_requested().is_none() {
        *idle_since = None;
        return false;
    }
    idle_since.get_or_insert_with(Instant::now).elapsed() >= STOPPED_SINK_GRACE
}

/// Waits up to `timeout` until `file` accepts a write; `false` on timeout or interruption.
fn wait_writable(file: &File, timeout: Duration) -> io::Result<bool> {
    let mut poll = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLOUT,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `poll` points to one valid, initialised pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    match ready {
        -1 => {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(error)
            }
        }
        0 => Ok(false),
        // POLLERR/POLLHUP: the write that follows reports the error.
        _ => Ok(true),
    }
}

struct State {
    /// `None`: output is discarded.
    sink: Option<Sink>,
    buffer: Vec<u8>,
    /// Set after the first write error, or once a stalled sink was given up while the VM
    /// stops: everything afterwards is dropped.
    failed: bool,
}

impl State {
    /// Writes the buffer to the sink and empties it.
    fn flush(&mut self, stopping: &AtomicBool) {
        if self.buffer.is_empty() {
            return;
        }
        if let Some(sink) = self.sink.as_ref().filter(|_| !self.failed) {
            match sink.write_patiently(&self.buffer, stopping) {
                Ok(written) if written < self.buffer.len() => {
                    log::warn!(
                        "the reader of the guest's console output accepts nothing while the VM \
                         stops; dropping the rest of the output"
                    );
                    // Given up once: later output is not waited for again.
                    self.failed = true;
                }
                Ok(_) => {}
                Err(error) => {
                    log::error!("cannot write the guest's console output ({error}); dropping it");
                    self.failed = true;
                }
            }
        }
        self.buffer.clear();
    }

    fn must_flush(&self) -> bool {
        self.buffer.len() >= FLUSH_THRESHOLD
    }
}

/// The console sink; `Send + Sync`, shared by all vCPU threads (usually in an `Arc`).
pub struct SerialOutput {
    state: Mutex<State>,
    /// Set when the VM stops: writes to a stalled sink are given up (read without the lock,
    /// which a blocked writer holds).
    stopping: AtomicBool,
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput").finish_non_exhaustive()
    }
}

impl SerialOutput {
    /// Opens the sink. A [`OutputTarget::File`] is created (or truncated) immediately; a FIFO
    /// needs a reader already.
    pub fn new(target: OutputTarget) -> Result<Self, OutputError> {
        let sink = match target {
            OutputTarget::Stdout => Sink::stdout(),
            OutputTarget::None => None,
            OutputTarget::File(path) => Some(Sink::create(path)?),
        };
        Ok(Self {
            state: Mutex::new(State {
                sink,
                buffer: Vec::with_capacity(FLUSH_THRESHOLD),
                failed: false,
            }),
            stopping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` inconsistent in a way that matters
        // for console bytes, so a poisoned lock is simply taken over.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Appends one byte; writes the buffer out at a newline or when it is full.
    pub fn write_byte(&self, byte: u8) {
        let mut state = self.lock();
        state.buffer.push(byte);
        if byte == b'\n' || state.must_flush() {
            state.flush(&self.stopping);
        }
    }

    /// Appends `bytes` as one unit (never interleaved with another call); writes the buffer out if
    /// the bytes contain a newline or the buffer is full.
    pub fn write_all(&self, bytes: &[u8]) {
        self.writer().write_all(bytes);
    }

    /// Exclusive access for a write made of several pieces (e.g. a guest buffer copied in
    /// chunks): no other vCPU's output can come between them while the writer lives.
    pub fn writer(&self) -> SerialWriter<'_> {
        SerialWriter {
            state: self.lock(),
            stopping: &self.stopping,
        }
    }

    /// Writes out everything buffered so far.
    pub fn flush(&self) {
        self.lock().flush(&self.stopping);
    }

    /// Tells writes in progress and later ones that the VM is stopping: a sink that accepts
    /// nothing for [`STOPPED_SINK_GRACE`] is given up instead of waited for.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }
}

/// Holds the console for one multi-piece write (see [`SerialOutput::writer`]).
pub struct SerialWriter<'a> {
    state: MutexGuard<'a, State>,
    stopping: &'a AtomicBool,
}

impl SerialWriter<'_> {
    /// Appends `bytes`; writes the buffer out if they contain a newline or the buffer is full.
    pub fn write_all(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.state.buffer.extend_from_slice(bytes);
        if bytes.contains(&b'\n') || self.state.must_flush() {
            self.state.flush(self.stopping);
        }
    }
}

impl Drop for SerialOutput {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn file_output() -> (tempfile::TempDir, PathBuf, SerialOutput) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.txt");
        let output = SerialOutput::new(OutputTarget::File(path.clone())).unwrap();
        (dir, path, output)
    }

    fn contents(path: &std::path::Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    #[test]
    fn bytes_are_held_until_a_newline() {
        let (_dir, path, output) = file_output();
        for &b in b"hello" {
            output.write_byte(b);
        }
        assert_eq!(contents(&path), b"");
        output.write_byte(b'\n');
        assert_eq!(contents(&path), b"hello\n");
        output.write_all(b"partial");
        assert_eq!(contents(&path), b"hello\n");
        output.write_all(b" line\nand more");
        assert_eq!(contents(&path), b"hello\npartial line\nand more");
    }

    #[test]
    fn a_full_buffer_is_written_without_newline() {
        let (_dir, path, output) = file_output();
        for _ in 0..FLUSH_THRESHOLD - 1 {
            output.write_byte(b'x');
        }
        assert!(contents(&path).is_empty());
        output.write_byte(b'x');
        assert_eq!(contents(&path).len(), FLUSH_THRESHOLD);
    }

    #[test]
    fn flush_and_drop_write_the_rest() {
        let (_dir, path, output) = file_output();
        output.write_all(b"abc");
        output.flush();
        assert_eq!(contents(&path), b"abc");
        output.write_all(b"def");
        drop(output);
        assert_eq!(contents(&path), b"abcdef");
    }

    #[test]
    fn a_writer_keeps_its_pieces_together() {
        let (_dir, path, output) = file_output();
        let output = Arc::new(output);
        let threads: Vec<_> = (0..4u8)
            .map(|id| {
                let output = Arc::clone(&output);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        let mut writer = output.writer();
                        for _ in 0..5 {
                            writer.write_all(&[b'a' + id; 20]);
                        }
                        writer.write_all(b"\n");
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(output);
        let text = contents(&path);
        for line in text.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            assert_eq!(line.len(), 100);
            assert!(
                line.iter().all(|&b| b == line[0]),
                "pieces of two writers mixed"
            );
        }
    }

    #[test]
    fn concurrent_calls_do_not_interleave() {
        let (_dir, path, output) = file_output();
        let output = Arc::new(output);
        let threads: Vec<_> = (0..4u8)
            .map(|id| {
                let output = Arc::clone(&output);
                std::thread::spawn(move || {
                    let line = vec![b'a' + id; 100];
                    for _ in 0..200 {
                        output.write_all(&line);
                        output.write_byte(b'\n');
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(output);
        let text = contents(&path);
        // Each write_all is contiguous: every run of one letter is exactly one call's 100 bytes.
        let runs = text
            .split(|&b| b == b'\n')
            .flat_map(|line| line.chunk_by(|a, b| a == b))
            .filter(|run| !run.is_empty());
        for run in runs {
            assert_eq!(run.len(), 100, "a write_all was split");
        }
        assert_eq!(text.len(), 4 * 200 * 101);
    }

    #[test]
    fn none_discards_and_bad_file_is_an_error() {
        let output = SerialOutput::new(OutputTarget::None).unwrap();
        output.write_all(b"nobody reads this\n");
        output.flush();
        let error = SerialOutput::new(OutputTarget::File(PathBuf::from(
            "/nonexistent-uhyve-dir/console.txt",
        )))
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("/nonexistent-uhyve-dir/console.txt")
        );
    }

    #[cfg(target_os = "linux")] // /dev/full is Linux-only
    #[test]
    fn write_errors_do_not_panic() {
        // Every write to /dev/full fails with ENOSPC.
        let output = SerialOutput::new(OutputTarget::File(PathBuf::from("/dev/full"))).unwrap();
        output.write_all(b"lost\n");
        output.write_byte(b'x');
        output.write_byte(b'\n');
        output.flush();
        assert!(output.lock().failed);
        assert!(output.lock().buffer.is_empty());
    }

    /// A FIFO in a fresh temp directory.
    fn fifo() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(status.success());
        (dir, path)
    }

    /// Opens the reading end of `fifo` without waiting for a writer.
    fn fifo_reader(fifo: &std::path::Path) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
            .unwrap()
    }

    #[test]
    fn a_fifo_without_reader_is_refused_at_once() {
        let (_dir, fifo) = fifo();
        let started = Instant::now();
        let error = SerialOutput::new(OutputTarget::File(fifo.clone())).unwrap_err();
        assert!(
            matches!(error, OutputError::FifoWithoutReader { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("no process reads"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_stalled_reader_holds_writes_until_the_vm_stops() {
        let (_dir, fifo) = fifo();
        let _reader = fifo_reader(&fifo); // open, never read
        let output = Arc::new(SerialOutput::new(OutputTarget::File(fifo)).unwrap());
        let writer = {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                // Far more than a pipe holds.
                for _ in 0..4096 {
                    output.write_all(&[b'x'; 99]);
                    output.write_byte(b'\n');
                }
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !writer.is_finished(),
            "the writer should wait for the reader"
        );
        let stopped = Instant::now();
        output.stop();
        writer.join().unwrap();
        assert!(
            stopped.elapsed() < STOPPED_SINK_GRACE * 3,
            "given up after {:?}",
            stopped.elapsed()
        );
        // The final flush of a stopped VM gives up too.
        output.write_all(b"rest");
        let dropped = Instant::now();
        drop(output);
        assert!(dropped.elapsed() < STOPPED_SINK_GRACE * 3);
    }

    #[test]
    fn a_slow_reader_gets_everything() {
        use std::io::Read;
        let (_dir, fifo) = fifo();
        let mut reader = fifo_reader(&fifo);
        let output = SerialOutput::new(OutputTarget::File(fifo)).unwrap();
        let lines = 2048;
        let drain = std::thread::spawn(move || {
            let mut got = Vec::new();
            let mut buffer = [0u8; 8192];
            // Slower than the writer: the pipe fills up and the writer waits.
            while got.len() < lines * 100 {
                match reader.read(&mut buffer) {
                    Ok(n) => got.extend_from_slice(&buffer[..n]),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(error) => panic!("{error}"),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            got
        });
        for line in 0..lines {
            output.write_all(format!("{line:099}").as_bytes());
            output.write_byte(b'\n');
        }
        drop(output);
        let got = drain.join().unwrap();
        assert_eq!(got.len(), lines * 100);
        assert!(got.starts_with(format!("{:099}\n", 0).as_bytes()));
        assert!(got.ends_with(format!("{:099}\n", lines - 1).as_bytes()));
    }
}
