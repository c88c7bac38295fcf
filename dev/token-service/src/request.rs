//! Request and response bodies of `/sfu/get` and `/get_token`, decoded like the real service.
//!
//! Owns: the DTOs (`LegacySFURequest`, `SFURequest`, `SFUResponse` of lk-jwt-service
//! `requests.go`), strict decoding and `Validate()`. Must not touch: I/O.
//!
//! Decoding follows Go's `json.Decoder` with `DisallowUnknownFields()`: an unknown key at any
//! level, a wrong type or a body that is not JSON is `400 M_NOT_JSON`; a missing key or a
//! `null` leaves the zero value (caught by validation as `400 M_BAD_JSON`); only the first
//! JSON value of the body is read. (Go also matches keys case-insensitively; this does not.)

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::MatrixError;
use crate::redacted::Redacted;

/// `null` and a missing key both give the zero value, as in Go.
pub(crate) fn nullable<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(de).map(Option::unwrap_or_default)
}

/// A struct only from a JSON object (serde would also take an array); `null` or a missing key
/// is the zero value. Go's decoder rejects arrays for structs too.
pub(crate) fn object_or_null<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: DeserializeOwned + Default,
{
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(de)? {
        None | Some(serde_json::Value::Null) => Ok(T::default()),
        Some(object @ serde_json::Value::Object(_)) => {
            T::deserialize(object).map_err(D::Error::custom)
        }
        Some(_) => Err(D::Error::custom("expected a JSON object")),
    }
}

/// `openid_token`: what `POST /_matrix/client/v3/user/{userId}/openid/request_token` returned.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenIdToken {
    #[serde(default, deserialize_with = "nullable")]
    pub access_token: Redacted,
    #[serde(default, deserialize_with = "nullable")]
    pub token_type: String,
    #[serde(default, deserialize_with = "nullable")]
    pub matrix_server_name: String,
    #[serde(default, deserialize_with = "nullable")]
    pub expires_in: i64,
}

/// `member` of `/get_token`: the MatrixRTC membership the token is for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    #[serde(default, deserialize_with = "nullable")]
    pub id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub claimed_user_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub claimed_device_id: String,
}

/// Body of `POST /sfu/get` (legacy, Element Call's default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySfuRequest {
    #[serde(default, deserialize_with = "nullable")]
    pub room: String,
    #[serde(default, deserialize_with = "object_or_null")]
    pub openid_token: OpenIdToken,
    #[serde(default, deserialize_with = "nullable")]
    pub device_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub delay_id: Redacted,
    #[serde(default, deserialize_with = "nullable")]
    pub delay_timeout: i64,
    /// Deprecated and ignored, accepted so that it is not an unknown field.
    #[serde(default, deserialize_with = "nullable")]
    pub delay_cs_api_url: String,
}

/// Body of `POST /get_token` (MSC4195).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SfuRequest {
    #[serde(default, deserialize_with = "nullable")]
    pub room_id: String,
    #[serde(default, deserialize_with = "nullable")]
    pub slot_id: String,
    #[serde(default, deserialize_with = "object_or_null")]
    pub openid_token: OpenIdToken,
    #[serde(default, deserialize_with = "object_or_null")]
    pub member: Member,
    #[serde(default, deserialize_with = "nullable")]
    pub delay_id: Redacted,
    #[serde(default, deserialize_with = "nullable")]
    pub delay_timeout: i64,
    /// Deprecated and ignored, accepted so that it is not an unknown field.
    #[serde(default, deserialize_with = "nullable")]
    pub delay_cs_api_url: String,
}

/// Answer of both endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SfuResponse {
    /// The LiveKit URL, verbatim from `--livekit-url`.
    pub url: String,
    /// The LiveKit access token.
    pub jwt: Redacted,
}

/// Decodes the first JSON value of `body` strictly (see the module doc).
pub fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, MatrixError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    // Go decodes a top-level `null` into the zero struct; trailing bytes are not read.
    object_or_null(&mut de).map_err(|_| MatrixError::not_json())
}

/// Both or neither of `delay_id` and a positive `delay_timeout`.
fn validate_delay_pair(delay_id: &Redacted, delay_timeout: i64) -> Result<(), MatrixError> {
    let id = !delay_id.is_empty();
    let timeout = delay_timeout > 0;
    if id != timeout {
        return Err(MatrixError::bad_json(
            "The request body is missing `delay_id` or `delay_timeout`",
        ));
    }
    Ok(())
}

impl LegacySfuRequest {
    /// `LegacySFURequest.Validate()`.
    pub fn validate(&self) -> Result<(), MatrixError> {
        if self.room.is_empty() {
            return Err(MatrixError::bad_json("Missing room parameter"));
        }
        if self.openid_token.access_token.is_empty()
            || self.openid_token.matrix_server_name.is_empty()
        {
            return Err(MatrixError::bad_json("Missing OpenID token parameters"));
        }
        validate_delay_pair(&self.delay_id, self.delay_timeout)
    }
}

impl SfuRequest {
    /// `SFURequest.Validate()`.
    pub fn validate(&self) -> Result<(), MatrixError> {
        if self.room_id.is_empty() || self.slot_id.is_empty() {
            return Err(MatrixError::bad_json(
                "The request body is missing `room_id` or `slot_id`",
            ));
        }
        let m = &self.member;
        if m.id.is_empty() || m.claimed_user_id.is_empty() || m.claimed_device_id.is_empty() {
            return Err(MatrixError::bad_json(
                "The request body `member` is missing a `id`, `claimed_user_id` or `claimed_device_id`",
            ));
        }
        if self.openid_token.access_token.is_empty()
            || self.openid_token.matrix_server_name.is_empty()
        {
            return Err(MatrixError::bad_json(
                "The request body `openid_token` is missing a `access_token` or `matrix_server_name`",
            ));
        }
        validate_delay_pair(&self.delay_id, self.delay_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENID: &str = r#"{"access_token":"tok","token_type":"Bearer","matrix_server_name":"example.com","expires_in":3600}"#;

    fn legacy(body: &str) -> Result<LegacySfuRequest, MatrixError> {
        let req: LegacySfuRequest = decode(body.as_bytes())?;
        req.validate().map(|()| req)
    }

    fn get_token(body: &str) -> Result<SfuRequest, MatrixError> {
        let req: SfuRequest = decode(body.as_bytes())?;
        req.validate().map(|()| req)
    }

    fn errcode(r: Result<impl Sized, MatrixError>) -> &'static str {
        match r {
            Ok(_) => "OK",
            Err(e) => e.errcode,
        }
    }

    #[test]
    fn element_call_legacy_body_decodes() {
        let req = legacy(&format!(
            r#"{{"room":"!r:example.com","openid_token":{OPENID},"device_id":"DEV"}}"#
        ))
        .unwrap();
        assert_eq!(req.room, "!r:example.com");
        assert_eq!(req.openid_token.access_token.expose(), "tok");
        assert_eq!(req.openid_token.matrix_server_name, "example.com");
        assert_eq!(req.device_id, "DEV");
    }

    #[test]
    fn element_call_get_token_body_decodes() {
        let req = get_token(&format!(
            r#"{{"room_id":"!r:e","slot_id":"m.call#ROOM","openid_token":{OPENID},
                "member":{{"id":"m1","claimed_user_id":"@u:e","claimed_device_id":"D"}}}}"#
        ))
        .unwrap();
        assert_eq!(req.member.id, "m1");
        assert_eq!(req.slot_id, "m.call#ROOM");
    }

    #[test]
    fn not_json_and_wrong_types_are_m_not_json() {
        for body in [
            "",
            "not json",
            "[]",
            "\"room\"",
            r#"{"room":"!r:e","openid_token":[]}"#,
            r#"{"room":"!r:e","openid_token":["t","Bearer","e",3600]}"#,
            r#"{"room": 5}"#,
            r#"{"room":"!r:e","openid_token":{"access_token":"t","matrix_server_name":"e","expires_in":"3600"}}"#,
            r#"{"room":"!r:e","openid_token":{"access_token":"t","matrix_server_name":"e","expires_in":1.5}}"#,
        ] {
            assert_eq!(errcode(legacy(body)), "M_NOT_JSON", "body {body:?}");
        }
    }

    #[test]
    fn unknown_fields_anywhere_are_m_not_json() {
        assert_eq!(
            errcode(legacy(&format!(
                r#"{{"room":"!r:e","openid_token":{OPENID},"extra":1}}"#
            ))),
            "M_NOT_JSON"
        );
        assert_eq!(
            errcode(legacy(
                r#"{"room":"!r:e","openid_token":{"access_token":"t","matrix_server_name":"e","scope":"x"}}"#
            )),
            "M_NOT_JSON"
        );
        assert_eq!(
            errcode(get_token(&format!(
                r#"{{"room_id":"!r:e","slot_id":"s","openid_token":{OPENID},
                    "member":{{"id":"m","claimed_user_id":"@u:e","claimed_device_id":"D","x":1}}}}"#
            ))),
            "M_NOT_JSON"
        );
        // `room` belongs to `/sfu/get`; on `/get_token` it is an unknown field.
        assert_eq!(
            errcode(get_token(&format!(
                r#"{{"room":"!r:e","openid_token":{OPENID}}}"#
            ))),
            "M_NOT_JSON"
        );
    }

    #[test]
    fn missing_fields_are_m_bad_json() {
        for body in [
            "{}".to_owned(),
            "null".to_owned(),
            format!(r#"{{"openid_token":{OPENID}}}"#),
            format!(r#"{{"room":null,"openid_token":{OPENID}}}"#),
            r#"{"room":"!r:e"}"#.to_owned(),
            r#"{"room":"!r:e","openid_token":{"access_token":"t"}}"#.to_owned(),
            r#"{"room":"!r:e","openid_token":{"matrix_server_name":"e"}}"#.to_owned(),
        ] {
            assert_eq!(errcode(legacy(&body)), "M_BAD_JSON", "body {body}");
        }
        let member = r#""member":{"id":"m","claimed_user_id":"@u:e","claimed_device_id":"D"}"#;
        for body in [
            format!(r#"{{"slot_id":"s","openid_token":{OPENID},{member}}}"#),
            format!(r#"{{"room_id":"!r:e","openid_token":{OPENID},{member}}}"#),
            format!(r#"{{"room_id":"!r:e","slot_id":"s","openid_token":{OPENID}}}"#),
            format!(
                r#"{{"room_id":"!r:e","slot_id":"s","openid_token":{OPENID},"member":{{"id":"m","claimed_user_id":"@u:e"}}}}"#
            ),
            format!(r#"{{"room_id":"!r:e","slot_id":"s",{member}}}"#),
        ] {
            assert_eq!(errcode(get_token(&body)), "M_BAD_JSON", "body {body}");
        }
    }

    #[test]
    fn half_a_delay_pair_is_m_bad_json_and_a_whole_one_is_valid() {
        let base = format!(r#""room":"!r:e","openid_token":{OPENID}"#);
        assert_eq!(
            errcode(legacy(&format!(r#"{{{base},"delay_id":"d"}}"#))),
            "M_BAD_JSON"
        );
        assert_eq!(
            errcode(legacy(&format!(r#"{{{base},"delay_timeout":1000}}"#))),
            "M_BAD_JSON"
        );
        assert_eq!(
            errcode(legacy(&format!(
                r#"{{{base},"delay_id":"d","delay_timeout":-5}}"#
            ))),
            "M_BAD_JSON"
        );
        assert_eq!(
            errcode(legacy(&format!(
                r#"{{{base},"delay_id":"d","delay_timeout":1000,"delay_cs_api_url":"x"}}"#
            ))),
            "OK"
        );
    }

    #[test]
    fn only_the_first_json_value_is_read() {
        let body = format!(r#"{{"room":"!r:e","openid_token":{OPENID}}} trailing"#);
        assert_eq!(errcode(legacy(&body)), "OK");
    }

    #[test]
    fn debug_output_hides_the_access_token() {
        let req = legacy(&format!(r#"{{"room":"!r:e","openid_token":{OPENID}}}"#)).unwrap();
        assert!(!format!("{req:?}").contains("tok\""));
        assert!(format!("{req:?}").contains("[redacted]"));
    }
}
