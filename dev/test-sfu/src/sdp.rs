//! SDP text helpers: fixes for what libwebrtc refuses in str0m's output, and small lookups.
//! Owns nothing; pure string functions.

/// str0m writes a rejected m-line as `m=video 0 UDP/TLS/RTP/SAVPF ` (no format); libwebrtc
/// rejects that and the Python SDK aborts. Give every such line the first format of the
/// offer's m-line at the same index (or `0` if the offer has none).
pub fn fix_rejected_lines(offer: &str, answer: &str) -> String {
    let offer_formats: Vec<Option<String>> = offer
        .lines()
        .filter(|l| l.starts_with("m="))
        .map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    let mut idx = 0;
    let mut out = String::with_capacity(answer.len() + 16);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if body.starts_with("m=") {
            let fields: Vec<&str> = body.split_whitespace().collect();
            if fields.len() == 3 {
                let fmt = offer_formats
                    .get(idx)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| "0".into());
                out.push_str(&format!("{} {}{ending}", fields.join(" "), fmt));
                idx += 1;
                continue;
            }
            idx += 1;
        }
        out.push_str(line);
    }
    out
}

/// The first `a=mid:` value of a description.
pub fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(str::to_string)
}

/// The msid track id (`a=msid:<stream> <track>`) of the m-section whose mid is `mid`.
pub fn msid_track_of_mid(sdp: &str, mid: &str) -> Option<String> {
    let mut in_section = false;
    let mut track = None;
    for l in sdp.lines().map(str::trim) {
        if l.starts_with("m=") {
            if in_section {
                return track;
            }
            track = None;
        } else if let Some(m) = l.strip_prefix("a=mid:") {
            in_section = m == mid;
        } else if let Some(ms) = l.strip_prefix("a=msid:") {
            track = ms.split_whitespace().nth(1).map(str::to_string);
        }
    }
    if in_section {
        track
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:7\r\na=msid:s1 mic-a\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:8\r\n";

    #[test]
    fn rejected_line_gets_a_format() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:7\r\nm=video 0 UDP/TLS/RTP/SAVPF \r\na=mid:8\r\n";
        let fixed = fix_rejected_lines(OFFER, answer);
        assert!(
            fixed.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"),
            "{fixed}"
        );
        assert!(fixed.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
    }

    #[test]
    fn lookups() {
        assert_eq!(first_mid(OFFER).as_deref(), Some("7"));
        assert_eq!(msid_track_of_mid(OFFER, "7").as_deref(), Some("mic-a"));
        assert_eq!(msid_track_of_mid(OFFER, "8"), None);
    }
}
