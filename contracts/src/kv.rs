//! KV keys made of Kubernetes names (`cbs-assignments`' `{namespace}.{pool}`, `cbs-status`'
//! `{namespace}.{pool}.{pod}`), collision-free by construction. The operator, the runtime
//! and `cellbus up` all build keys here, so they always agree.
//!
//! A key joins one token per name with `.`. A name may hold `.` itself (a CellPool called
//! `b.c`), so written as it is, namespace `a` with pool `b.c` and namespace `a.b` with pool
//! `c` would share the key `a.b.c`. Each name is therefore written as a token without `.`:
//! `.` becomes `_`, which no Kubernetes name holds, so the keys of dot-free names are the
//! names themselves and an upgrade moves none of them. Any other character a key may not
//! hold (and `_` and `=` themselves, in names that are not Kubernetes names, such as a
//! hand-set `POD_NAME`) is written `=` and two hex digits per byte. No token holds `.`, and
//! `_`, `=XX` and the plain characters `[-A-Za-z0-9]` decode one way only, so different
//! names give different tokens and different tuples of names different keys.

/// One name as a key token: `[-A-Za-z0-9]` as it is, `.` as `_`, every other byte as `=XX`.
pub fn key_token(name: &str) -> String {
    let mut token = String::with_capacity(name.len());
    for byte in name.bytes() {
        match byte {
            b'.' => token.push('_'),
            b'-' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => token.push(char::from(byte)),
            other => token.push_str(&format!("={other:02X}")),
        }
    }
    token
}

/// A key of one token per name, joined with `.`.
pub fn key(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| key_token(name))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Reads a token back into its name; `None` for text [`key_token`] never writes.
    fn decode(token: &str) -> Option<String> {
        let mut bytes = Vec::new();
        let mut rest = token.as_bytes();
        while let Some((&first, tail)) = rest.split_first() {
            match first {
                b'_' => bytes.push(b'.'),
                b'=' => {
                    let hex = std::str::from_utf8(tail.get(..2)?).ok()?;
                    if hex != hex.to_uppercase() {
                        return None;
                    }
                    bytes.push(u8::from_str_radix(hex, 16).ok()?);
                    rest = &tail[2..];
                    continue;
                }
                b'-' | b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => bytes.push(first),
                _ => return None,
            }
            rest = tail;
        }
        String::from_utf8(bytes).ok()
    }

    /// Every string of up to `length` characters of `alphabet`.
    fn strings(alphabet: &[char], length: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..length {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn names_without_dots_are_their_own_keys_so_an_upgrade_moves_nothing() {
        assert_eq!(key(&["default", "wasm"]), "default.wasm");
        assert_eq!(
            key(&["shop", "native-2", "native-2-7d9f-x4k"]),
            "shop.native-2.native-2-7d9f-x4k"
        );
    }

    #[test]
    fn a_dot_in_a_name_cannot_move_a_key_onto_another_pools() {
        assert_ne!(key(&["a", "b.c"]), key(&["a.b", "c"]));
        assert_eq!(key(&["a", "b.c"]), "a.b_c");
        // A pod's report is found by its pool's prefix; another pool's never starts with it.
        assert!(!key(&["a", "b.c", "pod"]).starts_with(&format!("{}.", key(&["a", "b"]))));
        assert_ne!(key(&["a", "b", "c.pod"]), key(&["a", "b.c", "pod"]));
    }

    #[test]
    fn characters_a_key_may_not_hold_are_escaped_one_way() {
        assert_eq!(key_token("a_b"), "a=5Fb");
        assert_eq!(key_token("a=b"), "a=3Db");
        assert_eq!(key_token("a b/é"), "a=20b=2F=C3=A9");
        for name in ["a_b", "a=5Fb", "a.b", "é", "=", "_", "", "x=2E"] {
            let token = key_token(name);
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=')),
                "{token}"
            );
            assert_eq!(decode(&token).as_deref(), Some(name), "{token}");
        }
    }

    /// Injectivity, checked exhaustively on every name of up to four characters drawn from
    /// the characters that matter (the separator, both escapes, hex digits, a letter), and
    /// on every pair of them as a two-token key.
    #[test]
    fn different_names_never_share_a_key() {
        let names = strings(&['a', '.', '_', '=', '2', 'E', '-'], 4);
        let mut tokens: HashMap<String, &str> = HashMap::new();
        for name in &names {
            let token = key_token(name);
            assert!(!token.contains('.'), "{name:?} -> {token}");
            assert_eq!(decode(&token).as_deref(), Some(name.as_str()));
            if let Some(other) = tokens.insert(token.clone(), name) {
                panic!("{other:?} and {name:?} share the token {token}");
            }
        }
        let short = strings(&['a', '.', '_', '='], 3);
        let mut keys: HashMap<String, (&str, &str)> = HashMap::new();
        for first in &short {
            for second in &short {
                let joined = key(&[first, second]);
                if let Some(other) = keys.insert(joined.clone(), (first, second)) {
                    panic!("{other:?} and {:?} share the key {joined}", (first, second));
                }
            }
        }
    }
}
