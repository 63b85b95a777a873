//! A writer of MaxMind-format databases (GeoIP country/city and ASN) from a table, for the GeoIP
//! tests.

use super::*;

/// A value in a MaxMind DB data section.
pub enum MmdbValue {
    Str(&'static str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'static str, MmdbValue)>),
    Array(Vec<MmdbValue>),
}

pub(crate) fn mmdb_control(out: &mut Vec<u8>, kind: u8, size: usize) {
    assert!(size < 285, "test values are small");
    let (low, extra) = if size < 29 { (size as u8, None) } else { (29, Some((size - 29) as u8)) };
    if kind <= 7 {
        out.push(kind << 5 | low);
    } else {
        out.push(low);
        out.push(kind - 7);
    }
    out.extend(extra);
}

/// An unsigned integer of `kind`, in as few big-endian bytes as it needs.
pub(crate) fn mmdb_uint(out: &mut Vec<u8>, kind: u8, be: &[u8]) {
    let bytes: Vec<u8> = be.iter().copied().skip_while(|&b| b == 0).collect();
    mmdb_control(out, kind, bytes.len());
    out.extend_from_slice(&bytes);
}

pub(crate) fn mmdb_encode(out: &mut Vec<u8>, v: &MmdbValue) {
    match v {
        MmdbValue::Str(s) => {
            mmdb_control(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        MmdbValue::U16(n) => mmdb_uint(out, 5, &n.to_be_bytes()),
        MmdbValue::U32(n) => mmdb_uint(out, 6, &n.to_be_bytes()),
        MmdbValue::U64(n) => mmdb_uint(out, 9, &n.to_be_bytes()),
        MmdbValue::Array(items) => {
            mmdb_control(out, 11, items.len());
            for item in items {
                mmdb_encode(out, item);
            }
        }
        MmdbValue::Map(entries) => {
            mmdb_control(out, 7, entries.len());
            for (k, v) in entries {
                mmdb_encode(out, &MmdbValue::Str(k));
                mmdb_encode(out, v);
            }
        }
    }
}

/// Writes a MaxMind DB (format 2.0, IPv4 search tree, 32-bit records) mapping IPv4 networks to
/// records, for tests. Networks must not overlap.
pub fn write_mmdb(path: &Path, database_type: &'static str, networks: &[(&str, MmdbValue)]) {
    // Binary trie over the network bits; node 0 is the root. Records: node index, or the data marker.
    const EMPTY: u32 = u32::MAX;
    let mut nodes: Vec<[u32; 2]> = vec![[EMPTY, EMPTY]];
    let mut data = Vec::new();
    let mut leaves: Vec<(usize, usize, usize)> = Vec::new(); // (node, side, data offset)
    for (cidr, value) in networks {
        let (addr, prefix) = cidr.split_once('/').expect("CIDR");
        let addr: std::net::Ipv4Addr = addr.parse().expect("IPv4");
        let bits = u32::from(addr);
        let prefix: usize = prefix.parse().expect("prefix");
        let offset = data.len();
        mmdb_encode(&mut data, value);
        let mut node = 0;
        for i in 0..prefix {
            let side = ((bits >> (31 - i)) & 1) as usize;
            if i + 1 == prefix {
                leaves.push((node, side, offset));
            } else {
                if nodes[node][side] == EMPTY {
                    nodes.push([EMPTY, EMPTY]);
                    nodes[node][side] = (nodes.len() - 1) as u32;
                }
                node = nodes[node][side] as usize;
            }
        }
    }
    let count = nodes.len() as u32;
    for (node, side, offset) in leaves {
        nodes[node][side] = count + 16 + offset as u32;
    }
    let mut out = Vec::new();
    for n in &nodes {
        for r in n {
            out.extend_from_slice(&(if *r == EMPTY { count } else { *r }).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xab\xcd\xefMaxMind.com");
    let metadata = MmdbValue::Map(vec![
        ("binary_format_major_version", MmdbValue::U16(2)),
        ("binary_format_minor_version", MmdbValue::U16(0)),
        ("build_epoch", MmdbValue::U64(1_700_000_000)),
        ("database_type", MmdbValue::Str(database_type)),
        ("description", MmdbValue::Map(vec![("en", MmdbValue::Str("notifier test database"))])),
        ("ip_version", MmdbValue::U16(4)),
        ("languages", MmdbValue::Array(vec![MmdbValue::Str("en")])),
        ("node_count", MmdbValue::U32(count)),
        ("record_size", MmdbValue::U16(32)),
    ]);
    mmdb_encode(&mut out, &metadata);
    fs::write(path, out).expect("writing mmdb");
}
