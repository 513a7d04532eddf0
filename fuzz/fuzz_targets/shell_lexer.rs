//! Any word through BuildKit's shell-word lexer in every mode, with both escape chars.
#![no_main]

use std::collections::BTreeMap;

use kiln::dockerfile::shell::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(word) = std::str::from_utf8(data) else {
        return;
    };
    let mut env = BTreeMap::new();
    env.insert("A".to_string(), "a b  c".to_string());
    env.insert("EMPTY".to_string(), String::new());
    env.insert("PAT".to_string(), "*.[ch]".to_string());
    for escape in ['\\', '`'] {
        for mode in 0..16u8 {
            let lexer = Lexer {
                raw_quotes: mode & 1 != 0,
                raw_escapes: mode & 2 != 0,
                skip_unset_env: mode & 4 != 0,
                skip_process_quotes: mode & 8 != 0,
                ..Lexer::new(escape)
            };
            let _ = lexer.process_word(word, &env);
            let _ = lexer.process_words(word, &env);
            let _ = lexer.process_word_with_matches(word, &env);
        }
    }
});
