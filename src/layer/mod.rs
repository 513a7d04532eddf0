//! Layers: deterministic tar writing, compression and digests in one streaming pass.
