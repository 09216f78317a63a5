//! Where a field lies in a kernel struct, read from the kernel's own type information
//! (`/sys/kernel/btf/vmlinux`): the carrier hook reads `struct net_device`'s `ifindex`, whose
//! offset differs between kernels and configurations, and Rust programs get no CO-RE
//! relocations. aya parses BTF but does not expose struct members, so this reads the few
//! parts of the format (`Documentation/bpf/btf.rst`) a member's offset needs.

use std::{io, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;

/// A BTF blob, its types indexed by id.
pub struct Btf {
    data: Vec<u8>,
    /// Where the strings start in `data`.
    strings: usize,
    /// Where each type's record starts in `data`, by type id (id 0 is void: no record).
    types: Vec<usize>,
}

impl Btf {
    /// The running kernel's types.
    pub fn kernel() -> io::Result<Btf> {
        Btf::read(Path::new(VMLINUX))
    }

    pub fn read(path: &Path) -> io::Result<Btf> {
        Btf::parse(std::fs::read(path)?)
    }

    pub fn parse(data: Vec<u8>) -> io::Result<Btf> {
        let invalid =
            |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("BTF: {what}"));
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != MAGIC {
            return Err(invalid("no little-endian BTF header"));
        }
        let word = |at: usize| -> io::Result<u32> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| invalid("cut short"))
        };
        let header = word(4)? as usize;
        let (type_off, type_len) = (word(8)? as usize, word(12)? as usize);
        let (str_off, str_len) = (word(16)? as usize, word(20)? as usize);
        let types_start = header + type_off;
        let types_end = types_start + type_len;
        let strings = header + str_off;
        if types_end > data.len() || strings + str_len > data.len() {
            return Err(invalid("sections past the end"));
        }
        let mut types = vec![0];
        let mut at = types_start;
        while at < types_end {
            types.push(at);
            let info = word(at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let extra = match (info >> 24) & 0x1f {
                // INT, VAR, DECL_TAG
                1 | 14 | 17 => 4,
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7..=12 | 16 | 18 => 0,
                // ARRAY
                3 => 12,
                // STRUCT, UNION, DATASEC, ENUM64
                4 | 5 | 15 | 19 => 12 * vlen,
                // ENUM, FUNC_PROTO
                6 | 13 => 8 * vlen,
                kind => return Err(invalid(&format!("unknown kind {kind}"))),
            };
            at += 12 + extra;
        }
        if at != types_end {
            return Err(invalid("a type runs past the type section"));
        }
        Ok(Btf {
            data,
            strings,
            types,
        })
    }

    /// The byte offset of member `member` of `struct name`, also inside anonymous structs and
    /// unions; `None` when the struct or the member is not there.
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let id = (1..self.types.len()).find(|&id| {
            let (kind, vlen) = self.kind(id);
            kind == KIND_STRUCT && vlen > 0 && self.name(id) == Some(name)
        })?;
        self.find_member(id, member, 0).map(|bits| bits / 8)
    }

    /// The bit offset of `member` in the struct or union `id`, which starts at `base` bits.
    fn find_member(&self, id: usize, member: &str, base: u32) -> Option<u32> {
        let (_, vlen) = self.kind(id);
        let bitfields = self.word(self.types[id] + 4) >> 31 == 1;
        for i in 0..vlen {
            let at = self.types[id] + 12 + 12 * i;
            let (name, ty, offset) = (self.word(at), self.word(at + 4), self.word(at + 8));
            let bits = base
                + if bitfields {
                    offset & 0xff_ffff
                } else {
                    offset
                };
            if name == 0 {
                let inner = self.skip_modifiers(ty as usize)?;
                if matches!(self.kind(inner).0, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, bits)
                {
                    return Some(found);
                }
            } else if self.string(name as usize) == Some(member) {
                return Some(bits);
            }
        }
        None
    }

    /// The type under typedefs and qualifiers.
    fn skip_modifiers(&self, mut id: usize) -> Option<usize> {
        for _ in 0..32 {
            if id == 0 || id >= self.types.len() {
                return None;
            }
            // TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG
            if !matches!(self.kind(id).0, 8..=11 | 18) {
                return Some(id);
            }
            id = self.word(self.types[id] + 8) as usize;
        }
        None
    }

    fn kind(&self, id: usize) -> (u32, usize) {
        let info = self.word(self.types[id] + 4);
        ((info >> 24) & 0x1f, (info & 0xffff) as usize)
    }

    fn name(&self, id: usize) -> Option<&str> {
        self.string(self.word(self.types[id]) as usize)
    }

    fn string(&self, offset: usize) -> Option<&str> {
        let start = self.strings + offset;
        let bytes = self.data.get(start..)?;
        let end = bytes.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&bytes[..end]).ok()
    }

    /// A word inside the type section, whose bounds `parse` checked.
    fn word(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.data[at],
            self.data[at + 1],
            self.data[at + 2],
            self.data[at + 3],
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of `types` (each a record with its members) and `strings`.
    fn blob(types: &[Vec<u32>], strings: &[u8]) -> Vec<u8> {
        let type_bytes: Vec<u8> = types
            .iter()
            .flatten()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [
            24,
            0,
            type_bytes.len() as u32,
            type_bytes.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&type_bytes);
        data.extend_from_slice(strings);
        data
    }

    fn info(kind: u32, vlen: u32) -> u32 {
        (kind << 24) | vlen
    }

    #[test]
    fn finds_a_member_directly_and_inside_an_anonymous_union() {
        // Strings: 1 "int", 5 "dev", 9 "ifindex", 17 "mtu".
        let strings = b"\0int\0dev\0ifindex\0mtu\0";
        let types = [
            // 1: int
            vec![1, info(1, 0), 4, 32],
            // 2: union { int mtu; } (anonymous)
            vec![0, info(KIND_UNION, 1), 4, 17, 1, 0],
            // 3: struct dev { int ifindex @64; union { mtu } @96 }
            vec![5, info(KIND_STRUCT, 2), 16, 9, 1, 64, 0, 2, 96],
        ];
        let btf = Btf::parse(blob(&types, strings)).unwrap();
        assert_eq!(btf.member_offset("dev", "ifindex"), Some(8));
        assert_eq!(btf.member_offset("dev", "mtu"), Some(12));
        assert_eq!(btf.member_offset("dev", "nope"), None);
        assert_eq!(btf.member_offset("nope", "ifindex"), None);
    }

    #[test]
    fn refuses_what_is_not_btf() {
        assert!(Btf::parse(vec![0; 8]).is_err());
        let mut cut = blob(&[vec![1, info(1, 0), 4, 32]], b"\0int\0");
        cut.truncate(30);
        assert!(Btf::parse(cut).is_err());
    }

    /// The running kernel's own BTF (mpath's machines have it), where two layouts every
    /// kernel shares tell that the offsets are read right.
    #[test]
    fn reads_the_kernel_s_struct_layouts() {
        let btf = Btf::kernel().expect("the kernel's BTF");
        assert_eq!(btf.member_offset("list_head", "next"), Some(0));
        assert_eq!(btf.member_offset("list_head", "prev"), Some(8));
        let ifindex = btf.member_offset("net_device", "ifindex").unwrap();
        assert_eq!(ifindex % 4, 0, "an int's offset");
    }
}
