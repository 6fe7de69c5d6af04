//! Teacher backbones (being written).
