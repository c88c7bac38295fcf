//! The Matrix side when the homeserver is not there or the config is incomplete: typed errors
//! that say what to do, the session file never lost. No homeserver needed.

use std::path::Path;

use matrix_intercom::config::Config;
use matrix_intercom::matrix::{session, MatrixError, MatrixSide, StoredSession};
use matrix_intercom::secret::Secret;

fn config(homeserver: &str, state_dir: &Path, password: Option<&str>) -> Config {
    let mut text = format!(
        "[matrix]\nhomeserver = {homeserver:?}\nuser_id = \"@door:example.org\"\nroom = \"!room:example.org\"\nstate_dir = {:?}\n",
        state_dir.display().to_string()
    );
    if let Some(p) = password {
        text.push_str(&format!("password = {p:?}\n"));
    }
    toml::from_str(&text).unwrap()
}

/// A loopback port nobody listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test]
async fn no_session_and_no_password_says_to_log_in() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config("http://127.0.0.1:9", dir.path(), None);
    let err = match MatrixSide::start(&cfg).await {
        Err(e) => e,
        Ok(_) => panic!("must not start without credentials"),
    };
    assert!(matches!(err, MatrixError::NotLoggedIn), "{err:?}");
    assert!(err.to_string().contains("matrix-intercom login"), "{err}");
}

#[tokio::test]
async fn unreachable_homeserver_is_a_typed_error_and_the_session_survives() {
    let dir = tempfile::tempdir().unwrap();
    let hs = format!("http://127.0.0.1:{}", closed_port());
    let stored = StoredSession {
        homeserver: hs.clone(),
        user_id: "@door:example.org".into(),
        device_id: "DOORDEV".into(),
        access_token: Secret::new("syt_not_checked"),
        refresh_token: None,
    };
    session::save(dir.path(), &stored).unwrap();
    let err = match MatrixSide::start(&config(&hs, dir.path(), None)).await {
        Err(e) => e,
        Ok(_) => panic!("nothing listens there"),
    };
    assert!(matches!(err, MatrixError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains(&hs), "{err}");
    assert_eq!(
        session::load(dir.path()).unwrap(),
        Some(stored),
        "session kept as it was"
    );

    // First login against an unreachable server: typed error, no session file written.
    let dir = tempfile::tempdir().unwrap();
    let err = match matrix_intercom::matrix::login_interactive(&config(&hs, dir.path(), None), "pw")
        .await
    {
        Err(e) => e,
        Ok(_) => panic!("nothing listens there"),
    };
    assert!(matches!(err, MatrixError::Unreachable { .. }), "{err:?}");
    assert!(!session::session_exists(dir.path()));
}

#[tokio::test]
async fn session_of_another_user_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let stored = StoredSession {
        homeserver: "http://127.0.0.1:9".into(),
        user_id: "@someone-else:example.org".into(),
        device_id: "DEV".into(),
        access_token: Secret::new("syt_x"),
        refresh_token: None,
    };
    session::save(dir.path(), &stored).unwrap();
    let cfg = config("http://127.0.0.1:9", dir.path(), Some("pw"));
    let err = match MatrixSide::start(&cfg).await {
        Err(e) => e,
        Ok(_) => panic!("wrong user"),
    };
    assert!(
        err.to_string().contains("@someone-else:example.org"),
        "{err}"
    );
    assert_eq!(session::load(dir.path()).unwrap(), Some(stored));
}
