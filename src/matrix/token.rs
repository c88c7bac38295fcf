//! The LiveKit token service (lk-jwt-service): request bodies, answers, errors.
//!
//! A fresh OpenID token per request; `POST {service}/sfu/get` (Element Call's default) or
//! `POST {service}/get_token` (MSC4195, falls back to `/sfu/get` on 404). The service rejects
//! unknown keys, so bodies are built with exactly its fields. Owns nothing else; JWTs are only
//! held in [`Secret`]s.

use base64::Engine as _;
use matrix_sdk::reqwest::Method;
use serde_json::{json, Value};

use super::error::MatrixError;
use super::http::{build_url, Http, HttpFailure};
use crate::config::TokenEndpoint;
use crate::secret::Secret;

/// What the media side needs to join the SFU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcGrant {
    /// The SFU's WebSocket URL, verbatim from the service.
    pub livekit_url: String,
    pub jwt: Secret,
    /// Our LiveKit participant identity (the JWT's `sub`).
    pub identity: String,
}

/// An OpenID token from `/_matrix/client/v3/user/{userId}/openid/request_token`.
#[derive(Debug, Clone)]
pub struct OpenIdToken {
    pub access_token: Secret,
    pub token_type: String,
    pub matrix_server_name: String,
    pub expires_in_s: u64,
}

fn openid_json(t: &OpenIdToken) -> Value {
    json!({
        "access_token": t.access_token.expose(),
        "token_type": t.token_type,
        "matrix_server_name": t.matrix_server_name,
        "expires_in": t.expires_in_s,
    })
}

/// `/sfu/get` body: `room`, `openid_token` (exactly four keys), `device_id`.
pub fn sfu_get_body(room_id: &str, device_id: &str, openid: &OpenIdToken) -> Value {
    json!({"room": room_id, "openid_token": openid_json(openid), "device_id": device_id})
}

/// `/get_token` body (MSC4195), exactly Element Call's.
pub fn get_token_body(
    room_id: &str,
    user_id: &str,
    device_id: &str,
    member_id: &str,
    openid: &OpenIdToken,
) -> Value {
    json!({
        "room_id": room_id,
        "slot_id": "m.call#ROOM",
        "openid_token": openid_json(openid),
        "member": {"id": member_id, "claimed_user_id": user_id, "claimed_device_id": device_id},
    })
}

/// The `sub` claim of a JWT (no signature check: the SFU checks it).
pub fn jwt_subject(jwt: &str) -> Option<String> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Reads `{"url": …, "jwt": …}`. `fallback_identity` is used when the JWT has no `sub`.
pub fn parse_grant(
    service: &str,
    doc: &Value,
    fallback_identity: &str,
) -> Result<RtcGrant, MatrixError> {
    let garbage = |reason: String| MatrixError::TokenServiceGarbage {
        url: service.to_owned(),
        reason,
    };
    let obj = doc
        .as_object()
        .ok_or_else(|| garbage("the answer is not a JSON object".into()))?;
    let url = obj
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| garbage("no `url` string in the answer".into()))?;
    let jwt = obj
        .get("jwt")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or_else(|| {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            garbage(format!("no `jwt` string in the answer (keys: {keys:?})"))
        })?;
    if jwt.split('.').count() != 3 {
        return Err(garbage("`jwt` is not a JSON Web Token".into()));
    }
    Ok(RtcGrant {
        livekit_url: url.to_owned(),
        identity: jwt_subject(jwt).unwrap_or_else(|| fallback_identity.to_owned()),
        jwt: Secret::new(jwt),
    })
}

fn to_error(service: &str, f: HttpFailure) -> MatrixError {
    match f {
        HttpFailure::Unreachable(reason) => MatrixError::TokenServiceUnreachable {
            url: service.to_owned(),
            reason,
        },
        HttpFailure::Refused(refusal) => MatrixError::TokenService {
            url: service.to_owned(),
            refusal,
        },
        HttpFailure::Garbage(reason) => MatrixError::TokenServiceGarbage {
            url: service.to_owned(),
            reason,
        },
    }
}

/// Everything the request needs besides the OpenID token.
pub struct GrantRequest<'a> {
    pub service: &'a str,
    pub endpoint: TokenEndpoint,
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub device_id: &'a str,
    /// For `/get_token` only.
    pub member_id: &'a str,
}

/// Asks the service for a JWT.
pub async fn request_grant(
    http: &Http,
    req: &GrantRequest<'_>,
    openid: &OpenIdToken,
) -> Result<RtcGrant, MatrixError> {
    let legacy_identity = format!("{}:{}", req.user_id, req.device_id);
    let url_of = |segments: &[&str]| {
        build_url(req.service, segments, &[]).map_err(|reason| MatrixError::InvalidConfig {
            what: "livekit service URL",
            value: req.service.to_owned(),
            reason,
        })
    };
    if req.endpoint == TokenEndpoint::GetToken {
        let body = get_token_body(
            req.room_id,
            req.user_id,
            req.device_id,
            req.member_id,
            openid,
        );
        match http
            .json(
                Method::POST,
                url_of(&["get_token"])?,
                None,
                Some(&body),
                None,
            )
            .await
        {
            Ok(doc) => return parse_grant(req.service, &doc, &legacy_identity),
            Err(HttpFailure::Refused(r)) if r.status == 404 => {
                tracing::info!("token service has no /get_token; using /sfu/get");
            }
            Err(e) => return Err(to_error(req.service, e)),
        }
    }
    let body = sfu_get_body(req.room_id, req.device_id, openid);
    let doc = http
        .json(
            Method::POST,
            url_of(&["sfu", "get"])?,
            None,
            Some(&body),
            None,
        )
        .await
        .map_err(|e| to_error(req.service, e))?;
    parse_grant(req.service, &doc, &legacy_identity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::error::ServerRefusal;

    fn openid() -> OpenIdToken {
        OpenIdToken {
            access_token: Secret::new("oidc_tok"),
            token_type: "Bearer".into(),
            matrix_server_name: "example.com".into(),
            expires_in_s: 3600,
        }
    }

    fn jwt_with(claims: &Value) -> String {
        let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.sig",
            e.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            e.encode(serde_json::to_vec(claims).unwrap())
        )
    }

    #[test]
    fn sfu_get_body_is_exact() {
        let expected: Value = serde_json::from_str(
            r#"
            {"room": "!roomid:example.com",
             "openid_token": {"access_token": "oidc_tok", "token_type": "Bearer",
                              "matrix_server_name": "example.com", "expires_in": 3600},
             "device_id": "DEVICEID"}"#,
        )
        .unwrap();
        assert_eq!(
            sfu_get_body("!roomid:example.com", "DEVICEID", &openid()),
            expected
        );
    }

    #[test]
    fn get_token_body_is_exact() {
        let expected: Value = serde_json::from_str(r#"
            {"room_id": "!roomid:example.com", "slot_id": "m.call#ROOM",
             "openid_token": {"access_token": "oidc_tok", "token_type": "Bearer",
                              "matrix_server_name": "example.com", "expires_in": 3600},
             "member": {"id": "m1", "claimed_user_id": "@bot:example.com", "claimed_device_id": "DEVICEID"}}"#).unwrap();
        assert_eq!(
            get_token_body(
                "!roomid:example.com",
                "@bot:example.com",
                "DEVICEID",
                "m1",
                &openid()
            ),
            expected
        );
    }

    #[test]
    fn grant_reads_jwt_field_and_identity_from_sub() {
        let jwt = jwt_with(&json!({"sub": "@bot:example.com:DEVICEID", "video": {"room": "r"}}));
        let g = parse_grant(
            "svc",
            &json!({"url": "ws://127.0.0.1:7880", "jwt": jwt}),
            "fallback",
        )
        .unwrap();
        assert_eq!(g.livekit_url, "ws://127.0.0.1:7880");
        assert_eq!(g.jwt.expose(), jwt);
        assert_eq!(g.identity, "@bot:example.com:DEVICEID");
        assert!(
            !format!("{g:?}").contains(&jwt),
            "JWT must not show in Debug"
        );
    }

    #[test]
    fn grant_with_token_instead_of_jwt_is_a_typed_error() {
        let err = parse_grant("svc", &json!({"url": "ws://x", "token": "a.b.c"}), "f").unwrap_err();
        let MatrixError::TokenServiceGarbage { reason, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(
            reason.contains("jwt") && reason.contains("token"),
            "{reason}"
        );
        assert!(parse_grant("svc", &json!([1]), "f").is_err());
        assert!(parse_grant("svc", &json!({"url": "ws://x", "jwt": "nope"}), "f").is_err());
        let no_sub = jwt_with(&json!({"iss": "k"}));
        assert_eq!(
            parse_grant("svc", &json!({"url": "ws://x", "jwt": no_sub}), "f")
                .unwrap()
                .identity,
            "f"
        );
    }

    #[test]
    fn service_refusal_keeps_its_words() {
        let r = ServerRefusal::parse(
            400,
            br#"{"errcode":"M_NOT_JSON","error":"json: unknown field \"extra\""}"#,
        );
        let e = to_error("http://svc", HttpFailure::Refused(r));
        let text = e.to_string();
        assert!(
            text.contains("M_NOT_JSON") && text.contains("unknown field"),
            "{text}"
        );
        assert!(!e.is_transient());
        let r = ServerRefusal::parse(500, br#"{"errcode":"M_UNKNOWN","error":"signing failed"}"#);
        assert!(to_error("http://svc", HttpFailure::Refused(r)).is_transient());
    }

    /// A one-request-at-a-time HTTP server on 127.0.0.1 answering each request with the next
    /// canned (status, body); returns its base URL and the (path, body) of every request.
    async fn fake_service(
        answers: Vec<(u16, &'static str)>,
    ) -> (
        String,
        std::sync::Arc<std::sync::Mutex<Vec<(String, Value)>>>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/livekit/jwt", listener.local_addr().unwrap());
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read headers, then Content-Length bytes of body.
                let (head_end, len) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..pos]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (pos + 4, len);
                    }
                };
                while buf.len() < head_end + len {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let req_body = serde_json::from_slice(&buf[head_end..]).unwrap_or(Value::Null);
                log.lock().unwrap().push((path, req_body));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            }
        });
        (base, seen)
    }

    fn req(service: &str, endpoint: TokenEndpoint) -> GrantRequest<'_> {
        GrantRequest {
            service,
            endpoint,
            room_id: "!r:x",
            user_id: "@door:x",
            device_id: "DOOR",
            member_id: "m1",
        }
    }

    #[tokio::test]
    async fn grant_over_http_sends_exact_body_and_reads_jwt() {
        let jwt = jwt_with(&json!({"sub": "@door:x:DOOR"}));
        let body: &'static str = Box::leak(
            format!(r#"{{"url": "ws://127.0.0.1:7880", "jwt": "{jwt}"}}"#).into_boxed_str(),
        );
        let (base, seen) = fake_service(vec![(200, body)]).await;
        let http = Http::new(None).unwrap();
        let g = request_grant(&http, &req(&base, TokenEndpoint::SfuGet), &openid())
            .await
            .unwrap();
        assert_eq!(g.identity, "@door:x:DOOR");
        assert_eq!(g.jwt.expose(), jwt);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "/livekit/jwt/sfu/get");
        assert_eq!(seen[0].1, sfu_get_body("!r:x", "DOOR", &openid()));
    }

    #[tokio::test]
    async fn get_token_falls_back_to_sfu_get_on_404() {
        let jwt = jwt_with(&json!({"sub": "@door:x:DOOR"}));
        let body: &'static str =
            Box::leak(format!(r#"{{"url": "ws://h", "jwt": "{jwt}"}}"#).into_boxed_str());
        let (base, seen) = fake_service(vec![(404, "404 page not found"), (200, body)]).await;
        let http = Http::new(None).unwrap();
        request_grant(&http, &req(&base, TokenEndpoint::GetToken), &openid())
            .await
            .unwrap();
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, "/livekit/jwt/get_token");
        assert_eq!(seen[0].1["member"]["claimed_device_id"], "DOOR");
        assert_eq!(seen[1].0, "/livekit/jwt/sfu/get");
    }

    #[tokio::test]
    async fn service_failures_are_typed_with_the_servers_words() {
        let (base, _) = fake_service(vec![
            (
                400,
                r#"{"errcode":"M_NOT_JSON","error":"json: unknown field \"extra\""}"#,
            ),
            (200, "<html>proxy login</html>"),
            (200, r#"{"url": "ws://h", "token": "a.b.c"}"#),
            (
                429,
                r#"{"errcode":"M_LIMIT_EXCEEDED","error":"slow down","retry_after_ms":2000}"#,
            ),
        ])
        .await;
        let http = Http::new(None).unwrap();
        let r = req(&base, TokenEndpoint::SfuGet);
        let e = request_grant(&http, &r, &openid()).await.unwrap_err();
        let MatrixError::TokenService { refusal, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(refusal.errcode.as_deref(), Some("M_NOT_JSON"));
        assert!(e.to_string().contains("unknown field"), "{e}");
        let e = request_grant(&http, &r, &openid()).await.unwrap_err();
        assert!(
            matches!(e, MatrixError::TokenServiceGarbage { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("proxy login"), "{e}");
        let e = request_grant(&http, &r, &openid()).await.unwrap_err();
        assert!(e.to_string().contains("no `jwt`"), "{e}");
        let e = request_grant(&http, &r, &openid()).await.unwrap_err();
        let MatrixError::TokenService { refusal, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(
            refusal.retry_after,
            Some(std::time::Duration::from_millis(2000))
        );
        assert!(e.is_transient());
    }

    #[tokio::test]
    async fn unreachable_service_is_a_typed_transient_error() {
        // Bind then drop to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let base = format!("http://127.0.0.1:{port}");
        let http = Http::new(None).unwrap();
        let e = request_grant(&http, &req(&base, TokenEndpoint::SfuGet), &openid())
            .await
            .unwrap_err();
        assert!(
            matches!(e, MatrixError::TokenServiceUnreachable { .. }),
            "{e:?}"
        );
        assert!(e.is_transient());
    }
}
