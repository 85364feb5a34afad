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

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use thiserror::Error;

/// Buffered bytes are written out once the buffer reaches this size, even without a newline.
pub const FLUSH_THRESHOLD: usize = 4096;

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
}

enum Sink {
    Stdout,
    File(File),
    None,
}

struct State {
    sink: Sink,
    buffer: Vec<u8>,
    /// Set after the first write error: everything afterwards is dropped.
    failed: bool,
}

impl State {
    /// Writes the buffer to the sink and empties it.
    fn flush(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        if !self.failed {
            let result = match &mut self.sink {
                Sink::Stdout => {
                    let mut stdout = io::stdout().lock();
                    stdout.write_all(&self.buffer).and_then(|()| stdout.flush())
                }
                Sink::File(file) => file.write_all(&self.buffer),
                Sink::None => Ok(()),
            };
            if let Err(error) = result {
                log::error!("cannot write the guest's console output ({error}); dropping it");
                self.failed = true;
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
}

impl std::fmt::Debug for SerialOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialOutput").finish_non_exhaustive()
    }
}

impl SerialOutput {
    /// Opens the sink. A [`OutputTarget::File`] is created (or truncated) immediately.
    pub fn new(target: OutputTarget) -> Result<Self, OutputError> {
        let sink = match target {
            OutputTarget::Stdout => Sink::Stdout,
            OutputTarget::None => Sink::None,
            OutputTarget::File(path) => match File::create(&path) {
                Ok(file) => Sink::File(file),
                Err(source) => return Err(OutputError::Create { path, source }),
            },
        };
        Ok(Self {
            state: Mutex::new(State {
                sink,
                buffer: Vec::with_capacity(FLUSH_THRESHOLD),
                failed: false,
            }),
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
            state.flush();
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
        SerialWriter { state: self.lock() }
    }

    /// Writes out everything buffered so far.
    pub fn flush(&self) {
        self.lock().flush();
    }
}

/// Holds the console for one multi-piece write (see [`SerialOutput::writer`]).
pub struct SerialWriter<'a> {
    state: MutexGuard<'a, State>,
}

impl SerialWriter<'_> {
    /// Appends `bytes`; writes the buffer out if they contain a newline or the buffer is full.
    pub fn write_all(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.state.buffer.extend_from_slice(bytes);
        if bytes.contains(&b'\n') || self.state.must_flush() {
            self.state.flush();
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

    #[cfg(target_os = "linux")]
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
}
