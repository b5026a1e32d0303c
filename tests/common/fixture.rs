//! The line-oriented recordings under fixtures/kernel/ (targets.out, faults.out; format in
//! fixtures/kernel/README.md): blocks that open with a keyword and a name and close with `end`,
//! made of `KEY value` lines, with the four pattern disks named `$A`..`$D` in tables.

use std::path::Path;

use super::{Mount, write_pattern_image};

/// The four fixture disks: placeholder, pattern index, sectors.
pub const DISKS: [(&str, u64, u64); 4] = [
    ("$A", 0, 8192),
    ("$B", 1, 4096),
    ("$C", 2, 6144),
    ("$D", 3, 1000),
];

#[derive(Default, Debug)]
pub struct Block {
    pub kind: String,
    pub name: String,
    pub fields: Vec<(String, String)>,
}

impl Block {
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn one(&self, key: &str) -> Option<&str> {
        self.all(key).first().copied()
    }
}

/// Reads fixtures/kernel/FILE, whose blocks open with one of `openers`.
pub fn read(file: &str, openers: &[&str]) -> Vec<Block> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/kernel")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        if current.is_none() && openers.contains(&key) {
            current = Some(Block {
                kind: key.into(),
                name: value.into(),
                ..Default::default()
            });
        } else if key == "end" {
            blocks.push(current.take().expect("end without a block"));
        } else {
            current
                .as_mut()
                .expect("field outside a block")
                .fields
                .push((key.into(), value.into()));
        }
    }
    assert!(current.is_none(), "unterminated block in {file}");
    blocks
}

/// Writes the four pattern disks into the mount's scratch directory as A.img..D.img.
pub fn make_disks(m: &Mount) {
    for (ph, index, sectors) in DISKS {
        write_pattern_image(&m.path(&format!("{}.img", &ph[1..])), index, sectors);
    }
}

/// Placeholders -> this mount's image paths.
pub fn substitute(m: &Mount, text: &str) -> String {
    let mut out = text.to_string();
    for (ph, _, _) in DISKS {
        out = out.replace(ph, &m.path(&format!("{}.img", &ph[1..])).to_string_lossy());
    }
    out
}

/// A block's `table` lines, placeholders replaced, as one table text.
pub fn table_text(m: &Mount, b: &Block) -> String {
    b.all("table")
        .iter()
        .map(|l| substitute(m, l) + "\n")
        .collect()
}
