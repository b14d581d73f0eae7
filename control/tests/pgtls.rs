//! libpq's sslmodes against real PostgreSQL servers started by the harness, one with TLS
//! (a certificate for `localhost` and 127.0.0.1 from a CA made for the test) and one
//! without; and connection strings read with their TLS parameters taken out.

use std::path::{Path, PathBuf};

use cellbus_contracts::error_chain;
use cellbus_control::postgres::tls::{connect, parse_url, ConnectError, SslMode};
use cellbus_control::postgres::{Admin, DatabaseError};
use cellbus_testkit::Postgres;
use rstest::rstest;
use tokio_postgres::config::Host;

/// The test server's URL with another host name (connecting still to 127.0.0.1 through
/// `hostaddr` when the name is not one that resolves) and `query` added.
fn url_for(postgres: &Postgres, host: &str, query: &str) -> String {
    let url = postgres
        .url()
        .replacen("@127.0.0.1:", &format!("@{host}:"), 1);
    let hostaddr = if host == "127.0.0.1" || host == "localhost" {
        ""
    } else {
        "hostaddr=127.0.0.1&"
    };
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{hostaddr}{query}")
}

/// Whether a connection made with `url` is encrypted, as the server sees it.
async fn encrypted(url: &str) -> Result<bool, ConnectError> {
    let (config, mode, root_cert) = parse_url(url).unwrap();
    let client = connect(&config, mode, root_cert.as_deref()).await?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    Ok(row.get(0))
}

/// The full text of the error a connection with `url` fails with.
async fn refusal(url: &str) -> String {
    match encrypted(url).await {
        Ok(tls) => panic!("{url} connected (TLS: {tls})"),
        Err(error) => error_chain(&error),
    }
}

/// A CA that signed nothing the servers have.
fn unrelated_ca(dir: &Path) -> PathBuf {
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Someone else's CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let path = dir.join("other-ca.crt");
    std::fs::write(&path, params.self_signed(&key).unwrap().pem()).unwrap();
    path
}

fn ca(postgres: &Postgres) -> String {
    postgres
        .ca_cert()
        .expect("the server has TLS")
        .display()
        .to_string()
}

#[tokio::test]
async fn require_encrypts_without_checking_who_the_server_is() {
    let postgres = Postgres::start_with_tls();
    for host in ["127.0.0.1", "localhost", "db.example.invalid"] {
        let url = url_for(&postgres, host, "sslmode=require");
        assert!(encrypted(&url).await.unwrap(), "{host}");
    }
    // The password exchange is bound to the certificate the client saw, which is what
    // guards an unchecked certificate against a man in the middle.
    let url = url_for(
        &postgres,
        "127.0.0.1",
        "sslmode=require&channel_binding=require",
    );
    assert!(encrypted(&url).await.unwrap());
}

#[tokio::test]
async fn verify_full_checks_the_chain_and_the_host_name_and_verify_ca_only_the_chain() {
    let postgres = Postgres::start_with_tls();
    let ca = ca(&postgres);
    for host in ["localhost", "127.0.0.1"] {
        let url = url_for(
            &postgres,
            host,
            &format!("sslmode=verify-full&sslrootcert={ca}"),
        );
        assert!(encrypted(&url).await.unwrap(), "{host}");
    }

    // The certificate names localhost and 127.0.0.1 only.
    let elsewhere = |mode: &str| {
        url_for(
            &postgres,
            "db.example.invalid",
            &format!("sslmode={mode}&sslrootcert={ca}"),
        )
    };
    let text = refusal(&elsewhere("verify-full")).await;
    assert!(
        text.contains("certificate not valid for name \"db.example.invalid\""),
        "{text}"
    );
    assert!(encrypted(&elsewhere("verify-ca")).await.unwrap());
    // With a root certificate, require checks as verify-ca does.
    assert!(encrypted(&elsewhere("require")).await.unwrap());
}

#[tokio::test]
async fn a_server_signed_by_a_ca_not_trusted_is_refused_whatever_its_name() {
    let postgres = Postgres::start_with_tls();
    // Without a root file the well-known roots are trusted, and they never signed the
    // test's CA.
    for mode in ["verify-ca", "verify-full"] {
        let text = refusal(&url_for(&postgres, "127.0.0.1", &format!("sslmode={mode}"))).await;
        assert!(
            text.contains("invalid peer certificate: UnknownIssuer"),
            "{mode}: {text}"
        );
    }
    // Nor with someone else's CA, also in require (which then checks as verify-ca) and
    // for a name the certificate lacks: the chain is checked before the name is let go.
    let dir = tempfile::tempdir().unwrap();
    let other = unrelated_ca(dir.path()).display().to_string();
    for host in ["127.0.0.1", "db.example.invalid"] {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = url_for(
                &postgres,
                host,
                &format!("sslmode={mode}&sslrootcert={other}"),
            );
            let text = refusal(&url).await;
            assert!(
                text.contains("invalid peer certificate"),
                "{host} {mode}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn prefer_and_allow_use_tls_when_the_server_offers_it_and_disable_never_does() {
    let postgres = Postgres::start_with_tls();
    for (query, tls) in [
        ("sslmode=prefer", true),
        ("sslmode=allow", true),
        // libpq's default is prefer.
        ("application_name=default", true),
        ("sslmode=disable", false),
    ] {
        let url = url_for(&postgres, "127.0.0.1", query);
        assert_eq!(encrypted(&url).await.unwrap(), tls, "{query}");
    }
}

#[tokio::test]
async fn without_tls_on_the_server_prefer_connects_in_plain_text_and_require_refuses() {
    let postgres = Postgres::start();
    let with = |query: &str| {
        let separator = if postgres.url().contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{separator}{query}", postgres.url())
    };
    for mode in ["prefer", "allow", "disable"] {
        let url = with(&format!("sslmode={mode}"));
        assert!(!encrypted(&url).await.unwrap(), "{mode}");
    }
    for mode in ["require", "verify-ca", "verify-full"] {
        let text = refusal(&with(&format!("sslmode={mode}"))).await;
        assert!(
            text.contains("server does not support TLS"),
            "{mode}: {text}"
        );
    }
}

#[tokio::test]
async fn the_admin_connection_follows_the_urls_sslmode_and_never_shows_the_password() {
    let postgres = Postgres::start_with_tls();
    let ca = ca(&postgres);
    let admin = Admin::connect(&url_for(
        &postgres,
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await
    .unwrap();
    assert_eq!(admin.role, "postgres");

    let password = postgres.url().split(['@', ':']).nth(2).unwrap().to_owned();
    let refused = |url: String| async move {
        match Admin::connect(&url).await {
            Ok(_) => panic!("{url} connected"),
            Err(error) => error,
        }
    };
    let error = refused(url_for(
        &postgres,
        "db.example.invalid",
        &format!("sslmode=verify-full&sslrootcert={ca}"),
    ))
    .await;
    assert!(matches!(error, DatabaseError::Connect { .. }), "{error:?}");
    let mismatch = error_chain(&error);

    let error = refused(url_for(
        &postgres,
        "localhost",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    ))
    .await;
    assert!(matches!(error, DatabaseError::Tls { .. }), "{error:?}");
    let missing = error_chain(&error);
    assert!(
        missing.starts_with("setting up TLS to the admin database at localhost:"),
        "{missing}"
    );
    assert!(
        missing.contains("reading the root certificate file /nonexistent/ca.pem"),
        "{missing}"
    );

    let error = refused(url_for(&postgres, "localhost", "sslmode=strict")).await;
    assert!(matches!(error, DatabaseError::AdminUrl { .. }), "{error:?}");
    let bad_mode = error_chain(&error);
    assert!(
        bad_mode.starts_with("reading the admin URL: sslmode \"strict\""),
        "{bad_mode}"
    );

    for text in [mismatch, missing, bad_mode] {
        assert!(!text.contains(&password), "{text}");
    }
}

#[rstest]
#[case::verify_full(
    "postgres://u:pw@db:6543/app?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
    SslMode::VerifyFull,
    Some("/etc/ca.pem")
)]
#[case::verify_ca(
    "postgresql://u:pw@db:6543/app?sslrootcert=/ca.pem&sslmode=verify-ca&application_name=x",
    SslMode::VerifyCa,
    Some("/ca.pem")
)]
#[case::default_is_prefer(
    "postgres://u:pw@db:6543/app?application_name=x",
    SslMode::Prefer,
    None
)]
#[case::last_sslmode_counts(
    "postgres://u:pw@db:6543/app?sslmode=disable&application_name=x&sslmode=require",
    SslMode::Require,
    None
)]
#[case::system_roots_default_to_verify_full(
    "postgres://u:pw@db:6543/app?sslrootcert=system&application_name=x",
    SslMode::VerifyFull,
    None
)]
#[case::question_mark_in_the_password(
    "postgres://u:p?w@db:6543/app?sslmode=verify-full&application_name=x",
    SslMode::VerifyFull,
    None
)]
#[case::key_value(
    "host=db port=6543 user=u password='pw' dbname=app sslmode=verify-ca sslrootcert='/ca.pem' application_name=x",
    SslMode::VerifyCa,
    Some("/ca.pem")
)]
fn tls_parameters_are_taken_out_and_the_rest_left_to_tokio_postgres(
    #[case] url: &str,
    #[case] mode: SslMode,
    #[case] root_cert: Option<&str>,
) {
    let (config, parsed_mode, parsed_root_cert) = parse_url(url).unwrap();
    assert_eq!(parsed_mode, mode);
    assert_eq!(parsed_root_cert.as_deref(), root_cert.map(Path::new));
    assert_eq!(config.get_hosts(), [Host::Tcp("db".into())]);
    assert_eq!(config.get_ports(), [6543]);
    assert_eq!(config.get_user(), Some("u"));
    let password = if url.contains("p?w") { "p?w" } else { "pw" };
    assert_eq!(config.get_password(), Some(password.as_bytes()));
    assert_eq!(config.get_dbname(), Some("app"));
    assert_eq!(config.get_application_name(), Some("x"));
}

#[rstest]
#[case::unknown_mode(
    "postgres://admin:s3cret-pw@db/app?sslmode=verify_full",
    "sslmode \"verify_full\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
)]
#[case::unknown_mode_in_key_value(
    "host=db password=s3cret-pw sslmode=strict",
    "sslmode \"strict\" is not one of disable, allow, prefer, require, verify-ca, verify-full"
)]
#[case::system_roots_with_a_weaker_mode(
    "postgres://admin:s3cret-pw@db/app?sslmode=require&sslrootcert=system",
    "sslrootcert=system needs sslmode verify-full, not require"
)]
#[case::root_cert_not_utf8(
    "postgres://admin:s3cret-pw@db/app?sslrootcert=%FF",
    "the value of sslrootcert is not UTF-8 once percent-decoded"
)]
#[case::bad_port(
    "postgres://admin:s3cret-pw@db:port/app?sslmode=require",
    "the connection string does not parse: invalid value for option `port`"
)]
#[case::unknown_parameter(
    "postgres://admin:s3cret-pw@db/app?sslmode=require&colour=blue",
    "the connection string does not parse: unknown option `colour`"
)]
#[case::unterminated_quote(
    "host=db sslmode=require password='s3cret-pw",
    "the connection string does not parse: unterminated quoted connection parameter value"
)]
fn bad_connection_strings_are_refused_by_name_without_the_password(
    #[case] url: &str,
    #[case] message: &str,
) {
    let error = parse_url(url).unwrap_err();
    let text = error_chain(&error);
    assert_eq!(text, message);
    assert!(!text.contains("s3cret-pw"), "{text}");
}
