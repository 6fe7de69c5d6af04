//! Options of the service and their checks.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use omniad_data::DecodeLimits;
use omniad_pipeline::device::ComputeDevice;

/// Default body limit, MiB: fits a 20-megapixel RGBA PNG that does not compress at all
/// (20e6 x 4 bytes = 76.3 MiB, plus a filter byte per row and chunk overhead).
pub const DEFAULT_MAX_BODY_MB: usize = 96;

/// Settings of [`crate::serve`]. [`ServeOptions::new`] gives the defaults of `omniad serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Run folder (read only): its checkpoint is loaded once at start.
    pub run: PathBuf,
    /// Address to listen on (used by [`crate::run_blocking`]; [`crate::serve`] takes a bound
    /// listener but applies the same authentication rule to its address).
    pub bind: SocketAddr,
    /// Device of the inference worker.
    pub device: ComputeDevice,
    /// Precision of the worker's forward passes ([`omniad_pipeline::predict::Scorer::set_precision`]).
    pub precision: omniad_model::Precision,
    /// Most images in one forward pass, at least 1.
    pub max_batch: usize,
    /// How long the worker waits for more requests to fill a batch after the first arrives.
    pub max_wait: Duration,
    /// Most prediction requests admitted at once (being read, decoded, queued or scored), at
    /// least 1; one more is answered 503 with `Retry-After` at once.
    pub queue: usize,
    /// Bearer token every request but `/healthz`, `/readyz` and the page `/` must carry
    /// (`Authorization: Bearer <token>`); `None` for no authentication.
    pub token: Option<String>,
    /// Allow a non-loopback `bind` without a token.
    pub insecure_no_auth: bool,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Most images in one multipart request, at least 1.
    pub max_images: usize,
    /// Largest image side accepted, pixels (checked on the header, before decoding).
    pub decode_limits: DecodeLimits,
    /// Time limit of a whole request (reading the body, waiting, scoring, answering): 408 past it.
    pub request_timeout: Duration,
    /// Time limit for a client to send the request line and headers (connection closed past it).
    pub header_timeout: Duration,
    /// Most open connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Weight of the colour map in overlays, in `[0, 1]` (as `omniad predict --alpha`).
    pub alpha: f32,
}

impl ServeOptions {
    /// The defaults of `omniad serve` for `run`: `127.0.0.1:8080`, CPU, batches of 8 within
    /// 5 ms, 64 admitted requests, no token, bodies up to [`DEFAULT_MAX_BODY_MB`] MiB, 16
    /// images per request, sides up to 10000 pixels, 30 s per request, 10 s for the headers,
    /// 512 connections, overlay alpha 0.5.
    pub fn new(run: impl Into<PathBuf>) -> Self {
        Self {
            run: run.into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            device: ComputeDevice::Cpu,
            precision: omniad_model::Precision::F32,
            max_batch: 8,
            max_wait: Duration::from_millis(5),
            queue: 64,
            token: None,
            insecure_no_auth: false,
            max_body_bytes: DEFAULT_MAX_BODY_MB << 20,
            max_images: 16,
            decode_limits: DecodeLimits {
                max_width: 10_000,
                max_height: 10_000,
            },
            request_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(10),
            max_connections: 512,
            alpha: 0.5,
        }
    }

    /// Checks every setting for the address `addr` the service listens on.
    ///
    /// # Errors
    /// A zero batch, queue, image count, body limit, connection count, decode limit or
    /// timeout; an alpha outside `[0, 1]`; an empty token; a non-loopback `addr` without a
    /// token unless [`Self::insecure_no_auth`].
    pub fn validate(&self, addr: SocketAddr) -> Result<()> {
        for (name, v) in [
            ("--max-batch", self.max_batch),
            ("--queue", self.queue),
            ("--max-body-mb", self.max_body_bytes),
            ("max images per request", self.max_images),
            ("max connections", self.max_connections),
        ] {
            if v == 0 {
                bail!("{name} must be at least 1, got 0");
            }
        }
        if self.decode_limits.max_width == 0 || self.decode_limits.max_height == 0 {
            bail!("the largest image side must be at least 1 pixel");
        }
        if self.request_timeout.is_zero() || self.header_timeout.is_zero() {
            bail!("request and header timeouts must be positive");
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            bail!("overlay alpha {} must be in [0, 1]", self.alpha);
        }
        if let Some(t) = &self.token {
            if t.is_empty() {
                bail!("the bearer token is empty");
            }
        }
        if !addr.ip().is_loopback() && self.token.is_none() && !self.insecure_no_auth {
            bail!(
                "binding to {addr} (not a loopback address) needs a bearer token: pass --token-file FILE, \
                 or --insecure-no-auth to serve without authentication"
            );
        }
        Ok(())
    }
}

/// Reads a bearer token from `path`: the file's text without leading and trailing white space.
///
/// # Errors
/// An unreadable file, a token that is empty or not printable ASCII (HTTP headers carry only
/// that), each naming the file.
pub fn read_token_file(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("token file {}: cannot read it", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("token file {}: empty (no token in it)", path.display());
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        bail!(
            "token file {}: the token must be printable ASCII without spaces (it is sent in an HTTP header)",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                tracing::warn!("token file {} is readable by every user", path.display());
            }
        }
    }
    Ok(token.to_string())
}
