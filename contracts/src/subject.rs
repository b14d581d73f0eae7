//! NATS subjects and names derived from a service and its verbs. Every helper refuses a
//! token NATS would misroute (empty, whitespace, `.`, `*`, `>`) before it builds a subject,
//! so no caller can subscribe to or publish on more than the one subject it means.

use std::fmt;

/// First token of every Cellbus subject.
pub const PREFIX: &str = "cbs";
/// Verb the runtime answers for every loaded cell with its pod, digest and load time.
pub const PING_VERB: &str = "$ping";

/// A service name is a DNS label (RFC 1123): lowercase letters, digits and `-`.
pub const SERVICE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
pub const SERVICE_MAX_LEN: usize = 63;
/// A verb name is one subject token of letters, digits, `_` and `-`. `$` is reserved for
/// the runtime's own verbs such as `$ping`.
pub const VERB_PATTERN: &str = r"^[A-Za-z0-9][A-Za-z0-9_-]*$";
pub const VERB_MAX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("service name is empty")]
    EmptyService,
    #[error("service `{name}` is longer than {SERVICE_MAX_LEN} characters")]
    ServiceTooLong { name: String },
    #[error("service `{name}` is not a DNS label: {reason}")]
    BadService { name: String, reason: Misroute },
    #[error("verb name is empty")]
    EmptyVerb,
    #[error("verb `{name}` is longer than {VERB_MAX_LEN} characters")]
    VerbTooLong { name: String },
    #[error("verb `{name}` cannot be a NATS subject token: {reason}")]
    BadVerb { name: String, reason: Misroute },
    #[error("subject pattern `{pattern}` is not valid: {reason}")]
    BadPattern { pattern: String, reason: String },
}

/// Why a name cannot stand as a subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misroute {
    /// `.` splits the token into two.
    Dot,
    /// `*` and `>` are wildcards: the subscription would match other subjects.
    Wildcard(char),
    Whitespace,
    /// Any other character outside the allowed set.
    Character(char),
    /// Must start (and, for services, end) with a letter or digit.
    Edge(char),
}

impl fmt::Display for Misroute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Dot => f.write_str("`.` separates subject tokens"),
            Self::Wildcard(c) => write!(f, "`{c}` is a NATS wildcard"),
            Self::Whitespace => f.write_str("whitespace is not allowed in a subject"),
            Self::Character(c) => write!(f, "`{}` is not allowed", c.escape_debug()),
            Self::Edge(c) => write!(f, "cannot start or end with `{}`", c.escape_debug()),
        }
    }
}

fn misroute(c: char) -> Option<Misroute> {
    match c {
        '.' => Some(Misroute::Dot),
        '*' | '>' => Some(Misroute::Wildcard(c)),
        c if c.is_whitespace() => Some(Misroute::Whitespace),
        _ => None,
    }
}

/// Checks a service name against [`SERVICE_PATTERN`].
pub fn check_service(name: &str) -> Result<(), SubjectError> {
    if name.is_empty() {
        return Err(SubjectError::EmptyService);
    }
    if name.len() > SERVICE_MAX_LEN {
        return Err(SubjectError::ServiceTooLong { name: name.into() });
    }
    let bad = |reason| SubjectError::BadService {
        name: name.into(),
        reason,
    };
    for c in name.chars() {
        if let Some(reason) = misroute(c) {
            return Err(bad(reason));
        }
        if !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(bad(Misroute::Character(c)));
        }
    }
    for edge in [name.chars().next(), name.chars().last()]
        .into_iter()
        .flatten()
    {
        if edge == '-' {
            return Err(bad(Misroute::Edge(edge)));
        }
    }
    Ok(())
}

/// Checks a verb name against [`VERB_PATTERN`].
pub fn check_verb(name: &str) -> Result<(), SubjectError> {
    if name.is_empty() {
        return Err(SubjectError::EmptyVerb);
    }
    if name.len() > VERB_MAX_LEN {
        return Err(SubjectError::VerbTooLong { name: name.into() });
    }
    let bad = |reason| SubjectError::BadVerb {
        name: name.into(),
        reason,
    };
    for c in name.chars() {
        if let Some(reason) = misroute(c) {
            return Err(bad(reason));
        }
        if !(c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(bad(Misroute::Character(c)));
        }
    }
    match name.chars().next() {
        Some(first) if !first.is_ascii_alphanumeric() => Err(bad(Misroute::Edge(first))),
        _ => Ok(()),
    }
}

/// `cbs.{service}.{verb}`: where requests for a verb are published.
pub fn request_subject(service: &str, verb: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    check_verb(verb)?;
    Ok(format!("{PREFIX}.{service}.{verb}"))
}

/// `cbs.{service}.*`: every verb of a service, so a runtime can answer verbs it does not
/// know with `unknown_verb`.
pub fn service_wildcard(service: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    Ok(format!("{PREFIX}.{service}.*"))
}

/// `cbs.{service}.$ping`: the runtime's liveness check of a loaded cell.
pub fn ping_subject(service: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    Ok(format!("{PREFIX}.{service}.{PING_VERB}"))
}

/// `cbs.$dlq.{service}.{verb}`: where a durable request goes after its last delivery.
pub fn dead_letter_subject(service: &str, verb: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    check_verb(verb)?;
    Ok(format!("{PREFIX}.$dlq.{service}.{verb}"))
}

/// `cbs.{service}`: the queue group all pods serving a service share, so each request is
/// run once.
pub fn queue_group(service: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    Ok(format!("{PREFIX}.{service}"))
}

/// `CBS_{SERVICE}`: the JetStream stream holding a service's durable verbs.
pub fn stream_name(service: &str) -> Result<String, SubjectError> {
    check_service(service)?;
    Ok(format!(
        "CBS_{}",
        service.to_ascii_uppercase().replace('-', "_")
    ))
}

/// Splits `cbs.{service}.{verb}` into its service and verb; `None` for any other subject.
pub fn parse_request_subject(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (service, verb) = rest.split_once('.')?;
    (check_service(service).is_ok() && (verb == PING_VERB || check_verb(verb).is_ok()))
        .then_some((service, verb))
}

/// Checks a subject a cell may call: dot-separated tokens, each non-empty and free of
/// whitespace, where `*` may stand for a whole token and `>` for the whole tail.
pub fn check_subject_pattern(pattern: &str) -> Result<(), SubjectError> {
    let bad = |reason: &str| SubjectError::BadPattern {
        pattern: pattern.into(),
        reason: reason.into(),
    };
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(bad("empty token"));
        }
        if token.chars().any(char::is_whitespace) {
            return Err(bad("whitespace in a token"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(bad("`>` must be the last token"));
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(bad("a wildcard must be a whole token"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[test]
    fn subjects_follow_the_documented_forms() {
        assert_eq!(request_subject("echo", "say").unwrap(), "cbs.echo.say");
        assert_eq!(ping_subject("echo").unwrap(), "cbs.echo.$ping");
        assert_eq!(
            dead_letter_subject("ledger", "append").unwrap(),
            "cbs.$dlq.ledger.append"
        );
        assert_eq!(queue_group("echo").unwrap(), "cbs.echo");
        assert_eq!(service_wildcard("echo").unwrap(), "cbs.echo.*");
        assert_eq!(stream_name("order-book").unwrap(), "CBS_ORDER_BOOK");
    }

    #[rstest]
    #[case::empty("", SubjectError::EmptyVerb)]
    #[case::wildcard("*", SubjectError::BadVerb { name: "*".into(), reason: Misroute::Wildcard('*') })]
    #[case::tail_wildcard("a>", SubjectError::BadVerb { name: "a>".into(), reason: Misroute::Wildcard('>') })]
    #[case::dot("a.b", SubjectError::BadVerb { name: "a.b".into(), reason: Misroute::Dot })]
    #[case::space("say hi", SubjectError::BadVerb { name: "say hi".into(), reason: Misroute::Whitespace })]
    #[case::tab("say\t", SubjectError::BadVerb { name: "say\t".into(), reason: Misroute::Whitespace })]
    #[case::reserved("$ping", SubjectError::BadVerb { name: "$ping".into(), reason: Misroute::Character('$') })]
    #[case::leading_dash("-x", SubjectError::BadVerb { name: "-x".into(), reason: Misroute::Edge('-') })]
    fn verbs_nats_would_misroute_are_refused(#[case] verb: &str, #[case] error: SubjectError) {
        assert_eq!(request_subject("echo", verb), Err(error));
    }

    #[rstest]
    #[case::dot("a.b", Misroute::Dot)]
    #[case::uppercase("Echo", Misroute::Character('E'))]
    #[case::wildcard("echo*", Misroute::Wildcard('*'))]
    #[case::trailing_dash("echo-", Misroute::Edge('-'))]
    #[case::underscore("my_echo", Misroute::Character('_'))]
    fn services_outside_dns_labels_are_refused(#[case] service: &str, #[case] reason: Misroute) {
        let expected = SubjectError::BadService {
            name: service.into(),
            reason,
        };
        assert_eq!(queue_group(service), Err(expected.clone()));
        assert_eq!(request_subject(service, "say"), Err(expected));
    }

    #[test]
    fn overlong_names_are_refused() {
        let long = "a".repeat(64);
        assert!(matches!(
            check_service(&long),
            Err(SubjectError::ServiceTooLong { .. })
        ));
        assert!(check_verb(&long).is_ok());
        assert!(matches!(
            check_verb(&"a".repeat(65)),
            Err(SubjectError::VerbTooLong { .. })
        ));
    }

    #[test]
    fn request_subjects_parse_back_to_service_and_verb() {
        assert_eq!(parse_request_subject("cbs.echo.say"), Some(("echo", "say")));
        assert_eq!(
            parse_request_subject("cbs.echo.$ping"),
            Some(("echo", "$ping"))
        );
        assert_eq!(parse_request_subject("cbs.echo.a.b"), None);
        assert_eq!(parse_request_subject("cbs.$dlq.echo.say"), None);
        assert_eq!(parse_request_subject("other.echo.say"), None);
    }

    #[rstest]
    #[case("cbs.ledger.append", true)]
    #[case("cbs.ledger.*", true)]
    #[case("cbs.>", true)]
    #[case("cbs..x", false)]
    #[case("cbs.>.x", false)]
    #[case("cbs.led*", false)]
    #[case("cbs.a b", false)]
    fn call_patterns_are_checked(#[case] pattern: &str, #[case] ok: bool) {
        assert_eq!(check_subject_pattern(pattern).is_ok(), ok, "{pattern}");
    }

    /// The schema patterns and the hand-written checks must agree, since the CRD uses the
    /// former and every Rust caller the latter.
    #[rstest]
    #[case("echo")]
    #[case("e")]
    #[case("a-b-9")]
    #[case("Echo")]
    #[case("-a")]
    #[case("a-")]
    #[case("a.b")]
    #[case("a_b")]
    #[case("say_hi")]
    #[case("$ping")]
    #[case("*")]
    #[case("9lives")]
    fn schema_patterns_agree_with_the_checks(#[case] name: &str) {
        let service = jsonschema::validator_for(&serde_json::json!({"pattern": SERVICE_PATTERN}))
            .unwrap()
            .is_valid(&serde_json::json!(name));
        let verb = jsonschema::validator_for(&serde_json::json!({"pattern": VERB_PATTERN}))
            .unwrap()
            .is_valid(&serde_json::json!(name));
        assert_eq!(service, check_service(name).is_ok(), "service {name}");
        assert_eq!(verb, check_verb(name).is_ok(), "verb {name}");
    }
}
