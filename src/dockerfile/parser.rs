//! The Dockerfile parser: text → AST with source positions.
//!
//! Hand-written because the result must match BuildKit's parser exactly (its `Node.Dump()`
//! output is what the conformance corpus compares), and no crate does: the `dockerfile-parser`
//! crate fails heredocs and JSON COPY and mis-parses `# escape` and flags (see DESIGN.md).
//!
//! The shape follows BuildKit's: every instruction is a [`Node`] whose `next` list holds its
//! arguments as the per-instruction line parser split them (quotes and escapes still raw;
//! expansion happens later, in [`crate::dockerfile::shell`]).
//!
//! Deliberate differences from BuildKit, all on inputs BuildKit itself mangles:
//! - the input must be UTF-8 (BuildKit passes invalid bytes through);
//! - in flags and HEALTHCHECK types, BuildKit reads bytes as Latin-1 characters, so a UTF-8
//!   byte 0x85 or 0xA0 counts as a space and non-ASCII flag text is re-encoded; kiln keeps
//!   non-ASCII text as it is and splits only on real whitespace.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use thiserror::Error;

use super::shell::{Lexer, ShellError};

/// BuildKit reads lines with Go's default `bufio.Scanner` buffer: a physical line of this many
/// bytes or more (without its newline) is an error.
const MAX_LINE_LEN: usize = 65536;

/// One node of the AST. The root's `children` are the instructions; an instruction's `next`
/// holds its arguments. ONBUILD is the one instruction whose single `next` node has a child
/// (the nested instruction).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Node {
    /// The keyword as written (for an instruction) or the argument text.
    pub value: String,
    /// The argument chain.
    pub next: Vec<Node>,
    /// Instructions (root) or the nested instruction (ONBUILD's argument node).
    pub children: Vec<Node>,
    /// `--flag[=value]` words after the keyword, quotes removed.
    pub flags: Vec<String>,
    /// The arguments were a JSON array (exec form).
    pub json: bool,
    /// Heredoc bodies attached to this instruction (ADD, COPY, RUN only).
    pub heredocs: Vec<Heredoc>,
    /// The logical line (continuations joined) this node was parsed from.
    pub original: String,
    /// 1-based first and last physical line, counting comments, blanks and heredoc bodies.
    pub start_line: usize,
    pub end_line: usize,
    /// Comment lines (text after `#`) collected since the previous instruction.
    pub prev_comment: Vec<String>,
}

/// A heredoc attached to an instruction: `<<[-]NAME` with its body.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Heredoc {
    pub name: String,
    /// The fd before `<<` (`3<<EOF`), 0 when none.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body (by later stages) and the terminator.
    pub chomp: bool,
    /// The raw body: every line with its line ending, the terminator line excluded.
    pub content: String,
}

/// A parser directive from the top of the file (`# escape=`, `# syntax=`, `# check=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directive {
    pub name: String,
    pub value: String,
    pub line: usize,
}

/// A non-fatal finding, e.g. an empty line inside a continuation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub short: String,
    pub detail: Vec<String>,
    pub line: usize,
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedDockerfile {
    /// Root node: `children` are the instructions.
    pub ast: Node,
    pub escape: char,
    pub directives: Vec<Directive>,
    pub warnings: Vec<Warning>,
}

/// A parse failure, with the 1-based line range it concerns when there is one. It reads as
/// its [`kind`](Self::kind) (BuildKit's text) and has the kind's cause as its source.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub start_line: Option<usize>,
    pub end_line: Option<usize>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl ParseError {
    fn at(kind: impl Into<ParseErrorKind>, start: usize, end: usize) -> Self {
        ParseError {
            kind: kind.into(),
            start_line: Some(start),
            end_line: Some(end.max(start)),
        }
    }
}

/// Why a Dockerfile could not be parsed. The texts are BuildKit's.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    #[error("only one {key} parser directive can be used")]
    DuplicateDirective { key: String },
    #[error("invalid escape token '{token}' does not match ` or \\")]
    InvalidEscape { token: String },
    /// An instruction's line could not be split into its arguments.
    #[error(transparent)]
    Line(#[from] LineError),
    #[error("unterminated heredoc")]
    UnterminatedHeredoc,
    #[error("file with no instructions")]
    NoInstructions,
    #[error("dockerfile line greater than max allowed size of {max}")]
    LineTooLong { max: usize },
}

/// Why one instruction line could not be split into its arguments.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LineError {
    /// ENV/LABEL in the old `KEY name value` form without a value.
    #[error("{keyword} must have two arguments")]
    NameValueArguments { keyword: &'static str },
    /// ENV/LABEL in the `n=v` form with a word that has no `=`.
    #[error("Syntax error - can't find = in {}. Must be of the form: name=value", go_quote(.word))]
    MissingEquals { word: String },
    /// A JSON array holding a non-string.
    #[error("{}", ERR_NOT_STRING_ARRAY)]
    NotStringArray,
    #[error(transparent)]
    Heredoc(#[from] HeredocError),
}

/// Why a heredoc marker (`<<EOF`) could not be read.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum HeredocError {
    /// The delimiter word does not lex (an unterminated quote, …).
    #[error(transparent)]
    Lex(#[from] ShellError),
    #[error("internal lexing of heredoc produced inconsistent results: {rest}")]
    Inconsistent { rest: String },
}

/// BuildKit's message for a JSON array holding a non-string.
pub const ERR_NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// State of the parser directives while reading the top of the file.
struct Directives {
    escape: char,
    done: bool,
    found: Vec<Directive>,
}

impl Directives {
    fn new() -> Self {
        Directives {
            escape: '\\',
            done: false,
            found: Vec::new(),
        }
    }

    /// Looks at one line while directives may still appear. Returns whether the line was one.
    fn consider(&mut self, line: &str, line_no: usize) -> Result<bool, ParseError> {
        if self.done {
            return Ok(false);
        }
        let Some((key, value)) = match_directive(line, "#") else {
            self.done = true;
            return Ok(false);
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "escape" | "syntax" | "check") {
            self.done = true;
            return Ok(false);
        }
        if self.found.iter().any(|d| d.name == key) {
            return Err(ParseError::at(
                ParseErrorKind::DuplicateDirective { key },
                line_no,
                line_no,
            ));
        }
        if key == "escape" {
            self.escape = match value {
                "\\" => '\\',
                "`" => '`',
                other => {
                    return Err(ParseError::at(
                        ParseErrorKind::InvalidEscape {
                            token: other.to_string(),
                        },
                        line_no,
                        line_no,
                    ));
                }
            };
        }
        self.found.push(Directive {
            name: key,
            value: value.to_string(),
            line: line_no,
        });
        Ok(true)
    }
}

/// Go's `\s` (no vertical tab), used by the directive regexp.
fn is_go_regex_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// Matches `^<prefix>\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$` and returns (key, value).
fn match_directive<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = line.strip_prefix(prefix)?;
    let rest = rest.trim_start_matches(is_go_regex_space);
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let rest = rest.trim_start_matches(is_go_regex_space);
    let rest = rest.strip_prefix('=')?;
    let value = rest
        .trim_start_matches(is_go_regex_space)
        .trim_end_matches(is_go_regex_space);
    // `.` does not match a newline, and `.+?` needs at least one character.
    if value.is_empty() || value.contains('\n') {
        return None;
    }
    Some((key, value))
}

/// A directive found by [`detect_syntax`] or [`find_directive`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectiveMatch {
    /// The value up to its first space (`docker/dockerfile:1` of `docker/dockerfile:1 // x`).
    pub reference: String,
    /// The whole value.
    pub cmdline: String,
    /// 1-based line.
    pub line: usize,
}

/// Finds the `syntax` directive as BuildKit's `DetectSyntax` does: after an optional shebang
/// line, in `# syntax=` form, else `// syntax=` form, else a JSON document `{"syntax": …}`.
pub fn detect_syntax(text: &str) -> Option<DirectiveMatch> {
    find_directive("syntax", text, true)
}

/// Finds directive `key` in the `#` form (and, with `any_format`, the `//` and JSON forms).
pub fn find_directive(key: &str, text: &str, any_format: bool) -> Option<DirectiveMatch> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let (text, first_line) = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => (rest, 1),
        None if text.starts_with("#!") => ("", 1),
        _ => (text, 0),
    };
    let scan = |prefix: &str| -> Option<DirectiveMatch> {
        let mut seen: Vec<String> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let (k, v) = match_directive(line, prefix)?;
            let k = k.to_ascii_lowercase();
            if !matches!(k.as_str(), "escape" | "syntax" | "check") || seen.contains(&k) {
                return None;
            }
            if k == key {
                return Some(DirectiveMatch {
                    reference: v.split(' ').next().unwrap_or_default().to_string(),
                    cmdline: v.to_string(),
                    line: first_line + i + 1,
                });
            }
            seen.push(k);
        }
        None
    };
    if let Some(m) = scan("#") {
        return Some(m);
    }
    if !any_format {
        return None;
    }
    if let Some(m) = scan("//") {
        return Some(m);
    }
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text).ok()?;
    let v = doc.get(key)?.as_str()?;
    Some(DirectiveMatch {
        reference: v.to_string(),
        cmdline: v.to_string(),
        line: first_line,
    })
}

/// Physical lines of the file, each with its line ending, as BuildKit's scanner yields them.
struct Lines<'a> {
    rest: &'a str,
    too_long: bool,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;
    fn next(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() || self.too_long {
            return None;
        }
        let end = self
            .rest
            .find('\n')
            .map(|i| i + 1)
            .unwrap_or(self.rest.len());
        let content_len = self.rest[..end].trim_end_matches('\n').len();
        if content_len >= MAX_LINE_LEN {
            self.too_long = true;
            return None;
        }
        let (line, rest) = self.rest.split_at(end);
        self.rest = rest;
        Some(line)
    }
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    trim_newline(line).trim_start().starts_with('#')
}

/// Strips a trailing line-continuation (the escape char followed only by spaces and tabs,
/// not itself escaped). Returns the line and whether the instruction ends here.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    if let Some(before) = trimmed.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before, false);
    }
    (line, true)
}

/// Parses a Dockerfile.
pub fn parse(text: &str) -> Result<ParsedDockerfile, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Lines {
        rest: text,
        too_long: false,
    };
    let mut d = Directives::new();
    let mut current_line = 0usize;
    let mut root = Node::default();
    let mut comments: Vec<String> = Vec::new();
    let mut warnings = Vec::new();

    while let Some(raw) = lines.next() {
        if is_comment(raw) {
            let comment = trim_newline(raw).trim_start()[1..].trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        let token = trim_newline(raw).trim_start();
        if d.consider(token, current_line + 1)? {
            comments.pop();
        }
        let token = if token.starts_with('#') { "" } else { token };
        current_line += 1;

        let start_line = current_line;
        let (first, mut end_of_line) = trim_continuation(token, d.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut line = first.to_string();
        let mut has_empty_continuation = false;
        while !end_of_line {
            let Some(raw) = lines.next() else { break };
            let token = trim_newline(raw);
            d.consider(token, current_line + 1)?;
            current_line += 1;
            if is_comment(raw) {
                continue;
            }
            let token = if token.starts_with('#') { "" } else { token };
            if token.trim_start().is_empty() {
                has_empty_continuation = true;
                continue;
            }
            let (part, eol) = trim_continuation(token, d.escape);
            end_of_line = eol;
            line.push_str(part);
        }
        if has_empty_continuation {
            warnings.push(Warning {
                short: format!("Empty continuation line found in: {line}"),
                detail: vec![
                    "Empty continuation lines will become errors in a future release".into(),
                ],
                line: start_line,
            });
        }

        let mut child = node_from_line(&line, d.escape)
            .map_err(|m| ParseError::at(m, start_line, current_line))?;
        child.prev_comment = std::mem::take(&mut comments);

        if child.can_contain_heredoc() && line.contains("<<") {
            let heredocs = heredocs_from_line(&line)
                .map_err(|m| ParseError::at(LineError::from(m), start_line, current_line))?;
            for mut heredoc in heredocs {
                let mut terminated = false;
                for raw in lines.by_ref() {
                    current_line += 1;
                    let mut candidate = trim_newline(raw);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(raw);
                }
                if !terminated {
                    return Err(ParseError::at(
                        ParseErrorKind::UnterminatedHeredoc,
                        start_line,
                        current_line,
                    ));
                }
                child.heredocs.push(heredoc);
            }
        }

        child.start_line = start_line;
        child.end_line = current_line;
        if root.children.is_empty() {
            root.start_line = start_line;
        }
        root.end_line = current_line;
        root.children.push(child);
    }

    if root.children.is_empty() {
        let line = current_line.max(1);
        return Err(ParseError::at(ParseErrorKind::NoInstructions, line, line));
    }
    if lines.too_long {
        return Err(ParseError::at(
            ParseErrorKind::LineTooLong {
                max: MAX_LINE_LEN - 1,
            },
            current_line + 1,
            current_line + 1,
        ));
    }
    Ok(ParsedDockerfile {
        ast: root,
        escape: d.escape,
        directives: d.found,
        warnings,
    })
}

impl Node {
    /// Whether heredocs on this instruction's line are read (ADD, COPY, RUN — also under
    /// ONBUILD — and not in JSON form).
    fn can_contain_heredoc(&self) -> bool {
        let mut node = self;
        if node.value.eq_ignore_ascii_case("onbuild")
            && let Some(child) = node.next.first().and_then(|n| n.children.first())
        {
            node = child;
        }
        let kw = node.value.to_ascii_lowercase();
        matches!(kw.as_str(), "add" | "copy" | "run") && !node.json
    }

    /// BuildKit's `Node.Dump()`: the S-expression text the parser corpus compares.
    pub fn dump(&self) -> String {
        let mut s = self.value.to_lowercase();
        if !self.flags.is_empty() {
            s.push_str(" [");
            for (i, f) in self.flags.iter().enumerate() {
                if i > 0 {
                    s.push(' ');
                }
                s.push_str(&go_quote(f));
            }
            s.push(']');
        }
        for c in &self.children {
            let _ = writeln!(s, "({})", c.dump());
        }
        for n in &self.next {
            s.push(' ');
            if n.children.is_empty() {
                s.push_str(&go_quote(&n.value));
            } else {
                s.push_str(&n.dump());
            }
        }
        s.trim().to_string()
    }

    /// The argument values in order (the `next` chain).
    pub fn args(&self) -> impl Iterator<Item = &str> {
        self.next.iter().map(|n| n.value.as_str())
    }
}

/// `regexp.Split("[\t\v\f\r ]+", s, n)`.
fn split_ws(s: &str, limit: Option<usize>) -> Vec<&str> {
    let is_ws = |c: char| matches!(c, '\t' | '\x0b' | '\x0c' | '\r' | ' ');
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        if limit.is_some_and(|n| out.len() + 1 == n) {
            out.push(rest);
            break;
        }
        match rest.find(is_ws) {
            Some(i) => {
                out.push(&rest[..i]);
                rest = rest[i..].trim_start_matches(is_ws);
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    out
}

fn value_node(value: impl Into<String>) -> Node {
    Node {
        value: value.into(),
        ..Node::default()
    }
}

/// Splits a logical line into keyword, flags and arguments and runs the keyword's line parser.
fn node_from_line(line: &str, escape: char) -> Result<Node, LineError> {
    let parts = split_ws(line.trim(), Some(2));
    let cmd = parts[0];
    let (args, flags) = match parts.get(1) {
        Some(rest) => extract_flags(rest),
        None => ("", Vec::new()),
    };
    let args = args.trim();
    let (next, json) = match cmd.to_lowercase().as_str() {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(args)?,
        "arg" => (
            parse_words(args, escape)
                .into_iter()
                .map(value_node)
                .collect(),
            false,
        ),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(args)?,
        "env" => (parse_name_val(args, "ENV", escape)?, false),
        "label" => (parse_name_val(args, "LABEL", escape)?, false),
        "expose" | "from" => (parse_whitespace_delimited(args), false),
        "healthcheck" => parse_health_config(args)?,
        "maintainer" | "stopsignal" | "user" | "workdir" => (parse_string(args), false),
        "onbuild" => {
            if args.is_empty() {
                (Vec::new(), false)
            } else {
                let child = node_from_line(args, escape)?;
                (
                    vec![Node {
                        children: vec![child],
                        ..Node::default()
                    }],
                    false,
                )
            }
        }
        // Unknown instructions are not parse errors: BuildKit keeps one empty argument node.
        _ => (vec![Node::default()], false),
    };
    Ok(Node {
        value: cmd.to_string(),
        original: line.to_string(),
        flags,
        next,
        json,
        ..Node::default()
    })
}

/// Leading `--flag` words: returns (rest of the line, flags). Quotes inside a flag are removed
/// and `\` escapes the next character; a bare `--` ends the flags and is dropped.
fn extract_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut chars = line.char_indices().peekable();
    while let Some((pos, ch)) = chars.next() {
        match phase {
            Phase::Spaces => {
                if ch.is_whitespace() {
                    continue;
                }
                if !line[pos..].starts_with("--") {
                    return (&line[pos..], words);
                }
                phase = Phase::Word;
                word.push(ch);
            }
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if word == "--" {
                        return (&line[pos..], words);
                    }
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    continue;
                }
                match ch {
                    '\'' | '"' => {
                        phase = Phase::Quote(ch);
                        blank_ok = true;
                    }
                    '\\' => {
                        if let Some((_, c)) = chars.next() {
                            word.push(c);
                        }
                    }
                    c => word.push(c),
                }
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                } else if ch == '\\' {
                    match chars.next() {
                        Some((_, c)) => word.push(c),
                        None => phase = Phase::Word,
                    }
                } else {
                    word.push(ch);
                }
            }
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    ("", words)
}

/// Words separated by whitespace; quotes and escapes are kept as written (they are removed
/// later by the shell lexer). The escape char at the very end is dropped.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut chars = rest.chars().peekable();
    while let Some(ch) = chars.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
        }
        match phase {
            Phase::Word => {
                if ch.is_whitespace() {
                    phase = Phase::Spaces;
                    if blank_ok || !word.is_empty() {
                        words.push(std::mem::take(&mut word));
                    }
                    blank_ok = false;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                }
                if ch == escape {
                    match chars.next() {
                        None => continue,
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                            continue;
                        }
                    }
                }
                word.push(ch);
            }
            Phase::Quote(q) => {
                if ch == q {
                    phase = Phase::Word;
                }
                if ch == escape && q != '\'' {
                    match chars.next() {
                        None => {
                            phase = Phase::Word;
                            continue;
                        }
                        Some(next) => {
                            word.push(ch);
                            word.push(next);
                            continue;
                        }
                    }
                }
                word.push(ch);
            }
            Phase::Spaces => unreachable!("handled above"),
        }
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// ENV and LABEL: `KEY name value` (old form) or `KEY n=v n2=v2` → (name, value, sep) triples.
fn parse_name_val(rest: &str, keyword: &'static str, escape: char) -> Result<Vec<Node>, LineError> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let parts = split_ws(rest, Some(2));
        if parts.len() < 2 {
            return Err(LineError::NameValueArguments { keyword });
        }
        return Ok(vec![
            value_node(parts[0]),
            value_node(parts[1]),
            value_node(""),
        ]);
    }
    let mut out = Vec::new();
    for word in &words {
        let Some((k, v)) = word.split_once('=') else {
            return Err(LineError::MissingEquals { word: word.clone() });
        };
        out.extend([value_node(k), value_node(v), value_node("=")]);
    }
    Ok(out)
}

fn parse_whitespace_delimited(rest: &str) -> Vec<Node> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_ws(rest, None).into_iter().map(value_node).collect()
}

fn parse_string(rest: &str) -> Vec<Node> {
    if rest.is_empty() {
        Vec::new()
    } else {
        vec![value_node(rest)]
    }
}

/// Outcome of reading arguments as a JSON array.
enum Json {
    Strings(Vec<String>),
    /// Valid JSON array holding something that is not a string: an error for the instruction.
    NotStrings,
    /// Not a JSON array: the caller falls back to the shell form.
    Invalid,
}

/// Reads `rest` as a JSON array of strings. Text after the array (other than white space)
/// makes it invalid, so the instruction is shell form: `RUN ["echo"]x` runs `/bin/sh -c
/// '["echo"]x'` (BuildKit's testInvalidJSONCommands).
fn parse_json(rest: &str) -> Json {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Json::Invalid;
    }
    let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<serde_json::Value>();
    let first = stream.next();
    if !rest[stream.byte_offset()..].trim().is_empty() {
        return Json::Invalid;
    }
    match first {
        Some(Ok(serde_json::Value::Array(items))) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    _ => return Json::NotStrings,
                }
            }
            Json::Strings(out)
        }
        _ => Json::Invalid,
    }
}

fn parse_maybe_json(rest: &str) -> Result<(Vec<Node>, bool), LineError> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json(rest) {
        Json::Strings(v) => Ok((v.into_iter().map(value_node).collect(), true)),
        Json::NotStrings => Err(LineError::NotStringArray),
        Json::Invalid => Ok((vec![value_node(rest)], false)),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<(Vec<Node>, bool), LineError> {
    match parse_json(rest) {
        Json::Strings(v) => Ok((v.into_iter().map(value_node).collect(), true)),
        Json::NotStrings => Err(LineError::NotStringArray),
        Json::Invalid => Ok((parse_whitespace_delimited(rest), false)),
    }
}

/// HEALTHCHECK: the type word (`CMD`, `NONE`, …) then a RUN-like parse of the rest.
fn parse_health_config(rest: &str) -> Result<(Vec<Node>, bool), LineError> {
    let sep = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if sep == 0 {
        return Ok((Vec::new(), false));
    }
    let typ = &rest[..sep];
    let cmd_text = rest[sep..].trim_start();
    let (cmd, json) = parse_maybe_json(cmd_text)?;
    let mut out = vec![value_node(typ)];
    out.extend(cmd);
    Ok((out, json))
}

/// Finds the heredocs named on an instruction line (`<<EOF`, `<<-EOF`, `3<<"EOF"`, …).
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, HeredocError> {
    let lexer = Lexer {
        raw_quotes: true,
        raw_escapes: true,
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let empty = BTreeMap::<String, String>::new();
    let words = lexer.process_words(line, &empty).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Parses one word as a heredoc marker: `^(\d*)<<(-?)\s*([^<]*)$`. `Ok(None)` when it is none.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, HeredocError> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let Some(after) = word[digits..].strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start_matches(is_go_regex_space);
    if rest.contains('<') || rest.is_empty() {
        return Ok(None);
    }
    // Go's ParseUint fails on overflow and yields 0.
    let fd = word[..digits].parse::<u32>().unwrap_or(0);

    let mut lexer = Lexer {
        skip_unset_env: true,
        ..Lexer::new('\\')
    };
    let empty = BTreeMap::<String, String>::new();
    let words = lexer.process_words(rest, &empty)?;
    if words.len() != 1 {
        return Ok(None);
    }
    lexer.raw_quotes = true;
    let raw_words = lexer.process_words(rest, &empty)?;
    if raw_words.len() != words.len() {
        return Err(HeredocError::Inconsistent {
            rest: rest.to_string(),
        });
    }
    let quotes = |s: &str| s.chars().filter(|&c| c == '\'' || c == '"').count();
    let name = words.into_iter().next().unwrap_or_default();
    let expand = quotes(&name) == quotes(&raw_words[0]);
    Ok(Some(Heredoc {
        name,
        file_descriptor: fd,
        expand,
        chomp,
        content: String::new(),
    }))
}

/// Removes leading tabs from every line (`<<-` heredocs).
pub fn chomp_heredoc_content(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x0b' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// Approximates Go's `strconv.IsPrint` without Unicode category tables: control, format,
/// separator (other than ASCII space), private-use and non-character code points are not
/// printable; everything else is.
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let format = matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E | 0x200B..=0x200F
        | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF | 0xFFF9..=0xFFFB
        | 0x110BD | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F);
    let private = matches!(u, 0xE000..=0xF8FF | 0xF0000..=0xFFFFD | 0x100000..=0x10FFFD);
    let nonchar = (0xFDD0..=0xFDEF).contains(&u) || (u & 0xFFFE) == 0xFFFE;
    !(format || private || nonchar)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump(src: &str) -> String {
        parse(src).unwrap().ast.dump()
    }

    #[test]
    fn flags_and_json() {
        assert_eq!(
            dump("COPY --chown=a:b --from=\"x y\" -- src dst\nCMD [\"a\", \"b\"]"),
            "(copy [\"--chown=a:b\" \"--from=x y\"] \"src\" \"dst\")\n(cmd \"a\" \"b\")"
        );
    }

    #[test]
    fn continuation_keeps_indent() {
        assert_eq!(dump("RUN a \\\n    b"), "(run \"a     b\")");
    }

    #[test]
    fn onbuild_nests() {
        assert_eq!(
            dump("ONBUILD RUN [\"echo\", \"x\"]"),
            "(onbuild (run \"echo\" \"x\"))"
        );
    }

    #[test]
    fn heredoc_body_is_consumed() {
        let p = parse("RUN <<EOF\necho hi\nEOF\nCMD x\n").unwrap();
        assert_eq!(p.ast.children.len(), 2);
        assert_eq!(p.ast.children[0].heredocs[0].content, "echo hi\n");
        assert_eq!(p.ast.children[0].end_line, 3);
    }

    #[test]
    fn unterminated_heredoc_names_lines() {
        let e = parse("FROM x\nRUN <<EOF\necho\n").unwrap_err();
        assert_eq!(e.to_string(), "unterminated heredoc");
        assert_eq!(e.start_line, Some(2));
    }

    #[test]
    fn escape_directive() {
        let p = parse("# escape=`\nFROM x\nRUN a `\n b").unwrap();
        assert_eq!(p.escape, '`');
        assert_eq!(p.ast.dump(), "(from \"x\")\n(run \"a  b\")");
    }

    #[test]
    fn go_quote_matches_strconv() {
        assert_eq!(
            go_quote("a\u{0}\"\\\u{7f}é\u{a0}"),
            "\"a\\x00\\\"\\\\\\x7fé\\u00a0\""
        );
    }
}
