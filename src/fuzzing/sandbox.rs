//! Fuzz target `sandbox_paths`: the sandbox path resolver ([`FileMap`]) with arbitrary mapping
//! tables and guest paths; the guest's view may change only inside the mapped tree and the
//! private temp directory (see `sandbox_tree`). Also home of the guest-path and open-flag
//! generators the `hypercall` target shares.

use std::io::SeekFrom;

use arbitrary::{Arbitrary, Unstructured};

use super::sandbox_tree::sandbox_tree;
use crate::isolation::{FileMap, OpenFile};

/// One component of a guest path: names of the tree, the tricky ones, or anything.
#[derive(Debug, Arbitrary)]
enum Component {
    Root,
    Data,
    Dot,
    DotDot,
    Empty,
    File,
    Dir,
    Inner,
    Link,
    Escape,
    EscapeAbs,
    Loop,
    Canary,
    Outside,
    New(u8),
    Raw(String),
}

/// A guest path built from components.
#[derive(Debug, Arbitrary)]
pub struct GuestPath {
    relative: bool,
    components: Vec<Component>,
    trailing_slash: bool,
}

impl GuestPath {
    /// The path as the guest would pass it (up to a NUL, as the hypercalls read it).
    pub fn render(&self) -> String {
        let mut path = String::new();
        for (index, component) in self.components.iter().enumerate() {
            if index > 0 || !self.relative {
                path.push('/');
            }
            let new_name;
            path.push_str(match component {
                Component::Root => "root",
                Component::Data => "data",
                Component::Dot => ".",
                Component::DotDot => "..",
                Component::Empty => "",
                Component::File => "file",
                Component::Dir => "dir",
                Component::Inner => "inner",
                Component::Link => "link",
                Component::Escape => "escape",
                Component::EscapeAbs => "escape_abs",
                Component::Loop => "loop",
                Component::Canary => "canary",
                Component::Outside => "outside",
                Component::New(n) => {
                    new_name = format!("new{}", n % 4);
                    &new_name
                }
                Component::Raw(raw) => raw,
            });
        }
        if self.trailing_slash {
            path.push('/');
        }
        // A guest passes a C string: the path ends at its first NUL.
        path.truncate(path.find('\0').unwrap_or(path.len()));
        path
    }
}

/// Open flags in Hermit (= Linux x86) numbering: the meaningful bits, or any value.
#[derive(Debug, Arbitrary)]
pub enum OpenFlags {
    Bits {
        access: u8,
        create: bool,
        exclusive: bool,
        truncate: bool,
        append: bool,
        directory: bool,
        no_follow: bool,
    },
    Raw(i32),
}

impl OpenFlags {
    /// The flags word.
    pub fn value(&self) -> i32 {
        match *self {
            OpenFlags::Bits {
                access,
                create,
                exclusive,
                truncate,
                append,
                directory,
                no_follow,
            } => {
                let bit = |on: bool, value: i32| if on { value } else { 0 };
                i32::from(access % 4)
                    | bit(create, 0o100)
                    | bit(exclusive, 0o200)
                    | bit(truncate, 0o1000)
                    | bit(append, 0o2000)
                    | bit(directory, 0o200000)
                    | bit(no_follow, 0o400000)
            }
            OpenFlags::Raw(value) => value,
        }
    }
}

/// A `--file-mapping` option: a host path of the tree and any guest path.
#[derive(Debug, Arbitrary)]
struct Mapping {
    host: u8,
    guest: GuestPath,
    raw_guest: Option<String>,
}

/// What is done with an opened file.
#[derive(Debug, Arbitrary)]
enum FileOperation {
    Read(u16),
    Write(Vec<u8>),
    Seek(u8, i64),
    Getdents(u16),
    Fstat,
}

/// One call on the map.
#[derive(Debug, Arbitrary)]
enum Operation {
    Open {
        path: GuestPath,
        flags: OpenFlags,
        mode: i32,
        then: Vec<FileOperation>,
    },
    Stat(GuestPath, bool),
    Unlink(GuestPath),
    Mkdir(GuestPath, u32),
}

/// The target's input.
#[derive(Debug, Arbitrary)]
struct SandboxInput {
    default_mappings: bool,
    mappings: Vec<Mapping>,
    operations: Vec<Operation>,
}

/// Builds a FileMap over the tree from arbitrary mappings and runs arbitrary calls on it.
pub fn sandbox_paths(data: &[u8]) {
    let Ok(input) = SandboxInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let tree = sandbox_tree();
    let hosts = tree.host_candidates();
    let mut specs = if input.default_mappings {
        tree.default_mappings()
    } else {
        Vec::new()
    };
    let mappings = input.mappings.iter().take(8).map(|mapping| {
        let host = &hosts[usize::from(mapping.host) % hosts.len()];
        let guest = mapping
            .raw_guest
            .clone()
            .unwrap_or_else(|| mapping.guest.render());
        format!("{}:{guest}", host.display())
    });
    // Mappings come from the command line or the environment, which cannot hold a NUL byte.
    specs.extend(mappings.filter(|spec| !spec.contains('\0')));
    if let Ok(map) = FileMap::new(&specs, Some(tree.private())) {
        for operation in input.operations.iter().take(32) {
            run_operation(&map, operation);
        }
        let _ = map.mount_points();
        tree.assert_untouched(false);
    }
    tree.assert_untouched(true);
}

/// One call; errors are the guest's business.
fn run_operation(map: &FileMap, operation: &Operation) {
    match operation {
        Operation::Open {
            path,
            flags,
            mode,
            then,
        } => {
            if let Ok(file) = map.open(&path.render(), flags.value(), *mode) {
                let _ = file.path();
                for file_operation in then.iter().take(8) {
                    run_file_operation(&file, file_operation);
                }
            }
        }
        Operation::Stat(path, follow) => {
            let _ = map.stat(&path.render(), *follow);
        }
        Operation::Unlink(path) => {
            let _ = map.unlink(&path.render());
        }
        Operation::Mkdir(path, mode) => {
            let _ = map.mkdir(&path.render(), *mode);
        }
    }
}

/// One call on an open file.
fn run_file_operation(file: &OpenFile, operation: &FileOperation) {
    match operation {
        FileOperation::Read(len) => {
            let mut buffer = vec![0; usize::from(*len)];
            if let Ok(got) = file.read(&mut buffer) {
                assert!(got <= buffer.len());
            }
        }
        FileOperation::Write(data) => {
            if let Ok(written) = file.write(data) {
                assert!(written <= data.len());
            }
        }
        FileOperation::Seek(whence, offset) => {
            let to = match whence % 3 {
                0 => SeekFrom::Start(offset.unsigned_abs()),
                1 => SeekFrom::Current(*offset),
                _ => SeekFrom::End(*offset),
            };
            let _ = file.seek(to);
        }
        FileOperation::Getdents(len) => {
            if let Ok(Some(records)) = file.getdents(u64::from(*len)) {
                assert!(records.len() <= usize::from(*len));
                assert!(crate::isolation::dir::decode_dirents(&records).is_some());
            }
        }
        FileOperation::Fstat => {
            let _ = file.fstat();
        }
    }
}
