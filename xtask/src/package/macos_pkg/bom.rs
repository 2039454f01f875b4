//! A reader of the `.pkg`'s bill of materials (Apple's BOM: a "BOMStore" of big-endian blocks
//! whose `Paths` tree lists every path the package installs), written here from the format's
//! public description, so that the check does not read the BOM with the code that wrote it.
//! macOS's Installer and `pkgutil --files` read this list (the receipt keeps it).

use std::collections::BTreeMap;

/// What a BOM says of one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BomEntry {
    /// Relative to the install location, as `pkgutil --files` prints it (`.` for the root).
    pub path: String,
    pub is_dir: bool,
    /// Type bits and permissions, as `stat` gives them (`0o40755`, `0o100644`).
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub size: u32,
    /// The POSIX `cksum` CRC of a file's bytes (0 for a folder).
    pub checksum: u32,
}

/// Every path of the BOM's `Paths` tree, in the tree's order.
pub fn read(bom: &[u8]) -> Result<Vec<BomEntry>, String> {
    let store = Store::new(bom)?;
    let tree = store.block(store.var("Paths")?)?;
    if tree.get(..4) != Some(b"tree") {
        return Err("the Paths variable is not a tree".into());
    }
    // Down the first child of every inner node to the first leaf, then along the leaves.
    let mut node = store.block(be32(tree, 8)?)?;
    while be16(node, 0)? == 0 {
        node = store.block(be32(node, 12)?)?;
    }
    let mut records: Vec<(u32, u32, String, &[u8])> = Vec::new();
    loop {
        let count = be16(node, 2)? as usize;
        for i in 0..count {
            let info1 = store.block(be32(node, 12 + 8 * i)?)?;
            let file = store.block(be32(node, 16 + 8 * i)?)?;
            let name = file.get(4..).ok_or("a BOM file block is too short")?;
            let name = name.split(|&b| b == 0).next().unwrap_or_default();
            let name = String::from_utf8(name.to_vec()).map_err(|e| format!("a BOM name is not UTF-8: {e}"))?;
            records.push((be32(info1, 0)?, be32(file, 0)?, name, store.block(be32(info1, 4)?)?));
        }
        match be32(node, 4)? {
            0 => break,
            forward => node = store.block(forward)?,
        }
    }
    let names: BTreeMap<u32, (u32, &str)> =
        records.iter().map(|(id, parent, name, _)| (*id, (*parent, name.as_str()))).collect();
    records
        .iter()
        .map(|(id, _, _, info)| {
            let mut parts = Vec::new();
            let mut at = *id;
            while let Some((parent, name)) = names.get(&at) {
                parts.push(*name);
                if parts.len() > names.len() {
                    return Err("a loop in the BOM's parents".to_owned());
                }
                at = *parent;
            }
            if at != 0 {
                return Err(format!("a BOM path's parent {at} is not in the tree"));
            }
            parts.reverse();
            let path = match parts.as_slice() {
                ["."] => ".".to_owned(),
                [".", rest @ ..] => rest.join("/"),
                _ => return Err(format!("a BOM path not under `.`: {parts:?}")),
            };
            let kind = *info.first().ok_or("an empty BOM path record")?;
            Ok(BomEntry {
                path,
                is_dir: kind == 2,
                mode: be16(info, 4)?,
                uid: be32(info, 6)?,
                gid: be32(info, 10)?,
                size: be32(info, 18)?,
                checksum: be32(info, 23)?,
            })
        })
        .collect()
}

/// The block table and the named variables of a BOM store.
struct Store<'a> {
    bytes: &'a [u8],
    blocks: Vec<(usize, usize)>,
    vars: BTreeMap<String, u32>,
}

impl<'a> Store<'a> {
    fn new(bytes: &'a [u8]) -> Result<Store<'a>, String> {
        if bytes.get(..8) != Some(b"BOMStore") {
            return Err("not a BOM store".into());
        }
        let index = be32(bytes, 16)? as usize;
        let blocks = (0..be32(bytes, index)? as usize)
            .map(|i| Ok((be32(bytes, index + 4 + 8 * i)? as usize, be32(bytes, index + 8 + 8 * i)? as usize)))
            .collect::<Result<_, String>>()?;
        let mut at = be32(bytes, 24)? as usize;
        let mut vars = BTreeMap::new();
        for _ in 0..be32(bytes, at)? {
            let block = be32(bytes, at + 4)?;
            let len = *bytes.get(at + 8).ok_or("a BOM variable past the end")? as usize;
            let name = bytes.get(at + 9..at + 9 + len).ok_or("a BOM variable name past the end")?;
            vars.insert(String::from_utf8_lossy(name).into_owned(), block);
            at += 5 + len;
        }
        Ok(Store { bytes, blocks, vars })
    }

    fn var(&self, name: &str) -> Result<u32, String> {
        self.vars.get(name).copied().ok_or_else(|| format!("the BOM has no {name} variable"))
    }

    fn block(&self, index: u32) -> Result<&'a [u8], String> {
        let (address, length) = *self.blocks.get(index as usize).ok_or_else(|| format!("no BOM block {index}"))?;
        self.bytes.get(address..address + length).ok_or_else(|| format!("BOM block {index} is past the end"))
    }
}

fn be32(bytes: &[u8], at: usize) -> Result<u32, String> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| "a BOM field past the end".into())
}

fn be16(bytes: &[u8], at: usize) -> Result<u16, String> {
    bytes
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes(b.try_into().expect("2 bytes")))
        .ok_or_else(|| "a BOM field past the end".into())
}
