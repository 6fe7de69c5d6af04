//! Synthetic anomaly dataset.
