//! Weight loading (being written).
