//! Connecting with the credentials a NATS server demands, and failing clearly without
//! them.

use cellbus_control::{connect_once, NatsArgs};
use cellbus_testkit::NatsServer;

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
