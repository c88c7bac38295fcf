//! The device's LiveKit client: signalling, two str0m peer connections, Opus, jitter buffer, mixer
//! (issue [livekit]). STUB: being written.
