//! The Matrix-style error answer of the token endpoints.
//!
//! Owns: the (status, errcode, message) triple and its JSON body `{"errcode", "error"}`.
//! Must not touch: I/O.

use serde::Serialize;

/// An error answer: HTTP status, Matrix `errcode` and human-readable `error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {errcode}: {message}")]
pub struct MatrixError {
    pub status: u16,
    pub errcode: &'static str,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    errcode: &'a str,
    error: &'a str,
}

impl MatrixError {
    fn new(status: u16, errcode: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            message: message.into(),
        }
    }

    /// 400 `M_NOT_JSON`: the body is not JSON, has the wrong types, or has an unknown field.
    pub fn not_json() -> Self {
        Self::new(400, "M_NOT_JSON", "Error reading request")
    }

    /// 400 `M_BAD_JSON`: a required field is missing or fields contradict each other.
    pub fn bad_json(message: impl Into<String>) -> Self {
        Self::new(400, "M_BAD_JSON", message)
    }

    /// 401 `M_UNAUTHORIZED`: the OpenID token could not be verified or names someone else.
    pub fn unauthorized() -> Self {
        Self::new(
            401,
            "M_UNAUTHORIZED",
            "The request could not be authorised.",
        )
    }

    /// 413 `M_TOO_LARGE`: the body is bigger than this dev service reads.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "M_TOO_LARGE",
            format!("Request body larger than {limit} bytes"),
        )
    }

    /// 500 `M_UNKNOWN`: signing or LiveKit room creation failed.
    pub fn unknown(message: impl Into<String>) -> Self {
        Self::new(500, "M_UNKNOWN", message)
    }

    /// The JSON body, with the trailing newline Go's `json.Encoder` writes.
    pub fn body(&self) -> Vec<u8> {
        let mut body = serde_json::to_vec(&Body {
            errcode: self.errcode,
            error: &self.message,
        })
        .expect("serialising two strings into memory cannot fail");
        body.push(b'\n');
        body
    }
}
