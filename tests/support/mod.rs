//! Test support shared by integration tests: PCM ends backed by tone generators and raw
//! files, and a Goertzel tone detector. Include with `mod support;`.
#![allow(dead_code)]

pub mod jsrtc;
pub mod pcm;
pub mod proxy;
pub mod relay;
pub mod sfu;
pub mod tone;
