//! Go RE2 syntax → `regex` crate syntax, for the regexps that patternmatcher builds.
//!
//! patternmatcher turns a `.dockerignore` glob into a Go regexp by text substitution and hands
//! the string to Go's `regexp.Compile` (Perl flags: `^`/`$` anchor the whole text, `.` stops at
//! `\n`, negated classes match `\n`). User text that reaches that string unchanged (`[`, `]`,
//! `^`, `\x` escapes, and class contents) is read with Go's regexp rules, not glob rules, so
//! `[*]` becomes `[[^/]*]` and `\d` means a digit. The `regex` crate reads some of that text
//! differently (nested classes, `&&`/`--`, Unicode `\d`), so we do not pass the string through.
//! Instead this module parses it the way Go's parser does and writes an equivalent pattern in
//! which every literal is a `\x{..}` escape and every class is spelled out. A Go syntax error
//! gives `None`; patternmatcher reports that as `ErrBadPattern`.
//!
//! Written from Go's documented syntax and behaviour; no Go code was copied.

use std::fmt::Write as _;

const MAX_RUNE: u32 = 0x10_FFFF;
const SURROGATE_LO: u32 = 0xD800;
const SURROGATE_HI: u32 = 0xDFFF;
/// A class that matches nothing (a literal surrogate, `[^\x00-\x{10FFFF}]`, ...).
const NEVER: &str = r"[^\x{0}-\x{10FFFF}]";
/// A class that matches any character, `\n` included.
const ANY: &str = r"[\x{0}-\x{10FFFF}]";

/// Translate Go regexp source into `regex` crate source with the same matches.
pub(super) fn translate(go: &str) -> Option<String> {
    let mut t = Translator {
        s: go.chars().collect(),
        pos: 0,
        out: String::with_capacity(go.len() * 4),
        groups: Vec::new(),
        state: State::Empty,
        atom_start: 0,
        atom_repeated: false,
    };
    t.run()?;
    Some(t.out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing a repetition could apply to (start, after `(` or `|`).
    Empty,
    /// The last thing emitted is an atom (or an assertion, which Go also lets you repeat).
    Atom,
    /// The last token was a repetition operator; Go rejects another one right after it.
    JustRepeated,
}

/// One member of a character class.
enum Item {
    Range(u32, u32),
    Unicode { name: String, negated: bool },
}

struct Translator {
    s: Vec<char>,
    pos: usize,
    out: String,
    /// Byte offsets in `out` where each open group starts.
    groups: Vec<usize>,
    state: State,
    /// Byte offset in `out` of the last atom, so a repetition can wrap it when needed.
    atom_start: usize,
    /// The last atom already carries a repetition operator (only after an empty `\Q\E`).
    atom_repeated: bool,
}

impl Translator {
    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.s.get(self.pos + offset).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn run(&mut self) -> Option<()> {
        while let Some(c) = self.peek() {
            match c {
                '(' => {
                    // `(?` flag groups cannot come out of patternmatcher (it escapes `(`).
                    if self.peek_at(1) == Some('?') {
                        return None;
                    }
                    self.pos += 1;
                    self.groups.push(self.out.len());
                    self.out.push_str("(?:");
                    self.state = State::Empty;
                }
                ')' => {
                    let start = self.groups.pop()?;
                    self.pos += 1;
                    self.out.push(')');
                    self.atom_start = start;
                    self.atom_repeated = false;
                    self.state = State::Atom;
                }
                '|' => {
                    self.pos += 1;
                    self.out.push('|');
                    self.state = State::Empty;
                }
                '^' => {
                    self.pos += 1;
                    self.atom(r"(?:\A)");
                }
                '$' => {
                    self.pos += 1;
                    self.atom(r"(?:\z)");
                }
                '.' => {
                    self.pos += 1;
                    self.atom(r"[^\n]");
                }
                '[' => self.class()?,
                '*' | '+' | '?' => {
                    self.pos += 1;
                    self.repeat(c)?;
                }
                '{' => {
                    // A counted repetition cannot come out of patternmatcher (it escapes `{`);
                    // anything else after `{` makes it a literal, as in Go.
                    if self.counted_repeat_follows() {
                        return None;
                    }
                    self.pos += 1;
                    self.literal('{' as u32);
                }
                '\\' => self.backslash()?,
                _ => {
                    self.pos += 1;
                    self.literal(c as u32);
                }
            }
        }
        if self.groups.is_empty() {
            Some(())
        } else {
            None
        }
    }

    fn begin_atom(&mut self) {
        self.atom_start = self.out.len();
        self.atom_repeated = false;
        self.state = State::Atom;
    }

    fn atom(&mut self, text: &str) {
        self.begin_atom();
        self.out.push_str(text);
    }

    fn literal(&mut self, c: u32) {
        self.begin_atom();
        match char::from_u32(c) {
            Some(ch) if ch.is_ascii_alphanumeric() => self.out.push(ch),
            Some(_) => {
                let _ = write!(self.out, r"\x{{{c:X}}}");
            }
            // A surrogate code point: Go accepts it, but no UTF-8 text contains one.
            None => self.out.push_str(NEVER),
        }
    }

    fn repeat(&mut self, op: char) -> Option<()> {
        if self.state != State::Atom {
            return None;
        }
        if self.atom_repeated {
            self.out.insert_str(self.atom_start, "(?:");
            self.out.push(')');
        }
        self.out.push(op);
        if self.peek() == Some('?') {
            // Non-greedy: the same set of matches.
            self.pos += 1;
            self.out.push('?');
        }
        self.atom_repeated = true;
        self.state = State::JustRepeated;
        Some(())
    }

    fn counted_repeat_follows(&self) -> bool {
        let rest = self.s.get(self.pos + 1..).unwrap_or(&[]);
        let mut i = 0;
        let digits = |i: &mut usize| {
            let start = *i;
            while rest.get(*i).is_some_and(char::is_ascii_digit) {
                *i += 1;
            }
            *i > start
        };
        if !digits(&mut i) {
            return false;
        }
        if rest.get(i) == Some(&',') {
            i += 1;
            digits(&mut i);
        }
        rest.get(i) == Some(&'}')
    }

    /// A `\` outside a class.
    fn backslash(&mut self) -> Option<()> {
        match self.peek_at(1) {
            Some('A') => {
                self.pos += 2;
                self.atom(r"(?:\A)");
            }
            Some('z') => {
                self.pos += 2;
                self.atom(r"(?:\z)");
            }
            Some('b') => {
                self.pos += 2;
                self.atom(r"(?-u:\b)");
            }
            Some('B') => {
                self.pos += 2;
                self.atom(r"(?-u:\B)");
            }
            Some('C') => return None,
            Some('Q') => {
                // Everything up to `\E` (or the end) is literal text.
                self.pos += 2;
                let mut lits = Vec::new();
                while let Some(c) = self.peek() {
                    if c == '\\' && self.peek_at(1) == Some('E') {
                        self.pos += 2;
                        break;
                    }
                    lits.push(c);
                    self.pos += 1;
                }
                if lits.is_empty() && self.state == State::JustRepeated {
                    // Go forgets the last repetition token here; the star can be starred.
                    self.state = State::Atom;
                }
                for c in lits {
                    self.literal(c as u32);
                }
            }
            Some('p' | 'P') => {
                let item = self.unicode_class()?;
                self.emit_class(&[item], false);
            }
            Some(c) if perl_class(c).is_some() => {
                self.pos += 2;
                let items = perl_class(c).unwrap_or_default();
                self.emit_class(&items, false);
            }
            _ => {
                let c = self.escape()?;
                self.literal(c);
            }
        }
        Some(())
    }

    /// A single-character escape at `\`: the character's value, or `None` for a Go error.
    fn escape(&mut self) -> Option<u32> {
        self.pos += 1; // the backslash
        let c = self.next()?;
        if c.is_ascii() && !c.is_ascii_alphanumeric() {
            return Some(c as u32);
        }
        match c {
            '1'..='7' => {
                // A lone non-zero digit would be a backreference, which Go rejects.
                if !matches!(self.peek(), Some('0'..='7')) {
                    return None;
                }
                Some(self.octal(c))
            }
            '0' => Some(self.octal(c)),
            'x' => {
                let c = self.next()?;
                if c == '{' {
                    let mut value = 0u32;
                    let mut digits = 0;
                    loop {
                        let c = self.next()?;
                        if c == '}' {
                            break;
                        }
                        value = value * 16 + c.to_digit(16)?;
                        if value > MAX_RUNE {
                            return None;
                        }
                        digits += 1;
                    }
                    (digits > 0).then_some(value)
                } else {
                    let hi = c.to_digit(16)?;
                    let lo = self.next()?.to_digit(16)?;
                    Some(hi * 16 + lo)
                }
            }
            'a' => Some(0x07),
            'f' => Some(0x0C),
            'n' => Some(0x0A),
            'r' => Some(0x0D),
            't' => Some(0x09),
            'v' => Some(0x0B),
            _ => None,
        }
    }

    /// Up to three octal digits, the first already read.
    fn octal(&mut self, first: char) -> u32 {
        let mut value = first as u32 - '0' as u32;
        for _ in 1..3 {
            match self.peek() {
                Some(d @ '0'..='7') => {
                    value = value * 8 + (d as u32 - '0' as u32);
                    self.pos += 1;
                }
                _ => break,
            }
        }
        value
    }

    /// `\pX`, `\p{Name}`, `\PX`, `\P{^Name}` at the backslash.
    fn unicode_class(&mut self) -> Option<Item> {
        let mut negated = self.peek_at(1) == Some('P');
        self.pos += 2;
        let c = self.next()?;
        let mut name = if c == '{' {
            let rest = self.s.get(self.pos..).unwrap_or(&[]);
            let end = rest.iter().position(|&c| c == '}')?;
            let name: String = rest.get(..end)?.iter().collect();
            self.pos += end + 1;
            name
        } else {
            c.to_string()
        };
        if let Some(stripped) = name.strip_prefix('^') {
            negated = !negated;
            name = stripped.to_string();
        }
        // Go knows "Any", the general categories and the scripts; all are ASCII words.
        let mut chars = name.chars();
        let word = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !word {
            return None;
        }
        Some(Item::Unicode { name, negated })
    }

    /// A class at `[`.
    fn class(&mut self) -> Option<()> {
        self.pos += 1;
        let mut negated = false;
        if self.peek() == Some('^') {
            negated = true;
            self.pos += 1;
        }
        let mut items = Vec::new();
        let mut first = true;
        loop {
            let c = self.peek()?; // unterminated class
            if c == ']' && !first {
                self.pos += 1;
                break;
            }
            first = false;
            if c == '['
                && self.peek_at(1) == Some(':')
                && self.pos + 2 < self.s.len()
                && let Some(end) = self.find_colon_bracket(self.pos + 2)
            {
                let name: String = self.s.get(self.pos..end)?.iter().collect();
                items.extend(posix_class(&name)?);
                self.pos = end;
                continue;
            }
            if c == '\\' {
                match self.peek_at(1) {
                    Some('p' | 'P') => {
                        items.push(self.unicode_class()?);
                        continue;
                    }
                    Some(p) if perl_class(p).is_some() => {
                        self.pos += 2;
                        items.extend(perl_class(p).unwrap_or_default());
                        continue;
                    }
                    _ => {}
                }
            }
            let lo = self.class_char()?;
            let mut hi = lo;
            if self.peek() == Some('-') && self.peek_at(1).is_some_and(|c| c != ']') {
                self.pos += 1;
                hi = self.class_char()?;
                if hi < lo {
                    return None;
                }
            }
            items.push(Item::Range(lo, hi));
        }
        self.emit_class(&items, negated);
        Some(())
    }

    /// End offset (exclusive) of the first `:]` at or after `from`.
    fn find_colon_bracket(&self, from: usize) -> Option<usize> {
        let rest = self.s.get(from..)?;
        rest.windows(2)
            .position(|w| w == [':', ']'])
            .map(|i| from + i + 2)
    }

    fn class_char(&mut self) -> Option<u32> {
        match self.peek()? {
            '\\' => self.escape(),
            c => {
                self.pos += 1;
                Some(c as u32)
            }
        }
    }

    fn emit_class(&mut self, items: &[Item], negated: bool) {
        let mut body = String::new();
        for item in items {
            match item {
                Item::Range(lo, hi) => push_range(&mut body, *lo, *hi),
                Item::Unicode { name, negated: n } => match name.as_str() {
                    "Any" if !n => push_range(&mut body, 0, MAX_RUNE),
                    "Any" => {}
                    // Surrogates never occur in UTF-8 text (and `regex` has no `\p{Cs}`).
                    "Cs" if *n => push_range(&mut body, 0, MAX_RUNE),
                    "Cs" => {}
                    _ => {
                        let _ = write!(body, r"\{}{{{name}}}", if *n { 'P' } else { 'p' });
                    }
                },
            }
        }
        self.begin_atom();
        if body.is_empty() {
            self.out.push_str(if negated { ANY } else { NEVER });
        } else {
            self.out.push('[');
            if negated {
                self.out.push('^');
            }
            self.out.push_str(&body);
            self.out.push(']');
        }
    }
}

/// Append `lo-hi` to a class body, leaving out surrogates (`regex` rejects them).
fn push_range(body: &mut String, lo: u32, hi: u32) {
    let hi = hi.min(MAX_RUNE);
    let mut pieces = Vec::with_capacity(2);
    if lo <= SURROGATE_HI && hi >= SURROGATE_LO {
        if lo < SURROGATE_LO {
            pieces.push((lo, SURROGATE_LO - 1));
        }
        if hi > SURROGATE_HI {
            pieces.push((SURROGATE_HI + 1, hi));
        }
    } else if lo <= hi {
        pieces.push((lo, hi));
    }
    for (a, b) in pieces {
        if a == b {
            let _ = write!(body, r"\x{{{a:X}}}");
        } else {
            let _ = write!(body, r"\x{{{a:X}}}-\x{{{b:X}}}");
        }
    }
}

fn ranges(list: &[(u32, u32)], negated: bool) -> Vec<Item> {
    if !negated {
        return list.iter().map(|&(a, b)| Item::Range(a, b)).collect();
    }
    // The complement over all code points; `list` is sorted and disjoint.
    let mut out = Vec::new();
    let mut next = 0u32;
    for &(a, b) in list {
        if a > next {
            out.push(Item::Range(next, a - 1));
        }
        next = b + 1;
    }
    if next <= MAX_RUNE {
        out.push(Item::Range(next, MAX_RUNE));
    }
    out
}

/// Go's Perl classes `\d \s \w` (ASCII only) and their negations.
fn perl_class(c: char) -> Option<Vec<Item>> {
    const DIGIT: &[(u32, u32)] = &[(0x30, 0x39)];
    const SPACE: &[(u32, u32)] = &[(0x09, 0x0A), (0x0C, 0x0D), (0x20, 0x20)];
    const WORD: &[(u32, u32)] = &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)];
    let (list, negated) = match c {
        'd' => (DIGIT, false),
        'D' => (DIGIT, true),
        's' => (SPACE, false),
        'S' => (SPACE, true),
        'w' => (WORD, false),
        'W' => (WORD, true),
        _ => return None,
    };
    Some(ranges(list, negated))
}

/// Go's POSIX classes, `[:alpha:]` and `[:^alpha:]`; `None` for an unknown name (an error).
fn posix_class(name: &str) -> Option<Vec<Item>> {
    let inner = name.strip_prefix("[:")?.strip_suffix(":]")?;
    let (inner, negated) = match inner.strip_prefix('^') {
        Some(rest) => (rest, true),
        None => (inner, false),
    };
    let list: &[(u32, u32)] = match inner {
        "alnum" => &[(0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A)],
        "alpha" => &[(0x41, 0x5A), (0x61, 0x7A)],
        "ascii" => &[(0x00, 0x7F)],
        "blank" => &[(0x09, 0x09), (0x20, 0x20)],
        "cntrl" => &[(0x00, 0x1F), (0x7F, 0x7F)],
        "digit" => &[(0x30, 0x39)],
        "graph" => &[(0x21, 0x7E)],
        "lower" => &[(0x61, 0x7A)],
        "print" => &[(0x20, 0x7E)],
        "punct" => &[(0x21, 0x2F), (0x3A, 0x40), (0x5B, 0x60), (0x7B, 0x7E)],
        "space" => &[(0x09, 0x0D), (0x20, 0x20)],
        "upper" => &[(0x41, 0x5A)],
        "word" => &[(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
        "xdigit" => &[(0x30, 0x39), (0x41, 0x46), (0x61, 0x66)],
        _ => return None,
    };
    Some(ranges(list, negated))
}

#[cfg(test)]
mod tests {
    use super::translate;

    fn is_match(go: &str, text: &str) -> Option<bool> {
        let rust = translate(go)?;
        Some(regex::Regex::new(&rust).ok()?.is_match(text))
    }

    #[test]
    fn generated_shapes() {
        assert_eq!(is_match(r"^(.*/)?dir2/[^/]*$", "a/b/dir2/x"), Some(true));
        assert_eq!(is_match(r"^(.*/)?dir2/[^/]*$", "dir2/x/y"), Some(false));
        assert_eq!(is_match(r"^a\.b$", "a.b"), Some(true));
        assert_eq!(is_match(r"^a\.b$", "axb"), Some(false));
    }

    #[test]
    fn go_class_rules() {
        // `[` inside a class is literal in Go (a nested class in the regex crate).
        assert_eq!(is_match(r"^[[^/]*]$", "[^]"), Some(true));
        assert_eq!(is_match(r"^[[^/]*]$", "x]"), Some(false));
        // `]` first is literal; reversed ranges are errors; POSIX and Perl classes are ASCII.
        assert_eq!(is_match(r"^[]a]$", "]"), Some(true));
        assert_eq!(translate(r"^[l-O]$"), None);
        assert_eq!(is_match(r"^[[:alpha:]]$", "é"), Some(false));
        assert_eq!(is_match(r"^[[:^alpha:]]$", "é"), Some(true));
        assert_eq!(translate(r"^[[:nope:]]$"), None);
        assert_eq!(is_match(r"^\d$", "٣"), Some(false));
        assert_eq!(is_match(r"^[a&&b]$", "&"), Some(true));
    }

    #[test]
    fn go_escapes() {
        assert_eq!(is_match(r"^\Qa*\E$", "a*"), Some(true));
        // `\Q` without `\E` swallows the end anchor too.
        assert_eq!(is_match(r"^\Qa$", "a$tail"), Some(true));
        assert_eq!(is_match(r"^\101$", "A"), Some(true));
        assert_eq!(is_match(r"^\x41$", "A"), Some(true));
        assert_eq!(translate(r"^\1$"), None);
        assert_eq!(translate(r"^\q$"), None);
        assert_eq!(translate(r"^\é$"), None);
        assert_eq!(translate(r"^\C$"), None);
        assert_eq!(is_match(r"^\x{D800}$", "x"), Some(false));
    }

    #[test]
    fn go_repetition_rules() {
        assert_eq!(translate(r"a**"), None);
        assert_eq!(translate(r"*a"), None);
        assert_eq!(translate(r"(*)"), None);
        assert_eq!(is_match(r"^a*?$", "aa"), Some(true));
        assert_eq!(is_match(r"^a*\Q\E*$", "aa"), Some(true));
        assert_eq!(translate(r"(a"), None);
        assert_eq!(translate(r"a)"), None);
    }
}
