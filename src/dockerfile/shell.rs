//! Shell-word processing for Dockerfile instructions: variable expansion, quote removal and
//! word splitting, with the same rules as BuildKit's `frontend/dockerfile/shell` lexer.
//!
//! This is hand-written on purpose. BuildKit's lexer is not a POSIX shell: it supports only a
//! handful of `${…}` forms, keeps a lone escape character inside double quotes, drops a
//! trailing escape, turns `#`/`%`/`/` patterns into regular expressions in its own way, treats
//! every positional and special parameter as an ordinary (normally unset) variable, and glues
//! `<<` plus the whitespace after it to the next word so heredoc markers survive splitting.
//! No crate (`shlex`, `shell-words`, `shellexpand`, …) follows those rules, and a Dockerfile
//! that builds with BuildKit must expand to exactly the same strings here.
//!
//! The behaviour follows BuildKit's `lex.go` rule by rule; the comments name the places where
//! it is surprising. Two deliberate differences, both only reachable with odd input:
//!
//! * `${…}` forms nested deeper than [`MAX_NESTING`] levels fail with
//!   [`ShellError::TooDeep`] instead of recursing without bound (Go grows its stacks, we do not).
//! * What expansion may produce is bounded ([`Budget`]): a word expands to at most
//!   [`MAX_WORD`] bytes (or its own written length, if longer), and the variable values one
//!   instruction and one whole build substitute are limited too. BuildKit has no limit, so nine
//!   lines of `ARG B=$A$A$A…` can make it (and made kiln) take gigabytes; no real Dockerfile
//!   comes near these limits.
//! * A word split by [`Lexer::process_words`] keeps the text in front of a `${name<op>word}`
//!   form. (Recent BuildKit shares one scratch buffer between nested scans, so
//!   `a${X:-b}c` splits to `bc` there although it expands to `abc`; that is an accident of an
//!   optimisation, not a rule, and we do not copy it.)

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};

/// How deeply `${name<op>word}` forms may nest inside each other's `word`.
pub const MAX_NESTING: usize = 128;

/// The most bytes one word may expand to (unless it is longer as written: literal text is
/// never refused). Checked as the word is built, so a larger string is never made.
pub const MAX_WORD: usize = 1 << 20;

/// The most bytes of variable values (and pattern-substitution results) one instruction may
/// substitute, over all its words. Bounds the work and memory of an instruction whose words
/// each stay under [`MAX_WORD`].
pub const MAX_INSTRUCTION: usize = 4 << 20;

/// The most bytes of variable values one build (or one plan) may substitute over all its
/// instructions: what stays in memory (scopes, config, history) is bounded by this and the
/// Dockerfile's own size.
pub const MAX_TOTAL: usize = 64 << 20;

/// How much expansion may still substitute, for one instruction and for the whole run. Shared
/// by reference between the scans of one instruction; [`next_instruction`](Self::next_instruction)
/// starts the next one.
#[derive(Debug, Clone)]
pub struct Budget {
    instruction_left: Cell<usize>,
    total_left: Cell<usize>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            instruction_left: Cell::new(MAX_INSTRUCTION),
            total_left: Cell::new(MAX_TOTAL),
        }
    }
}

impl Budget {
    /// A fresh budget for a build or plan ([`MAX_INSTRUCTION`], [`MAX_TOTAL`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts the next instruction: its own [`MAX_INSTRUCTION`], within what the run has left.
    pub fn next_instruction(&self) {
        self.instruction_left.set(MAX_INSTRUCTION);
    }

    /// Takes `bytes` of substituted text from the budget, or says which limit it would pass.
    fn spend(&self, bytes: usize) -> Result<(), ShellError> {
        let (instruction, total) = (self.instruction_left.get(), self.total_left.get());
        if bytes > instruction {
            return Err(ShellError::InstructionTooLarge(MAX_INSTRUCTION));
        }
        if bytes > total {
            return Err(ShellError::TotalTooLarge(MAX_TOTAL));
        }
        self.instruction_left.set(instruction - bytes);
        self.total_left.set(total - bytes);
        Ok(())
    }
}

/// `n` bytes the way the size errors say it: `1 MiB`, or a byte count.
fn show_size(n: &usize) -> String {
    if n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// What Go prints for a rune that is not there (end of input formatted with `%c`/`string(r)`).
const NO_RUNE: char = '\u{FFFD}';

/// Upper bound for a compiled `#`/`%`/`/` pattern. Go accepts any length; the default limit of
/// the `regex` crate would reject patterns a long Dockerfile line can legitimately produce.
const PATTERN_SIZE_LIMIT: usize = 64 << 20;

/// Variable lookup for expansion.
///
/// Implemented for `BTreeMap<String, String>`, `HashMap<String, String>`, and lists of
/// `(name, value)` pairs (`Vec` or slice) where the **last** duplicate wins, as in BuildKit's
/// `EnvsFromSlice`. Names are compared exactly (BuildKit folds case on Windows only).
pub trait Env {
    /// The value of `name`, or `None` when it is not set (set-but-empty is `Some("")`).
    fn lookup(&self, name: &str) -> Option<String>;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<String> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<String> {
        self.as_slice().lookup(name)
    }
}

impl<T: Env + ?Sized> Env for &T {
    fn lookup(&self, name: &str) -> Option<String> {
        (**self).lookup(name)
    }
}

/// Turn `NAME=value` strings into an [`Env`] list, like BuildKit's `EnvsFromSlice`: the name
/// ends at the first `=`, an entry without `=` is set to the empty string, and a later
/// duplicate wins on lookup.
pub fn envs_from_slice<S: AsRef<str>>(entries: &[S]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| match e.as_ref().split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (e.as_ref().to_owned(), String::new()),
        })
        .collect()
}

/// Why a word could not be processed. The texts are BuildKit's; BuildKit additionally wraps
/// them as `failed to process "<word>": <text>`.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ShellError {
    /// `${` without its closing brace, e.g. `${FOO` or `${FOO:-x`.
    #[error("syntax error: missing '}}'")]
    MissingBrace,
    /// `${FOO/pattern` without the `/` that ends the pattern.
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${:…}` or `${{…}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// An operator BuildKit does not support (`${X:=y}`, `${X=y}`, `${X:#y}`, `${X.}`, …).
    /// Holds the operator as BuildKit prints it; the end of input shows as U+FFFD.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `'` without its closing quote.
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    /// `"` without its closing quote.
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    /// The input ended before `char`. (Inside `${…}` this is reported as
    /// [`MissingBrace`](Self::MissingBrace) or [`MissingSlash`](Self::MissingSlash) instead.)
    #[error("unexpected end of statement while looking for matching {0}")]
    UnexpectedEnd(char),
    /// `${NAME?message}` / `${NAME:?message}` on an unset (or, with `:`, empty) variable.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
    /// A `#`, `%` or `/` pattern that cannot be used, e.g. an escape other than `\*`, `\?`, `\\`.
    #[error("invalid pattern ({pattern}) in substitution: {reason}")]
    InvalidPattern {
        pattern: String,
        #[source]
        reason: PatternError,
    },
    /// `${…}` forms nested deeper than [`MAX_NESTING`] levels (kiln's own limit).
    #[error("syntax error: substitutions nested deeper than {0} levels")]
    TooDeep(usize),
    /// The word would expand to more than [`MAX_WORD`] bytes (kiln's own limit).
    #[error("expands to more than {} (kiln's limit for one value)", show_size(.0))]
    WordTooLarge(usize),
    /// The instruction's words would substitute more than [`MAX_INSTRUCTION`] bytes of
    /// variable values (kiln's own limit).
    #[error("variables expand to more than {} in this instruction (kiln's limit)", show_size(.0))]
    InstructionTooLarge(usize),
    /// The build would substitute more than [`MAX_TOTAL`] bytes of variable values (kiln's own
    /// limit).
    #[error("variables expand to more than {} in this build (kiln's limit)", show_size(.0))]
    TotalTooLarge(usize),
}

/// Why a `#`, `%` or `/` pattern cannot be turned into a matcher.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[non_exhaustive]
pub enum PatternError {
    /// An escape other than `\*`, `\?`, `\\`, `\}` or `\/` (U+FFFD for a `\` at the end).
    #[error("invalid escape '\\{0}'")]
    BadEscape(char),
    /// The pattern's regular expression is too large (or otherwise refused by `regex`).
    #[error(transparent)]
    Regex(#[from] regex::Error),
}

impl ShellError {
    /// One of kiln's own size or nesting limits, not a syntax error of the word.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            Self::TooDeep(_)
                | Self::WordTooLarge(_)
                | Self::InstructionTooLarge(_)
                | Self::TotalTooLarge(_)
        )
    }
}

/// The result of [`Lexer::process_word_with_matches`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion {
    /// The processed word, whitespace kept.
    pub value: String,
    /// Variables that were referenced and are set (even to the empty string).
    pub matched: BTreeSet<String>,
    /// Variables that were referenced and are not set.
    pub unmatched: BTreeSet<String>,
}

/// BuildKit's `shell.Lex`: processes one Dockerfile word (or a whole line) against an [`Env`].
#[derive(Debug, Clone)]
pub struct Lexer {
    /// The escape character: `\` by default, `` ` `` with `# escape=``.
    pub escape: char,
    /// Keep the quote characters in the result (quotes still group and protect text).
    pub raw_quotes: bool,
    /// Keep escape characters in the result (they still protect the next character).
    pub raw_escapes: bool,
    /// Leave references to unset variables as written (`$X`, `${X}`, `${X:-y}`, …).
    pub skip_unset_env: bool,
    /// Treat `'` and `"` as ordinary characters.
    pub skip_process_quotes: bool,
}

impl Default for Lexer {
    fn default() -> Self {
        Self::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character and every mode off.
    pub fn new(escape: char) -> Self {
        Self {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_unset_env: false,
            skip_process_quotes: false,
        }
    }

    /// Expand variables and remove quotes; whitespace is kept as it is. Bounded by a fresh
    /// [`Budget`].
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<String, ShellError> {
        self.process_word_in(word, env, &Budget::new())
    }

    /// [`process_word`](Self::process_word) within the caller's `budget` (shared by the words
    /// of an instruction and the instructions of a build).
    pub fn process_word_in(
        &self,
        word: &str,
        env: &dyn Env,
        budget: &Budget,
    ) -> Result<String, ShellError> {
        Ok(self.run(word, env, budget, false)?.0.value)
    }

    /// Like [`process_word`](Self::process_word), and also report which variables were
    /// referenced and whether they were set.
    pub fn process_word_with_matches(
        &self,
        word: &str,
        env: &dyn Env,
    ) -> Result<Expansion, ShellError> {
        Ok(self.run(word, env, &Budget::new(), false)?.0)
    }

    /// Expand and split into words on unquoted whitespace. Whitespace that comes out of an
    /// unquoted expansion splits too; quoted or escaped whitespace does not. Empty words are
    /// dropped (`""` alone gives no word). `<<` and the blanks after it stay glued to the next
    /// word, so `<<  EOF` is one word.
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<Vec<String>, ShellError> {
        self.process_words_in(word, env, &Budget::new())
    }

    /// [`process_words`](Self::process_words) within the caller's `budget`.
    pub fn process_words_in(
        &self,
        word: &str,
        env: &dyn Env,
        budget: &Budget,
    ) -> Result<Vec<String>, ShellError> {
        Ok(self.run(word, env, budget, true)?.1)
    }

    fn run(
        &self,
        word: &str,
        env: &dyn Env,
        budget: &Budget,
        split: bool,
    ) -> Result<(Expansion, Vec<String>), ShellError> {
        let src: Vec<char> = word.chars().collect();
        let mut scan = Scan {
            lexer: self,
            env,
            budget,
            split,
            max_len: MAX_WORD.max(word.len()),
            // Go's text/scanner silently skips a byte-order mark at the very start.
            pos: usize::from(src.first() == Some(&'\u{FEFF}')),
            src,
            raw_escapes: self.raw_escapes,
            depth: 0,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        let (value, words) = scan.process_until(None, self.raw_escapes)?;
        let expansion = Expansion {
            value,
            matched: scan.matched,
            unmatched: scan.unmatched,
        };
        Ok((expansion, words))
    }
}

/// Word splitting as BuildKit does it alongside expansion.
#[derive(Default)]
struct Words {
    current: String,
    done: Vec<String>,
    in_word: bool,
    /// Nobody asked for the words (a nested scan, or `process_word`): skip the copy.
    off: bool,
}

impl Words {
    /// An unquoted character: whitespace ends the current word.
    fn add_char(&mut self, c: char) {
        if self.off {
            return;
        }
        if c.is_whitespace() {
            if self.in_word && !self.current.is_empty() {
                self.done.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(c);
        }
    }

    fn add_raw_char(&mut self, c: char) {
        if self.off {
            return;
        }
        self.current.push(c);
        self.in_word = true;
    }

    /// The value of an unquoted `$` expansion: splits on its whitespace.
    fn add_expanded(&mut self, s: &str) {
        if self.off {
            return;
        }
        s.chars().for_each(|c| self.add_char(c));
    }

    /// Quoted text (or a heredoc marker): kept whole, whitespace included.
    fn add_raw_str(&mut self, s: &str) {
        if self.off {
            return;
        }
        self.current.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.done.push(self.current);
        }
        self.done
    }
}

/// The state of one `process_*` call.
struct Scan<'a> {
    lexer: &'a Lexer,
    env: &'a dyn Env,
    budget: &'a Budget,
    /// Whether the caller wants the words split (`process_words`).
    split: bool,
    /// No text built in this scan may grow past this ([`MAX_WORD`], or the word's length).
    max_len: usize,
    src: Vec<char>,
    pos: usize,
    /// Whether escapes are currently kept; `${X#…}`, `${X%…}` and `${X/…}` switch it on for
    /// their pattern and replacement, `${X:-…}` and friends switch it off.
    raw_escapes: bool,
    depth: usize,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl Scan<'_> {
    fn peek(&self) -> Option<char> {
        self.src.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// A variable's value; its size is taken from the budget (the value is copied).
    fn lookup(&mut self, name: &str) -> Result<Option<String>, ShellError> {
        let value = self.env.lookup(name);
        let set = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        if !set.contains(name) {
            set.insert(name.to_owned());
        }
        if let Some(v) = &value {
            self.budget.spend(v.len())?;
        }
        Ok(value)
    }

    /// Fails once `text` (being built by this scan) is past the word limit. Called after each
    /// expansion is appended and on every finished text, so a string grows at most one
    /// appended piece (itself within the limit) plus literal input past it.
    fn check_len(&self, text: &str) -> Result<(), ShellError> {
        if text.len() > self.max_len {
            return Err(ShellError::WordTooLarge(MAX_WORD));
        }
        Ok(())
    }

    /// Process up to `stop` (consumed) or the end of input when `stop` is `None`, with
    /// `raw_escapes` in force meanwhile. Returns the text and its split words.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), ShellError> {
        let saved = std::mem::replace(&mut self.raw_escapes, raw_escapes);
        let result = self.process_until_inner(stop);
        self.raw_escapes = saved;
        result
    }

    fn process_until_inner(
        &mut self,
        stop: Option<char>,
    ) -> Result<(String, Vec<String>), ShellError> {
        let mut out = String::new();
        let mut words = Words {
            off: !(self.split && self.depth == 0),
            ..Words::default()
        };
        let quotes = !self.lexer.skip_process_quotes;
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                self.check_len(&out)?;
                return Ok((out, words.finish()));
            }
            match c {
                '$' => {
                    let value = self.dollar()?;
                    words.add_expanded(&value);
                    out.push_str(&value);
                    self.check_len(&out)?;
                }
                '<' => {
                    let marker = self.possible_heredoc();
                    words.add_raw_str(&marker);
                    out.push_str(&marker);
                }
                '\'' if quotes => {
                    let text = self.single_quoted()?;
                    words.add_raw_str(&text);
                    out.push_str(&text);
                }
                '"' if quotes => {
                    let text = self.double_quoted()?;
                    words.add_raw_str(&text);
                    out.push_str(&text);
                    self.check_len(&out)?;
                }
                _ => {
                    self.pos += 1;
                    if c == self.lexer.escape {
                        if self.raw_escapes {
                            words.add_raw_char(c);
                            out.push(c);
                        }
                        // The escape protects the next character; a trailing one is dropped.
                        let Some(escaped) = self.bump() else { break };
                        words.add_raw_char(escaped);
                        out.push(escaped);
                    } else {
                        words.add_char(c);
                        out.push(c);
                    }
                }
            }
        }
        match stop {
            Some(s) => Err(ShellError::UnexpectedEnd(s)),
            None => {
                self.check_len(&out)?;
                Ok((out, words.finish()))
            }
        }
    }

    /// `'…'`: everything literal up to the next `'`, which cannot be escaped.
    fn single_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.bump() {
                None => return Err(ShellError::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.lexer.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"…"`: `$` expands; the escape character escapes only `"`, `$` and itself and is
    /// otherwise kept; an escape right at the end of input is dropped (and the quote is then
    /// unterminated anyway).
    fn double_quoted(&mut self) -> Result<String, ShellError> {
        let mut out = String::new();
        self.pos += 1;
        if self.lexer.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ShellError::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.lexer.raw_quotes {
                        out.push('"');
                    }
                    self.check_len(&out)?;
                    return Ok(out);
                }
                Some('$') => {
                    let value = self.dollar()?;
                    out.push_str(&value);
                    self.check_len(&out)?;
                }
                Some(mut c) => {
                    self.pos += 1;
                    if c == self.lexer.escape {
                        if self.raw_escapes {
                            out.push(c);
                        }
                        match self.peek() {
                            None => continue,
                            Some(n) if n == '"' || n == '$' || n == self.lexer.escape => {
                                self.pos += 1;
                                c = n;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(c);
                }
            }
        }
    }

    /// `<` is always passed through, but `<<` (or `<<-`) takes the blanks after it along, so a heredoc
    /// marker written `<<  EOF` stays a single word when splitting.
    fn possible_heredoc(&mut self) -> String {
        self.pos += 1;
        if self.peek() != Some('<') {
            return "<".to_owned();
        }
        self.pos += 1;
        let mut marker = String::from("<<");
        // BuildKit's parser tests (HEAD) read `<<- EOF` as one heredoc marker too.
        if self.peek() == Some('-') {
            marker.push('-');
            self.pos += 1;
        }
        while let Some(c) = self.peek().filter(|c| matches!(c, ' ' | '\t' | '\r')) {
            marker.push(c);
            self.pos += 1;
        }
        marker
    }

    /// A variable name after `$` or `${`: a run of digits (so `$1`, `$999`), a single special
    /// parameter (`@ * # ? - $ ! 0`), or letters, digits and `_`. Empty if none of these.
    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if name.is_empty() && is_digit(c) {
                while let Some(d) = self.peek().filter(|&d| is_digit(d)) {
                    name.push(d);
                    self.pos += 1;
                }
                return name;
            }
            if name.is_empty() && matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.pos += 1;
                return c.to_string();
            }
            if !is_letter(c) && !is_digit(c) && c != '_' {
                break;
            }
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// Process the `word` of a `${name<op>word}` form up to `stop`. Any failure that leaves
    /// us at the end of input is reported as `at_end` (BuildKit's "missing '}'").
    fn nested(
        &mut self,
        stop: char,
        raw_escapes: bool,
        at_end: ShellError,
    ) -> Result<String, ShellError> {
        if self.depth >= MAX_NESTING {
            return Err(ShellError::TooDeep(MAX_NESTING));
        }
        self.depth += 1;
        let result = self.process_until(Some(stop), raw_escapes);
        self.depth -= 1;
        match result {
            Ok((text, _)) => Ok(text),
            Err(e) if self.peek().is_none() && !e.is_limit() => Err(at_end),
            Err(e) => Err(e),
        }
    }

    /// `$name` or `${…}`, starting at the `$`.
    fn dollar(&mut self) -> Result<String, ShellError> {
        self.pos += 1;
        let skip_unset = self.lexer.skip_unset_env;

        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_owned());
            }
            return Ok(match self.lookup(&name)? {
                Some(value) => value,
                None if skip_unset => format!("${name}"),
                None => String::new(),
            });
        }

        self.pos += 1;
        match self.peek() {
            None => return Err(ShellError::MissingBrace),
            Some('{' | '}' | ':') => return Err(ShellError::BadSubstitution),
            Some(_) => {}
        }
        let name = self.name();
        let mut op = self.bump();
        let mut op_text = String::from(op.unwrap_or(NO_RUNE));

        match op {
            Some('}') => Ok(match self.lookup(&name)? {
                Some(value) => value,
                None if skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                // With `:`, an empty value counts as unset. Whatever follows the `:` is taken
                // as the operator and its word is processed before the operator is checked.
                let null_is_unset = op == Some(':');
                if null_is_unset {
                    op = self.bump();
                    op_text.push(op.unwrap_or(NO_RUNE));
                }
                let pattern_op = matches!(op, Some('#' | '%'));
                if null_is_unset && pattern_op {
                    return Err(ShellError::UnsupportedModifier(op_text));
                }
                let word = self.nested('}', pattern_op, ShellError::MissingBrace)?;

                let value = self.lookup(&name)?;
                if skip_unset && value.is_none() {
                    return Ok(format!("${{{name}{op_text}{word}}}"));
                }
                let empty = value
                    .as_deref()
                    .is_none_or(|v| null_is_unset && v.is_empty());
                match op {
                    Some('-') => Ok(if empty {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if empty { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(required(name, word, "is not allowed to be unset")),
                        Some(v) if null_is_unset && v.is_empty() => {
                            Err(required(name, word, "is not allowed to be empty"))
                        }
                        Some(v) => Ok(v),
                    },
                    Some(c @ ('#' | '%')) => {
                        // `##` / `%%` remove the longest match, `#` / `%` the shortest.
                        let (pattern, longest) = match word.strip_prefix(c) {
                            Some(rest) => (rest, true),
                            None => (word.as_str(), false),
                        };
                        let value = value.unwrap_or_default();
                        if c == '#' {
                            trim_prefix(pattern, &value, longest)
                        } else {
                            trim_suffix(pattern, &value, longest)
                        }
                    }
                    _ => Err(ShellError::UnsupportedModifier(op_text)),
                }
            }
            Some('/') => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.pos += 1;
                }
                let pattern = self.nested('/', true, ShellError::MissingSlash)?;
                let replacement = self.nested('}', true, ShellError::MissingBrace)?;
                let Some(value) = self.lookup(&name)?.or((!skip_unset).then(String::new)) else {
                    // BuildKit writes it back with a single `/` even for `//`.
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                };
                let re = pattern_regex(&pattern, true, false)
                    .map_err(|reason| ShellError::InvalidPattern { pattern, reason })?;
                let replaced = if replace_all {
                    // Each match may add the whole replacement: check while building.
                    replace_all_like_go(&re, &value, &replacement, self.max_len)
                        .ok_or(ShellError::WordTooLarge(MAX_WORD))?
                } else {
                    match re.find(&value) {
                        Some(m) => {
                            format!("{}{replacement}{}", &value[..m.start()], &value[m.end()..])
                        }
                        None => value,
                    }
                };
                self.check_len(&replaced)?;
                // New text, not a copy of a looked-up value: it counts against the budget too.
                self.budget.spend(replaced.len())?;
                Ok(replaced)
            }
            _ => Err(ShellError::UnsupportedModifier(op_text)),
        }
    }
}

fn required(name: String, word: String, default: &str) -> ShellError {
    let message = if word.is_empty() {
        default.to_owned()
    } else {
        word
    };
    ShellError::Required { name, message }
}

/// Go's `unicode.IsLetter` (general category L).
fn is_letter(c: char) -> bool {
    static LETTER: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\p{L}$").expect("static regex is valid"));
    if c.is_ascii() {
        return c.is_ascii_alphabetic();
    }
    LETTER.is_match(c.encode_utf8(&mut [0; 4]))
}

/// Go's `unicode.IsDigit` (general category Nd).
fn is_digit(c: char) -> bool {
    static DIGIT: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"^\p{Nd}$").expect("static regex is valid"));
    if c.is_ascii() {
        return c.is_ascii_digit();
    }
    DIGIT.is_match(c.encode_utf8(&mut [0; 4]))
}

/// Turn a `${X#…}`/`${X%…}`/`${X/…}` pattern into a regular expression: `*` is any run of
/// characters (shortest first unless `greedy`), `?` any one character, `\*` `\?` `\\` are
/// literal, `\}` and `\/` are `}` and `/`, and everything else — `[`…`]` included — is
/// literal. The escape here is always `\`, whatever the Dockerfile's escape character is.
fn pattern_regex(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, PatternError> {
    let mut chars = pattern.chars().peekable();
    // Go's text/scanner skips a byte-order mark at the very start.
    chars.next_if_eq(&'\u{FEFF}');
    let mut re = String::with_capacity(pattern.len() + 8);
    if anchored {
        re.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut buf = [0; 4];
    let mut after_star = false;
    while let Some(c) = chars.next() {
        // `**` matches exactly what `*` matches (with the same preference), so a run of stars
        // becomes one `.*`: that keeps absurdly long patterns within the regex size limit.
        let star_before = std::mem::replace(&mut after_star, c == '*');
        let literal = match c {
            '*' => {
                if !star_before {
                    re.push_str(star);
                }
                continue;
            }
            '?' => {
                re.push('.');
                continue;
            }
            '\\' => {
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                match chars.next() {
                    Some(e @ ('*' | '?' | '\\')) => e,
                    other => {
                        return Err(PatternError::BadEscape(other.unwrap_or(NO_RUNE)));
                    }
                }
            }
            other => other,
        };
        re.push_str(&regex::escape(literal.encode_utf8(&mut buf)));
    }
    RegexBuilder::new(&re)
        .size_limit(PATTERN_SIZE_LIMIT)
        .build()
        .map_err(PatternError::from)
}

/// `${X#pattern}`: drop the shortest (or longest) prefix of `value` matching `pattern`.
fn trim_prefix(pattern: &str, value: &str, longest: bool) -> Result<String, ShellError> {
    let re =
        pattern_regex(pattern, longest, true).map_err(|reason| ShellError::InvalidPattern {
            pattern: pattern.to_owned(),
            reason,
        })?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_owned(),
        None => value.to_owned(),
    })
}

/// `${X%pattern}`: done as a prefix trim on the reversed value with the reversed pattern (a
/// regular expression cannot find the shortest match that ends at the end). As in BuildKit, an
/// error then shows the reversed pattern.
fn trim_suffix(pattern: &str, value: &str, longest: bool) -> Result<String, ShellError> {
    let reversed: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reverse_pattern(pattern), &reversed, longest)?;
    Ok(trimmed.chars().rev().collect())
}

/// Reverse a pattern but keep each `\x` pair in order (`a\*c` → `c\*a`); a `\` at the very
/// end has nothing to escape and is reversed like any character.
fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pieces: Vec<&[char]> = Vec::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let len = if chars[i] == '\\' && i + 1 < chars.len() {
            2
        } else {
            1
        };
        pieces.push(&chars[i..i + len]);
        i += len;
    }
    pieces.iter().rev().flat_map(|p| p.iter()).collect()
}

/// Go's `Regexp.ReplaceAllString`: replaces every match, skips an empty match right after the
/// previous match, and expands `$0`/`${0}` (the match), `$$` (`$`) and other `$name` /
/// `${name}` references (empty — there are no groups) in the replacement. `None` as soon as
/// the result grows past `max_len` bytes.
fn replace_all_like_go(re: &Regex, src: &str, template: &str, max_len: usize) -> Option<String> {
    let mut out = String::with_capacity(src.len());
    let mut last_end = 0;
    let mut search = 0;
    while search <= src.len() {
        let Some(m) = re.find_at(src, search) else {
            break;
        };
        out.push_str(src.get(last_end..m.start()).unwrap_or_default());
        if m.end() > last_end || m.start() == 0 {
            expand_template(&mut out, template, m.as_str());
        }
        if out.len() > max_len {
            return None;
        }
        last_end = m.end();
        let width = src
            .get(search..)
            .and_then(|rest| rest.chars().next())
            .map_or(0, char::len_utf8);
        if search + width > m.end() {
            search += width;
        } else if search + 1 > m.end() {
            search += 1;
        } else {
            search = m.end();
        }
    }
    out.push_str(src.get(last_end..).unwrap_or_default());
    Some(out)
}

/// Go's `Regexp.Expand` for a pattern without groups.
fn expand_template(out: &mut String, template: &str, whole_match: &str) {
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
            continue;
        }
        match group_reference(rest) {
            Some((name, after)) => {
                if name == "0" {
                    out.push_str(whole_match);
                }
                rest = after;
            }
            None => out.push('$'),
        }
    }
    out.push_str(rest);
}

/// The `name` or `{name}` after a `$` in a replacement, and the text after it.
fn group_reference(s: &str) -> Option<(&str, &str)> {
    let (braced, body) = match s.strip_prefix('{') {
        Some(body) => (true, body),
        None => (false, s),
    };
    let len: usize = body
        .chars()
        .take_while(|&c| is_letter(c) || is_digit(c) || c == '_')
        .map(char::len_utf8)
        .sum();
    if len == 0 {
        return None;
    }
    let (name, mut after) = body.split_at(len);
    if braced {
        after = after.strip_prefix('}')?;
    }
    Some((name, after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn raw_lexer() -> Lexer {
        Lexer {
            raw_quotes: true,
            raw_escapes: true,
            ..Lexer::new('\\')
        }
    }

    fn words(lexer: &Lexer, line: &str) -> Vec<String> {
        lexer.process_words(line, &env(&[])).expect("lexes")
    }

    #[test]
    fn raw_modes_keep_quotes_and_escapes() {
        let lx = raw_lexer();
        let e = env(&[("A", "x y")]);
        assert_eq!(
            lx.process_word(r#"'a b' "c $A" \"d\" e\ f"#, &e).unwrap(),
            r#"'a b' "c x y" \"d\" e\ f"#
        );
        assert_eq!(
            lx.process_words(r#"'a b' "c $A" \"d\" e\ f $A"#, &e)
                .unwrap(),
            vec!["'a b'", "\"c x y\"", "\\\"d\\\"", "e\\ f", "x", "y"]
        );
        // A trailing escape is kept in raw mode and dropped otherwise.
        assert_eq!(lx.process_word("a\\", &e).unwrap(), "a\\");
        assert_eq!(Lexer::new('\\').process_word("a\\", &e).unwrap(), "a");
        // Inside double quotes a non-special escape is kept; in raw mode BuildKit then writes it
        // twice (once as "raw", once as the ordinary character).
        assert_eq!(lx.process_word(r#""a\tb""#, &e).unwrap(), r#""a\\tb""#);
        assert_eq!(lx.process_word(r#""a\"b""#, &e).unwrap(), r#""a\"b""#);
    }

    #[test]
    fn heredoc_markers_stay_single_words() {
        let lx = raw_lexer();
        assert_eq!(words(&lx, "<<EOF"), ["<<EOF"]);
        assert_eq!(words(&lx, "<<-'EOF'"), ["<<-'EOF'"]);
        assert_eq!(words(&lx, "3<<EOF"), ["3<<EOF"]);
        assert_eq!(words(&lx, "<<  EOF"), ["<<  EOF"]);
        assert_eq!(words(&lx, "<<\t\"EOF\" x"), ["<<\t\"EOF\"", "x"]);
        assert_eq!(
            words(&lx, r#"cat <<"EOF" > /f <<-E2"#),
            ["cat", "<<\"EOF\"", ">", "/f", "<<-E2"]
        );
        assert_eq!(
            words(&lx, "COPY <<A <<B /dest"),
            ["COPY", "<<A", "<<B", "/dest"]
        );
        // The blanks after `<<` or `<<-` are glued: `<<- EOF` is one word (BuildKit HEAD's
        // parser tests expect it to be a heredoc).
        assert_eq!(words(&lx, "<<- EOF"), ["<<- EOF"]);
        assert_eq!(words(&lx, "a < b"), ["a", "<", "b"]);
        // A `<<` at the end keeps its trailing blanks in the word.
        assert_eq!(words(&lx, "x <<  "), ["x", "<<  "]);
        // Quoted `<<` is not special (and not split).
        assert_eq!(words(&lx, "'<<  EOF'"), ["'<<  EOF'"]);
        // The expanded value is the same as without the heredoc rule.
        assert_eq!(lx.process_word("<<  EOF", &env(&[])).unwrap(), "<<  EOF");
    }

    #[test]
    fn skip_unset_env_writes_references_back() {
        let lx = Lexer {
            skip_unset_env: true,
            ..Lexer::new('\\')
        };
        let e = env(&[("SET", "v")]);
        let cases = [
            ("$X", "$X"),
            ("${X}", "${X}"),
            ("${X:-a b}", "${X:-a b}"),
            ("${X+'q'}", "${X+q}"),
            ("${X:?m}", "${X:?m}"),
            ("${X:=y}", "${X:=y}"),
            ("${X//a/b}", "${X/a/b}"),
            ("$SET-${SET:+y}", "v-y"),
        ];
        for (input, expected) in cases {
            assert_eq!(lx.process_word(input, &e).unwrap(), expected, "{input}");
        }
    }

    #[test]
    fn skip_process_quotes_treats_quotes_as_text() {
        let lx = Lexer {
            skip_process_quotes: true,
            ..Lexer::new('\\')
        };
        let e = env(&[("A", "1")]);
        assert_eq!(lx.process_word(r#"'$A' "x"#, &e).unwrap(), r#"'1' "x"#);
        assert_eq!(lx.process_words("'a b'", &e).unwrap(), ["'a", "b'"]);
    }

    #[test]
    fn backtick_escape() {
        let lx = Lexer::new('`');
        let e = env(&[("A", "1")]);
        assert_eq!(lx.process_word(r"C:\dir`$A", &e).unwrap(), r"C:\dir$A");
        assert_eq!(lx.process_word(r#""a`"b``c`d""#, &e).unwrap(), r#"a"b`c`d"#);
        assert_eq!(lx.process_words("a` b c", &e).unwrap(), ["a b", "c"]);
    }

    #[test]
    fn errors_have_buildkit_texts() {
        let lx = Lexer::new('\\');
        let e = env(&[("E", "")]);
        let cases: [(&str, &str); 12] = [
            ("${X", "unsupported modifier (\u{FFFD}) in substitution"),
            ("${", "syntax error: missing '}'"),
            ("${X:-a", "syntax error: missing '}'"),
            ("${X/a", "syntax error: missing '/' in ${}"),
            ("${}", "syntax error: bad substitution"),
            ("${X:=y}", "unsupported modifier (:=) in substitution"),
            ("${X:#y}", "unsupported modifier (:#) in substitution"),
            (
                "'a",
                "unexpected end of statement while looking for matching single-quote",
            ),
            (
                "\"a",
                "unexpected end of statement while looking for matching double-quote",
            ),
            ("${X?}", "X: is not allowed to be unset"),
            ("${E:?}", "E: is not allowed to be empty"),
            (
                "${E#a\\b}",
                "invalid pattern (a\\b) in substitution: invalid escape '\\b'",
            ),
        ];
        for (input, text) in cases {
            let err = lx.process_word(input, &e).unwrap_err();
            assert_eq!(err.to_string(), text, "{input}");
        }
        // `%` reverses the pattern before converting it, and so does its error.
        let err = lx.process_word("${E%ab\\x}", &e).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid pattern (\\xba) in substitution: invalid escape '\\x'"
        );
    }

    #[test]
    fn patterns() {
        let lx = Lexer::new('\\');
        let e = env(&[("P", "/usr/local/bin/tool.tar.gz"), ("S", "a$b[c]$0")]);
        let cases = [
            ("${P#*/}", "usr/local/bin/tool.tar.gz"),
            ("${P##*/}", "tool.tar.gz"),
            ("${P%.*}", "/usr/local/bin/tool.tar"),
            ("${P%%.*}", "/usr/local/bin/tool"),
            ("${P#**/}", "usr/local/bin/tool.tar.gz"),
            ("${P%%.**}", "/usr/local/bin/tool"),
            ("${P%\\**}", "/usr/local/bin/tool.tar.gz"),
            ("${P/\\/usr/}", "/local/bin/tool.tar.gz"),
            ("${P//\\//:}", ":usr:local:bin:tool.tar.gz"),
            ("${S#a?b[c]}", "$0"),
            // `$0` in a `//` replacement is the match, as with Go's ReplaceAllString.
            // (`\$` keeps the `$` from the shell expansion; the escape itself stays, as upstream.)
            ("${P//o/<\\$0>}", "/usr/l<\\o>cal/bin/t<\\o><\\o>l.tar.gz"),
            ("${P/o/[\\$0]}", "/usr/l[\\$0]cal/bin/tool.tar.gz"),
        ];
        for (input, expected) in cases {
            assert_eq!(lx.process_word(input, &e).unwrap(), expected, "{input}");
        }
        let all = |re: &str, src: &str, template: &str| {
            replace_all_like_go(&Regex::new(re).unwrap(), src, template, MAX_WORD)
        };
        assert_eq!(all("x*", "abc", "-").as_deref(), Some("-a-b-c-"));
        assert_eq!(all("b*", "abbc", "-").as_deref(), Some("-a-c-"));
        assert_eq!(
            replace_all_like_go(&Regex::new("x*").unwrap(), "abc", "-", 5),
            None
        );
        let mut out = String::new();
        expand_template(&mut out, "$$|$0|${0}|$1|$x|${0|$|$é!", "M");
        assert_eq!(out, "$|M|M|||${0|$|!");
    }

    #[test]
    fn reverse_pattern_keeps_escapes() {
        for (pattern, expected) in [
            ("a\\*c", "c\\*a"),
            ("\\\\\\ab", "b\\a\\\\"),
            ("ab\\", "\\ba"),
            ("👽\\🚀🖖", "🖖\\🚀👽"),
            ("\\\\b", "b\\\\"),
        ] {
            assert_eq!(reverse_pattern(pattern), expected);
        }
    }

    #[test]
    fn names_follow_go_unicode_classes() {
        let lx = Lexer::new('\\');
        let e = env(&[("ÄB_1", "x"), ("٣٤", "arabic digits")]);
        assert_eq!(lx.process_word("$ÄB_1.", &e).unwrap(), "x.");
        assert_eq!(lx.process_word("$٣٤z", &e).unwrap(), "arabic digitsz");
        // U+0345 is alphabetic in Rust but not a letter (L) in Go: it ends the name.
        assert_eq!(lx.process_word("$ÄB_1\u{345}", &e).unwrap(), "x\u{345}");
        let m = lx
            .process_word_with_matches("$1 ${@:-a} $ÄB_1", &e)
            .unwrap();
        assert_eq!(m.value, " a x");
        assert_eq!(m.matched, BTreeSet::from(["ÄB_1".to_owned()]));
        assert_eq!(
            m.unmatched,
            BTreeSet::from(["1".to_owned(), "@".to_owned()])
        );
    }

    #[test]
    fn env_impls() {
        let list = envs_from_slice(&["a=1", "b", "a=2", "c=x=y"]);
        assert_eq!(list.lookup("a").as_deref(), Some("2"));
        assert_eq!(list.lookup("b").as_deref(), Some(""));
        assert_eq!(list.lookup("c").as_deref(), Some("x=y"));
        assert_eq!(list.lookup("d"), None);
        let slice: &[(String, String)] = &list;
        let lx = Lexer::new('\\');
        assert_eq!(lx.process_word("$a$c", &slice).unwrap(), "2x=y");
        let map: HashMap<String, String> = list.iter().cloned().collect();
        assert_eq!(lx.process_word("$c", &map).unwrap(), "x=y");
        let tree: BTreeMap<String, String> = list.into_iter().collect();
        assert_eq!(lx.process_word("$a", &tree).unwrap(), "2");
    }

    #[test]
    fn nesting_is_bounded() {
        let lx = Lexer::new('\\');
        let e = env(&[]);
        let nest = |n: usize| format!("{}x{}", "${A:-\"".repeat(n), "\"}".repeat(n));
        assert_eq!(lx.process_word(&nest(MAX_NESTING), &e).unwrap(), "x");
        assert_eq!(
            lx.process_word(&nest(MAX_NESTING + 1), &e),
            Err(ShellError::TooDeep(MAX_NESTING))
        );
        // Far too deep: an error, not a stack overflow.
        let deep = "${A:-".repeat(100_000);
        assert!(lx.process_word(&deep, &e).is_err());
    }

    #[test]
    fn expansion_is_bounded() {
        let lx = Lexer::new('\\');
        let half = "h".repeat(MAX_WORD / 2);
        let e = env(&[("H", &half), ("M", &"m".repeat(MAX_WORD))]);
        // Exactly the cap is fine, one byte more is not, however the byte gets there.
        assert_eq!(lx.process_word("$H$H", &e).unwrap().len(), MAX_WORD);
        for word in [
            "$H$H.",
            "\"$H$H.\"",
            "${X:-$H$H.}",
            "$M$H",
            "${H//h/hhh}",
            "${H/h/$H..}",
        ] {
            assert_eq!(
                lx.process_word(word, &e),
                Err(ShellError::WordTooLarge(MAX_WORD)),
                "{word}"
            );
        }
        assert_eq!(
            lx.process_words("$H $H.", &e),
            Err(ShellError::WordTooLarge(MAX_WORD))
        );
        // Literal text is never refused, however long.
        let literal = "y".repeat(MAX_WORD + 10);
        assert_eq!(lx.process_word(&literal, &e).unwrap(), literal);
        // Values that are discarded still count: five 1 MiB lookups pass the instruction's 4 MiB.
        let discarded = "${X+$M}".repeat(5);
        assert_eq!(
            lx.process_word(&discarded, &e),
            Err(ShellError::InstructionTooLarge(MAX_INSTRUCTION))
        );
        // A budget spans the words of an instruction and the instructions of a build.
        let budget = Budget::new();
        for _ in 0..4 {
            lx.process_word_in("$M", &e, &budget).unwrap();
        }
        assert_eq!(
            lx.process_word_in("$M", &e, &budget),
            Err(ShellError::InstructionTooLarge(MAX_INSTRUCTION))
        );
        for i in 0..(MAX_TOTAL - MAX_INSTRUCTION) / MAX_WORD {
            budget.next_instruction();
            assert!(lx.process_word_in("$M", &e, &budget).is_ok(), "{i}");
        }
        budget.next_instruction();
        assert_eq!(
            lx.process_word_in("$M", &e, &budget),
            Err(ShellError::TotalTooLarge(MAX_TOTAL))
        );
        assert_eq!(
            ShellError::TotalTooLarge(MAX_TOTAL).to_string(),
            "variables expand to more than 64 MiB in this build (kiln's limit)"
        );
    }

    #[test]
    fn odd_input_does_not_panic() {
        let lx = raw_lexer();
        let e = env(&[("A", "ü€😀"), ("E", "")]);
        let inputs = [
            "",
            "$",
            "${",
            "${A",
            "${A:",
            "${A/",
            "${A//",
            "${A/é",
            "${A#",
            "${A%\\",
            "\\",
            "\"\\",
            "'",
            "<",
            "<<",
            "\u{FEFF}$A",
            "${A//?/$}",
            "${A//*/${0}x}",
            "${A%%?}",
            "${A#\u{FEFF}?}",
            "${E//}",
            "${A/[/]}",
            "$\u{0}",
            "${A:+\u{0}}",
            "${A##*}",
        ];
        for input in inputs {
            let _ = lx.process_words(input, &e);
            let _ = Lexer::new('`').process_word_with_matches(input, &e);
        }
        assert_eq!(Lexer::new('\\').process_word("${A%%?}", &e).unwrap(), "ü€");
        assert_eq!(
            Lexer::new('\\').process_word("\u{FEFF}$A", &e).unwrap(),
            "ü€😀"
        );
    }
}
