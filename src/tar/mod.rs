//! Tar archives as layers: container image layers mounted without
//! unpacking them (`strata mount-image`).
//!
//! - [`index`]: reads an archive's headers once into a compact tree (ustar,
//!   GNU and pax; strict: a malformed archive is an error, never a panic);
//! - [`layer`]: [`TarLayer`], a [`Layer`](crate::layer::Layer) over that
//!   tree whose file data is served from the mapped archive;
//! - [`sha256`]: digests of image blobs.

pub mod index;
pub mod layer;
pub mod sha256;

pub use layer::TarLayer;
