//! Tar archives as layers: container image layers mounted without
//! unpacking them (`strata mount-image`).
//!
//! - [`read`]: the archive's headers, entry by entry (ustar, GNU and pax;
//!   strict: a malformed archive is an error, never a panic);
//! - [`index`]: those entries read once into a compact tree;
//! - [`layer`]: [`TarLayer`], a [`Layer`](crate::layer::Layer) over that
//!   tree whose file data is served from the mapped archive;
//! - [`sha256`]: digests of image blobs.

pub mod index;
pub mod layer;
pub mod read;
pub mod sha256;

pub use layer::TarLayer;
