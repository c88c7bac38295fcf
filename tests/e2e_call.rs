//! The whole product in the dev stack: the daemon (button = `ctl press`, ALSA bound to files
//! through alsa-lib's file plugin) calls the residents of a real Synapse; an official LiveKit
//! Python SDK peer answers through the in-repo SFU. Everything but the Python peer runs in one
//! private network namespace (Synapse and the token service on its loopback, the SFU on its
//! veth address); the peer runs in a second one (libwebrtc gathers no loopback candidates).
//! Needs root and the Python venv (`MI_PYTHON`); skipped loudly otherwise, failed under CI.
//! In the encrypted room the far end is Element Call split in two: matrix-js-sdk (dev/jsrtc,
//! needs node) exchanges the media keys, the Python SDK peer encrypts with them.

mod support;

use mi_devstack::{DevStack, DevStackHandle, DevStackOptions};
use mi_test_sfu::testkit::{start_peer, LineProcess, NetnsPair, PeerSpec};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::jsrtc;
use support::tone::longest_tone_run;

const CALL_MEMBER: &str = "org.matrix.msc3401.call.member";
const DEVICE_TONE: u32 = 440;
const PEER_TONE: u32 = 1000;

struct World {
    net: NetnsPair,
    stack: DevStackHandle,
    python: PathBuf,
    /// The call happens in the stack's encrypted room.
    encrypted: bool,
}

fn world(test: &str) -> Option<World> {
    world_with(test, false)
}

fn world_with(test: &str, encrypted: bool) -> Option<World> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if !NetnsPair::available() {
        assert!(!ci, "{test} needs root (network namespaces) under CI");
        eprintln!("!!! SKIPPING {test}: needs root for network namespaces !!!");
        return None;
    }
    let python = mi_devstack::test_python_or_skip(test)?;
    let net = NetnsPair::new().expect("network namespaces");
    let sfu_ip = net.sfu_ip().parse().unwrap();
    let py = python.clone();
    // Started from a thread inside the namespace: the stack's processes live there too.
    let stack = NetnsPair::run_in(&net.sfu_ns, move || {
        DevStack::start(DevStackOptions {
            python: Some(py),
            sfu_bind: Some(sfu_ip),
            encrypted_room: encrypted,
            ..Default::default()
        })
    })
    .expect("enter namespace")
    .unwrap_or_else(|e| panic!("dev stack: {e}"));
    Some(World {
        net,
        stack,
        python,
        encrypted,
    })
}

impl World {
    /// The room of the call: the encrypted one in an encrypted world.
    fn room_id(&self) -> &str {
        let info = &self.stack.info;
        match (self.encrypted, &info.encrypted_room_id) {
            (true, Some(id)) => id,
            _ => &info.room_id,
        }
    }

    fn room_alias(&self) -> &str {
        let info = &self.stack.info;
        match (self.encrypted, &info.encrypted_room_alias) {
            (true, Some(alias)) => alias,
            _ => &info.room_alias,
        }
    }

    /// An HTTP request to Synapse or the token service (inside the namespace) as `token`.
    fn http(
        &self,
        base: &str,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value) {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let token = token.map(str::to_owned);
        NetnsPair::run_in(&self.net.sfu_ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut req = reqwest::Client::new()
                    .request(method, &url)
                    .timeout(Duration::from_secs(10));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if !body.is_null() {
                    req = req.json(&body);
                }
                let resp = req.send().await.expect("HTTP request");
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap_or(Value::Null))
            })
        })
        .expect("namespace")
    }

    fn alice_token(&self) -> String {
        self.stack
            .info
            .users
            .alice
            .access_token
            .as_ref()
            .expect("alice has a session")
            .expose()
            .to_owned()
    }

    /// The device's call membership content as a resident reads it (`None`: no state event).
    fn membership(&self, device_id: &str) -> Option<Value> {
        let info = &self.stack.info;
        let key = format!("_{}_{}_m.call", info.users.intercom.user_id, device_id);
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{CALL_MEMBER}/{}",
            enc(self.room_id()),
            enc(&key)
        );
        let (status, body) = self.http(
            &info.homeserver_url,
            "GET",
            &path,
            Some(&self.alice_token()),
            Value::Null,
        );
        (status == 200).then_some(body)
    }

    /// The room's recent events as alice sees them.
    fn recent_events(&self) -> Vec<Value> {
        let info = &self.stack.info;
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50",
            enc(self.room_id())
        );
        let (_, body) = self.http(
            &info.homeserver_url,
            "GET",
            &path,
            Some(&self.alice_token()),
            Value::Null,
        );
        body["chunk"].as_array().cloned().unwrap_or_default()
    }

    /// A LiveKit grant for a resident from the token service, exactly as Element Call gets one.
    fn grant(&self, resident: &mi_devstack::User) -> (String, String) {
        let info = &self.stack.info;
        let path = format!(
            "/_matrix/client/v3/user/{}/openid/request_token",
            enc(&resident.user_id)
        );
        let token = resident.access_token.as_ref().expect("resident session");
        let (status, openid) = self.http(
            &info.homeserver_url,
            "POST",
            &path,
            Some(token.expose()),
            json!({}),
        );
        assert_eq!(status, 200, "openid token: {openid}");
        let (status, grant) = self.http(
            &info.token_service_url,
            "POST",
            "/sfu/get",
            None,
            json!({"room": self.room_id(), "openid_token": openid, "device_id": resident.device_id}),
        );
        assert_eq!(status, 200, "token service: {grant}");
        (
            grant["url"].as_str().unwrap().to_owned(),
            grant["jwt"].as_str().unwrap().to_owned(),
        )
    }

    /// An Element Call-like far end for alice, publishing the peer tone.
    fn python_peer(&self, name: &str) -> LineProcess {
        self.python_peer_as(name, &self.stack.info.users.alice, PEER_TONE)
    }

    fn python_peer_as(
        &self,
        name: &str,
        resident: &mi_devstack::User,
        tone_hz: u32,
    ) -> LineProcess {
        let (url, jwt) = self.grant(resident);
        let mut peer = start_peer(
            &self.python,
            &self.net.py_ns,
            &PeerSpec {
                name,
                url: &url,
                token: &jwt,
                tone_hz,
                expect_hz: DEVICE_TONE,
                duration_s: 120,
            },
        )
        .expect("Python peer");
        peer.wait_json(Duration::from_secs(40), |v| v["event"] == "connected")
            .unwrap_or_else(|| panic!("Python peer did not connect: {:?}", peer.seen));
        peer
    }
}

impl World {
    /// Alice's matrix-js-sdk call member (Element Call's media key exchange) on her session's
    /// device: the device her LiveKit token names, so keys and media identities line up.
    fn js_alice(&self, node: &Path) -> LineProcess {
        let info = &self.stack.info;
        let alice = &info.users.alice;
        let config = json!({
            "homeserver": info.homeserver_url,
            "room_id": self.room_id(),
            "livekit_service_url": info.token_service_url,
            "members": [{"name": "alice", "user_id": alice.user_id,
                "access_token": alice.access_token.as_ref().expect("alice's session").expose(),
                "device_id": alice.device_id}],
        });
        let mut js = jsrtc::spawn(node, Some(&self.net.sfu_ns), &config);
        js.wait_json(Duration::from_secs(60), |v| v["event"] == "ready")
            .unwrap_or_else(|| panic!("js-sdk alice not ready: {:?}", js.seen));
        js
    }

    /// Alice's Python LiveKit peer with per-participant keys (given later on its stdin).
    fn python_e2ee_peer(&self, name: &str) -> LineProcess {
        let (url, jwt) = self.grant(&self.stack.info.users.alice);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/lk_e2ee_peer.py");
        let mut cmd = NetnsPair::command_in(&self.net.py_ns, &self.python);
        cmd.arg(script).args([
            url.as_str(),
            jwt.as_str(),
            "-",
            &PEER_TONE.to_string(),
            &DEVICE_TONE.to_string(),
            "120",
        ]);
        let mut peer = LineProcess::spawn(name, cmd).expect("Python E2EE peer");
        peer.wait_json(Duration::from_secs(40), |v| v["event"] == "connected")
            .unwrap_or_else(|| panic!("Python peer did not connect: {:?}", peer.seen));
        peer
    }
}

/// Hands the Python peer every media key js-sdk reported since the last call (its own key for
/// its microphone, the others' for decryption). Reads js-sdk output for up to 100 ms.
fn relay_keys(js: &mut LineProcess, py: &mut LineProcess, own_identity: &str, done: &mut usize) {
    js.wait_line(Duration::from_millis(100), |_| false);
    let keys = jsrtc::keys(js);
    for (_, _, _, k) in keys.iter().skip(*done) {
        let hex: String = k.key.iter().map(|b| format!("{b:02x}")).collect();
        let line = json!({"identity": k.identity, "index": k.index, "key_hex": hex,
            "own": k.identity == own_identity});
        assert!(py.send_line(&line.to_string()), "Python peer gone");
    }
    *done = keys.len();
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

struct Daemon {
    child: Child,
    dir: tempfile::TempDir,
}

impl Daemon {
    fn start(world: &World, ring_timeout_s: u32, leave_when_alone_s: u32) -> Self {
        Self::start_with(world, ring_timeout_s, leave_when_alone_s, "")
    }

    /// `call_extra`: more `[call]` settings, one per line.
    fn start_with(
        world: &World,
        ring_timeout_s: u32,
        leave_when_alone_s: u32,
        call_extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let info = &world.stack.info;
        // 3 minutes of the device's "microphone": a 440 Hz tone.
        let mic: Vec<u8> = (0..48_000 * 180)
            .flat_map(|i| {
                let s = (8000.0
                    * (2.0 * std::f64::consts::PI * f64::from(DEVICE_TONE) * f64::from(i)
                        / 48_000.0)
                        .sin()) as i16;
                s.to_le_bytes()
            })
            .collect();
        std::fs::write(dir.path().join("mic.raw"), mic).unwrap();
        std::fs::create_dir_all(dir.path().join("xdg/alsa")).unwrap();
        std::fs::write(
            dir.path().join("xdg/alsa/asoundrc"),
            format!(
                "pcm.e2e_mic {{ type file; slave.pcm null; file \"/dev/null\"; infile \"{d}/mic.raw\"; format raw }}\n\
                 pcm.e2e_speaker {{ type file; slave.pcm null; file \"{d}/heard.raw\"; format raw }}\n",
                d = dir.path().display()
            ),
        )
        .unwrap();
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[matrix]\nhomeserver = {hs:?}\nuser_id = {user:?}\npassword = {pw:?}\nroom = {room:?}\nstate_dir = {state:?}\n\
                 [button]\nenabled = false\n\
                 [audio]\ncapture = \"e2e_mic\"\nplayback = \"e2e_speaker\"\nwall_clock = true\n\
                 # A steady test tone is exactly what a noise suppressor removes.\n\
                 noise_suppression = false\nauto_gain = false\n\
                 [call]\nring_timeout_s = {ring_timeout_s}\nleave_when_alone_s = {leave_when_alone_s}\n{call_extra}\
                 [control]\nsocket = {sock:?}\n",
                hs = info.homeserver_url,
                user = info.users.intercom.user_id,
                pw = info.users.intercom.password.expose(),
                room = world.room_alias(),
                state = dir.path().join("state").display().to_string(),
                sock = dir.path().join("control.sock").display().to_string(),
            ),
        )
        .unwrap();
        let mut perms = std::fs::metadata(&config).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&config, perms).unwrap();
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let child = NetnsPair::command_in(&world.net.sfu_ns, env!("CARGO_BIN_EXE_matrix-intercom"))
            .args(["run", "--config"])
            .arg(&config)
            .env("XDG_CONFIG_HOME", dir.path().join("xdg"))
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut d = Self { child, dir };
        d.wait_for(
            Duration::from_secs(60),
            "the daemon to be logged in and idle",
            |s| s["state"] == "idle" && s["connected"] == true,
        );
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn device_id(&self) -> String {
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("state/session.json")).unwrap(),
        )
        .unwrap();
        s["device_id"].as_str().unwrap().to_owned()
    }

    fn access_token(&self) -> String {
        let s: Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir.path().join("state/session.json")).unwrap(),
        )
        .unwrap();
        s["access_token"].as_str().unwrap().to_owned()
    }

    fn ctl(&self, what: &str) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_matrix-intercom"))
            .args(["ctl", what, "--socket"])
            .arg(self.socket())
            .output()
            .unwrap();
        if what == "status" {
            serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
        } else {
            assert!(
                out.status.success(),
                "ctl {what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            Value::Null
        }
    }

    fn wait_for(&mut self, within: Duration, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "daemon exited ({status}) while waiting for {what}; log tail:\n{}",
                    tail(&self.log())
                );
            }
            let s = self.ctl("status");
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last status {s}; log tail:\n{}",
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_state(&mut self, state: &str, within: Duration) -> Value {
        self.wait_for(within, &format!("state {state}"), |s| s["state"] == state)
    }

    /// Samples the device played (what it heard from the call).
    fn heard(&self) -> Vec<i16> {
        std::fs::read(self.dir.path().join("heard.raw"))
            .unwrap_or_default()
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect()
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Waits until the device's membership is gone (`{}` or no state event).
fn wait_membership_gone(world: &World, device_id: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        match world.membership(device_id) {
            None => return,
            Some(c)
                if c.as_object()
                    .is_some_and(|o| o.is_empty() || !o.contains_key("application")) =>
            {
                return
            }
            Some(c) => assert!(Instant::now() < deadline, "membership still there: {c}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Python peer's one-second tone reports: waits for `n` good ones in a row.
fn peer_hears_device(peer: &mut LineProcess, device_identity: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut run = 0;
    while run < n {
        let left = deadline
            .checked_duration_since(Instant::now())
            .unwrap_or_else(|| panic!("the peer did not hear the device for {n} s in a row"));
        let v = peer
            .wait_json(left, |v| {
                v["event"] == "tone" && v["identity"] == device_identity
            })
            .unwrap_or_else(|| {
                panic!(
                    "no tone report about the device; peer output: {:?}",
                    peer.seen
                )
            });
        let good = v["ratio"].as_f64().unwrap_or(0.0) > 0.8
            && v["level_db"].as_f64().unwrap_or(-120.0) > -35.0;
        run = if good { run + 1 } else { 0 };
        let line = v.to_string();
        peer.seen.retain(|l| {
            serde_json::from_str::<Value>(l).map(|x| x.to_string()).ok() != Some(line.clone())
        });
    }
}

#[test]
fn press_rings_peer_answers_audio_both_ways_second_press_leaves() {
    let Some(world) = world("e2e press/answer/leave") else {
        return;
    };
    let mut daemon = Daemon::start(&world, 60, 5);
    let device_id = daemon.device_id();
    let identity = format!("{}:{device_id}", world.stack.info.users.intercom.user_id);
    let config = std::fs::read_to_string(daemon.dir.path().join("config.toml")).unwrap();
    assert!(
        !config.contains(world.stack.info.users.intercom.password.expose()),
        "the one-time password is removed from the config once the session is stored"
    );

    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    let content = world
        .membership(&device_id)
        .expect("membership state event");
    assert_eq!(content["application"], "m.call");
    assert_eq!(content["device_id"], device_id.as_str());
    assert_eq!(
        content["focus_active"],
        json!({"type": "livekit", "focus_selection": "multi_sfu"})
    );
    assert_eq!(
        content["foci_preferred"][0]["livekit_service_url"],
        world.stack.info.token_service_url.as_str()
    );
    let member_event = world
        .recent_events()
        .into_iter()
        .find(|e| {
            e["type"] == CALL_MEMBER
                && e["state_key"]
                    .as_str()
                    .is_some_and(|k| k.contains(&device_id))
        })
        .expect("membership event in the timeline");
    let ring = world
        .recent_events()
        .into_iter()
        .find(|e| e["type"] == "org.matrix.msc4075.rtc.notification")
        .expect("the residents got a ring notification");
    assert_eq!(ring["content"]["notification_type"], "ring");
    assert_eq!(
        ring["content"]["m.relates_to"]["event_id"],
        member_event["event_id"]
    );

    let mut peer = world.python_peer("alice-phone");
    daemon.wait_state("in_call", Duration::from_secs(30));
    peer_hears_device(&mut peer, &identity, 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    while longest_tone_run(&daemon.heard(), f64::from(PEER_TONE)) < 250 {
        assert!(
            Instant::now() < deadline,
            "the device's speaker never played 5 s of the peer's tone"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    daemon.ctl("press");
    daemon.wait_state("idle", Duration::from_secs(20));
    wait_membership_gone(&world, &device_id, Duration::from_secs(10));
    peer.wait_json(Duration::from_secs(30), |v| {
        v["event"] == "participant_disconnected" && v["identity"] == identity.as_str()
    })
    .expect("the peer saw the device leave");

    let log = daemon.log();
    assert!(
        log.contains("TRACE") || log.contains("DEBUG"),
        "the daemon logged at trace level"
    );
    let token = daemon.access_token();
    assert!(
        !log.contains(&token),
        "the access token leaked into the log"
    );
    assert!(
        !log.contains(world.stack.info.users.intercom.password.expose()),
        "the password leaked into the log"
    );
}

#[test]
fn peer_leaves_first_and_the_device_leaves_on_its_own() {
    let Some(world) = world("e2e peer leaves first") else {
        return;
    };
    let mut daemon = Daemon::start(&world, 60, 1);
    let device_id = daemon.device_id();
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    let mut peer = world.python_peer("alice-phone");
    daemon.wait_state("in_call", Duration::from_secs(30));
    peer.close_stdin();
    daemon.wait_state("idle", Duration::from_secs(40));
    wait_membership_gone(&world, &device_id, Duration::from_secs(10));
}

#[test]
fn nobody_answers_and_the_ring_times_out() {
    let Some(world) = world("e2e ring timeout") else {
        return;
    };
    let mut daemon = Daemon::start(&world, 5, 5);
    let device_id = daemon.device_id();
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    assert!(world.membership(&device_id).is_some());
    daemon.wait_state("idle", Duration::from_secs(30));
    wait_membership_gone(&world, &device_id, Duration::from_secs(10));
}

#[test]
fn sigterm_mid_call_removes_the_membership_and_sigkill_lets_it_expire() {
    let Some(world) = world("e2e SIGTERM/SIGKILL") else {
        return;
    };
    let mut daemon = Daemon::start(&world, 120, 5);
    let device_id = daemon.device_id();
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    daemon.signal("TERM");
    let status = daemon.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    wait_membership_gone(&world, &device_id, Duration::from_secs(3));

    // A crash (SIGKILL) cannot leave: the delayed leave fires within its 10 s delay (+5 s).
    let mut daemon = Daemon::start(&world, 120, 5);
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    let device_id = daemon.device_id();
    assert!(world.membership(&device_id).is_some());
    daemon.signal("KILL");
    daemon.wait_exit(Duration::from_secs(5));
    wait_membership_gone(&world, &device_id, Duration::from_secs(15));
}

#[test]
fn two_residents_answer_the_device_hears_both_mixed_and_both_hear_it() {
    let Some(world) = world("e2e two residents") else {
        return;
    };
    let mut daemon = Daemon::start(&world, 60, 5);
    let identity = format!(
        "{}:{}",
        world.stack.info.users.intercom.user_id,
        daemon.device_id()
    );
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));
    const BOB_TONE: u32 = 700;
    let mut alice = world.python_peer("alice-phone");
    let mut bob = world.python_peer_as("bob-laptop", &world.stack.info.users.bob, BOB_TONE);
    daemon.wait_for(Duration::from_secs(30), "both residents in the call", |s| {
        s["state"] == "in_call" && s["participants"].as_array().is_some_and(|p| p.len() == 2)
    });
    peer_hears_device(&mut alice, &identity, 5);
    peer_hears_device(&mut bob, &identity, 5);
    // Both tones at once in the device's speaker: each takes a clear share of every frame.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let heard = daemon.heard();
        let both = heard
            .chunks_exact(matrix_intercom::pcm::FRAME_SAMPLES)
            .filter(|f| {
                support::tone::tone_share(f, f64::from(PEER_TONE)) > 0.3
                    && support::tone::tone_share(f, f64::from(BOB_TONE)) > 0.3
            })
            .count();
        if both >= 250 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the device's speaker did not play both residents mixed for 5 s ({both} frames)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.ctl("press");
    daemon.wait_state("idle", Duration::from_secs(20));
}

#[test]
fn in_an_encrypted_room_keys_go_over_olm_and_encrypted_audio_flows_both_ways() {
    let test = "e2e encrypted room";
    let Some(world) = world_with(test, true) else {
        return;
    };
    let Some(node) = jsrtc::node_or_skip(test) else {
        return;
    };
    let mut daemon = Daemon::start(&world, 60, 5);
    let info = &world.stack.info;
    let device_id = daemon.device_id();
    let identity = format!("{}:{device_id}", info.users.intercom.user_id);
    let alice = &info.users.alice;
    let alice_identity = format!("{}:{}", alice.user_id, alice.device_id.clone().unwrap());
    daemon.ctl("press");
    daemon.wait_state("ringing", Duration::from_secs(30));

    // Alice answers the way Element Call does: js-sdk joins and exchanges media keys over Olm.
    let mut js = world.js_alice(&node);
    assert!(js.send_line(r#"{"cmd": "join", "who": "alice"}"#));
    let deadline = Instant::now() + Duration::from_secs(45);
    while jsrtc::last_key(&js, "alice", &info.users.intercom.user_id, &device_id).is_none()
        || jsrtc::last_key(
            &js,
            "alice",
            &alice.user_id,
            alice.device_id.as_ref().unwrap(),
        )
        .is_none()
    {
        assert!(
            Instant::now() < deadline,
            "js-sdk never got the device's media key: {:?}",
            js.seen
        );
        js.wait_line(Duration::from_millis(200), |_| false);
    }
    // Her media: the Python SDK with exactly the keys js-sdk holds.
    let mut peer = world.python_e2ee_peer("alice-phone-e2ee");
    let mut relayed = 0;
    relay_keys(&mut js, &mut peer, &alice_identity, &mut relayed);
    daemon.wait_state("in_call", Duration::from_secs(30));
    peer_hears_device(&mut peer, &identity, 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    while longest_tone_run(&daemon.heard(), f64::from(PEER_TONE)) < 250 {
        assert!(
            Instant::now() < deadline,
            "the device's speaker never played 5 s of alice's encrypted tone"
        );
        relay_keys(&mut js, &mut peer, &alice_identity, &mut relayed);
    }
    daemon.ctl("press");
    daemon.wait_state("idle", Duration::from_secs(20));
    peer.close_stdin();
    js.close_stdin();
    // Once alice's first packet decrypted, none failed: the key exchange kept up.
    let log = daemon.log();
    let stats = log
        .lines()
        .find(|l| l.contains("call audio received") && l.contains(&alice_identity))
        .unwrap_or_else(|| panic!("no audio statistics for alice at leave:\n{}", tail(&log)));
    let late_failures = stats
        .split_whitespace()
        .find_map(|w| w.strip_prefix("undecryptable_after_first_key="))
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no failure count in {stats}"));
    assert_eq!(late_failures, 0, "{stats}");
}

#[test]
fn require_encryption_refuses_a_call_in_an_unencrypted_room() {
    let Some(world) = world("e2e require_encryption") else {
        return;
    };
    let mut daemon = Daemon::start_with(&world, 60, 5, "require_encryption = true\n");
    let device_id = daemon.device_id();
    daemon.ctl("press");
    let status = daemon.wait_for(Duration::from_secs(30), "the refusal", |s| {
        s["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("not end-to-end encrypted"))
    });
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("require_encryption"),
        "the error names the setting: {status}"
    );
    daemon.wait_state("idle", Duration::from_secs(20));
    assert!(
        world
            .membership(&device_id)
            .is_none_or(|c| c.get("application").is_none()),
        "no call membership was published"
    );
}
