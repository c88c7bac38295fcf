//! The Matrix side: stored session, login/logout, MatrixRTC membership and the token service
//! (issue [matrix]). STUB: being written.
