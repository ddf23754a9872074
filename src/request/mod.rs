//! Pure operations on the parts of a request every layer reads: the one
//! canonical form of a path, path patterns, and header edits. No I/O, and
//! nothing here depends on the rest of the crate.

pub mod canonical;
pub mod headers;
pub mod pattern;
pub mod scope;
