//! rrpc core
