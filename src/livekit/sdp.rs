//! SDP and trickle-candidate text as LiveKit and libwebrtc expect it.
//!
//! Owns pure string work: the fix-up of rejected m-lines (str0m writes them without a
//! format, which libwebrtc refuses), the mid of the first m-line, LiveKit's msid
//! (`PA_x|TR_y`), and the RTCIceCandidateInit JSON of trickle messages. No I/O.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use str0m::Candidate;

/// Gives every rejected m-line (`m=<kind> 0 <proto>` with no format) of `answer` the first
/// format of the matching m-line of `offer`, so strict parsers (libwebrtc) accept it.
pub fn fix_rejected_mlines(answer: &str, offer: &str) -> String {
    let offer_formats: Vec<Option<&str>> = offer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("m="))
        .map(|m| m.split_whitespace().nth(3))
        .collect();
    let mut index = 0;
    let mut out = String::with_capacity(answer.len() + 16);
    for line in answer.split_inclusive('\n') {
        let body = line.trim_end_matches(['\r', '\n']);
        let ending = &line[body.len()..];
        if let Some(m) = body.strip_prefix("m=") {
            let fields: Vec<&str> = m.split_whitespace().collect();
            if fields.len() == 3 && fields[1] == "0" {
                let fmt = offer_formats.get(index).copied().flatten().unwrap_or(
                    if fields[0] == "application" {
                        "webrtc-datachannel"
                    } else {
                        "0"
                    },
                );
                out.push_str(&format!(
                    "m={} 0 {} {}{}",
                    fields[0], fields[2], fmt, ending
                ));
                index += 1;
                continue;
            }
            index += 1;
        }
        out.push_str(line);
    }
    out
}

/// The `a=mid:` of the first m-line (the BUNDLE transport trickles are addressed to).
pub fn first_mid(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
        .map(str::to_owned)
}

/// Splits LiveKit's msid stream id `PA_x|TR_y` into `(participant_sid, track_sid)`.
pub fn parse_livekit_msid(stream_id: &str) -> Option<(&str, &str)> {
    let (participant, track) = stream_id.split_once('|')?;
    (participant.starts_with("PA_") && track.starts_with("TR_")).then_some((participant, track))
}

/// RTCIceCandidateInit as LiveKit trickles it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateInit {
    pub candidate: String,
    #[serde(default)]
    pub sdp_mid: Option<String>,
    #[serde(default, rename = "sdpMLineIndex")]
    pub sdp_m_line_index: Option<u32>,
}

/// The trickle JSON for one local candidate, always with both `sdpMid` and `sdpMLineIndex`.
pub fn candidate_json(candidate: &Candidate, mid: &str) -> String {
    let init = CandidateInit {
        candidate: candidate.to_sdp_string(),
        sdp_mid: Some(mid.to_owned()),
        sdp_m_line_index: Some(0),
    };
    serde_json::to_string(&init).expect("plain struct serialises")
}

/// Why a remote candidate was not used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CandidateSkip {
    #[error("end-of-candidates marker")]
    EndOfCandidates,
    #[error("trickle JSON is malformed: {0}")]
    Malformed(String),
    #[error("only UDP candidates are used")]
    NotUdp,
    #[error("address {0} is outside the allowed networks")]
    NotAllowed(IpAddr),
}

/// An IP network (`addr/prefix`) remote candidates may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        Self { addr, prefix }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix.min(32));
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix.min(128));
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|e| format!("{s:?}: {e}"))?,
            None => max,
        };
        if prefix > max {
            return Err(format!("{s:?}: prefix longer than {max}"));
        }
        Ok(Self { addr, prefix })
    }
}

/// Parses a trickled RTCIceCandidateInit and keeps it only if it is UDP and (when `allowed`
/// is given) inside one of the allowed networks.
pub fn parse_remote_candidate(
    json: &str,
    allowed: Option<&[IpNet]>,
) -> Result<Candidate, CandidateSkip> {
    let init: CandidateInit =
        serde_json::from_str(json).map_err(|e| CandidateSkip::Malformed(e.to_string()))?;
    let text = init.candidate.trim();
    if text.is_empty() {
        return Err(CandidateSkip::EndOfCandidates);
    }
    let text = text.strip_prefix("a=").unwrap_or(text);
    let with_prefix = if text.starts_with("candidate:") {
        text.to_owned()
    } else {
        format!("candidate:{text}")
    };
    let candidate = Candidate::from_sdp_string(&with_prefix)
        .map_err(|e| CandidateSkip::Malformed(e.to_string()))?;
    if !matches!(candidate.proto(), str0m::net::Protocol::Udp) {
        return Err(CandidateSkip::NotUdp);
    }
    let ip = candidate.addr().ip();
    if let Some(nets) = allowed {
        if !nets.iter().any(|n| n.contains(ip)) {
            return Err(CandidateSkip::NotAllowed(ip));
        }
    }
    Ok(candidate)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=mid:7\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=mid:8\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:9\r\n";

    #[test]
    fn rejected_lines_get_the_offers_first_format() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:7\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF \r\na=mid:8\r\n\
            m=application 0 UDP/DTLS/SCTP\r\na=mid:9\r\n";
        let fixed = fix_rejected_mlines(answer, OFFER);
        assert!(
            fixed.contains("m=video 0 UDP/TLS/RTP/SAVPF 96\r\n"),
            "{fixed}"
        );
        assert!(
            fixed.contains("m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n"),
            "{fixed}"
        );
        assert!(fixed.contains("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"));
        assert_eq!(fixed.lines().count(), answer.lines().count());
    }

    #[test]
    fn accepted_answers_are_untouched() {
        let answer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:7\r\n";
        assert_eq!(fix_rejected_mlines(answer, OFFER), answer);
    }

    #[test]
    fn first_mid_is_found() {
        assert_eq!(first_mid(OFFER).as_deref(), Some("7"));
        assert_eq!(first_mid("v=0\r\n"), None);
    }

    #[test]
    fn livekit_msid_is_split() {
        assert_eq!(
            parse_livekit_msid("PA_abc|TR_AMxyz"),
            Some(("PA_abc", "TR_AMxyz"))
        );
        assert_eq!(parse_livekit_msid("stream"), None);
        assert_eq!(parse_livekit_msid("PA_a|xyz"), None);
    }

    #[test]
    fn libwebrtc_trickle_is_parsed_and_filtered() {
        let json = r#"{"candidate":"candidate:1 1 udp 2122194687 10.77.0.2 40135 typ host generation 0 ufrag PePZ network-id 1","sdpMid":"0","sdpMLineIndex":0}"#;
        let c = parse_remote_candidate(json, None).unwrap();
        assert_eq!(c.addr(), "10.77.0.2:40135".parse().unwrap());
        let test_net: Vec<IpNet> = vec!["10.77.0.0/24".parse().unwrap()];
        assert!(parse_remote_candidate(json, Some(&test_net)).is_ok());
        let lo: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert_eq!(
            parse_remote_candidate(json, Some(&lo)).unwrap_err(),
            CandidateSkip::NotAllowed("10.77.0.2".parse().unwrap())
        );
    }

    #[test]
    fn tcp_and_empty_candidates_are_skipped() {
        let tcp = r#"{"candidate":"candidate:2 1 tcp 1518214911 10.77.0.2 9 typ host tcptype active","sdpMid":"0","sdpMLineIndex":0}"#;
        assert_eq!(
            parse_remote_candidate(tcp, None).unwrap_err(),
            CandidateSkip::NotUdp
        );
        let end = r#"{"candidate":"","sdpMid":"0","sdpMLineIndex":0}"#;
        assert_eq!(
            parse_remote_candidate(end, None).unwrap_err(),
            CandidateSkip::EndOfCandidates
        );
        assert!(matches!(
            parse_remote_candidate("not json", None),
            Err(CandidateSkip::Malformed(_))
        ));
    }

    #[test]
    fn local_candidate_json_has_mid_and_index() {
        let c = Candidate::host("127.0.0.1:5000".parse().unwrap(), "udp").unwrap();
        let json = candidate_json(&c, "0");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["sdpMid"], "0");
        assert_eq!(v["sdpMLineIndex"], 0);
        assert!(v["candidate"].as_str().unwrap().starts_with("candidate:"));
        // Round trip through our own parser.
        let back = parse_remote_candidate(&json, None).unwrap();
        assert_eq!(back.addr(), c.addr());
    }

    #[test]
    fn ip_nets_match() {
        let net: IpNet = "10.77.0.0/16".parse().unwrap();
        assert!(net.contains("10.77.3.4".parse().unwrap()));
        assert!(!net.contains("10.78.0.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let host: IpNet = "127.0.0.1".parse().unwrap();
        assert!(host.contains("127.0.0.1".parse().unwrap()));
        assert!(!host.contains("127.0.0.2".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    }
}
