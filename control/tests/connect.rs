//! Connecting with the credentials a NATS server demands, and failing clearly without
//! them.

use cellbus_control::{connect_once, NatsArgs};
use cellbus_testkit::NatsServer;
use tracing_subscriber::util::SubscriberInitExt;

#[tokio::test]
async fn user_and_password_log_in_and_a_wrong_password_is_refused() {
    let nats = NatsServer::start_with_args(&["--user", "cell", "--pass", "s3cret"]);
    let mut args = NatsArgs::url(nats.url());
    args.credentials.user = Some("cell".into());
    args.credentials.password = Some("s3cret".into());
    let client = connect_once(&args, "test").await.unwrap();
    client.flush().await.unwrap();

    args.credentials.password = Some("wrong".into());
    let error = connect_once(&args, "test").await.unwrap_err();
    assert!(
        cellbus_contracts::error_chain(&error)
            .contains(&format!("connecting to NATS at {}", nats.url())),
        "{error}"
    );
}

#[tokio::test]
async fn a_token_logs_in() {
    let nats = NatsServer::start_with_args(&["--auth", "t0ken"]);
    let mut args = NatsArgs::url(nats.url());
    args.credentials.token = Some("t0ken".into());
    connect_once(&args, "test")
        .await
        .unwrap()
        .flush()
        .await
        .unwrap();
    args.credentials.token = None;
    assert!(connect_once(&args, "test").await.is_err());
}

#[tokio::test]
async fn a_missing_credentials_file_is_named() {
    let mut args = NatsArgs::url("nats://127.0.0.1:1");
    args.credentials.creds = Some("/nonexistent/user.creds".into());
    let error = connect_once(&args, "test").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "reading NATS credentials from /nonexistent/user.creds"
    );
}

#[tokio::test]
async fn a_credentials_directory_uses_the_files_it_holds_and_skips_the_rest() {
    let nats = NatsServer::start();
    let dir = tempfile::tempdir().unwrap();
    let mut args = NatsArgs::url(nats.url());
    args.credentials.dir = Some(dir.path().to_owned());

    // Nothing in it: nothing is required.
    connect_once(&args, "test").await.unwrap();

    // A creds file in it is used, and named when it cannot be read as one.
    let creds = dir.path().join(cellbus_control::CREDS_FILE);
    std::fs::write(&creds, "not a creds file").unwrap();
    let error = connect_once(&args, "test").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("reading NATS credentials from {}", creds.display())
    );

    // A file named by its flag wins over the directory's.
    args.credentials.creds = Some("/nonexistent/user.creds".into());
    let error = connect_once(&args, "test").await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "reading NATS credentials from /nonexistent/user.creds"
    );
}

/// A NATS URL of `nats` with `userinfo` in it.
fn url_with(nats: &NatsServer, userinfo: &str) -> String {
    nats.url()
        .replace("nats://", &format!("nats://{userinfo}@"))
}

#[tokio::test]
async fn credentials_in_the_url_log_in_and_no_error_or_log_line_shows_them() {
    let logs = cellbus_testkit::CapturedLogs::default();
    let _logging = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .set_default();
    let nats = NatsServer::start_with_args(&["--user", "cell", "--pass", "s3cret-pw"]);
    connect_once(&NatsArgs::url(url_with(&nats, "cell:s3cret-pw")), "test")
        .await
        .unwrap()
        .flush()
        .await
        .unwrap();

    let refused = connect_once(&NatsArgs::url(url_with(&nats, "cell:wr0ng-pw")), "test")
        .await
        .unwrap_err();
    let refused = cellbus_contracts::error_chain(&refused);
    let port = nats.url().rsplit(':').next().unwrap();
    assert!(
        refused.starts_with(&format!(
            "connecting to NATS at nats://cell:***@127.0.0.1:{port}: "
        )),
        "{refused}"
    );

    // Nothing listens on port 1.
    let unreachable = connect_once(&NatsArgs::url("nats://cell:s3cret-pw@127.0.0.1:1"), "test")
        .await
        .unwrap_err();
    let unreachable = cellbus_contracts::error_chain(&unreachable);
    assert!(
        unreachable.starts_with("connecting to NATS at nats://cell:***@127.0.0.1:1: "),
        "{unreachable}"
    );

    let logs = logs.text();
    assert!(
        logs.contains("connection attempt failed"),
        "the logs cover the attempts: {logs}"
    );
    for secret in ["s3cret-pw", "wr0ng-pw"] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(!refused.contains(secret) && !unreachable.contains(secret));
    }
}

#[tokio::test]
async fn a_token_in_the_url_logs_in() {
    let nats = NatsServer::start_with_args(&["--auth", "t0ken-in-url"]);
    connect_once(&NatsArgs::url(url_with(&nats, "t0ken-in-url")), "test")
        .await
        .unwrap()
        .flush()
        .await
        .unwrap();
}
