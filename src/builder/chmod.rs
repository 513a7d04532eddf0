//! `COPY --chmod` / `ADD --chmod` values: an octal mode (`0644`, at most `07777`) or a symbolic
//! one as `chmod(1)` takes it (`u+x`, `go-w`, `a+X`, `u=rw,g=r,o=r`, `g=u`).
//!
//! Symbolic modes are applied to each source's own mode. With no `ugoa` letters the clause
//! applies to all classes and no umask is consulted (BuildKit has no umask either). `X` adds
//! execute only to directories and to files that already have an execute bit; `s` is
//! setuid/setgid for `u`/`g`; `t` is the sticky bit.

/// A parsed `--chmod` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// An octal mode: these 12 bits replace the source's permission and special bits.
    Octal(u32),
    /// A symbolic mode, applied to each source's mode.
    Symbolic(Vec<Clause>),
}

/// One comma-separated clause of a symbolic mode: the classes it applies to and its actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    user: bool,
    group: bool,
    other: bool,
    actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Action {
    op: u8,
    perms: Perms,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Perms {
    /// Any of `rwxXst`.
    Bits {
        r: bool,
        w: bool,
        x: bool,
        big_x: bool,
        s: bool,
        t: bool,
    },
    /// `u`, `g` or `o`: copy that class's current bits.
    Copy(u8),
}

/// BuildKit's error for a value that is neither a valid octal mode nor a symbolic one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chmod parameter: '{0}'. it should be octal string and between 0 and 07777")]
pub struct InvalidChmod(pub String);

impl Chmod {
    /// Parses a `--chmod` value: octal when it is made of octal digits (then it must be at most
    /// `07777`), symbolic otherwise.
    pub fn parse(s: &str) -> Result<Chmod, InvalidChmod> {
        let bad = || InvalidChmod(s.to_string());
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            // strconv.ParseUint(s, 8, 32): digits 8 and 9 make it fail, and then the symbolic
            // parser fails too.
            let v = u64::from_str_radix(s, 8).map_err(|_| bad())?;
            if v > 0o7777 {
                return Err(bad());
            }
            return Ok(Chmod::Octal(v as u32));
        }
        let mut clauses = Vec::new();
        for part in s.split(',') {
            clauses.push(parse_clause(part).ok_or_else(bad)?);
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The mode (12 bits) an entry whose source mode is `mode` gets.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut m = mode & 0o7777;
                for c in clauses {
                    m = c.apply(m, is_dir);
                }
                m
            }
        }
    }

    /// The mode of the directories a COPY creates on the way to its destination: the octal
    /// mode itself; 0755 for a symbolic mode (which has no base mode to apply to there).
    pub fn created_dir_mode(&self) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(_) => 0o755,
        }
    }
}

fn parse_clause(s: &str) -> Option<Clause> {
    let b = s.as_bytes();
    let mut i = 0;
    let (mut user, mut group, mut other) = (false, false, false);
    while let Some(&c) = b.get(i) {
        match c {
            b'u' => user = true,
            b'g' => group = true,
            b'o' => other = true,
            b'a' => (user, group, other) = (true, true, true),
            _ => break,
        }
        i += 1;
    }
    if !(user || group || other) {
        (user, group, other) = (true, true, true);
    }
    let mut actions = Vec::new();
    while let Some(&op) = b.get(i) {
        if !matches!(op, b'+' | b'-' | b'=') {
            return None;
        }
        i += 1;
        let perms = match b.get(i) {
            Some(&c @ (b'u' | b'g' | b'o')) => {
                i += 1;
                Perms::Copy(c)
            }
            _ => {
                let (mut r, mut w, mut x, mut big_x, mut st, mut t) =
                    (false, false, false, false, false, false);
                while let Some(&c) = b.get(i) {
                    match c {
                        b'r' => r = true,
                        b'w' => w = true,
                        b'x' => x = true,
                        b'X' => big_x = true,
                        b's' => st = true,
                        b't' => t = true,
                        _ => break,
                    }
                    i += 1;
                }
                Perms::Bits {
                    r,
                    w,
                    x,
                    big_x,
                    s: st,
                    t,
                }
            }
        };
        actions.push(Action { op, perms });
    }
    if actions.is_empty() {
        return None;
    }
    Some(Clause {
        user,
        group,
        other,
        actions,
    })
}

impl Clause {
    fn apply(&self, mut m: u32, is_dir: bool) -> u32 {
        let class_mask = (if self.user { 0o700 } else { 0 })
            | (if self.group { 0o070 } else { 0 })
            | (if self.other { 0o007 } else { 0 });
        let special_mask = (if self.user { 0o4000 } else { 0 })
            | (if self.group { 0o2000 } else { 0 })
            | (if self.other { 0o1000 } else { 0 });
        for a in &self.actions {
            let bits = match a.perms {
                Perms::Copy(c) => {
                    let three = match c {
                        b'u' => (m >> 6) & 7,
                        b'g' => (m >> 3) & 7,
                        _ => m & 7,
                    };
                    (three * 0o111) & class_mask
                }
                Perms::Bits {
                    r,
                    w,
                    x,
                    big_x,
                    s,
                    t,
                } => {
                    let mut rwx = 0;
                    if r {
                        rwx |= 0o444;
                    }
                    if w {
                        rwx |= 0o222;
                    }
                    if x || (big_x && (is_dir || m & 0o111 != 0)) {
                        rwx |= 0o111;
                    }
                    let mut special = 0;
                    if s {
                        special |= special_mask & 0o6000;
                    }
                    if t {
                        special |= 0o1000;
                    }
                    (rwx & class_mask) | special
                }
            };
            match a.op {
                b'+' => m |= bits,
                b'-' => m &= !bits,
                _ => {
                    // `=`: the classes' rwx bits are replaced; setuid/setgid of a directory are
                    // kept unless named (as chmod(1) does).
                    let mut clear = class_mask | (special_mask & 0o1000);
                    if !is_dir {
                        clear |= special_mask & 0o6000;
                    }
                    m = (m & !clear) | bits;
                }
            }
        }
        m & 0o7777
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(s: &str, mode: u32, dir: bool) -> u32 {
        Chmod::parse(s).unwrap().apply(mode, dir)
    }

    #[test]
    fn octal() {
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0").unwrap(), Chmod::Octal(0));
        assert_eq!(Chmod::parse("07777").unwrap(), Chmod::Octal(0o7777));
        for bad in ["64a", "10000", "8", "", "+z", "q+x", "u+x,", "u"] {
            let e = Chmod::parse(bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "invalid chmod parameter: '{bad}'. it should be octal string and between 0 and 07777"
                )
            );
        }
        assert_eq!(Chmod::parse("0644").unwrap().apply(0o4777, false), 0o644);
    }

    #[test]
    fn symbolic_like_chmod() {
        // The upstream test: a 0666 file and a 0124 directory.
        assert_eq!(sym("go-w", 0o666, false), 0o644);
        assert_eq!(sym("u=rw,g=r,o=r", 0o666, false), 0o644);
        assert_eq!(sym("a+X", 0o666, false), 0o666);
        assert_eq!(sym("a+X", 0o124, true), 0o135);
        assert_eq!(sym("go-w", 0o124, true), 0o104);
        assert_eq!(sym("u=rw,g=r,o=r", 0o124, true), 0o644);
        // More of chmod(1).
        assert_eq!(sym("a+X", 0o744, false), 0o755);
        assert_eq!(sym("+x", 0o644, false), 0o755);
        assert_eq!(sym("u+s", 0o755, false), 0o4755);
        assert_eq!(sym("g+s,o+t", 0o755, true), 0o3755);
        assert_eq!(sym("g=u", 0o740, false), 0o770);
        assert_eq!(sym("o=", 0o777, false), 0o770);
        assert_eq!(sym("u+r-w", 0o200, false), 0o400);
        assert_eq!(sym("a=r", 0o4755, false), 0o444);
        assert_eq!(sym("a=r", 0o2755, true), 0o2444);
        assert_eq!(Chmod::parse("go-w").unwrap().created_dir_mode(), 0o755);
        assert_eq!(Chmod::parse("0770").unwrap().created_dir_mode(), 0o770);
    }
}
