//! Minimal HTTP/1.1 request reading and response writing for the signalling port.
//! Owns request parsing only; routing lives in `server`, auth in `auth`.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Refusals while reading a request.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("request too large")]
    TooLarge,
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}

/// A parsed request head (and body for POSTs).
#[derive(Debug, Default)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The access token: `Authorization: Bearer` wins over the `access_token` query parameter.
    pub fn token(&self) -> Option<&str> {
        self.header("authorization")
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .or_else(|| self.query("access_token"))
            .filter(|t| !t.is_empty())
    }

    pub fn is_websocket_upgrade(&self) -> bool {
        self.header("upgrade")
            .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
    }
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;

/// Read one request (head, and a `Content-Length` body) from `reader`.
pub async fn read_request<S>(reader: &mut BufReader<S>) -> Result<Request, HttpError>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut line = String::new();
    let mut total = 0;
    let mut req = Request::default();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).await?;
        if n == 0 {
            return Err(HttpError::Malformed("connection closed inside the head"));
        }
        total += n;
        if total > MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if req.method.is_empty() {
            let mut parts = l.split(' ');
            req.method = parts.next().unwrap_or_default().to_string();
            let target = parts
                .next()
                .ok_or(HttpError::Malformed("no request target"))?;
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            req.path = path.to_string();
            req.query = query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect();
            continue;
        }
        if l.is_empty() {
            break;
        }
        let (k, v) = l
            .split_once(':')
            .ok_or(HttpError::Malformed("header without colon"))?;
        req.headers
            .push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = req
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if len > MAX_BODY {
        return Err(HttpError::TooLarge);
    }
    req.body = vec![0; len];
    reader.read_exact(&mut req.body).await?;
    Ok(req)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Write a complete response and flush (the connection is closed afterwards).
pub async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(status),
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_query_headers_and_token() {
        let raw = b"GET /rtc?access_token=abc%2Edef&auto_subscribe=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n";
        let mut r = BufReader::new(&raw[..]);
        let req = read_request(&mut r).await.unwrap();
        assert_eq!(req.path, "/rtc");
        assert_eq!(req.token(), Some("abc.def"));
        assert!(req.is_websocket_upgrade());
        assert_eq!(percent_decode("a%2Fb%zz%é%4"), "a/b%zz%é%4");
        let raw = b"POST /x HTTP/1.1\r\nAuthorization: Bearer hdr\r\nContent-Length: 2\r\n\r\n{}";
        let mut r = BufReader::new(&raw[..]);
        let req = read_request(&mut r).await.unwrap();
        assert_eq!(req.token(), Some("hdr"));
        assert_eq!(req.body, b"{}");
    }
}
