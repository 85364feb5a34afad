//! A small, strict reader of flattened device trees (DTB version 17), for checking that what the
//! boot encoders write parses back: the header, the memory reservation block and every property
//! with its full node path.

/// `FDT_BEGIN_NODE`, `FDT_END_NODE`, `FDT_PROP`, `FDT_NOP`, `FDT_END`.
const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const NOP: u32 = 4;
const END: u32 = 9;

/// What a device tree holds.
#[derive(Debug, Default)]
pub struct ParsedFdt {
    /// `(address, size)` of each memory reservation.
    pub reservations: Vec<(u64, u64)>,
    /// Full node paths (`/`, `/cpus`, `/cpus/cpu@0`, …) in order.
    pub nodes: Vec<String>,
    /// `(node path, property name, value)` in order.
    pub properties: Vec<(String, String, Vec<u8>)>,
}

impl ParsedFdt {
    /// The value of property `name` of node `node`, if there is one.
    pub fn property(&self, node: &str, name: &str) -> Option<&[u8]> {
        self.properties
            .iter()
            .find(|(path, property, _)| path == node && property == name)
            .map(|(_, _, value)| value.as_slice())
    }
}

fn be32(blob: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        blob.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn be64(blob: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        blob.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The NUL-terminated string at `at` and the offset just past its NUL.
fn c_string(blob: &[u8], at: usize) -> Option<(String, usize)> {
    let rest = blob.get(at..)?;
    let len = rest.iter().position(|&byte| byte == 0)?;
    let text = String::from_utf8(rest[..len].to_vec()).ok()?;
    Some((text, at + len + 1))
}

/// Parses `blob`; `None` if anything about it is malformed.
pub fn parse(blob: &[u8]) -> Option<ParsedFdt> {
    let header = |index: usize| be32(blob, index * 4).map(|value| value as usize);
    if header(0)? != 0xd00d_feed || header(1)? != blob.len() || header(5)? != 17 {
        return None;
    }
    let (structure, strings, reservations) = (header(2)?, header(3)?, header(4)?);
    let strings_end = strings.checked_add(header(8)?)?;
    let structure_end = structure.checked_add(header(9)?)?;
    let strings_block = blob.get(strings..strings_end)?;
    let structure_block = blob.get(..structure_end)?;
    let mut parsed = ParsedFdt::default();
    let mut at = reservations;
    loop {
        let (address, size) = (be64(blob, at)?, be64(blob, at + 8)?);
        at += 16;
        if (address, size) == (0, 0) {
            break;
        }
        parsed.reservations.push((address, size));
    }
    read_structure(structure_block, structure, strings_block, &mut parsed)?;
    Some(parsed)
}

/// Walks the structure block from `at` to its `FDT_END` token.
fn read_structure(
    block: &[u8],
    mut at: usize,
    strings: &[u8],
    parsed: &mut ParsedFdt,
) -> Option<()> {
    let mut path: Vec<String> = Vec::new();
    let joined = |path: &[String]| match path.len() {
        0 | 1 => "/".to_owned(),
        _ => path[1..]
            .iter()
            .fold(String::new(), |out, name| out + "/" + name),
    };
    loop {
        let token = be32(block, at)?;
        at += 4;
        match token {
            BEGIN_NODE => {
                let (name, next) = c_string(block, at)?;
                at = next.next_multiple_of(4);
                path.push(name);
                parsed.nodes.push(joined(&path));
            }
            END_NODE => {
                path.pop()?;
            }
            PROP => {
                let len = be32(block, at)? as usize;
                let (name, _) = c_string(strings, be32(block, at + 4)? as usize)?;
                let value = block.get(at + 8..at + 8 + len)?.to_vec();
                at = (at + 8 + len).next_multiple_of(4);
                if path.is_empty() {
                    return None;
                }
                parsed.properties.push((joined(&path), name, value));
            }
            NOP => {}
            END if path.is_empty() && at == block.len() => return Some(()),
            _ => return None,
        }
    }
}
