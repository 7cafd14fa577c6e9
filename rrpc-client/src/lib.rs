//! rrpc-client
