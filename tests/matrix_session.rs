//! The device's Matrix session against a real Synapse (the dev stack): restart reuses the
//! device, a corrupted session file is kept aside, login/logout revoke, losing the homeserver
//! is reported, and no token, JWT or delay id reaches a TRACE log (the grant is exercised when
//! the dev stack runs the token service and the SFU: build them with
//! `cargo build -p mi-devstack -p mi-token-service -p mi-test-sfu`).
//!
//! Needs a Python with matrix-synapse (`MI_PYTHON`); without it the tests print SKIPPED unless
//! `CI=true`.

mod matrix_support;

use std::time::Duration;

use matrix_intercom::matrix::{session, MatrixError, MatrixEvent, MatrixSide, SessionError};
use matrix_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_reuses_the_device_and_a_corrupted_session_is_kept_aside() {
    let Some(stack) = stack("restart_reuses_the_device_and_a_corrupted_session_is_kept_aside")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), true))
        .await
        .expect("first start logs in");
    let device = side.device_id().to_owned();
    drop(side);
    assert!(session::session_exists(dir.path()));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(session::session_path(dir.path()))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Second start without a password: the stored session, same device.
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), false))
        .await
        .expect("restart from the stored session");
    assert_eq!(side.device_id(), device);
    drop(side);

    // Corrupt the file: a clear error, the bytes kept aside, nothing overwritten.
    let path = session::session_path(dir.path());
    std::fs::write(&path, b"{\"homeserver\": oops").unwrap();
    let err = match MatrixSide::start(&device_config(&stack, dir.path(), true)).await {
        Err(e) => e,
        Ok(_) => panic!("a corrupted session must not start"),
    };
    let MatrixError::Session(SessionError::Corrupt { moved_to, .. }) = &err else {
        panic!("expected a corrupt-session error, got {err}");
    };
    assert_eq!(std::fs::read(moved_to).unwrap(), b"{\"homeserver\": oops");
    assert!(!path.exists());

    // A fresh login, then logout revokes it: the old token no longer works.
    let (side, _rx) = MatrixSide::start(&device_config(&stack, dir.path(), true))
        .await
        .expect("fresh login after the corrupt file");
    drop(side);
    let stored = session::load(dir.path()).unwrap().unwrap();
    matrix_intercom::matrix::logout(&device_config(&stack, dir.path(), false))
        .await
        .expect("logout");
    assert!(!session::session_exists(dir.path()));
    let whoami = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v3/account/whoami",
            stack.info.homeserver_url
        ))
        .bearer_auth(stored.access_token.expose())
        .send()
        .await
        .unwrap();
    assert_eq!(whoami.status().as_u16(), 401);

    // `login` twice: the second login logs the first device out, the new one works.
    let cfg = device_config(&stack, dir.path(), false);
    let password = stack.info.users.intercom.password.expose();
    let first = matrix_intercom::matrix::login_interactive(&cfg, password)
        .await
        .expect("login");
    let second = matrix_intercom::matrix::login_interactive(&cfg, password)
        .await
        .expect("login again");
    assert_ne!(first.device_id, second.device_id);
    assert_eq!(session::load(dir.path()).unwrap(), Some(second.clone()));
    let status_of = |token: String| {
        let url = format!(
            "{}/_matrix/client/v3/account/whoami",
            stack.info.homeserver_url
        );
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status_of(first.access_token.expose().to_owned()).await, 401);
    assert_eq!(
        status_of(second.access_token.expose().to_owned()).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_homeserver_is_reported_and_so_is_its_return() {
    let Some(stack) = stack("losing_the_homeserver_is_reported_and_so_is_its_return") else {
        return;
    };
    let proxy = Proxy::start(&stack.info.homeserver_url).await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = device_config(&stack, dir.path(), true);
    cfg.matrix.homeserver = proxy.url.clone();
    let (side, mut rx) = MatrixSide::start(&cfg).await.expect("device starts");
    proxy.set_up(false);
    expect_event(&mut rx, Duration::from_secs(60), |e| {
        *e == MatrixEvent::ConnectionLost
    })
    .await;
    assert!(
        session::session_exists(dir.path()),
        "session kept while offline"
    );
    proxy.set_up(true);
    expect_event(&mut rx, Duration::from_secs(60), |e| {
        *e == MatrixEvent::ConnectionBack
    })
    .await;
    drop(side);
}

#[tokio::test(flavor = "current_thread")]
async fn no_token_jwt_or_delay_id_in_a_trace_log() {
    let Some(stack) = stack("no_token_jwt_or_delay_id_in_a_trace_log") else {
        return;
    };
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // Global (all threads, including the store's blocking pool) and bridging the `log` crate
    // (reqwest, hyper), as the daemon's logger does.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .try_init()
        .expect("only this test installs a global logger");

    let dir = tempfile::tempdir().unwrap();
    let cfg = device_config(&stack, dir.path(), true);
    let (side, _rx) = MatrixSide::start(&cfg).await.expect("device starts");
    side.join().await.expect("join");
    let stored = session::load(dir.path()).unwrap().unwrap();
    // The delay id, as the homeserver lists it for the device.
    let me = Http {
        http: reqwest::Client::new(),
        base: stack.info.homeserver_url.clone(),
        token: stored.access_token.expose().to_owned(),
        user_id: side.user_id().to_owned(),
        device_id: side.device_id().to_owned(),
    };
    let (status, delayed) = me
        .call(
            reqwest::Method::GET,
            "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
            None,
        )
        .await;
    assert_eq!(status, 200, "{delayed}");
    let delay_ids: Vec<String> = delayed["delayed_events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["delay_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(delay_ids.len(), 1, "one delayed leave scheduled: {delayed}");

    let grant = if stack.info.pids.token_service.is_some() && stack.info.pids.sfu.is_some() {
        let g = side.rtc_grant().await.expect("token service grants a JWT");
        assert_eq!(g.livekit_url, stack.info.livekit.url);
        assert_eq!(
            g.identity,
            format!("{}:{}", side.user_id(), side.device_id())
        );
        Some(g)
    } else {
        eprintln!("NOTE: no token service + SFU in the dev stack; rtc_grant not exercised");
        None
    };
    // Wait until a keep-alive restart has run (it carries the delay id in its URL): the
    // delayed event's `running_since` moves forward.
    let first_since = delayed["delayed_events"][0]["running_since"].as_u64();
    assert!(first_since.is_some(), "{delayed}");
    eventually(Duration::from_secs(10), "a keep-alive restart", || async {
        let (_, v) = me
            .call(
                reqwest::Method::GET,
                "/_matrix/client/unstable/org.matrix.msc4140/delayed_events",
                None,
            )
            .await;
        (v["delayed_events"][0]["running_since"].as_u64() > first_since).then_some(())
    })
    .await;
    side.leave().await.expect("leave");
    drop(side);

    let log = String::from_utf8_lossy(&buffer.0.lock().unwrap()).into_owned();
    assert!(log.len() > 1000, "the TRACE log should not be empty");
    assert!(
        !log.contains(stored.access_token.expose()),
        "access token in the log"
    );
    if let Some(r) = &stored.refresh_token {
        assert!(!log.contains(r.expose()), "refresh token in the log");
    }
    assert!(
        !log.contains(stack.info.users.intercom.password.expose()),
        "password in the log"
    );
    for id in &delay_ids {
        assert!(!log.contains(id.as_str()), "delay id in the log");
    }
    if let Some(g) = grant {
        assert!(!log.contains(g.jwt.expose()), "JWT in the log");
    }
}
