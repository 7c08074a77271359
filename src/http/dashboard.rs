//! The dashboard's static assets, embedded in the binary (no JavaScript toolchain needed), and
//! the OpenAPI document.

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Shared;

const INDEX: &str = include_str!("dashboard/index.html");
const APP_JS: &str = include_str!("dashboard/app.js");
const STYLE: &str = include_str!("dashboard/style.css");
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn routes() -> Router<Shared> {
    Router::new()
        .route(
            "/",
            get(|| async { page(INDEX, "text/html; charset=utf-8") }),
        )
        .route(
            "/app.js",
            get(|| async { page(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/style.css",
            get(|| async { page(STYLE, "text/css; charset=utf-8") }),
        )
        .route(
            "/api/v1/openapi.json",
            get(|| async { page(OPENAPI, "application/json") }),
        )
}

fn page(body: &'static str, ctype: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, ctype),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'",
            ),
        ],
        body,
    )
}
