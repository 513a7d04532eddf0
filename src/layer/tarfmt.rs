//! Encoding of tar headers: ustar, with a PAX extended header when a value does not fit.
//!
//! Names are bytes. A path or link target that is longer than its field or not ASCII (any byte
//! 0x80 or above: every UTF-8 name with an accent, and every name that is not UTF-8) goes to a
//! PAX `path`/`linkpath` record with its exact bytes, and the ustar field keeps only its ASCII
//! bytes, as Go's `archive/tar` (BuildKit's and containerd's writer) does, so layer digests stay
//! comparable with theirs.

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

    if needs_pax(h.name, 100) {
        pax.push((b"path".to_vec(), h.name.to_vec()));
        put_go_str(&mut b[0..100], &to_ascii(h.name));
    } else {
        put_str(&mut b[0..100], h.name);
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
    if needs_pax(h.linkname, 100) {
        pax.push((b"linkpath".to_vec(), h.linkname.to_vec()));
        put_go_str(&mut b[157..257], &to_ascii(h.linkname));
    } else {
        put_str(&mut b[157..257], h.linkname);
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

/// Whether a name or link target cannot stay in its ustar field: too long, or not ASCII (Go's
/// `isASCII` also refuses NUL, which a path never holds).
fn needs_pax(s: &[u8], field: usize) -> bool {
    s.len() > field || s.iter().any(|&c| c >= 0x80 || c == 0)
}

/// Go's `toASCII`: the bytes below 0x80 except NUL. Go walks the string by runes and drops
/// every rune ≥ 0x80; each byte of a multi-byte UTF-8 sequence and each invalid byte is ≥ 0x80,
/// so this is the same byte filter.
fn to_ascii(s: &[u8]) -> Vec<u8> {
    s.iter().copied().filter(|&c| c < 0x80 && c != 0).collect()
}

/// Go's `formatString` for a value that is also in a PAX record: truncated to the field, and
/// when the cut leaves a `/` in the last byte, the trailing slashes are replaced by a NUL (so
/// old readers do not take a file for a directory).
fn put_go_str(field: &mut [u8], s: &[u8]) {
    let len = field.len();
    put_str(field, s);
    if s.len() > len && field[len - 1] == b'/' {
        let kept = s[..len - 1]
            .iter()
            .rposition(|&c| c != b'/')
            .map_or(0, |i| i + 1);
        field[kept] = 0;
    }
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

/// The name of the PAX header of entry `name`, as Go's `archive/tar` makes it:
/// `path.Join(dir, "PaxHeaders.0", file)` of `path.Split(name)` (so `a/b` gives
/// `a/PaxHeaders.0/b` and the directory `a/b/` gives `a/b/PaxHeaders.0`), then only its ASCII
/// bytes, cut to 100 bytes, trailing `/` removed.
fn pax_header_name(name: &[u8]) -> Vec<u8> {
    let split = name.iter().rposition(|&c| c == b'/').map_or(0, |i| i + 1);
    let (dir, file) = name.split_at(split);
    // Layer names are normalized, so `path.Join`'s cleaning only drops the root's `./`.
    let dir = if dir == b"./" { &b""[..] } else { dir };
    let mut joined = Vec::with_capacity(name.len() + 14);
    joined.extend_from_slice(dir);
    joined.extend_from_slice(b"PaxHeaders.0");
    if !file.is_empty() {
        joined.push(b'/');
        joined.extend_from_slice(file);
    }
    let mut out = to_ascii(&joined);
    out.truncate(100);
    while out.last() == Some(&b'/') {
        out.pop();
    }
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
        assert_eq!(pax_header_name(b"f"), b"PaxHeaders.0/f");
        // Go splits after the last `/`, so a directory's header sits inside it.
        assert_eq!(pax_header_name(b"dir/"), b"dir/PaxHeaders.0");
        assert_eq!(pax_header_name(b"./"), b"PaxHeaders.0");
        assert_eq!(pax_header_name(&[b'x'; 300]).len(), 100);
        assert_eq!(
            pax_header_name(b"d\xe9/caf\xc3\xa9.txt"),
            b"d/PaxHeaders.0/caf.txt"
        );
        // Cut at 100 bytes right after `PaxHeaders.0/`: the slash goes.
        let mut long = vec![b'a'; 86];
        long.extend_from_slice(b"/file");
        let got = pax_header_name(&long);
        assert_eq!(got.len(), 99);
        assert!(got.ends_with(b"/PaxHeaders.0"));
    }

    #[test]
    fn non_ascii_names_move_to_pax_records() {
        let x = BTreeMap::new();
        let h = Header {
            name: b"d\xe9r/caf\xe9.txt",
            typeflag: TYPE_SYMLINK,
            mode: 0o777,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            linkname: "tø".as_bytes(),
            dev: None,
            xattrs: &x,
        };
        let mut out = Vec::new();
        encode(&h, &mut out).unwrap();
        let pax = tar::Header::from_byte_slice(&out[..BLOCK]);
        assert_eq!(pax.entry_type(), tar::EntryType::XHeader);
        assert_eq!(pax.path_bytes().as_ref(), b"dr/PaxHeaders.0/caf.txt");
        let len = pax.size().unwrap() as usize;
        let records = &out[BLOCK..BLOCK + len];
        let mut want = Vec::new();
        pax_record(&mut want, b"linkpath", "tø".as_bytes());
        pax_record(&mut want, b"path", b"d\xe9r/caf\xe9.txt");
        assert_eq!(records, &want[..]);
        let main = tar::Header::from_byte_slice(&out[out.len() - BLOCK..]);
        assert_eq!(main.path_bytes().as_ref(), b"dr/caf.txt");
        assert_eq!(main.link_name_bytes().unwrap().as_ref(), b"t");
        // An ASCII name that fits needs no PAX header.
        let h = Header {
            name: b"plain.txt",
            linkname: b"",
            typeflag: TYPE_FILE,
            ..h
        };
        let mut out = Vec::new();
        encode(&h, &mut out).unwrap();
        assert_eq!(out.len(), BLOCK);
    }

    #[test]
    fn long_names_cut_like_go() {
        // The cut ends in `/`: the trailing slashes become a NUL.
        let mut name = vec![b'a'; 97];
        name.extend_from_slice(b"///c");
        let mut f = [0u8; 100];
        put_go_str(&mut f, &name);
        assert_eq!(&f[..97], &name[..97]);
        assert_eq!(f[97], 0);
        assert_eq!(f[98], b'/');
        assert_eq!(f[99], b'/');
        // No `/` at the cut: plain truncation.
        let mut f = [0u8; 100];
        put_go_str(&mut f, &[b'x'; 120]);
        assert_eq!(f, [b'x'; 100]);
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
