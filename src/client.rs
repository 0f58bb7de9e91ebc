//! The linkcast client library (work in progress: see the client/bench issue).
