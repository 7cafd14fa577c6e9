//! vmctl
