//! Twirp `livekit.RoomService` (JSON or protobuf): CreateRoom, DeleteRoom, ListParticipants,
//! ListRooms, with LiveKit's grant checks. Owns request/response encoding only.

use livekit_protocol as proto;
use prost::Message;
use serde::{de::DeserializeOwned, Serialize};

use crate::engine::Admin;
use crate::http::Request;
use crate::server::{admin, Shared};

type Reply = (u16, &'static str, Vec<u8>);

fn error(status: u16, code: &str, msg: &str) -> Reply {
    let body = serde_json::json!({"code": code, "msg": msg}).to_string();
    (status, "application/json", body.into_bytes())
}

fn is_protobuf(req: &Request) -> bool {
    req.header("content-type")
        .is_some_and(|c| c.contains("protobuf"))
}

fn decode<T: Message + Default + DeserializeOwned>(req: &Request) -> Result<T, Reply> {
    if is_protobuf(req) {
        T::decode(&req.body[..]).map_err(|e| error(400, "malformed", &e.to_string()))
    } else if req.body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        serde_json::from_slice(&req.body).map_err(|e| error(400, "malformed", &e.to_string()))
    }
}

fn encode<T: Message + Serialize>(req: &Request, msg: &T) -> Reply {
    if is_protobuf(req) {
        (200, "application/protobuf", msg.encode_to_vec())
    } else {
        match serde_json::to_vec(msg) {
            Ok(b) => (200, "application/json", b),
            Err(e) => error(500, "internal", &e.to_string()),
        }
    }
}

fn denied(grant: &str) -> Reply {
    error(
        401,
        "unauthenticated",
        &format!("permissions denied: the token lacks the `{grant}` grant"),
    )
}

/// Handle `POST /twirp/livekit.RoomService/<method>`.
pub async fn handle(req: &Request, method: &str, shared: &Shared) -> Reply {
    if req.method != "POST" {
        return error(405, "bad_route", "use POST");
    }
    let claims = match shared.auth.claims(req.token()) {
        Ok(c) => c,
        Err(e) => return error(401, "unauthenticated", &e.to_string()),
    };
    let v = &claims.video;
    let gone = || error(503, "unavailable", "server is shutting down");
    match method {
        "CreateRoom" => {
            if !v.room_create {
                return denied("video.roomCreate");
            }
            let r: proto::CreateRoomRequest = match decode(req) {
                Ok(r) => r,
                Err(e) => return e,
            };
            if r.name.is_empty() {
                return error(400, "invalid_argument", "room name is empty");
            }
            match admin(shared, |tx| Admin::CreateRoom(r.name, tx)).await {
                Some(room) => encode(req, &room),
                None => gone(),
            }
        }
        "DeleteRoom" => {
            if !v.room_create {
                return denied("video.roomCreate");
            }
            let r: proto::DeleteRoomRequest = match decode(req) {
                Ok(r) => r,
                Err(e) => return e,
            };
            match admin(shared, |tx| Admin::DeleteRoom(r.room, tx)).await {
                Some(true) => encode(req, &proto::DeleteRoomResponse {}),
                Some(false) => error(404, "not_found", "requested room does not exist"),
                None => gone(),
            }
        }
        "ListParticipants" => {
            let r: proto::ListParticipantsRequest = match decode(req) {
                Ok(r) => r,
                Err(e) => return e,
            };
            if !v.room_admin || v.room != r.room {
                return denied("video.roomAdmin (for this room)");
            }
            match admin(shared, |tx| Admin::ListParticipants(r.room, tx)).await {
                Some(Some(participants)) => {
                    encode(req, &proto::ListParticipantsResponse { participants })
                }
                Some(None) => error(404, "not_found", "requested room does not exist"),
                None => gone(),
            }
        }
        "ListRooms" => {
            if !v.room_list {
                return denied("video.roomList");
            }
            let r: proto::ListRoomsRequest = match decode(req) {
                Ok(r) => r,
                Err(e) => return e,
            };
            match admin(shared, |tx| Admin::ListRooms(r.names, tx)).await {
                Some(rooms) => encode(req, &proto::ListRoomsResponse { rooms }),
                None => gone(),
            }
        }
        _ => error(404, "bad_route", "unknown RoomService method"),
    }
}
