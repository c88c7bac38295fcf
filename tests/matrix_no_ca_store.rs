//! A system without CA certificates (a bare image, an initramfs): matrix-sdk's HTTP client
//! refuses to start even for an `http://` homeserver. The error must say why and what to do,
//! not just "builder error". Its own test binary: it changes the process environment.

use matrix_intercom::config::Config;
use matrix_intercom::matrix::{MatrixError, MatrixSide};

#[tokio::test]
async fn missing_system_ca_store_is_named_with_the_fix() {
    // rustls-native-certs reads only these locations when either variable is set.
    std::env::set_var("SSL_CERT_FILE", "/nonexistent/ca.pem");
    std::env::set_var("SSL_CERT_DIR", "/nonexistent/certs");
    let dir = tempfile::tempdir().unwrap();
    let cfg: Config = toml::from_str(&format!(
        "[matrix]\nhomeserver = \"http://127.0.0.1:9\"\nuser_id = \"@door:example.org\"\npassword = \"pw\"\nroom = \"!room:example.org\"\nstate_dir = {:?}\n",
        dir.path().display().to_string()
    ))
    .unwrap();
    let err = match MatrixSide::start(&cfg).await {
        Err(e) => e,
        Ok(_) => panic!("no client can be built without a CA store"),
    };
    assert!(matches!(err, MatrixError::InvalidConfig { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("No CA certificates"), "{msg}");
    assert!(
        msg.contains("ca-certificates") && msg.contains("tls.ca_file"),
        "{msg}"
    );
}
