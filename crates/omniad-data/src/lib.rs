//! Dataset layouts, decoding and preprocessing.
