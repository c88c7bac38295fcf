//! ALSA capture and playback, voice processing and feedback sounds (issue [audio]).
//! STUB: being written.
