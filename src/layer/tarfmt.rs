//! Encoding of tar headers: ustar, with a PAX extended header when a value does not fit.

use std::collections::BTreeMap;

pub(crate) const BLOCK: usize = 512;

pub(crate) const TYPE_FILE: u8 = b'0';
pub(crate) const TYPE_HARDLINK: u8 = b'1';
pub(crate) const TYPE_SYMLINK: u8 = b'2';
pub(crate) const TYPE_CHAR: u8 = b'3';
pub(crate) const TYPE_BLOCK: u8 = b'4';
pub(crate) const TYPE_DIR: u8 = b'5';
pub(crate) const TYPE_FIFO: u8 = b'6';
const TYPE_PAX: u8 = b'x';

/// Everything one entry's headers carry.
pub(crate) struct Header<'a> {
    /// Full name as written (directories end with `/`).
    pub name: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: i64,
    pub linkname: &'a [u8],
    pub dev: Option<(u32, u32)>,
    pub xattrs: &'a BTreeMap<String, Vec<u8>>,
}

/// Why a header cannot be encoded.
#[derive(Debug)]
pub(crate) enum EncodeError {
    DeviceNumber,
    XattrName(String),
}

/// Appends the header block(s) for `h` to `out`: a PAX header (with its padded records) when
/// needed, then the ustar header. The caller writes the data and its padding.
pub(crate) fn encode(h: &Header<'_>, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut b = [0u8; BLOCK];

    if !put_str(&mut b[0..100], h.name) {
        pax.push((b"path".to_vec(), h.name.to_vec()));
    }
    put_octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    if !put_octal(&mut b[108..116], h.uid) {
        pax.push((b"uid".to_vec(), h.uid.to_string().into_bytes()));
        put_octal(&mut b[108..116], 0);
    }
    if !put_octal(&mut b[116..124], h.gid) {
        pax.push((b"gid".to_vec(), h.gid.to_string().into_bytes()));
        put_octal(&mut b[116..124], 0);
    }
    if !put_octal(&mut b[124..136], h.size) {
        pax.push((b"size".to_vec(), h.size.to_string().into_bytes()));
        put_octal(&mut b[124..136], 0);
    }
    if h.mtime < 0 || !put_octal(&mut b[136..148], h.mtime as u64) {
        pax.push((b"mtime".to_vec(), h.mtime.to_string().into_bytes()));
        put_octal(&mut b[136..148], 0);
    }
    b[156] = h.typeflag;
    if !put_str(&mut b[157..257], h.linkname) {
        pax.push((b"linkpath".to_vec(), h.linkname.to_vec()));
    }
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    // uname [265..297], gname [297..329]: empty.
    if let Some((major, minor)) = h.dev
        && !(put_octal(&mut b[329..337], u64::from(major))
            && put_octal(&mut b[337..345], u64::from(minor)))
    {
        return Err(EncodeError::DeviceNumber);
    }
    // prefix [345..500]: unused.
    for (name, value) in h.xattrs {
        if name.is_empty() || name.contains(['=', '\0', '\n']) {
            return Err(EncodeError::XattrName(name.clone()));
        }
        pax.push((format!("SCHILY.xattr.{name}").into_bytes(), value.clone()));
    }
    set_checksum(&mut b);

    if !pax.is_empty() {
        pax.sort();
        let mut records = Vec::new();
        for (k, v) in &pax {
            pax_record(&mut records, k, v);
        }
        let mut p = [0u8; BLOCK];
        put_str(&mut p[0..100], &pax_header_name(h.name));
        put_octal(&mut p[100..108], 0);
        put_octal(&mut p[108..116], 0);
        put_octal(&mut p[116..124], 0);
        put_octal(&mut p[124..136], records.len() as u64);
        put_octal(&mut p[136..148], 0);
        p[156] = TYPE_PAX;
        p[257..263].copy_from_slice(b"ustar\0");
        p[263..265].copy_from_slice(b"00");
        set_checksum(&mut p);
        out.extend_from_slice(&p);
        out.extend_from_slice(&records);
        out.resize(out.len() + padding(records.len() as u64), 0);
    }
    out.extend_from_slice(&b);
    Ok(())
}

/// Zero bytes needed after `size` bytes of data to reach a block boundary.
pub(crate) fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Copies `s` into the field, truncated; false when it did not fit (a NUL terminator is not
/// required when the string fills the field exactly).
fn put_str(field: &mut [u8], s: &[u8]) -> bool {
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s[..n]);
    s.len() <= field.len()
}

/// Writes `v` as zero-padded octal followed by NUL; false (field untouched) when it does not fit.
fn put_octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

fn set_checksum(b: &mut [u8; BLOCK]) {
    b[148..156].fill(b' ');
    let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut total = base;
    loop {
        let t = base + total.to_string().len();
        if t == total {
            break;
        }
        total = t;
    }
    out.extend_from_slice(total.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// `<dir>/PaxHeaders.0/<base>` (Go's `archive/tar` naming), truncated to 100 bytes.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let trimmed = name.strip_suffix(b"/").unwrap_or(name);
    let (dir, base) = match trimmed.iter().rposition(|&c| c == b'/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (&b""[..], trimmed),
    };
    let mut out = Vec::with_capacity(name.len() + 14);
    if !dir.is_empty() {
        out.extend_from_slice(dir);
        out.push(b'/');
    }
    out.extend_from_slice(b"PaxHeaders.0/");
    out.extend_from_slice(base);
    out.truncate(100);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_lengths() {
        let mut v = Vec::new();
        pax_record(&mut v, b"path", b"a");
        assert_eq!(v, b"9 path=a\n");
        // Lengths around the digit boundaries (9/10, 99/100) must stay self-consistent.
        for n in 0..300 {
            let mut v = Vec::new();
            let value = vec![b'x'; n];
            pax_record(&mut v, b"path", &value);
            let sp = v.iter().position(|&c| c == b' ').unwrap();
            let len: usize = std::str::from_utf8(&v[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, v.len(), "value length {n}");
        }
    }

    #[test]
    fn octal_fits_or_refuses() {
        let mut f = [0u8; 8];
        assert!(put_octal(&mut f, 0o644));
        assert_eq!(&f, b"0000644\0");
        assert!(put_octal(&mut f, 0o7777777));
        assert!(!put_octal(&mut f, 0o10000000));
        let mut f = [0u8; 12];
        assert!(put_octal(&mut f, 8 * 1024 * 1024 * 1024 - 1));
        assert!(!put_octal(&mut f, 8 * 1024 * 1024 * 1024));
    }

    #[test]
    fn pax_names() {
        assert_eq!(pax_header_name(b"a/b/c"), b"a/b/PaxHeaders.0/c");
        assert_eq!(pax_header_name(b"dir/"), b"PaxHeaders.0/dir");
        assert_eq!(pax_header_name(&[b'x'; 300]).len(), 100);
    }

    #[test]
    fn oversized_values_move_to_pax_records() {
        let mut x = BTreeMap::new();
        x.insert("user.k".to_string(), b"bin\0ary\n".to_vec());
        let name = format!("{}/file", "n".repeat(120));
        let link = "l".repeat(101);
        let h = Header {
            name: name.as_bytes(),
            typeflag: TYPE_SYMLINK,
            mode: 0o777,
            uid: 0o7777777,
            gid: 0o10000000,
            size: 10 << 30,
            mtime: -1,
            linkname: link.as_bytes(),
            dev: None,
            xattrs: &x,
        };
        let mut out = Vec::new();
        encode(&h, &mut out).unwrap();
        let pax = tar::Header::from_byte_slice(&out[..BLOCK]);
        assert_eq!(pax.entry_type(), tar::EntryType::XHeader);
        let len = pax.size().unwrap() as usize;
        assert_eq!(out.len(), BLOCK + len.next_multiple_of(BLOCK) + BLOCK);
        // Parsed by length, as POSIX (and GNU tar, Go) do: the tar crate splits at newlines.
        let mut recs: Vec<(String, Vec<u8>)> = Vec::new();
        let mut rest = &out[BLOCK..BLOCK + len];
        while !rest.is_empty() {
            let sp = rest.iter().position(|&c| c == b' ').unwrap();
            let n: usize = std::str::from_utf8(&rest[..sp]).unwrap().parse().unwrap();
            let rec = &rest[sp + 1..n];
            assert_eq!(rest[n - 1], b'\n');
            let eq = rec.iter().position(|&c| c == b'=').unwrap();
            recs.push((
                String::from_utf8(rec[..eq].to_vec()).unwrap(),
                rec[eq + 1..rec.len() - 1].to_vec(),
            ));
            rest = &rest[n..];
        }
        let keys: Vec<&str> = recs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "SCHILY.xattr.user.k",
                "gid",
                "linkpath",
                "mtime",
                "path",
                "size"
            ]
        );
        assert_eq!(recs[0].1, b"bin\0ary\n");
        assert_eq!(recs[1].1, b"2097152");
        assert_eq!(recs[2].1, link.as_bytes());
        assert_eq!(recs[3].1, b"-1");
        assert_eq!(recs[4].1, name.as_bytes());
        assert_eq!(recs[5].1, (10u64 << 30).to_string().as_bytes());
        let main = tar::Header::from_byte_slice(&out[out.len() - BLOCK..]);
        assert_eq!(main.uid().unwrap(), 0o7777777, "still fits the header");
        assert_eq!(main.size().unwrap(), 0);
        assert_eq!(main.path_bytes().len(), 100);
    }

    #[test]
    fn header_checksum_is_valid() {
        let x = BTreeMap::new();
        let h = Header {
            name: b"hello.txt",
            typeflag: TYPE_FILE,
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            size: 5,
            mtime: 1_700_000_000,
            linkname: b"",
            dev: None,
            xattrs: &x,
        };
        let mut out = Vec::new();
        encode(&h, &mut out).unwrap();
        assert_eq!(out.len(), BLOCK);
        let hdr = tar::Header::from_byte_slice(&out);
        assert_eq!(hdr.cksum().unwrap(), {
            let mut b = out.clone();
            b[148..156].fill(b' ');
            b.iter().map(|&c| u32::from(c)).sum::<u32>()
        });
        assert_eq!(hdr.path_bytes().as_ref(), b"hello.txt");
        assert_eq!(hdr.size().unwrap(), 5);
        assert_eq!(hdr.uid().unwrap(), 1000);
        assert_eq!(hdr.mtime().unwrap(), 1_700_000_000);
        assert_eq!(hdr.username_bytes(), Some(&b""[..]));
    }
}
