//! Dockerfile lexing and parsing (BuildKit-compatible) and shell-word expansion.
//!
//! - [`parser`]: text → [`Node`] AST with line numbers, directives, heredocs.
//! - [`shell`]: BuildKit's shell-word lexer (`$VAR`, `${VAR:-x}`, quotes) used to expand
//!   instruction arguments.
//! - [`instructions`]: AST nodes → typed instructions with BuildKit's validation.

pub mod instructions;
pub mod parser;
pub mod shell;

pub use parser::{Heredoc, Node, ParseError, ParsedDockerfile, parse};
