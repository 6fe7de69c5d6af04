//! Routes, handlers, errors and the OpenAPI description of the service.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Multipart, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use image::RgbImage;
use omniad_data::DataError;
use omniad_pipeline::predict::{
    check_class, check_threshold, judge, make_record, render, PredictRecord,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tower_http::timeout::TimeoutLayer;
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::worker::{Job, ScoredImage};
use crate::AppState;

/// How the checkpoint is named in messages sent to clients (never the server's own path).
const CKPT_NAME: &str = "model.json";

/// The web page served at `/`.
const PAGE: &str = include_str!("page.html");

/// An error answer: `{"error": message}` with `status`; `kind` labels the metric
/// `omniad_errors_total`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry_after: bool,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            retry_after: false,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unavailable(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            retry_after: true,
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, kind, message)
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, naming the parameter, part or value at fault.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        metrics::counter!("omniad_errors_total", "kind" => self.kind).increment(1);
        let mut resp = (
            self.status,
            Json(ErrorBody {
                error: self.message,
            }),
        )
            .into_response();
        if self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

/// The routes and middleware of the service.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/model", get(model))
        .route("/v1/predict", post(predict))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi_json))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(state.opts.max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            state.opts.request_timeout,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), json_errors))
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts every answer by endpoint and status and times it.
async fn track(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let start = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("omniad_requests_total", "endpoint" => endpoint.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("omniad_request_duration_seconds", "endpoint" => endpoint)
        .record(start.elapsed().as_secs_f64());
    resp
}

/// Turns the error answers made outside the handlers (timeouts, unknown methods) into JSON.
async fn json_errors(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let resp = next.run(req).await;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let err = match status {
        StatusCode::REQUEST_TIMEOUT => ApiError::new(
            status,
            "timeout",
            format!(
                "request timeout: {method} {path} was not completed within {} s (request body sent too slowly?)",
                st.opts.request_timeout.as_secs_f64()
            ),
        ),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            format!("method {method} is not allowed on {path}"),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "too_large",
            format!(
                "request body above the limit of {} bytes",
                st.opts.max_body_bytes
            ),
        ),
        other => ApiError::new(
            other,
            "other",
            other.canonical_reason().unwrap_or("error").to_string(),
        ),
    };
    let mut out = err.into_response();
    for (k, v) in resp.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Checks `Authorization: Bearer <token>` in constant time when a token is set.
async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(token) = &st.opts.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes().strip_prefix(b"Bearer ").unwrap_or(b""));
        match given {
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "missing Authorization header: send Authorization: Bearer <token>",
                )
                .into_response()
            }
            Some(given) if !bool::from(given.ct_eq(token.as_bytes())) => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "invalid bearer token in the Authorization header",
                )
                .into_response()
            }
            Some(_) => {}
        }
    }
    next.run(req).await
}

async fn not_found(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such endpoint: {method} {} (see /openapi.json)",
            uri.path()
        ),
    )
}

/// The web page: choose or drop images, see overlay, score and verdict.
async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Liveness.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `"ok"`, or `"loading"` from `/readyz` before the model is loaded.
    pub status: String,
}

/// Liveness: the process serves.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the model is loaded.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, body = Health, description = "model loaded"),
    (status = 503, body = ErrorBody, description = "model still loading"),
))]
async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<Health>, ApiError> {
    loaded(&st)?;
    Ok(Json(Health {
        status: "ok".into(),
    }))
}

fn loaded(st: &AppState) -> Result<&crate::worker::Loaded, ApiError> {
    st.model
        .get()
        .ok_or_else(|| ApiError::unavailable("loading", "the model is still loading"))
}

/// What `GET /v1/model` answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelDescription {
    /// Version of omniad serving.
    pub omniad_version: String,
    /// Classes the model was trained on (from the run's provenance, else the calibrated ones).
    pub classes: Vec<String>,
    /// Calibrated thresholds (`global`, `per_class`, `method`, `score_bounds`), `null` when the
    /// run was not evaluated.
    #[schema(value_type = Option<Object>)]
    pub thresholds: Option<serde_json::Value>,
    /// Model input height, pixels (every image is resized to it).
    pub input_height: u32,
    /// Model input width, pixels.
    pub input_width: u32,
    /// Teacher backbone.
    pub teacher: String,
    /// Lower-case hex SHA-256 of the checkpoint's weights file (checked at load).
    pub weights_sha256: String,
    /// Device of the inference worker.
    pub device: String,
    /// Precision of the forward passes: `f32`, `bf16` or `f16`.
    pub precision: String,
    /// Most images per forward pass.
    pub max_batch: usize,
    /// Most images per request.
    pub max_images: usize,
}

/// The loaded model.
#[utoipa::path(get, path = "/v1/model", responses(
    (status = 200, body = ModelDescription),
    (status = 503, body = ErrorBody, description = "model still loading"),
), security(("bearer" = [])))]
async fn model(State(st): State<Arc<AppState>>) -> Result<Json<ModelDescription>, ApiError> {
    let info = loaded(&st)?;
    let meta = &info.meta;
    let mut classes = omniad_pipeline::calibrate::trained_classes(meta).unwrap_or_default();
    if classes.is_empty() {
        if let Some(t) = &meta.thresholds {
            classes = t.per_class.keys().cloned().collect();
        }
    }
    Ok(Json(ModelDescription {
        omniad_version: env!("CARGO_PKG_VERSION").to_string(),
        classes,
        thresholds: meta
            .thresholds
            .as_ref()
            .map(|t| serde_json::to_value(t).unwrap_or(serde_json::Value::Null)),
        input_height: info.input_size.0,
        input_width: info.input_size.1,
        teacher: meta.config.teacher.to_string(),
        weights_sha256: meta.weights_sha256.clone(),
        device: st.opts.device.to_string(),
        precision: st.opts.precision.to_string(),
        max_batch: st.opts.max_batch,
        max_images: st.opts.max_images,
    }))
}

/// Prometheus metrics: `omniad_requests_total{endpoint,status}`,
/// `omniad_request_duration_seconds{endpoint}` (histogram), `omniad_batch_size` (histogram),
/// `omniad_queue_depth` (admitted prediction requests), `omniad_errors_total{kind}`.
#[utoipa::path(get, path = "/metrics", responses((status = 200, content_type = "text/plain", body = String)), security(("bearer" = [])))]
async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    let depth = st.opts.queue - st.slots.available_permits();
    metrics::gauge!("omniad_queue_depth").set(depth as f64);
    st.prometheus.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        st.prometheus.render(),
    )
        .into_response()
}

/// This description.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, content_type = "application/json", body = Object)), security(("bearer" = [])))]
async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(openapi())
}

/// The OpenAPI description of the service (served at `/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    if let Some(c) = doc.components.as_mut() {
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    doc
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "omniad serve",
        description = "Anomaly detection in industrial images: scores, decisions, heatmap overlays and masks from a trained omniad run."
    ),
    paths(healthz, readyz, model, predict, metrics_text, openapi_json),
    components(schemas(ErrorBody, Health, ModelDescription, RecordDoc, RecordWithImagesDoc))
)]
struct ApiDoc;

/// One image's result: the same object as a line of `omniad predict`.
#[derive(ToSchema)]
#[schema(as = PredictRecord)]
#[allow(dead_code)] // describes `PredictRecord` for the OpenAPI document only
pub(crate) struct RecordDoc {
    /// The uploaded file's name (multipart file name or field name, or `name` for a raw body).
    path: String,
    /// Image score: maximum of the blurred anomaly map, in `[0, 2]` (`1 - cos` units).
    image_score: f64,
    /// The class the image was judged as (given by `class=`, else recognised); `null` for a run
    /// without class recognition and no `class=`.
    class: Option<String>,
    /// `given` or `recognised`.
    class_source: Option<String>,
    /// Confidence of a recognised class in `[0, 1]`; `null` for a given class.
    class_confidence: Option<f64>,
    /// Not a class the model was trained on: no threshold and no decision.
    unknown_class: bool,
    /// Score mapped to `[0, 1]` with 0.5 at the class's threshold; `null` without a threshold.
    normalised_score: Option<f64>,
    /// Decision threshold used; `null` when none is known or the class is unknown.
    threshold: Option<f64>,
    /// Threshold on the anomaly map's pixels used for the mask.
    pixel_threshold: Option<f64>,
    /// `image_score >= threshold`; `null` without a threshold.
    anomalous: Option<bool>,
    /// Always `null` here (no file is written).
    overlay: Option<String>,
    /// Always `null` here (no file is written).
    mask: Option<String>,
    /// Width of the image in pixels (after EXIF orientation).
    width: u32,
    /// Height of the image in pixels.
    height: u32,
}

/// `return=json_images`: the record plus the pictures as base64 PNG.
#[derive(Serialize)]
struct RecordWithImages {
    #[serde(flatten)]
    record: PredictRecord,
    overlay_png_base64: String,
    mask_png_base64: Option<String>,
}

/// `return=json_images`: a [`RecordDoc`] plus these two fields.
#[derive(ToSchema)]
#[allow(dead_code)] // describes `RecordWithImages` for the OpenAPI document only
pub(crate) struct RecordWithImagesDoc {
    /// Heatmap overlay PNG (image size), base64.
    overlay_png_base64: String,
    /// Binary mask PNG (0/255, image size), base64; `null` without a threshold.
    mask_png_base64: Option<String>,
}

/// Query parameters of `POST /v1/predict`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PredictQuery {
    /// Use this class's calibrated threshold (an unknown class is an error).
    class: Option<String>,
    /// Decision threshold on the image score, a finite number `>= 0`; overrides the calibrated ones.
    threshold: Option<String>,
    /// `path` of the record of a raw-body image (default `image`).
    name: Option<String>,
    /// `json` (default), `json_images`, `overlay` (PNG) or `mask` (PNG).
    #[serde(rename = "return")]
    ret: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Answer {
    Json,
    JsonImages,
    Overlay,
    Mask,
}

/// Scores one image (raw body) or several (multipart).
#[utoipa::path(post, path = "/v1/predict", params(PredictQuery),
    request_body(content = Vec<u8>, description = "One image as the raw body (Content-Type image/png, image/jpeg, image/bmp, image/tiff or application/octet-stream), or several as multipart/form-data (one image per part).", content_type = "application/octet-stream"),
    responses(
        (status = 200, description = "return=json: a PredictRecord for a raw body, an array of them for multipart; return=json_images: the same with overlay_png_base64 and mask_png_base64; return=overlay or mask: image/png", body = RecordDoc),
        (status = 400, body = ErrorBody, description = "bad parameter, undecodable image, truncated multipart"),
        (status = 401, body = ErrorBody, description = "missing or invalid bearer token"),
        (status = 408, body = ErrorBody, description = "request not completed in time"),
        (status = 413, body = ErrorBody, description = "body or image too large"),
        (status = 415, body = ErrorBody, description = "wrong content type"),
        (status = 503, body = ErrorBody, description = "queue full or model loading (Retry-After)"),
    ),
    security(("bearer" = [])))]
async fn predict(
    State(st): State<Arc<AppState>>,
    query: Result<Query<PredictQuery>, QueryRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(format!("query: {}", e.body_text())))?;
    let answer = match q.ret.as_deref().unwrap_or("json") {
        "json" => Answer::Json,
        "json_images" => Answer::JsonImages,
        "overlay" => Answer::Overlay,
        "mask" => Answer::Mask,
        other => {
            return Err(ApiError::bad_request(format!(
                "return={other:?}: expected json, json_images, overlay or mask"
            )))
        }
    };
    let threshold = match &q.threshold {
        None => None,
        Some(t) => Some(
            t.trim()
                .parse::<f64>()
                .map_err(|_| ApiError::bad_request(format!("threshold {t:?} is not a number")))?,
        ),
    };
    let info = loaded(&st)?;
    let ckpt = Path::new(CKPT_NAME);
    if let Some(c) = q.class.as_deref() {
        check_class(&info.meta, ckpt, c, threshold)
            .map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    } else if let Some(t) = threshold {
        check_threshold(t).map_err(|e| ApiError::bad_request(format!("{e:#}")))?;
    }

    let multipart = body_kind(&req)?;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > st.opts.max_body_bytes as u64 {
            return Err(too_large(&st, len));
        }
    }
    let _slot = st.slots.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(
            "queue_full",
            format!(
                "server busy: {} requests already admitted (--queue), retry later",
                st.opts.queue
            ),
        )
    })?;

    let parts = if multipart {
        read_multipart(&st, req).await?
    } else {
        let name = q.name.clone().unwrap_or_else(|| "image".to_string());
        let bytes = axum::body::to_bytes(req.into_body(), st.opts.max_body_bytes)
            .await
            .map_err(|e| body_error(&st, &e))?;
        vec![(name, bytes)]
    };
    if matches!(answer, Answer::Overlay | Answer::Mask) && parts.len() != 1 {
        return Err(ApiError::bad_request(format!(
            "return={} answers one PNG: send one image (got {})",
            if answer == Answer::Mask {
                "mask"
            } else {
                "overlay"
            },
            parts.len()
        )));
    }
    let names: Vec<String> = parts.iter().map(|(n, _)| n.clone()).collect();
    let images = decode(&st, parts).await?;

    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    st.jobs
        .send(Job {
            images,
            maps: answer != Answer::Json,
            reply: reply_tx,
        })
        .map_err(|_| ApiError::unavailable("stopping", "the server is stopping"))?;
    let scored = reply_rx
        .await
        .map_err(|_| ApiError::unavailable("stopping", "the server is stopping"))?
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                format!("inference failed: {e}"),
            )
        })?;

    let judged = names
        .iter()
        .zip(&scored)
        .map(|(name, s)| {
            let j = judge(
                &info.meta,
                ckpt,
                s.recognised.as_ref().map(|(c, r)| (c.as_str(), r)),
                q.class.as_deref(),
                threshold,
            )?;
            let record = make_record(Path::new(name), s.score, &j, s.image.dimensions(), ckpt)?;
            Ok((record, j.pixel_threshold))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference",
                format!("{e:#}"),
            )
        })?;
    let (records, pixel_thresholds): (Vec<_>, Vec<_>) = judged.into_iter().unzip();
    if answer == Answer::Mask && pixel_thresholds.iter().any(Option::is_none) {
        let why = if records.iter().any(|r| r.unknown_class) {
            "the image is not of a class the model was trained on (unknown_class)"
        } else {
            "the run has no calibrated threshold; pass threshold=..."
        };
        return Err(ApiError::bad_request(format!(
            "return=mask needs a decision threshold: {why}"
        )));
    }

    match answer {
        Answer::Json if multipart => Ok(Json(records).into_response()),
        Answer::Json => Ok(Json(only_one(records)?).into_response()),
        Answer::JsonImages => {
            let alpha = st.opts.alpha;
            let out = blocking(move || {
                records
                    .into_iter()
                    .zip(scored)
                    .zip(pixel_thresholds)
                    .map(|((record, s), pixel_t)| {
                        let (overlay, mask) = pictures(&s, pixel_t, alpha)?;
                        let b64 = base64::engine::general_purpose::STANDARD;
                        Ok(RecordWithImages {
                            record,
                            overlay_png_base64: b64.encode(overlay),
                            mask_png_base64: mask.map(|m| b64.encode(m)),
                        })
                    })
                    .collect::<Result<Vec<_>, ApiError>>()
            })
            .await?;
            if multipart {
                Ok(Json(out).into_response())
            } else {
                Ok(Json(only_one(out)?).into_response())
            }
        }
        Answer::Overlay | Answer::Mask => {
            let record = only_one(records)?;
            let s = only_one(scored)?;
            let pixel_t = only_one(pixel_thresholds)?;
            let alpha = st.opts.alpha;
            let (overlay, mask) = blocking(move || pictures(&s, pixel_t, alpha)).await?;
            let png = if answer == Answer::Mask {
                mask.ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "threshold",
                        "return=mask needs a decision threshold: pass threshold= or calibrate the run with `omniad calibrate`".to_string(),
                    )
                })?
            } else {
                overlay
            };
            let mut resp = ([(header::CONTENT_TYPE, "image/png")], png).into_response();
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&record.image_score.to_string()) {
                h.insert("x-omniad-image-score", v);
            }
            if let Some(a) = record.anomalous {
                h.insert(
                    "x-omniad-anomalous",
                    HeaderValue::from_static(if a { "true" } else { "false" }),
                );
            }
            Ok(resp)
        }
    }
}

/// Whether the body is multipart (`true`) or one raw image (`false`), from `Content-Type`.
fn body_kind(req: &Request) -> Result<bool, ApiError> {
    let accepted =
        "send one image as the raw body with Content-Type image/png, image/jpeg, image/bmp, \
                    image/tiff or application/octet-stream, or several as multipart/form-data";
    let Some(ct) = req.headers().get(header::CONTENT_TYPE) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("missing Content-Type: {accepted}"),
        ));
    };
    let ct = ct.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence == "multipart/form-data" {
        Ok(true)
    } else if essence.starts_with("image/") || essence == "application/octet-stream" {
        Ok(false)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("Content-Type {ct:?} is not accepted: {accepted}"),
        ))
    }
}

fn too_large(st: &AppState, len: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "request body of {len} bytes is above the limit of {} bytes (--max-body-mb)",
            st.opts.max_body_bytes
        ),
    )
}

/// A body read failure: over the limit (413) or cut short / unreadable (400).
fn body_error(st: &AppState, e: &axum::Error) -> ApiError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return too_large_body(st);
        }
        source = s.source();
    }
    ApiError::bad_request(format!("cannot read the request body: {e}"))
}

/// The parts of a multipart body as `(name, bytes)`: every part is an image, named by its file
/// name, else its field name, else `image<i>`.
async fn read_multipart(
    st: &AppState,
    req: Request,
) -> Result<Vec<(String, bytes::Bytes)>, ApiError> {
    let mut mp = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart body: {}", e.body_text())))?;
    let mut parts = Vec::new();
    loop {
        let field = match mp.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return Err(multipart_error(st, &e)),
        };
        if parts.len() == st.opts.max_images {
            return Err(ApiError::bad_request(format!(
                "more than {} images in one request: send them in several requests",
                st.opts.max_images
            )));
        }
        let name = field
            .file_name()
            .filter(|n| !n.is_empty())
            .or_else(|| field.name().filter(|n| !n.is_empty()))
            .map_or_else(|| format!("image{}", parts.len()), str::to_string);
        let bytes = field.bytes().await.map_err(|e| multipart_error(st, &e))?;
        parts.push((name, bytes));
    }
    if parts.is_empty() {
        return Err(ApiError::bad_request(
            "multipart body has no part: send one image per part",
        ));
    }
    Ok(parts)
}

fn multipart_error(st: &AppState, e: &axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return too_large_body(st);
    }
    ApiError::bad_request(format!("multipart body: {}", e.body_text()))
}

fn too_large_body(st: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "request body above the limit of {} bytes (--max-body-mb)",
            st.opts.max_body_bytes
        ),
    )
}

/// Decodes the uploads on a blocking thread (at most one per core at once), as files are.
async fn decode(
    st: &AppState,
    parts: Vec<(String, bytes::Bytes)>,
) -> Result<Vec<RgbImage>, ApiError> {
    let _permit = st
        .decoders
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::unavailable("stopping", "the server is stopping"))?;
    let limits = st.opts.decode_limits;
    blocking(move || {
        parts
            .iter()
            .map(|(name, bytes)| {
                omniad_data::load_rgb_from_bytes_with_limits(&PathBuf::from(name), bytes, &limits)
                    .map_err(|e| match e {
                        DataError::TooLarge { .. } => ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "image_too_large",
                            e.to_string(),
                        ),
                        other => {
                            ApiError::new(StatusCode::BAD_REQUEST, "decode", other.to_string())
                        }
                    })
            })
            .collect()
    })
    .await
}

/// Runs `f` on a blocking thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("worker task failed: {e}"),
        )
    })?
}

/// Overlay PNG and, with a threshold, mask PNG of one scored image.
fn pictures(
    s: &ScoredImage,
    threshold: Option<f64>,
    alpha: f32,
) -> Result<(Vec<u8>, Option<Vec<u8>>), ApiError> {
    let internal = |e: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e);
    let map = s
        .map
        .as_deref()
        .ok_or_else(|| internal("no anomaly map was computed".into()))?;
    let (overlay, mask) =
        render(&s.image, map, threshold, alpha).map_err(|e| internal(format!("{e:#}")))?;
    let overlay = encode_png(
        overlay.as_raw(),
        overlay.dimensions(),
        image::ExtendedColorType::Rgb8,
    )
    .map_err(internal)?;
    let mask = match mask {
        Some(m) => Some(
            encode_png(m.as_raw(), m.dimensions(), image::ExtendedColorType::L8)
                .map_err(internal)?,
        ),
        None => None,
    };
    Ok((overlay, mask))
}

fn encode_png(
    raw: &[u8],
    (w, h): (u32, u32),
    color: image::ExtendedColorType,
) -> Result<Vec<u8>, String> {
    use image::ImageEncoder as _;
    let mut buf = Vec::new();
    image::codecs::png::PngEncoder::new(&mut buf)
        .write_image(raw, w, h, color)
        .map_err(|e| format!("cannot encode the PNG: {e}"))?;
    Ok(buf)
}

/// The single item of a one-image request's results; a server error (naming the count) if the
/// request's images and results ever disagree.
fn only_one<T>(items: Vec<T>) -> Result<T, ApiError> {
    let n = items.len();
    let mut it = items.into_iter();
    match (it.next(), it.next()) {
        (Some(x), None) => Ok(x),
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "inference",
            format!("expected the result of one image, got {n}"),
        )),
    }
}
