//! `omniad serve`: the HTTP inference service of omniad.
//!
//! One inference worker thread owns the model of a run folder (loaded once, checked as by
//! `omniad predict`) and scores the images of queued requests in micro-batches: requests that
//! arrive within [`ServeOptions::max_wait`] of the first are scored together, up to
//! [`ServeOptions::max_batch`] images. At most [`ServeOptions::queue`] prediction requests are
//! admitted at once; one more is answered `503` with `Retry-After` at once, so memory stays
//! bounded under any load.
//!
//! # Endpoints
//! - `GET /healthz`: `200` while the process serves. `GET /readyz`: `200` once the model is
//!   loaded, `503` before.
//! - `GET /v1/model`: classes, thresholds, input size, teacher, weights checksum, omniad version.
//! - `POST /v1/predict`: one image as the raw body (`Content-Type: image/*` or
//!   `application/octet-stream`) or several as `multipart/form-data`; query parameters `class`
//!   (use that class's calibrated threshold), `threshold` (a number `>= 0`, overrides),
//!   `name` (the `path` of a raw body's record) and `return`: `json` (default; one
//!   [`omniad_pipeline::predict::PredictRecord`] object for a raw body, an array for multipart:
//!   the same object as a line of `omniad predict`), `json_images` (the record plus the overlay
//!   and mask PNGs in base64), `overlay` or `mask` (the PNG itself; one image only).
//! - `GET /metrics` (Prometheus text), `GET /openapi.json` (OpenAPI 3.1), `GET /` (web page).
//!
//! Every error is a JSON object `{"error": "..."}` naming the problem, with a 4xx status for
//! what the client sent. With a token ([`ServeOptions::token`]) every endpoint but `/healthz`,
//! `/readyz` and `/` needs `Authorization: Bearer <token>`, compared in constant time.
//!
//! # Scores
//! Images go through [`omniad_pipeline::predict::Scorer`], the scoring path of `omniad predict`,
//! and uploads are decoded by [`omniad_data::load_rgb_from_bytes_with_limits`], the decoder of
//! files: a request alone in its batch gets bit-identically the score `omniad predict` gives
//! the same file, and a multipart request of `n <= max_batch` images alone in its batch gets
//! the scores of `omniad predict --batch-size n` on those files. Batched with other requests an
//! image may differ in the last bits (libtorch sums in another order for another batch size).
mod api;
mod options;
mod worker;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

pub use api::{openapi, ModelDescription};
pub use options::{read_token_file, ServeOptions, DEFAULT_MAX_BODY_MB};

/// State shared by the handlers.
pub(crate) struct AppState {
    pub opts: ServeOptions,
    pub model: OnceLock<worker::Loaded>,
    pub jobs: std::sync::mpsc::Sender<worker::Job>,
    /// One permit per admitted prediction request ([`ServeOptions::queue`]).
    pub slots: Arc<Semaphore>,
    /// Decoding runs on at most this many blocking threads at once.
    pub decoders: Arc<Semaphore>,
    pub prometheus: PrometheusHandle,
}

/// The process-wide Prometheus recorder (installed on first use; a second service in the same
/// process shares it).
fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("omniad_request_duration_seconds".into()),
                    &[
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("omniad_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0],
                    )
                })
                .expect("non-empty bucket lists");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed: /metrics stays empty");
            }
            handle
        })
        .clone()
}

/// Serves on `listener` until `shutdown` completes, then stops accepting, lets the requests in
/// flight finish (at most [`ServeOptions::request_timeout`] more) and returns.
///
/// The model is loaded on the worker thread after the listener is up: `/healthz` answers at
/// once, `/readyz` and the model endpoints once it is loaded.
///
/// # Errors
/// Invalid options (see [`ServeOptions::validate`], with the listener's address), or a model that
/// cannot be loaded (the service then stops).
pub async fn serve(
    opts: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener.local_addr().context("listener address")?;
    opts.validate(addr)?;
    let (jobs_tx, jobs_rx) = std::sync::mpsc::channel();
    let (loaded_tx, loaded_rx) = oneshot::channel();
    let batching = worker::Batching {
        max_batch: opts.max_batch,
        max_wait: opts.max_wait,
    };
    let (run, device, precision) = (opts.run.clone(), opts.device, opts.precision);
    let worker = std::thread::Builder::new()
        .name("omniad-inference".into())
        .spawn(move || worker::run(run, device, precision, batching, jobs_rx, loaded_tx))
        .context("cannot start the inference thread")?;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(opts.queue)),
        decoders: Arc::new(Semaphore::new(cores)),
        opts,
        model: OnceLock::new(),
        jobs: jobs_tx,
        prometheus: prometheus(),
    });
    let app = api::router(state.clone());

    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let load_state = state.clone();
    let load_stop = stop_tx.clone();
    let loading = tokio::spawn(async move {
        match loaded_rx.await {
            Ok(Ok(info)) => {
                tracing::info!(
                    "model loaded from {} (input {}x{}): ready",
                    info.checkpoint.display(),
                    info.input_size.1,
                    info.input_size.0
                );
                let _ = load_state.model.set(info);
                Ok(())
            }
            Ok(Err(e)) => {
                let _ = load_stop.send(true);
                Err(e)
            }
            Err(_) => {
                let _ = load_stop.send(true);
                Err(anyhow::anyhow!(
                    "the inference thread ended before loading the model"
                ))
            }
        }
    });
    let upkeep_handle = state.prometheus.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    let graceful = GracefulShutdown::new();
    let connections = Arc::new(Semaphore::new(state.opts.max_connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(state.opts.header_timeout)
        .keep_alive(true);
    tracing::info!("listening on http://{addr}");
    loop {
        let permit = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                // Only a closed semaphore fails, and nothing closes it: stop serving if it does.
                Err(_) => break,
            },
            _ = stop_rx.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, go on serving.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop_rx.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = http.serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection from {peer}: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopping: finishing the requests in flight");
    let grace = state.opts.request_timeout + Duration::from_secs(1);
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still open after {grace:?}: closed");
    }
    upkeep.abort();
    // The loading task ends as soon as the worker has loaded the model or failed to (a stop
    // during loading waits for it): a failed load is this function's error, never an `Ok`.
    let loaded = loading.await.context("model loading task")?;
    drop(app);
    drop(state);
    // The worker ends once every job sender (in the state) is gone.
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    loaded
}

/// `omniad serve`: binds [`ServeOptions::bind`], calls `on_listening` with the bound address,
/// serves until SIGTERM or Ctrl-C (SIGINT), then finishes the requests in flight and returns `Ok`.
///
/// # Errors
/// Invalid options, an address that cannot be bound (named), a model that cannot be loaded.
pub fn run_blocking(
    opts: ServeOptions,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> Result<()> {
    opts.validate(opts.bind)?;
    // A missing run folder or checkpoint is reported before anything listens.
    omniad_pipeline::runs::checkpoint_of(&opts.run)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("omniad-http")
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let listener = TcpListener::bind(opts.bind)
            .await
            .with_context(|| format!("cannot listen on {}", opts.bind))?;
        on_listening(listener.local_addr().context("listener address")?);
        serve(opts, listener, stop_signal()).await
    })
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: stopping"),
        _ = term => tracing::info!("SIGTERM: stopping"),
    }
}
