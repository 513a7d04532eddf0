//! Dockerfile lexing and parsing (BuildKit-compatible) and shell-word expansion.

pub mod shell;
