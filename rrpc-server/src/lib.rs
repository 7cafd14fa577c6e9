//! rrpc-server
