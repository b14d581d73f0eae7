//! Secrets kept out of what people and logs see: every URL the CLI, the runtime and the
//! operator print, log or put into an error goes through [`redact_url`] first.

use std::borrow::Cow;

use url::Url;

/// What a secret is shown as.
pub const REDACTED: &str = "***";

/// `text` with its secrets shown as `***`: the password of a URL's userinfo, a user name
/// standing alone (how NATS and git hosts take a token: `nats://TOKEN@host`; PostgreSQL
/// user names are roles and kept), and the values of query parameters named like secrets
/// (`password=`, `sslpassword=`, `token=`, signatures and keys of presigned URLs). It takes
/// a URL, a comma-separated list of them (NATS) or a libpq `key=value` string. Text with
/// nothing to hide comes back as it was, byte for byte, so scripts can still read it.
pub fn redact_url(text: &str) -> Cow<'_, str> {
    let pieces: Vec<&str> = text.split(',').collect();
    if pieces.len() > 1 && pieces.iter().all(|piece| piece.contains("://")) {
        let redacted: Vec<Cow<'_, str>> = pieces.iter().map(|piece| redact_one(piece)).collect();
        if redacted
            .iter()
            .all(|piece| matches!(piece, Cow::Borrowed(_)))
        {
            return Cow::Borrowed(text);
        }
        return Cow::Owned(redacted.join(","));
    }
    redact_one(text)
}

fn redact_one(text: &str) -> Cow<'_, str> {
    if !text.contains("://") {
        return redact_key_values(text);
    }
    let Ok(mut url) = Url::parse(text.trim()) else {
        return redact_unparsed(text);
    };
    let mut changed = false;
    if url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which this one has.
        let _ = url.set_password(Some(REDACTED));
        changed = true;
    } else if !url.username().is_empty() && !matches!(url.scheme(), "postgres" | "postgresql") {
        let _ = url.set_username(REDACTED);
        changed = true;
    }
    if let Some(query) = url.query() {
        if let Cow::Owned(query) = redact_query(query) {
            url.set_query(Some(&query));
            changed = true;
        }
    }
    if changed {
        Cow::Owned(url.into())
    } else {
        Cow::Borrowed(text)
    }
}

/// A URL the parser refuses (a password with a bare `/`, say) keeps its scheme and what
/// follows the last `@`; its query is treated as a parsed one's.
fn redact_unparsed(text: &str) -> Cow<'_, str> {
    let Some(scheme_end) = text.find("://").map(|at| at + 3) else {
        return Cow::Borrowed(text);
    };
    // A password may hold `/`, `?` or `#`, so the last `@` anywhere ends the userinfo:
    // that may hide part of a host too, never show a secret.
    let mut shown = match text[scheme_end..].rfind('@') {
        Some(at) => format!(
            "{}{REDACTED}{}",
            &text[..scheme_end],
            &text[scheme_end + at..]
        ),
        None => text.to_owned(),
    };
    if let Some(question) = shown.find('?') {
        if let Cow::Owned(query) = redact_query(&shown[question + 1..]) {
            shown = format!("{}?{query}", &shown[..question]);
        }
    }
    if shown == text {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(shown)
    }
}

/// The query with the values of secret-named parameters replaced, the rest as written.
fn redact_query(query: &str) -> Cow<'_, str> {
    let mut changed = false;
    let pairs: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_key(key) => {
                changed = true;
                Cow::Owned(format!("{key}={REDACTED}"))
            }
            _ => Cow::Borrowed(pair),
        })
        .collect();
    if changed {
        Cow::Owned(pairs.join("&"))
    } else {
        Cow::Borrowed(query)
    }
}

/// A libpq connection string (`host=db password=secret`) with secret values replaced;
/// a quoted value (`password='a b'`) is replaced whole.
fn redact_key_values(text: &str) -> Cow<'_, str> {
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    let mut rest = text;
    while let Some(equals) = rest.find('=') {
        let key_start = rest[..equals]
            .rfind(char::is_whitespace)
            .map_or(0, |at| at + 1);
        let key = rest[key_start..equals].trim();
        let value = &rest[equals + 1..];
        let value_len = value_length(value);
        out.push_str(&rest[..equals + 1]);
        if is_secret_key(key) && value_len > 0 {
            out.push_str(REDACTED);
            changed = true;
        } else {
            out.push_str(&value[..value_len]);
        }
        rest = &value[value_len..];
    }
    if !changed {
        return Cow::Borrowed(text);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Length of a key-value string's value at the start of `text`: up to the closing quote
/// of a quoted one (backslash escapes skipped), else up to whitespace.
fn value_length(text: &str) -> usize {
    let leading = text.len() - text.trim_start().len();
    let value = &text[leading..];
    if let Some(quoted) = value.strip_prefix('\'') {
        let mut escaped = false;
        for (at, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '\'' => return leading + 1 + at + 1,
                _ => {}
            }
        }
        return text.len();
    }
    leading + value.find(char::is_whitespace).unwrap_or(value.len())
}

/// Whether a parameter named `key` holds a secret: passwords, tokens, secrets, keys,
/// signatures and credentials of presigned URLs (`X-Amz-Signature`, `sig`, …).
fn is_secret_key(key: &str) -> bool {
    let key = percent_encoding::percent_decode_str(key)
        .decode_utf8_lossy()
        .to_ascii_lowercase();
    [
        "pass",
        "token",
        "secret",
        "key",
        "sig",
        "credential",
        "auth",
    ]
    .iter()
    .any(|word| key.contains(word))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::nats_user_and_password(
        "nats://cellbus:s3cret@nats:4222",
        "nats://cellbus:***@nats:4222"
    )]
    #[case::nats_bare_token("nats://s3cret@nats:4222", "nats://***@nats:4222")]
    #[case::nats_list(
        "nats://u:s3cret@a:4222,nats://u:s3cret@b:4222",
        "nats://u:***@a:4222,nats://u:***@b:4222"
    )]
    #[case::postgres_password(
        "postgres://admin:s3cret@db:5432/postgres?sslmode=require",
        "postgres://admin:***@db:5432/postgres?sslmode=require"
    )]
    #[case::postgres_password_with_at_sign(
        "postgres://admin:s3@cret@db/postgres",
        "postgres://admin:***@db/postgres"
    )]
    #[case::postgres_password_in_the_query(
        "postgresql://db/postgres?user=admin&password=s3cret&sslpassword=s3cret",
        "postgresql://db/postgres?user=admin&password=***&sslpassword=***"
    )]
    #[case::https_token_parameter(
        "https://example.com/m.wasm?token=s3cret&v=2",
        "https://example.com/m.wasm?token=***&v=2"
    )]
    #[case::https_presigned(
        "https://b.s3.amazonaws.com/m.wasm?X-Amz-Credential=AKIA&X-Amz-Signature=s3cret",
        "https://b.s3.amazonaws.com/m.wasm?X-Amz-Credential=***&X-Amz-Signature=***"
    )]
    #[case::https_user_token("https://s3cret@example.com/m.wasm", "https://***@example.com/m.wasm")]
    #[case::unparsable_password_with_slash("nats://u:s3/cret@nats:4222", "nats://***@nats:4222")]
    #[case::key_value(
        "host=db user=admin password=s3cret dbname=postgres",
        "host=db user=admin password=*** dbname=postgres"
    )]
    #[case::key_value_quoted(
        "host=db password='s3 cret' dbname=postgres",
        "host=db password=*** dbname=postgres"
    )]
    fn secrets_are_hidden_and_the_rest_kept(#[case] text: &str, #[case] shown: &str) {
        assert_eq!(redact_url(text), shown);
        assert!(!redact_url(text).contains("s3cret"));
    }

    #[rstest]
    #[case::plain_nats("nats://127.0.0.1:4222")]
    #[case::nats_list("nats://a:4222,nats://b:4222")]
    #[case::postgres_user_only("postgres://admin@db:5432/postgres?sslmode=require")]
    #[case::https("https://example.com/m.wasm?v=2")]
    #[case::not_a_url("127.0.0.1:4222")]
    fn text_without_secrets_comes_back_unchanged(#[case] text: &str) {
        assert!(matches!(redact_url(text), Cow::Borrowed(t) if t == text));
    }
}
